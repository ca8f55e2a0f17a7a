//! Database access shared by every feature: the connection pool, the backend in use and the
//! migrations. SQLite (embedded default) and PostgreSQL are both first class: every query is
//! one SQL text that both accept (`$1` placeholders, `ON CONFLICT ... DO UPDATE`, `TEXT` times),
//! run through sqlx's `Any` driver. Each backend has its own migrations folder
//! (`migrations/sqlite`, `migrations/postgres`).
//!
//! Portable types: ids are UUID strings, times are `TEXT` in the fixed UTC format
//! `YYYY-MM-DDTHH:MM:SS.mmmZ` (see [`format_time`]), so that they sort and compare as text;
//! integers are 64-bit; booleans (every table) are `BOOLEAN` in PostgreSQL and `INTEGER` 0/1 in SQLite
//! (the `Any` driver cannot decode SQLite's BOOLEAN): bind a `bool`, read with [`get_bool`].
//!
//! SQLite is single-process: `serve` holds [`ProcessLock`] on it for its lifetime.
//!
//! Features keep their own queries in their `store.rs`; this module never reaches up into them.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub mod lock;
pub mod watermark;

pub use lock::ProcessLock;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` names neither `sqlite:` nor `postgres:`.
    #[error("DATABASE_URL must start with sqlite:// or postgres:// (got scheme {0:?})")]
    UnsupportedUrl(String),
    /// A unique key already holds this value (`constraint` names the key when known).
    #[error("unique key violated: {constraint}")]
    Conflict {
        /// The constraint or column list reported by the database.
        constraint: String,
    },
    /// A stored value could not be decoded (a corrupt row or a schema mismatch).
    #[error("stored value in column {column} is not valid: {reason}")]
    Decode {
        /// Column name.
        column: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    /// Another process holds the SQLite database's process lock ([`ProcessLock`]).
    #[error(
        "another pbxbridge serve is using SQLite file {} (SQLite is single-process; use PostgreSQL for replicas)",
        file.display()
    )]
    Locked {
        /// The database file.
        file: std::path::PathBuf,
    },
    /// The lock file of a SQLite database could not be opened or locked.
    #[error("cannot lock {}: {source}", path.display())]
    LockFile {
        /// The sidecar lock file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return DbError::Conflict {
                constraint: db
                    .constraint()
                    .map(str::to_string)
                    .unwrap_or_else(|| db.message().to_string()),
            };
        }
        DbError::Sqlx(e)
    }
}

/// The database backend behind a [`Db`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A pool of connections to one database, with the backend it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects to `url` (`sqlite://FILE` is created if missing; `sqlite::memory:` works for
    /// throwaway use). Does not run migrations: see [`Db::migrate`].
    ///
    /// Errors: [`DbError::UnsupportedUrl`] for another scheme, [`DbError::Sqlx`] when the
    /// database cannot be reached.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (backend, url) = match scheme.as_str() {
            "sqlite" => {
                let mut u = url.to_string();
                if !u.contains("mode=") && !u.contains(":memory:") {
                    u.push(if u.contains('?') { '&' } else { '?' });
                    u.push_str("mode=rwc");
                }
                (Backend::Sqlite, u)
            }
            "postgres" | "postgresql" => (Backend::Postgres, url.to_string()),
            other => return Err(DbError::UnsupportedUrl(other.to_string())),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // One writer at a time is SQLite's rule; WAL lets readers run beside it.
            pool = pool.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;")
                        .await?;
                    Ok(())
                })
            });
        } else {
            pool = pool.max_connections(10);
        }
        let pool = pool.connect_with(options).await?;
        Ok(Db { pool, backend })
    }

    /// Connects and applies the migrations of the backend.
    pub async fn connect_and_migrate(url: &str) -> Result<Db, DbError> {
        let db = Db::connect(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Applies pending migrations (`migrations/sqlite` or `migrations/postgres`).
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The pool, for the feature stores' queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `SELECT 1`: Ok when the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads a boolean column on either backend (`BOOLEAN` in PostgreSQL, `INTEGER` 0/1 in SQLite).
pub fn get_bool(row: &sqlx::any::AnyRow, column: &'static str) -> Result<bool, DbError> {
    use sqlx::Row;
    match row.try_get::<bool, _>(column) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<i64, _>(column)? != 0),
    }
}

/// Formats a time the way it is stored and shown: UTC, ISO 8601, milliseconds,
/// `Z` suffix (`2026-11-21T16:44:49.441Z`). Fixed width, so text order is time order.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a stored time (see [`format_time`]); `column` names it in the error.
pub fn parse_time(column: &'static str, s: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DbError::Decode {
            column,
            reason: format!("{s:?}: {e}"),
        })
}

/// Serde helpers for times in API JSON, in the format of [`format_time`].
pub mod time_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a required time.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }
    /// Deserializes any RFC 3339 time into UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for optional times (`null` when absent).
    pub mod option {
        use super::*;
        /// Serializes an optional time.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&crate::db::format_time(t)),
                None => s.serialize_none(),
            }
        }
        /// Deserializes an optional RFC 3339 time.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}
