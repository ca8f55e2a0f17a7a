-- SIP extensions provisioned into the generated PJSIP include file. Passwords are never
-- stored: password_digest holds 'MD5:<hex>,SHA-256:<hex>' of 'extension:realm:password'.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.mmmZ'. revision grows with every change, so the
-- provisioner only marks as applied the version it rendered.
CREATE TABLE extensions (
    id               TEXT PRIMARY KEY,
    extension        TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL,
    context          TEXT NOT NULL,
    transport        TEXT NOT NULL,
    codecs           TEXT NOT NULL,
    max_contacts     BIGINT NOT NULL,
    enabled          BOOLEAN NOT NULL,
    realm            TEXT NOT NULL,
    password_digest  TEXT NOT NULL,
    revision         BIGINT NOT NULL,
    prov_state       TEXT NOT NULL,
    prov_applied_at  TEXT,
    prov_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
