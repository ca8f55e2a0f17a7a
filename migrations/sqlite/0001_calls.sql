-- Call records from every source (asterisk, kerio, kavkom). Times are UTC text
-- 'YYYY-MM-DDTHH:MM:SS.mmmZ'; duration and billsec are whole seconds.
CREATE TABLE calls (
    id                TEXT PRIMARY KEY,
    source            TEXT NOT NULL,
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
    UNIQUE (source, external_id)
);
CREATE INDEX calls_start_time ON calls (start_time);
CREATE INDEX calls_extension ON calls (extension, start_time);
CREATE INDEX calls_state ON calls (state);

-- Watermarks of the hosted-PBX syncs: one row per source (and scope).
CREATE TABLE sync_state (
    name       TEXT PRIMARY KEY,
    watermark  TEXT,
    updated_at TEXT NOT NULL
);
