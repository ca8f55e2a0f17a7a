//! The process lock of a SQLite database: SQLite is single-process for pbxbridge (one
//! daemon writes it; replicas need PostgreSQL), so `serve` holds an exclusive advisory lock
//! (`flock(2)`, `LOCK_EX | LOCK_NB`) on a sidecar file `<database file>.lock` for its whole
//! life, and a second `serve` on the same file fails at start instead of writing beside it.
//! The kernel drops the lock when the process ends, however it ends; the sidecar file stays.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sqlx::sqlite::SqliteConnectOptions;

use super::DbError;

/// An exclusive lock on a SQLite database's sidecar file, held until dropped.
#[derive(Debug)]
pub struct ProcessLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl ProcessLock {
    /// Takes the lock of the database at `url` without waiting. `Ok(None)` for a database
    /// that needs none: PostgreSQL (replicas share it) and in-memory SQLite.
    ///
    /// Errors: [`DbError::Locked`] when another process (or another lock in this one) holds
    /// it: another `serve` uses this SQLite file; [`DbError::LockFile`] when the sidecar
    /// file cannot be opened (its folder is missing or not writable);
    /// [`DbError::UnsupportedUrl`] for a scheme that is neither SQLite nor PostgreSQL.
    pub fn acquire(url: &str) -> Result<Option<ProcessLock>, DbError> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => return Ok(None),
            "sqlite" => {}
            other => return Err(DbError::UnsupportedUrl(other.to_string())),
        }
        let Some(file) = sqlite_file(url)? else {
            return Ok(None);
        };
        let mut name = file.clone().into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let sidecar = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| DbError::LockFile {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(sidecar, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                tracing::debug!(path = %path.display(), "SQLite process lock taken");
                Ok(Some(ProcessLock { path, _lock: lock }))
            }
            Err((_, Errno::EWOULDBLOCK)) => Err(DbError::Locked { file }),
            Err((_, errno)) => Err(DbError::LockFile {
                path,
                source: std::io::Error::from(errno),
            }),
        }
    }

    /// The sidecar file locked.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file of a SQLite URL (`sqlite://FILE`, `sqlite:FILE`, with or without `?options`),
/// or None for an in-memory database.
fn sqlite_file(url: &str) -> Result<Option<PathBuf>, DbError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = query.split('&').any(|kv| kv == "mode=memory");
    if in_memory || database.is_empty() || database == ":memory:" {
        return Ok(None);
    }
    // sqlx's own reading of the file name (percent-decoded).
    let options = SqliteConnectOptions::from_str(url)?;
    Ok(Some(options.get_filename().to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_postgres_need_no_lock() {
        assert!(ProcessLock::acquire("sqlite::memory:").unwrap().is_none());
        assert!(
            ProcessLock::acquire("sqlite://x.db?mode=memory")
                .unwrap()
                .is_none()
        );
        assert!(
            ProcessLock::acquire("postgres://u:pw@localhost/db")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            ProcessLock::acquire("mysql://h/db"),
            Err(DbError::UnsupportedUrl(_))
        ));
    }
}
