//! The store's one error type. The HTTP edge maps it to api.md's codes (`crate::error`); a
//! database failure's text is for the logs only and never reaches a client.

use sdk_core::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed, or a stored value no longer decodes. Logged, never sent.
    #[error("{0}")]
    Internal(String),
    /// The stored state refuses the request (no such row, a row in the wrong state); the
    /// message names only what the caller asked about.
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

impl StoreError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused { code, message: message.into() }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::Internal(detail.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(format!("database: {e}"))
    }
}

impl From<sdk_core::Error> for StoreError {
    /// The apply engine refused a batch as a whole (its limits): the engine's code and words.
    fn from(e: sdk_core::Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}
