-- One boolean convention on SQLite: INTEGER 0/1, read with db::get_bool (sqlx's Any driver
-- cannot decode a column declared BOOLEAN). extensions.enabled was declared BOOLEAN.
ALTER TABLE extensions ADD COLUMN enabled_int INTEGER NOT NULL DEFAULT 0;
UPDATE extensions SET enabled_int = CASE WHEN enabled THEN 1 ELSE 0 END;
ALTER TABLE extensions DROP COLUMN enabled;
ALTER TABLE extensions RENAME COLUMN enabled_int TO enabled;
