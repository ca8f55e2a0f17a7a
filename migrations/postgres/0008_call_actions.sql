-- Call-control actions (issue 15): who did what to which call, and how Asterisk answered.
-- id starts with the time in ns (order of entries). call_id is the call record's id (calls.id; not a foreign key: a click-to-call is logged
-- before its record exists). at is UTC ISO 8601.
CREATE TABLE call_actions (
    id       TEXT PRIMARY KEY,
    call_id  TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT,
    outcome  TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX call_actions_call ON call_actions (call_id, at);
