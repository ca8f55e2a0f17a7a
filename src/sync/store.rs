//! SQL of the sync engine: which rows of a page are already stored, and with what raw
//! item, so that a run tells new from changed from unchanged rows. Writes go through
//! `calls::store::upsert_many` (one transaction per page).

use std::collections::HashMap;

use sqlx::Row;

use crate::calls::Source;
use crate::db::{Db, DbError};

/// The stored `raw` JSON (parsed; `Value::Null` when absent or unreadable) of each call of
/// `source` among `call_ids` that is already in `calls`.
pub async fn stored_raw(
    db: &Db,
    source: Source,
    call_ids: &[&str],
) -> Result<HashMap<String, serde_json::Value>, DbError> {
    let mut out = HashMap::new();
    // Batches keep the parameter count well under both backends' limits.
    for chunk in call_ids.chunks(200) {
        let marks: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT external_id, raw FROM calls WHERE source = $1 AND external_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(source.as_str());
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(db.pool()).await? {
            let id: String = row.try_get("external_id")?;
            let raw: Option<String> = row.try_get("raw")?;
            let value = raw
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or(serde_json::Value::Null);
            out.insert(id, value);
        }
    }
    Ok(out)
}

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
