//! The server's one wall clock. Everything else takes time as an argument (`now`) or asks here:
//! nothing below this file reads the system time on its own.

use sdk_core::hlc::HlcTimestamp;

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in the wire's RFC 3339 form.
pub fn iso_now() -> String {
    iso(now_ms())
}

/// `ms` since the epoch in the wire's RFC 3339 form.
pub fn iso(ms: u64) -> String {
    HlcTimestamp::new(ms, 0).to_string()
}
