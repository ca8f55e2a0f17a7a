-- Nothing to do on PostgreSQL: extensions.enabled is BOOLEAN, which sqlx decodes. (SQLite's
-- 0009 turns its BOOLEAN-declared column into INTEGER 0/1, the one SQLite convention.)
SELECT 1;
