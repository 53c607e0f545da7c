//! The one error type of sdk-core, and the wire error codes every surface shares.

use std::fmt;

/// Everything sdk-core can refuse. Each variant maps to one [`ErrorCode`] through [`Error::code`],
/// so shells (server, browser) never invent their own mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An identifier failed validation (empty, too long, a character outside the allowed set).
    #[error("invalid {kind}: {problem}")]
    InvalidId { kind: &'static str, problem: String },
    /// An operation is malformed: payload shape does not match its type, too large, bad clock.
    #[error("invalid operation: {0}")]
    InvalidOperation(String),
    /// Bytes from outside could not be decoded into a frame or value.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// A frame or body exceeded its size limit; nothing was decoded.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// A remote clock reading is further ahead of local physical time than allowed.
    #[error("remote clock is {drift_ms} ms ahead of local time (limit {limit_ms} ms)")]
    ClockDrift { drift_ms: u64, limit_ms: u64 },
    /// Snapshot data failed verification (checksum, truncation, ordering).
    #[error("snapshot rejected: {0}")]
    Snapshot(String),
    /// An interaction class was used on a transport its policy forbids.
    #[error("interaction class {class} is not allowed on the {transport} transport")]
    TransportForbidden { class: &'static str, transport: &'static str },
    /// A custom merge or CRDT merger failed, or no merge function is registered under the name.
    #[error("merge failed in {name}: {reason}")]
    Merge { name: String, reason: String },
    /// A batch broke its limits (count or bytes).
    #[error("batch refused: {0}")]
    BatchLimit(String),
    /// A subscription filter is malformed (event-type patterns, attribute paths).
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A sync rule file is malformed; the message names the line.
    #[error("sync rules: {0}")]
    Rules(String),
}

impl Error {
    /// The wire code for this error (shared/seeds/api.md plus the codes PF-2 Sync adds).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidId { .. } | Error::InvalidOperation(_) => ErrorCode::InvalidOperation,
            Error::Decode(_) | Error::BatchLimit(_) | Error::InvalidFilter(_) | Error::Rules(_) => {
                ErrorCode::InvalidRequest
            }
            Error::FrameTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Error::ClockDrift { .. } => ErrorCode::ClockDrift,
            Error::Snapshot(_) => ErrorCode::SnapshotCorrupt,
            Error::TransportForbidden { class: "D", .. } => ErrorCode::ClassDRealtimeForbidden,
            Error::TransportForbidden { .. } => ErrorCode::InvalidRequest,
            Error::Merge { .. } => ErrorCode::MergeFailed,
        }
    }

    pub(crate) fn invalid_op(msg: impl Into<String>) -> Self {
        Error::InvalidOperation(msg.into())
    }
}

/// Wire error codes. The first seven are the platform API's table (shared/seeds/api.md);
/// the rest are PF-2 Sync's additions, documented in docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    AuthFailed,
    AuthzFailed,
    TenantViolation,
    RateLimit,
    InvalidRequest,
    NotFound,
    InternalError,
    /// The requested offset is older than retention: fetch a snapshot, then resume.
    SnapshotRequired,
    /// A Class D (critical transaction) message arrived on a realtime transport.
    ClassDRealtimeForbidden,
    /// An operation's `clientSeq` skips ahead of the server's ledger; resend from the gap.
    SeqGap,
    /// A `clientSeq` already used by a different operation id.
    SeqReused,
    /// The operation itself is invalid; it is final and will never apply.
    InvalidOperation,
    /// A frame or body over its size limit.
    PayloadTooLarge,
    UnsupportedVersion,
    ClockDrift,
    SnapshotCorrupt,
    MergeFailed,
    /// Same idempotency key, different request body.
    IdempotencyMismatch,
    /// An operation against an entity that does not exist (or is deleted) where that matters.
    EntityNotFound,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::AuthFailed,
        ErrorCode::AuthzFailed,
        ErrorCode::TenantViolation,
        ErrorCode::RateLimit,
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::InternalError,
        ErrorCode::SnapshotRequired,
        ErrorCode::ClassDRealtimeForbidden,
        ErrorCode::SeqGap,
        ErrorCode::SeqReused,
        ErrorCode::InvalidOperation,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ClockDrift,
        ErrorCode::SnapshotCorrupt,
        ErrorCode::MergeFailed,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::EntityNotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::AuthzFailed => "AUTHZ_FAILED",
            ErrorCode::TenantViolation => "TENANT_VIOLATION",
            ErrorCode::RateLimit => "RATE_LIMIT",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::SnapshotRequired => "SNAPSHOT_REQUIRED",
            ErrorCode::ClassDRealtimeForbidden => "CLASS_D_REALTIME_FORBIDDEN",
            ErrorCode::SeqGap => "SEQ_GAP",
            ErrorCode::SeqReused => "SEQ_REUSED",
            ErrorCode::InvalidOperation => "INVALID_OPERATION",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::ClockDrift => "CLOCK_DRIFT",
            ErrorCode::SnapshotCorrupt => "SNAPSHOT_CORRUPT",
            ErrorCode::MergeFailed => "MERGE_FAILED",
            ErrorCode::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            ErrorCode::EntityNotFound => "ENTITY_NOT_FOUND",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status a REST surface answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthFailed => 401,
            ErrorCode::AuthzFailed
            | ErrorCode::TenantViolation
            | ErrorCode::ClassDRealtimeForbidden => 403,
            ErrorCode::RateLimit => 429,
            ErrorCode::NotFound | ErrorCode::EntityNotFound => 404,
            ErrorCode::InternalError => 500,
            ErrorCode::SnapshotRequired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::SeqGap | ErrorCode::SeqReused => 409,
            ErrorCode::IdempotencyMismatch | ErrorCode::MergeFailed => 422,
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidOperation
            | ErrorCode::UnsupportedVersion
            | ErrorCode::ClockDrift
            | ErrorCode::SnapshotCorrupt => 400,
        }
    }

    /// Whether retrying the same thing later can succeed. A client's outbound queue retries
    /// transient refusals and quarantines permanent ones.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimit
                | ErrorCode::InternalError
                | ErrorCode::SeqGap
                | ErrorCode::AuthFailed
                | ErrorCode::SnapshotRequired
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ErrorCode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_md_codes_have_api_md_statuses() {
        let table = [
            ("AUTH_FAILED", 401),
            ("AUTHZ_FAILED", 403),
            ("TENANT_VIOLATION", 403),
            ("RATE_LIMIT", 429),
            ("INVALID_REQUEST", 400),
            ("NOT_FOUND", 404),
            ("INTERNAL_ERROR", 500),
        ];
        for (name, status) in table {
            let code = ErrorCode::parse(name).expect(name);
            assert_eq!(code.http_status(), status, "{name}");
            assert_eq!(code.as_str(), name);
        }
    }

    #[test]
    fn every_code_round_trips_through_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn class_d_on_realtime_maps_to_its_own_code() {
        let e = Error::TransportForbidden { class: "D", transport: "websocket" };
        assert_eq!(e.code(), ErrorCode::ClassDRealtimeForbidden);
        assert_eq!(e.code().http_status(), 403);
    }
}
