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
