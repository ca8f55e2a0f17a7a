//! CEL backfill: fills the call log from Asterisk's own Channel Event Log, so that calls
//! that started and ended while pbxbridge was stopped, restarting or disconnected from ARI
//! (which replays nothing) are recorded anyway.
//!
//! - [`store`]: reads the `cel` table that Asterisk's `cel_pgsql` (PostgreSQL) or
//!   `cel_sqlite3_custom` (SQLite, with the mapping in `asterisk-conf/`) writes, through its
//!   own read-only pool, separate from pbxbridge's database (`ASTERISK_CEL_URL`).
//! - [`fold`]: folds the rows of one linkedid into one call record with the same rules as
//!   the ARI tracker (`calls::rules`), `origin = "cel"`.
//! - [`backfill`]: the run over a time window (calls whose `LINKEDID_END` falls in it), the
//!   watermark, the conditional write (`calls::store::fill_gaps`: never over a call ARI saw
//!   whole) and the daemon task.
//!
//! Depends on `calls`, `db` and `config` only.

pub mod backfill;
pub mod fold;
pub mod store;

/// Errors of the CEL backfill. Messages never hold the CEL database password.
#[derive(Debug, thiserror::Error)]
pub enum CelError {
    /// `ASTERISK_CEL_URL` names neither `sqlite:` nor `postgres:`.
    #[error("ASTERISK_CEL_URL must start with sqlite:// or postgres:// (got scheme {0:?})")]
    UnsupportedUrl(String),
    /// The CEL database could not be opened (`url` is redacted).
    #[error("CEL database {url} unreachable: {reason}")]
    Connect {
        /// The URL with its password replaced by `***`.
        url: String,
        /// Why (the password, if it appears, is replaced by `***`).
        reason: String,
    },
    /// The CEL database has no usable `cel` table.
    #[error("CEL database {url}: {reason}")]
    Schema {
        /// The URL with its password replaced by `***`.
        url: String,
        /// What is missing or unsupported.
        reason: String,
    },
    /// A query on the CEL database failed.
    #[error("reading the CEL table failed: {0}")]
    Read(String),
    /// Writing to pbxbridge's database failed.
    #[error("pbxbridge database: {0}")]
    Db(#[from] crate::db::DbError),
    /// A run that must store was started without pbxbridge's database.
    #[error("no pbxbridge database to store the backfilled calls in")]
    NoDatabase,
}
