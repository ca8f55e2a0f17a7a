//! Parsing of the time parameters that select calls (`from`/`to` of `GET /calls`,
//! `startDate`/`endDate` of a hosted-PBX sync, `--from`/`--to` of the CLI). A bad value is a
//! [`BadParam`] naming the parameter; the API answers it with a 400. Also the one check of a
//! number to dial ([`dialable`]), shared by Asterisk and Kavkom click-to-call.

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

/// A number or extension safe to dial: `raw` without the separators people type (spaces,
/// `-`, `(`, `)`, `.`), then 1 to 32 of digits, `*`, `#`, with an optional leading `+`.
/// `None` when anything else is left (it could reach the dialplan or the provider).
pub fn dialable(raw: &str) -> Option<String> {
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let body = clean.strip_prefix('+').unwrap_or(&clean);
    let ok = !body.is_empty()
        && clean.len() <= 32
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#');
    ok.then_some(clean)
}

#[cfg(test)]
mod dialable_tests {
    use super::dialable;

    #[test]
    fn dialable_keeps_digits_and_drops_separators() {
        assert_eq!(
            dialable(" +998 (90) 123-45.67 ").as_deref(),
            Some("+998901234567")
        );
        assert_eq!(dialable("*72#").as_deref(), Some("*72#"));
        assert_eq!(dialable("1001").as_deref(), Some("1001"));
        for bad in [
            "",
            "+",
            "1001&2",
            "10+01",
            "1001,wait",
            "123456789012345678901234567890123",
        ] {
            assert_eq!(dialable(bad), None, "{bad:?}");
        }
    }
}
