//! The server's one error type and its mapping to api.md's error body:
//! `{ "error": { "code": "TENANT_VIOLATION", "message": "…" } }` with the code's HTTP status.
//! Internal details (SQL, I/O) are logged, never sent to clients.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdk_core::ErrorCode;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for `RATE_LIMIT`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, detail)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AuthFailed, message)
    }

    pub fn tenant_violation() -> Self {
        Self::new(ErrorCode::TenantViolation, "the tenant does not match the token's tenant")
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(ErrorCode::RateLimit, "rate limit exceeded")
        }
    }
}

impl From<sdk_core::Error> for ApiError {
    fn from(e: sdk_core::Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Internal(detail) => Self::internal(detail),
            crate::store::StoreError::Refused { code, message } => Self::new(code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if self.code == ErrorCode::InternalError {
            tracing::error!(detail = %self.message, "internal error");
            "internal error".to_string()
        } else {
            self.message
        };
        let body = ErrorBody { error: ErrorDetail { code: self.code.as_str(), message } };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// api.md's error body: what every refusal answers, with its code's HTTP status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "INVALID_REQUEST", "message": "type must be 1 to 128 characters"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the error codes of docs/protocol.md (`INVALID_REQUEST`, `AUTH_FAILED`,
    /// `AUTHZ_FAILED`, `TENANT_VIOLATION`, `NOT_FOUND`, `RATE_LIMIT`, …).
    #[schema(example = "INVALID_REQUEST")]
    pub code: &'static str,
    /// What was wrong, for a person; never internal detail.
    pub message: String,
}

/// The refusals any route that takes a bearer token may answer (OpenAPI).
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// `INVALID_REQUEST`: a parameter, header or body is not what the operation takes.
    #[response(status = 400)]
    Invalid(#[to_schema] ErrorBody),
    /// `AUTH_FAILED`: no bearer token, or one that does not verify (expired, wrong key).
    #[response(status = 401)]
    Unauthenticated(#[to_schema] ErrorBody),
    /// `AUTHZ_FAILED` (the token's user may not do this) or `TENANT_VIOLATION` (`X-Tenant-ID`
    /// names another tenant).
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// `RATE_LIMIT`: over the caller's rate; `Retry-After` says when to come back.
    #[response(status = 429)]
    RateLimited(#[to_schema] ErrorBody),
}
