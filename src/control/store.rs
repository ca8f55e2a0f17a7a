//! SQL of call control: a call's `recording_path` (set when a recording starts, cleared
//! when it is deleted; the call writer never erases it) and the action log
//! (`call_actions`: who did what to which call). One SQL text per query for both backends.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::db::{Db, DbError, format_time};

/// Ids of the finished calls of Asterisk node `node` that started before `cutoff` and have
/// a recording (what `RETENTION_DAYS` is about to purge), at most `limit`.
pub async fn recorded_before(
    db: &Db,
    node: &str,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    let rows = sqlx::query(
        "SELECT id FROM calls WHERE source = 'asterisk' AND node = $1 AND recording_path IS NOT NULL \
         AND start_time < $2 AND state NOT IN ('ringing', 'connected') ORDER BY start_time LIMIT $3",
    )
    .bind(node)
    .bind(format_time(&cutoff))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(DbError::from))
        .collect()
}

/// Sets (or with `None` clears) the `recording_path` of the call whose record id is `call`.
/// Returns false when no such call is stored.
pub async fn set_recording_path(db: &Db, call: Uuid, path: Option<&str>) -> Result<bool, DbError> {
    let done = sqlx::query("UPDATE calls SET recording_path = $1, updated_at = $2 WHERE id = $3")
        .bind(path)
        .bind(format_time(&Utc::now()))
        .bind(call.to_string())
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// One logged action.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionEntry {
    /// The call record's id.
    pub call_id: String,
    /// Who (user name, `token`, or `auto` for automatic recordings).
    pub actor: String,
    /// What (`originate`, `hangup`, `hold`, `unhold`, `transfer-blind`, `transfer-attended`,
    /// `record-start`, `record-stop`, `recording-delete`).
    pub action: String,
    /// Parameters (number, transfer target).
    pub detail: Option<String>,
    /// `ok`, or the error.
    pub outcome: String,
    /// When (UTC ISO 8601).
    pub at: String,
}

/// Appends one entry to the action log.
pub async fn log_action(
    db: &Db,
    call: Uuid,
    actor: &str,
    action: &str,
    detail: Option<&str>,
    outcome: &str,
) -> Result<(), DbError> {
    // The id starts with the time in ns, so that it orders entries of the same millisecond.
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO call_actions (id, call_id, actor, action, detail, outcome, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%.9f"),
        Uuid::new_v4().simple()
    ))
    .bind(call.to_string())
    .bind(actor)
    .bind(action)
    .bind(detail)
    .bind(outcome)
    .bind(format_time(&now))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The actions logged on a call, oldest first.
pub async fn actions(db: &Db, call: Uuid) -> Result<Vec<ActionEntry>, DbError> {
    let rows = sqlx::query(
        "SELECT call_id, actor, action, detail, outcome, at FROM call_actions \
         WHERE call_id = $1 ORDER BY id",
    )
    .bind(call.to_string())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ActionEntry {
                call_id: r.try_get("call_id")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                detail: r.try_get("detail")?,
                outcome: r.try_get("outcome")?,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}
