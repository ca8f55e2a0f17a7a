//! Watermarks in the `sync_state` table: one row per name (e.g. `kerio:history`,
//! `cel:backfill`), holding a time up to which some background job is done (UTC, stored in
//! the format of [`format_time`]). Generic, so any feature may keep its progress here: the
//! hosted-PBX syncs (`sync`) and the CEL backfill (`cel`). Set a watermark only after the
//! work it covers is committed.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Db, DbError, format_time, parse_time};

/// The stored watermark for `name`, if any.
///
/// Errors: [`DbError`] when the query fails or the stored value is not a time.
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
///
/// Errors: [`DbError`] when the write fails.
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
