//! Parsing of the time parameters that select calls (`from`/`to` of `GET /calls`,
//! `startDate`/`endDate` of a hosted-PBX sync, `--from`/`--to` of the CLI). A bad value is a
//! [`BadParam`] naming the parameter; the API answers it with a 400.

use chrono::{DateTime, NaiveDate, Utc};

/// A parameter value that cannot be used: the parameter's name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadParam {
    /// The parameter (`from`, `startDate`, `--to`, ...).
    pub field: String,
    /// Why.
    pub message: String,
}

impl BadParam {
    /// A bad value of `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        BadParam {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a time parameter: RFC 3339 (`2026-11-21T16:00:00Z`) or a date (`2026-11-21`,
/// midnight UTC).
pub fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, BadParam> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(BadParam::new(
        name,
        format!("{name} must be an RFC 3339 date-time or YYYY-MM-DD, got {v:?}"),
    ))
}
