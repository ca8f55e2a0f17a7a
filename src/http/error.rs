//! The API's one error type: maps to an HTTP status and the JSON body
//! `{"error": {"code", "message", "field"?}}`. Storage conflicts become 409 here, in one
//! place; internal details are logged, never sent. The mapping of domain errors to
//! [`ApiError`] lives here too (`From<DomainError> for ApiError`), so domain modules never
//! know about HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::calls::params::BadParam;
use crate::db::DbError;
use crate::extensions::validate::{BadBody, Invalid};

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a query parameter or body field is malformed.
    #[error("{message}")]
    BadRequest {
        /// The offending parameter or field.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// 401: no or bad credentials.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0} not found")]
    NotFound(String),
    /// 409: conflicts with an existing resource.
    #[error("{message}")]
    Conflict {
        /// The conflicting field.
        field: Option<String>,
        /// Explanation.
        message: String,
    },
    /// 422: well-formed but invalid.
    #[error("{message}")]
    Unprocessable {
        /// The invalid field.
        field: String,
        /// Why.
        message: String,
    },
    /// 429: too many attempts; retry after this many seconds.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// 502: an upstream PBX failed.
    #[error("{0}")]
    Upstream(String),
    /// 503: a component this route needs is not configured or not up.
    #[error("{0}")]
    Unavailable(String),
    /// 500: storage failed (details logged).
    #[error("database error")]
    Db(#[from] DbError),
    /// 500: anything else (details logged).
    #[error("internal error")]
    Internal(String),
    /// Any other status, for the framework's own rejections (404 no route, 405, 413, 415,
    /// malformed JSON, query or path) rewritten by [`json_errors`].
    #[error("{message}")]
    Status {
        /// The status the framework chose.
        status: StatusCode,
        /// The offending field, when the rejection names one.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad_param(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// A 422 naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", field.clone())
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict { field, .. } => (StatusCode::CONFLICT, "conflict", field.clone()),
            ApiError::Unprocessable { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                Some(field.clone()),
            ),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", None)
            }
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Db(DbError::Conflict { .. }) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::Db(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
            ApiError::Status { status, field, .. } => (*status, code_of(*status), field.clone()),
        }
    }
}

/// The `code` of a status that no [`ApiError`] variant carries.
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        502 => "upstream_error",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// The field a serde or axum rejection text names (``missing field `x` ``, ``unknown field
/// `x` ``, ``x: invalid digit``...), if any.
fn field_in(text: &str) -> Option<String> {
    static FIELD: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    FIELD
        .get_or_init(|| regex::Regex::new(r"field `([A-Za-z0-9_.\-]+)`").ok())
        .as_ref()?
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

/// Middleware around the whole API: every error response (4xx, 5xx) that is not JSON yet,
/// the framework's own included (axum's 404 without a route, 405, 413 from the body limit,
/// 415, rejections of malformed JSON, query strings or paths, plain-text 500s of any
/// handler), is rewritten into the one [`ApiError`] body with the same status and headers
/// (`Allow`, `Retry-After`...). The field a rejection names is kept; a 5xx text is logged,
/// not sent.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status.as_u16() {
        _ if status.is_server_error() => {
            tracing::error!(%method, %path, status = status.as_u16(), "API request failed: {text}");
            "internal error".to_string()
        }
        404 if text.is_empty() => format!("no route {method} {path}"),
        405 if text.is_empty() => format!("method {method} is not allowed on {path}"),
        413 if text.is_empty() => "request body too large (1 MiB at most)".to_string(),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => text.clone(),
    };
    let err = ApiError::Status {
        status,
        field: field_in(&text),
        message,
    };
    let mut out = err.into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// A rejected JSON body: its own status (415 without `Content-Type: application/json`, 413
/// too large, 400 malformed, 422 wrong shape) and the field serde names, if any.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        let message = e.body_text();
        ApiError::Status {
            status: e.status(),
            field: field_in(&message),
            message,
        }
    }
}

/// A bad query or CLI parameter: 400 naming it.
impl From<BadParam> for ApiError {
    fn from(e: BadParam) -> Self {
        ApiError::BadRequest {
            field: Some(e.field),
            message: e.message,
        }
    }
}

/// An invalid extension field: 422 naming the field.
impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

/// An extension request body that is not a JSON object: 400.
impl From<BadBody> for ApiError {
    fn from(e: BadBody) -> Self {
        ApiError::BadRequest {
            field: None,
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = match &self {
            ApiError::Db(DbError::Conflict { .. }) => "already exists".to_string(),
            ApiError::Db(e) => {
                tracing::error!("API request failed: {e}");
                self.to_string()
            }
            ApiError::Internal(e) => {
                tracing::error!("API request failed: {e}");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let Some(f) = field {
            body["error"]["field"] = json!(f);
        }
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after } = self {
            resp.headers_mut().insert("Retry-After", retry_after.into());
        }
        resp
    }
}
