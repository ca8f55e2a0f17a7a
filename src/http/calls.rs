//! `/calls`: call history with filters and paging (or all of it as CSV with `format=csv` or
//! `Accept: text/csv`), one call by id, the calls in progress, and `/stats/calls`. Query
//! values are validated one by one; a bad one is a 400 naming it.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
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
        .route("/stats/calls", get(stats))
}

/// Parses a time filter: RFC 3339 (`2026-11-21T16:00:00Z`) or a date (`2026-11-21`, midnight
/// UTC); see [`crate::calls::params::parse_time`].
pub fn parse_time_param(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    Ok(crate::calls::params::parse_time(name, v)?)
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
/// `extension`, `number`, `source`, `node`, `limit`, `offset`).
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
            "node" if !v.is_empty() => f.node = Some(v.clone()),
            "number" if !v.is_empty() => f.number = Some(v.clone()),
            "limit" if paged => f.limit = Some(parse_int(k, v, 1, MAX_LIMIT)?),
            "offset" if paged => f.offset = parse_int(k, v, 0, i64::MAX)?,
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (f.from, f.to)
        && a > b
    {
        return Err(ApiError::bad_param("to", "to must not be before from"));
    }
    Ok(f)
}

async fn list(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    let wants_csv = match q.get("format").map(String::as_str) {
        Some("csv") => true,
        Some("json") | None => headers
            .get(axum::http::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
        Some(other) => {
            return Err(ApiError::bad_param(
                "format",
                format!("format must be json or csv, got {other:?}"),
            ));
        }
    };
    if wants_csv {
        let f = filter_from_query(&q, false)?;
        return Ok(csv_response(state, f));
    }
    let f = filter_from_query(&q, true)?;
    let (items, total) = store::list(&state.db, &f).await?;
    let now = Utc::now();
    let items: Vec<Value> = items
        .iter()
        .map(|r| r.to_json(state.settings.core.ui_locale, now))
        .collect();
    Ok(
        Json(json!({ "items": items, "total": total, "limit": f.limit, "offset": f.offset }))
            .into_response(),
    )
}

const CSV_HEADER: [&str; 19] = [
    "id",
    "source",
    "callId",
    "direction",
    "fromNumber",
    "toNumber",
    "extension",
    "startTime",
    "answerTime",
    "endTime",
    "duration",
    "billsec",
    "state",
    "status",
    "hangupCause",
    "hangupCauseText",
    "dialStatus",
    "recordingPath",
    "label",
];

/// A CSV cell made safe for spreadsheets (formula injection, OWASP "CSV Injection"): a cell
/// that Excel or LibreOffice would read as a formula (starting with `=`, `@`, a tab or a
/// carriage return; or `+`/`-` followed by anything but a plain number such as
/// `+998901234567`) gets a leading `'`, so it shows as text. Caller names and numbers come
/// from outside (the carrier), so every text cell goes through here.
fn neutralize(cell: String) -> String {
    let mut chars = cell.chars();
    let risky = match chars.next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !chars.all(|c| c.is_ascii_digit() || " ().-".contains(c)),
        _ => false,
    };
    if risky { format!("'{cell}") } else { cell }
}

fn csv_row(r: &crate::calls::CallRecord, locale: crate::config::Locale) -> Vec<String> {
    use crate::db::format_time;
    let o = |v: &Option<String>| neutralize(v.clone().unwrap_or_default());
    vec![
        r.id.to_string(),
        r.source.as_str().into(),
        neutralize(r.call_id.clone()),
        r.direction.as_str().into(),
        o(&r.from_number),
        o(&r.to_number),
        o(&r.extension),
        format_time(&r.start_time),
        r.answer_time.as_ref().map(format_time).unwrap_or_default(),
        r.end_time.as_ref().map(format_time).unwrap_or_default(),
        r.duration.to_string(),
        r.billsec.to_string(),
        r.state.as_str().into(),
        r.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
        r.hangup_cause.map(|c| c.to_string()).unwrap_or_default(),
        o(&r.hangup_cause_text),
        o(&r.dial_status),
        o(&r.recording_path),
        r.status
            .map(|s| crate::calls::labels::status_label(locale, s))
            .unwrap_or_else(|| crate::calls::labels::state_label(locale, r.state))
            .to_string(),
    ]
}

fn csv_chunk(rows: &[Vec<String>], header: bool) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    if header {
        w.write_record(CSV_HEADER)?;
    }
    for r in rows {
        w.write_record(r)?;
    }
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// All matching calls as CSV (UTF-8 with a byte-order mark, for Excel), newest first,
/// streamed in keyset pages of 1,000 on (startTime, id) (see `store::page_after`): no
/// OFFSET, no count, and a row inserted during the export makes no other row skipped or
/// repeated.
fn csv_response(state: AppState, f: CallFilter) -> axum::response::Response {
    const PAGE: i64 = 1000;
    let locale = state.settings.core.ui_locale;
    let stream = async_stream::stream! {
        let mut head = "\u{feff}".as_bytes().to_vec();
        match csv_chunk(&[], true) {
            Ok(h) => head.extend(h),
            Err(e) => { yield Err(e); return; }
        }
        yield Ok::<Vec<u8>, std::io::Error>(head);
        let mut cursor: Option<store::Cursor> = None;
        loop {
            let items = match store::page_after(&state.db, &f, cursor.as_ref(), PAGE).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!("CSV export failed: {e}");
                    yield Err(std::io::Error::other("database error"));
                    return;
                }
            };
            let rows: Vec<Vec<String>> = items.iter().map(|r| csv_row(r, locale)).collect();
            yield csv_chunk(&rows, false);
            match items.last() {
                Some(last) if items.len() as i64 == PAGE => cursor = Some(store::Cursor::after(last)),
                _ => break,
            }
        }
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"calls.csv\"",
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn stats(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    use crate::calls::stats::GroupBy;
    let by_name = q.get("groupBy").map(String::as_str).unwrap_or("day");
    let by = GroupBy::parse(by_name).ok_or_else(|| {
        ApiError::bad_param(
            "groupBy",
            format!("groupBy must be day, hour or extension, got {by_name:?}"),
        )
    })?;
    let f = filter_from_query(&q, false)?;
    let tz = state.settings.core.stats_timezone;
    let (groups, total) = store::stats(&state.db, &f, by, tz).await?;
    Ok(Json(
        json!({ "groupBy": by_name, "groups": groups, "total": total }),
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

#[cfg(test)]
mod tests {
    use super::neutralize;

    #[test]
    fn csv_cells_that_would_be_formulas_are_neutralised() {
        for bad in [
            "=HYPERLINK(\"http://x\")",
            "@SUM(A1)",
            "+cmd|' /C calc'!A0",
            "-2+3",
            "\t=1",
            "\r=1",
        ] {
            assert_eq!(neutralize(bad.into()), format!("'{bad}"), "{bad:?}");
        }
        for ok in [
            "+998901234567",
            "-12",
            "+1 (555) 010-9999",
            "1001",
            "Aziza",
            "",
        ] {
            assert_eq!(neutralize(ok.into()), ok, "{ok:?}");
        }
    }
}
