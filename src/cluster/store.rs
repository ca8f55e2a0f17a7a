//! SQL of the cluster: the `cluster_leases` rows (who holds which lease, for `/health`).
//! The leases themselves are PostgreSQL advisory locks (see [`super::lease`]).

use sqlx::Row;

use crate::db::{Db, DbError, format_time};

/// One lease as its holder recorded it when it took it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LeaseHolder {
    /// The lease (`ari:NODE`, `singleton`).
    pub name: String,
    /// The replica that took it last (`REPLICA_ID`).
    pub replica: String,
    /// When it took it (UTC, ISO 8601).
    pub since: String,
}

/// Records that `replica` holds `name` since now, on the lease's own connection.
///
/// Errors: the statement failed.
pub async fn record_holder(
    conn: &mut sqlx::PgConnection,
    name: &str,
    replica: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cluster_leases (name, replica, since) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET replica = excluded.replica, since = excluded.since",
    )
    .bind(name)
    .bind(replica)
    .bind(format_time(&chrono::Utc::now()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Every lease's last holder, by name.
///
/// Errors: [`DbError`] when the query fails.
pub async fn holders(db: &Db) -> Result<Vec<LeaseHolder>, DbError> {
    let rows = sqlx::query("SELECT name, replica, since FROM cluster_leases ORDER BY name")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LeaseHolder {
                name: r.try_get("name")?,
                replica: r.try_get("replica")?,
                since: r.try_get("since")?,
            })
        })
        .collect()
}
