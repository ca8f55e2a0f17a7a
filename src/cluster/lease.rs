//! Leases: a job that must run on one replica at a time (consuming a node's ARI, the
//! provisioner, the hosted-PBX sync loops) runs where its lease is held. A lease is a
//! PostgreSQL session-level advisory lock (`pg_try_advisory_lock`) held on a dedicated
//! connection, so PostgreSQL alone decides who holds it:
//! - the holder checks its connection every [`CHECK_INTERVAL`] (`SELECT 1`, at most
//!   [`CHECK_TIMEOUT`]); when the check fails it closes its gate at once (its gated tasks
//!   stop) and reconnects;
//! - the lock connection sets `idle_session_timeout` to [`SERVER_TIMEOUT`], so a holder
//!   that froze or lost its network is cut by the server, which releases the lock, after
//!   its own check has already closed its gate;
//! - a replica killed outright (SIGKILL) releases the lock when PostgreSQL sees its socket
//!   close;
//! - the others try to take it every [`CHECK_INTERVAL`]: a takeover happens within about
//!   one interval of the release.
//!
//! Work done under a lease must be idempotent at the database (call records are upserts
//! on (source, node, linkedid)), so a short overlap during a takeover doubles nothing.

use std::time::Duration;

use sha2::Digest;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store;

/// How often the holder checks its lock connection and the others try to take the lock.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a check may take before the holder counts its connection as lost.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
/// `idle_session_timeout` of the lock connection: the server ends a session silent this
/// long, which releases the lock of a frozen holder.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a lease task stopped (only at start: afterwards every failure is retried).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The database URL is not PostgreSQL.
    #[error("leases need PostgreSQL (DATABASE_URL postgres://...)")]
    NotPostgres,
}

/// The advisory-lock key of lease `name`: the first 8 bytes of SHA-256 of
/// `pbxbridge:NAME`, as a signed 64-bit integer (stable across versions and hosts).
pub fn lock_key(name: &str) -> i64 {
    let digest = sha2::Sha256::digest(format!("pbxbridge:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// One lease: its name (`ari:NODE`, `singleton`), this replica's id and the database.
pub struct Lease {
    name: String,
    replica: String,
    url: crate::config::DatabaseUrl,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Lease `name` for replica `replica` on the PostgreSQL at `url`.
    ///
    /// Errors: [`LeaseError::NotPostgres`] for another database.
    pub fn new(
        name: &str,
        replica: &str,
        url: &crate::config::DatabaseUrl,
    ) -> Result<Lease, LeaseError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(LeaseError::NotPostgres);
        }
        Ok(Lease {
            name: name.to_string(),
            replica: replica.to_string(),
            url: url.clone(),
        })
    }

    /// Holds the lease whenever it can until `cancel`, telling `gate` whether it is held
    /// (true) or not (false). Never fails: a lost or unreachable database closes the gate
    /// and is retried every [`CHECK_INTERVAL`]. At `cancel` the lock is released (so a
    /// standby takes over at once) and the gate closed.
    pub async fn run(&self, gate: &watch::Sender<bool>, cancel: CancellationToken) {
        let key = lock_key(&self.name);
        let mut warned = false;
        while !cancel.is_cancelled() {
            let conn = tokio::select! {
                _ = cancel.cancelled() => break,
                c = tokio::time::timeout(CHECK_TIMEOUT * 2, self.connect()) => c,
            };
            let failure = match conn {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connection timed out".to_string()),
            };
            let mut conn = match failure {
                Ok(c) => {
                    warned = false;
                    c
                }
                Err(why) => {
                    if !warned {
                        tracing::warn!(lease = %self.name, "lease {}: cannot connect to the database: {why}; retrying", self.name);
                        warned = true;
                    }
                    sleep_or_cancel(&cancel).await;
                    continue;
                }
            };
            let held = self.hold_on(&mut conn, key, gate, &cancel).await;
            if held && cancel.is_cancelled() {
                let _ = tokio::time::timeout(
                    CHECK_TIMEOUT,
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(key)
                        .execute(&mut conn),
                )
                .await;
            }
            gate.send_replace(false);
            if held && !cancel.is_cancelled() {
                tracing::warn!(lease = %self.name, replica = %self.replica, "lease {} lost (database connection failed): standing down", self.name);
            }
            let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
        }
        gate.send_replace(false);
    }

    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.url).await?;
        sqlx::query(&format!(
            "SET idle_session_timeout = {}",
            SERVER_TIMEOUT.as_millis()
        ))
        .execute(&mut conn)
        .await?;
        sqlx::query("SELECT set_config('application_name', $1, false)")
            .bind(format!("pbxbridge lease {}", self.name))
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }

    /// On one connection: tries to take the lock every interval, then checks the
    /// connection every interval while held. Returns (whether it was held) when the
    /// connection fails or at `cancel`.
    async fn hold_on(
        &self,
        conn: &mut PgConnection,
        key: i64,
        gate: &watch::Sender<bool>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut held = false;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return held,
                _ = tick.tick() => {}
            }
            if held {
                let check = tokio::time::timeout(
                    CHECK_TIMEOUT,
                    sqlx::query("SELECT 1").execute(&mut *conn),
                )
                .await;
                if !matches!(check, Ok(Ok(_))) {
                    return true;
                }
                continue;
            }
            let took = tokio::time::timeout(
                CHECK_TIMEOUT,
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut *conn),
            )
            .await;
            match took {
                Ok(Ok(true)) => {
                    held = true;
                    if let Err(e) = store::record_holder(conn, &self.name, &self.replica).await {
                        tracing::warn!(lease = %self.name, "lease {}: holder not recorded: {e}", self.name);
                    }
                    tracing::info!(lease = %self.name, replica = %self.replica, "lease {} taken by replica {}", self.name, self.replica);
                    gate.send_replace(true);
                }
                Ok(Ok(false)) => {}
                _ => return false,
            }
        }
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(CHECK_INTERVAL) => {}
    }
}
