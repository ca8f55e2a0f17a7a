-- Several Asterisk nodes (ASTERISK_NODES): every Asterisk call record carries the node it
-- came from, and linkedids are unique per node only, so the record key becomes
-- (source, node, external_id). Hosted-PBX records have node ''. Records written before this
-- migration came from the single node, named 'default'.
ALTER TABLE calls ADD COLUMN node TEXT NOT NULL DEFAULT '';
UPDATE calls SET node = 'default' WHERE source = 'asterisk';
ALTER TABLE calls DROP CONSTRAINT calls_source_external_id_key;
CREATE UNIQUE INDEX calls_source_node_external_id ON calls (source, node, external_id);
CREATE INDEX calls_node ON calls (node, start_time);

-- Which replica consumes what (one row per advisory-lock lease: 'ari:NODE', 'singleton'),
-- written by the holder when it takes the lease; shown on /health. The lock itself is the
-- PostgreSQL advisory lock, not this row.
CREATE TABLE cluster_leases (
    name       TEXT PRIMARY KEY,
    replica    TEXT NOT NULL,
    since      TEXT NOT NULL
);
