-- Per-user token version: login tokens carry the version current when they were issued
-- (claim `ver`); `user passwd` increments it, so revocation holds even within the second
-- a token was issued.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
