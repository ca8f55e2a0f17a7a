-- The `cel` table that Asterisk's cel_pgsql writes (cel_pgsql.conf) and pbxbridge's CEL
-- backfill reads (ASTERISK_CEL_URL=postgres://...). cel_pgsql inserts into the columns it
-- finds here, by name.
--
-- Text columns are TEXT, not varchar(N): PostgreSQL refuses a value longer than N, and
-- cel_pgsql then drops the whole event (a long appdata or a transfer's extra JSON would
-- lose a row of the call). eventtime is a timestamp holding UTC (usegmtime = yes),
-- microseconds included.
--
--   psql -U postgres -d asterisk -f cel-pgsql.sql
--   -- a read-only role for pbxbridge:
--   CREATE ROLE pbxbridge_cel LOGIN PASSWORD '...';
--   GRANT SELECT ON cel TO pbxbridge_cel;

CREATE TABLE IF NOT EXISTS cel (
    id          BIGSERIAL PRIMARY KEY,
    eventtype   TEXT NOT NULL,
    eventtime   TIMESTAMP NOT NULL,
    userdeftype TEXT NOT NULL DEFAULT '',
    cid_name    TEXT NOT NULL DEFAULT '',
    cid_num     TEXT NOT NULL DEFAULT '',
    cid_ani     TEXT NOT NULL DEFAULT '',
    cid_rdnis   TEXT NOT NULL DEFAULT '',
    cid_dnid    TEXT NOT NULL DEFAULT '',
    exten       TEXT NOT NULL DEFAULT '',
    context     TEXT NOT NULL DEFAULT '',
    channame    TEXT NOT NULL DEFAULT '',
    appname     TEXT NOT NULL DEFAULT '',
    appdata     TEXT NOT NULL DEFAULT '',
    amaflags    INTEGER NOT NULL DEFAULT 0,
    accountcode TEXT NOT NULL DEFAULT '',
    peeraccount TEXT NOT NULL DEFAULT '',
    uniqueid    TEXT NOT NULL DEFAULT '',
    linkedid    TEXT NOT NULL DEFAULT '',
    userfield   TEXT NOT NULL DEFAULT '',
    peer        TEXT NOT NULL DEFAULT '',
    extra       TEXT
);

-- pbxbridge's two queries: the calls that ended in a time window, then all rows of those
-- calls.
CREATE INDEX IF NOT EXISTS cel_linkedid_end ON cel (eventtime) WHERE eventtype = 'LINKEDID_END';
CREATE INDEX IF NOT EXISTS cel_linkedid ON cel (linkedid);
CREATE INDEX IF NOT EXISTS cel_eventtime ON cel (eventtime);
