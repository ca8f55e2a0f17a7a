//! Validation of extension input (the API body) and of stored rows before rendering.
//!
//! Rules (422 naming the field): `extension` 2–10 digits; `password` 8–128 characters, no
//! control characters, not containing the extension number; `displayName` ≤ 64 printable
//! characters without `" \ ; < > [ ] #`; `context` and `transport` match
//! `^[A-Za-z0-9_.-]{1,64}$` and `transport` is one of `PJSIP_TRANSPORTS`; `codecs` (a
//! comma-separated string or an array) from [`KNOWN_CODECS`], no duplicates; `maxContacts`
//! 1–[`MAX_CONTACTS`]; `enabled` a boolean. Every value that passes is safe to render into a
//! PJSIP config line: none can start a line, a section, a comment or an `#include`.

use serde_json::{Map, Value};

use super::model::Extension;
use crate::config::Secret;

/// Codecs Asterisk 22 knows by these names (`allow =`).
pub const KNOWN_CODECS: &[&str] = &[
    "ulaw", "alaw", "g722", "g729", "gsm", "opus", "ilbc", "speex", "speex16", "speex32", "slin",
    "slin16", "slin32", "slin48", "g726", "g726aal2", "adpcm", "lpc10", "g723", "siren7",
    "siren14", "g719", "codec2", "h264", "h263", "h263p", "vp8", "vp9", "t140",
];

/// Largest `maxContacts`.
pub const MAX_CONTACTS: i64 = 20;

/// Default context, codecs and contacts when the body leaves them out.
pub const DEFAULT_CONTEXT: &str = "from-internal";
/// Default codecs.
pub const DEFAULT_CODECS: &[&str] = &["ulaw", "alaw"];

/// A value that breaks a rule: the field (API name) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// API field name (`extension`, `displayName`, ...).
    pub field: &'static str,
    /// Why.
    pub message: String,
}

/// A request body that is not a JSON object (a 400 in the API, naming no field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadBody {
    /// Why.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Validated input for a create, replace or patch.
#[derive(Clone, Debug)]
pub struct ExtensionInput {
    /// Number.
    pub extension: String,
    /// New password, when given.
    pub password: Option<Secret>,
    /// Caller ID name (leading and trailing spaces removed).
    pub display_name: String,
    /// Context.
    pub context: String,
    /// Transport.
    pub transport: String,
    /// Codecs.
    pub codecs: Vec<String>,
    /// aor max_contacts.
    pub max_contacts: i64,
    /// Enabled.
    pub enabled: bool,
}

/// `extension`: 2–10 ASCII digits.
pub fn check_extension(s: &str) -> Result<(), Invalid> {
    if (2..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid("extension", "extension must be 2 to 10 digits"))
    }
}

/// `password`: 8–128 characters, no control characters, not containing `extension`.
pub fn check_password(pw: &str, extension: &str) -> Result<(), Invalid> {
    let n = pw.chars().count();
    if !(8..=128).contains(&n) {
        return Err(invalid("password", "password must be 8 to 128 characters"));
    }
    if pw.chars().any(char::is_control) {
        return Err(invalid(
            "password",
            "password must not contain control characters",
        ));
    }
    if !extension.is_empty() && pw.contains(extension) {
        return Err(invalid(
            "password",
            "password must not contain the extension number",
        ));
    }
    Ok(())
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `displayName`: at most 64 printable characters, none of `" \ ; < > [ ] #`.
pub fn check_display_name(s: &str) -> Result<(), Invalid> {
    if s.chars().count() > 64 {
        return Err(invalid(
            "displayName",
            "displayName must be at most 64 characters",
        ));
    }
    if s.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(invalid(
            "displayName",
            "displayName must contain printable characters only",
        ));
    }
    if let Some(c) = s.chars().find(|c| "\"\\;<>[]#".contains(*c)) {
        return Err(invalid(
            "displayName",
            format!("displayName must not contain {c:?}"),
        ));
    }
    Ok(())
}

/// `context` / `transport`: `^[A-Za-z0-9_.-]{1,64}$`.
pub fn check_token(field: &'static str, s: &str) -> Result<(), Invalid> {
    if (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{field} must be 1 to 64 letters, digits, '_', '.' or '-'"),
        ))
    }
}

/// `codecs`: at least one, each from [`KNOWN_CODECS`], no duplicates.
pub fn check_codecs(codecs: &[String]) -> Result<(), Invalid> {
    if codecs.is_empty() {
        return Err(invalid("codecs", "codecs must name at least one codec"));
    }
    for (i, c) in codecs.iter().enumerate() {
        if !KNOWN_CODECS.contains(&c.as_str()) {
            return Err(invalid(
                "codecs",
                format!("unknown codec {c:?}; known: {}", KNOWN_CODECS.join(", ")),
            ));
        }
        if codecs[..i].contains(c) {
            return Err(invalid("codecs", format!("codec {c:?} is listed twice")));
        }
    }
    Ok(())
}

/// Checks a stored row before it is rendered (defence in depth against rows changed outside
/// the API). `transports` empty skips the transport-list check.
pub fn check_row(e: &Extension) -> Result<(), Invalid> {
    check_extension(&e.extension)?;
    check_display_name(&e.display_name)?;
    check_token("context", &e.context)?;
    check_token("transport", &e.transport)?;
    check_codecs(&e.codecs)?;
    if !(1..=MAX_CONTACTS).contains(&e.max_contacts) {
        return Err(invalid("maxContacts", "maxContacts out of range"));
    }
    check_token("realm", &e.realm)?;
    let d = e.password_digest.expose();
    let ok_digest = d
        .strip_prefix("MD5:")
        .and_then(|r| r.split_once(",SHA-256:"))
        .is_some_and(|(m, s)| {
            m.len() == 32
                && s.len() == 64
                && m.bytes().chain(s.bytes()).all(|b| b.is_ascii_hexdigit())
        });
    if !ok_digest {
        return Err(invalid("password", "stored password digest is malformed"));
    }
    Ok(())
}

