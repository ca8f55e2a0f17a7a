//! `/calls`: call history with filters and paging, one call by id, and the calls in
//! progress. Query values are validated one by one; a bad one is a 400 naming it.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::calls::store::{self, CallFilter};
use crate::calls::{CallStatus, Direction, Source};

/// Default and largest page sizes of `GET /calls`.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 500;

/// The call routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/calls", get(list))
        .route("/calls/active", get(active))
        .route("/calls/{id}", get(one))
}

/// Parses a time filter: RFC 3339 (`2026-11-21T16:00:00Z`) or a date (`2026-11-21`, midnight UTC).
pub fn parse_time_param(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(ApiError::bad_param(
        name,
        format!("{name} must be an RFC 3339 date-time or YYYY-MM-DD, got {v:?}"),
    ))
}

fn parse_int(name: &str, v: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    match v.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_param(
            name,
            format!("{name} must be a whole number from {min} to {max}, got {v:?}"),
        )),
    }
}

/// Builds a [`CallFilter`] from query parameters (`from`, `to`, `direction`, `status`,
/// `extension`, `number`, `source`, `limit`, `offset`).
pub fn filter_from_query(q: &HashMap<String, String>, paged: bool) -> Result<CallFilter, ApiError> {
    let mut f = CallFilter {
        limit: paged.then_some(DEFAULT_LIMIT),
        ..CallFilter::default()
    };
    for (k, v) in q {
        match k.as_str() {
            "from" => f.from = Some(parse_time_param(k, v)?),
            "to" => f.to = Some(parse_time_param(k, v)?),
            "direction" => {
                f.direction = Some(Direction::parse(v).ok_or_else(|| {
                    ApiError::bad_param(
                        k,
                        format!("direction must be inbound, outbound or internal, got {v:?}"),
                    )
                })?)
            }
            "status" => {
                f.status = Some(CallStatus::parse(v).ok_or_else(|| {
                    ApiError::bad_param(
                        k,
                        format!("status must be answered, missed, busy or failed, got {v:?}"),
                    )
                })?)
            }
            "source" => {
                f.source = Some(Source::parse(v).ok_or_else(|| {
                    ApiError::bad_param(
                        k,
                        format!("source must be asterisk, kerio or kavkom, got {v:?}"),
                    )
                })?)
            }
            "extension" if !v.is_empty() => f.extension = Some(v.clone()),
            "number" if !v.is_empty() => f.number = Some(v.clone()),
            "limit" if paged => f.limit = Some(parse_int(k, v, 1, MAX_LIMIT)?),
            "offset" if paged => f.offset = parse_int(k, v, 0, i64::MAX)?,
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (f.from, f.to) {
        if a > b {
            return Err(ApiError::bad_param("to", "to must not be before from"));
        }
    }
    Ok(f)
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let f = filter_from_query(&q, true)?;
    let (items, total) = store::list(&state.db, &f).await?;
    let now = Utc::now();
    let items: Vec<Value> = items
        .iter()
        .map(|r| r.to_json(state.settings.core.ui_locale, now))
        .collect();
    Ok(Json(
        json!({ "items": items, "total": total, "limit": f.limit, "offset": f.offset }),
    ))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::bad_param(
            "id",
            format!("id must be a UUID, got {id:?}"),
        ));
    }
    let rec = store::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("call {id}")))?;
    Ok(Json(rec.to_json(state.settings.core.ui_locale, Utc::now())))
}

async fn active(State(state): State<AppState>) -> Json<Value> {
    let now = Utc::now();
    let items: Vec<Value> = state
        .hub
        .active_calls()
        .iter()
        .map(|r| r.to_json(state.settings.core.ui_locale, now))
        .collect();
    Json(json!({ "items": items, "total": items.len() }))
}
