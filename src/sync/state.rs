//! Watermarks of the hosted-PBX syncs, in the `sync_state` table: one row per name (e.g.
//! `kerio:history`), holding the newest call time already committed (UTC, stored format of
//! `db::format_time`). Set it only after the page it covers is committed.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::db::{Db, DbError, format_time, parse_time};

/// The stored watermark for `name`, if any.
pub async fn get_watermark(db: &Db, name: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = sqlx::query("SELECT watermark FROM sync_state WHERE name = $1")
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    match row {
        None => Ok(None),
        Some(r) => r
            .try_get::<Option<String>, _>("watermark")?
            .map(|s| parse_time("watermark", &s))
            .transpose(),
    }
}

/// Stores `watermark` for `name` (insert or replace).
pub async fn set_watermark(db: &Db, name: &str, watermark: DateTime<Utc>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO sync_state (name, watermark, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(format_time(&watermark))
    .bind(format_time(&Utc::now()))
    .execute(db.pool())
    .await?;
    Ok(())
}
