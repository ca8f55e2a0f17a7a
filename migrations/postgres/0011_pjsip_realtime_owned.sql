-- PJSIP_MODE=realtime: the rows of Asterisk's realtime tables (ps_endpoints, ps_auths,
-- ps_aors) that pbxbridge created and therefore may change or delete. A row of those tables
-- that is not listed here (a trunk an admin added) is never touched. tbl is the table name,
-- id the row id. The ps_* tables themselves belong to Asterisk (its alembic scripts, or
-- asterisk-conf/realtime-pjsip-pgsql.sql), not to these migrations.
CREATE TABLE pjsip_realtime_owned (
    tbl  TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (tbl, id)
);
