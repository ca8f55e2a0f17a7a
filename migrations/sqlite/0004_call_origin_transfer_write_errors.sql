-- Where a record was built when not from the live ARI stream (`origin`, e.g. 'cel' for
-- the CEL backfill), the agent a call was transferred to (`transferred_to`), and the call
-- records the database refused (kept whole as JSON, with the error, so nothing is lost).
ALTER TABLE calls ADD COLUMN origin TEXT;
ALTER TABLE calls ADD COLUMN transferred_to TEXT;

CREATE TABLE call_write_errors (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    call_record_id  TEXT NOT NULL,
    source          TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    record          TEXT NOT NULL,
    error           TEXT NOT NULL,
    failed_at       TEXT NOT NULL
);
CREATE INDEX call_write_errors_failed_at ON call_write_errors (failed_at);
