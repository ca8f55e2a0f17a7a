-- Several Asterisk nodes (ASTERISK_NODES): every Asterisk call record carries the node it
-- came from, and linkedids are unique per node only, so the record key becomes
-- (source, node, external_id). Hosted-PBX records have node ''. Records written before this
-- migration came from the single node, named 'default'. SQLite cannot drop a table
-- constraint, so the table is rebuilt.
CREATE TABLE calls_new (
    id                TEXT PRIMARY KEY,
    source            TEXT NOT NULL,
    node              TEXT NOT NULL DEFAULT '',
    external_id       TEXT NOT NULL,
    direction         TEXT NOT NULL,
    from_number       TEXT,
    to_number         TEXT,
    extension         TEXT,
    start_time        TEXT NOT NULL,
    answer_time       TEXT,
    end_time          TEXT,
    duration          INTEGER NOT NULL DEFAULT 0,
    billsec           INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL,
    status            TEXT,
    hangup_cause      INTEGER,
    hangup_cause_text TEXT,
    dial_status       TEXT,
    recording_path    TEXT,
    voicemail         INTEGER NOT NULL DEFAULT 0,
    reconstructed     INTEGER NOT NULL DEFAULT 0,
    raw               TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    origin            TEXT,
    transferred_to    TEXT
);
INSERT INTO calls_new (id, source, node, external_id, direction, from_number, to_number,
    extension, start_time, answer_time, end_time, duration, billsec, state, status,
    hangup_cause, hangup_cause_text, dial_status, recording_path, voicemail, reconstructed,
    raw, created_at, updated_at, origin, transferred_to)
SELECT id, source, CASE WHEN source = 'asterisk' THEN 'default' ELSE '' END, external_id,
    direction, from_number, to_number, extension, start_time, answer_time, end_time,
    duration, billsec, state, status, hangup_cause, hangup_cause_text, dial_status,
    recording_path, voicemail, reconstructed, raw, created_at, updated_at, origin,
    transferred_to
FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE UNIQUE INDEX calls_source_node_external_id ON calls (source, node, external_id);
CREATE INDEX calls_start_time ON calls (start_time);
CREATE INDEX calls_extension ON calls (extension, start_time);
CREATE INDEX calls_state ON calls (state);
CREATE INDEX calls_node ON calls (node, start_time);

-- Which replica consumes what (see the PostgreSQL migration). SQLite runs one replica.
CREATE TABLE cluster_leases (
    name       TEXT PRIMARY KEY,
    replica    TEXT NOT NULL,
    since      TEXT NOT NULL
);
