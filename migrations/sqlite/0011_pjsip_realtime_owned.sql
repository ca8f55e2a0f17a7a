-- The same table as PostgreSQL's 0011, so both backends keep one schema. Unused on SQLite:
-- PJSIP_MODE=realtime needs PostgreSQL (Asterisk reads ps_endpoints from it).
CREATE TABLE pjsip_realtime_owned (
    tbl  TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (tbl, id)
);