/// Parses a request body: a JSON object, else [`BadBody`] (400). Bytes that are not UTF-8
/// are a [`BadBody`] too.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, BadBody> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BadBody {
            message: "body must be a JSON object".into(),
        }),
        Err(e) => Err(BadBody {
            message: format!("body is not valid JSON: {e}"),
        }),
    }
}

fn string(body: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Invalid> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

fn codecs_of(body: &Map<String, Value>) -> Result<Option<Vec<String>>, Invalid> {
    match body.get("codecs") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect(),
        )),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .ok_or_else(|| invalid("codecs", "codecs must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid(
            "codecs",
            "codecs must be a comma-separated string or an array of strings",
        )),
    }
}

/// Builds and validates the input of a create (`base` None), a replace (`base` Some,
/// `partial` false: absent fields take their defaults) or a patch (`partial` true: absent
/// fields keep `base`'s values). `transports` are the allowed transports (the first is the
/// default).
pub fn input(
    body: &Map<String, Value>,
    base: Option<&Extension>,
    partial: bool,
    transports: &[String],
) -> Result<ExtensionInput, Invalid> {
    let keep = if partial { base } else { None };
    let extension = match string(body, "extension")? {
        Some(s) => s,
        None => match keep {
            Some(b) => b.extension.clone(),
            None => return Err(invalid("extension", "extension is required")),
        },
    };
    check_extension(&extension)?;
    let password = string(body, "password")?;
    if let Some(pw) = &password {
        check_password(pw, &extension)?;
    }
    let display_name = match string(body, "displayName")? {
        Some(s) => s.trim_matches(' ').to_string(),
        None => keep.map(|b| b.display_name.clone()).unwrap_or_default(),
    };
    check_display_name(&display_name)?;
    let context = string(body, "context")?
        .or_else(|| keep.map(|b| b.context.clone()))
        .unwrap_or_else(|| DEFAULT_CONTEXT.into());
    check_token("context", &context)?;
    let transport = match string(body, "transport")?.or_else(|| keep.map(|b| b.transport.clone())) {
        Some(t) => t,
        None => transports
            .first()
            .cloned()
            .ok_or_else(|| invalid("transport", "no transport is configured (PJSIP_TRANSPORTS)"))?,
    };
    check_token("transport", &transport)?;
    if !transports.contains(&transport) {
        return Err(invalid(
            "transport",
            format!("transport must be one of: {}", transports.join(", ")),
        ));
    }
    let codecs = codecs_of(body)?
        .or_else(|| keep.map(|b| b.codecs.clone()))
        .unwrap_or_else(|| DEFAULT_CODECS.iter().map(|s| s.to_string()).collect());
    check_codecs(&codecs)?;
    let max_contacts = match body.get("maxContacts") {
        None | Some(Value::Null) => keep.map(|b| b.max_contacts).unwrap_or(1),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=MAX_CONTACTS).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "maxContacts",
                    format!("maxContacts must be a whole number from 1 to {MAX_CONTACTS}"),
                ));
            }
        },
    };
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => keep.map(|b| b.enabled).unwrap_or(true),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("enabled", "enabled must be true or false")),
    };
    if let Some(b) = base
        && b.extension != extension
        && password.is_none()
    {
        return Err(invalid(
            "password",
            "password is required when the extension number changes (the digest includes it)",
        ));
    }
    Ok(ExtensionInput {
        extension,
        password: password.map(Secret::new),
        display_name,
        context,
        transport,
        codecs,
        max_contacts,
        enabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> Vec<String> {
        vec!["transport-udp".into()]
    }

    #[test]
    fn seed_body_passes() {
        let body = json!({"extension": "1001", "password": "Str0ngPass!", "displayName": "Test User", "context": "from-internal", "transport": "transport-udp", "codecs": "ulaw,alaw,g729"});
        let i = input(body.as_object().unwrap(), None, false, &t()).unwrap();
        assert_eq!(i.codecs, ["ulaw", "alaw", "g729"]);
        assert_eq!(i.max_contacts, 1);
        assert!(i.enabled);
    }

    #[test]
    fn fields_are_named() {
        let cases = [
            (json!({"extension": "1"}), "extension"),
            (json!({"extension": "10a1"}), "extension"),
            (
                json!({"extension": "1001", "password": "short"}),
                "password",
            ),
            (
                json!({"extension": "1001", "password": "abc1001xyz"}),
                "password",
            ),
            (
                json!({"extension": "1001", "displayName": "a\"b"}),
                "displayName",
            ),
            (json!({"extension": "1001", "context": "a b"}), "context"),
            (
                json!({"extension": "1001", "transport": "transport-tcp"}),
                "transport",
            ),
            (
                json!({"extension": "1001", "codecs": "ulaw,ulaw"}),
                "codecs",
            ),
            (json!({"extension": "1001", "codecs": ["mp3"]}), "codecs"),
            (
                json!({"extension": "1001", "maxContacts": 0}),
                "maxContacts",
            ),
            (json!({"extension": "1001", "enabled": "yes"}), "enabled"),
        ];
        for (body, field) in cases {
            let e = input(body.as_object().unwrap(), None, false, &t()).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
    }
}
