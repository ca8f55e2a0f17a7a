//! SQL of the Kerio adapter beyond the shared stores: clearing the progress markers of an
//! interrupted history sync from `sync_state` (watermarks themselves go through
//! `crate::sync::state`).

use crate::db::{Db, DbError};

/// Deletes the `sync_state` rows named `names` (absent rows are fine).
pub async fn clear_state(db: &Db, names: &[&str]) -> Result<(), DbError> {
    for name in names {
        sqlx::query("DELETE FROM sync_state WHERE name = $1")
            .bind(*name)
            .execute(db.pool())
            .await?;
    }
    Ok(())
}
