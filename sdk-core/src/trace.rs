//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>): parsing the header a
//! caller sends, and the ids of the server's own spans. Pure: the random bits of a new id come in
//! as arguments, so the server decides where they come from and tests can choose them.
//!
//! ```
//! use sdk_core::trace::TraceContext;
//! let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! // The server's span continues the caller's trace, under a span id of its own.
//! let server = incoming.child(0x1234_5678_9abc_def0);
//! assert_eq!(server.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(server.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-01");
//! ```

use std::fmt;

/// A trace's id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

/// A span's id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl TraceId {
    /// From 128 random bits (`None` for zero, which is not an id).
    pub fn new(bits: u128) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }

    /// From 128 random bits, zero replaced by 1 (a new trace always gets an id).
    pub fn from_random(bits: u128) -> Self {
        Self(bits.max(1))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The 32 lowercase hex digits (also [`fmt::Display`]).
    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 32).then(|| lower_hex(hex)).flatten().and_then(Self::new)
    }
}

impl SpanId {
    pub fn new(bits: u64) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }

    /// From 64 random bits, zero replaced by 1.
    pub fn from_random(bits: u64) -> Self {
        Self(bits.max(1))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 16).then(|| lower_hex(hex)).flatten().and_then(|b| Self::new(b as u64))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Lowercase hex only: the specification forbids uppercase, and a header that breaks the rule
/// starts a new trace instead of continuing one.
fn lower_hex(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// Where a span sits: its trace, its own id, and whether the caller sampled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The `sampled` flag (bit 0 of `trace-flags`).
    pub sampled: bool,
}

/// Why a `traceparent` value was not taken (the request then starts a new trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("traceparent is not version-traceid-parentid-flags")]
    Shape,
    #[error("traceparent version ff is forbidden")]
    Version,
    #[error("traceparent trace id must be 32 lowercase hex digits, not all zero")]
    TraceId,
    #[error("traceparent parent id must be 16 lowercase hex digits, not all zero")]
    ParentId,
    #[error("traceparent flags must be 2 lowercase hex digits")]
    Flags,
}

/// The longest `traceparent` value taken (a later version may append fields; this bounds them).
pub const MAX_TRACEPARENT: usize = 512;

impl TraceContext {
    /// A new trace (no caller's context), sampled.
    pub fn root(trace_bits: u128, span_bits: u64) -> Self {
        Self {
            trace_id: TraceId::from_random(trace_bits),
            span_id: SpanId::from_random(span_bits),
            sampled: true,
        }
    }

    /// A span under this one: the same trace and flags, its own id.
    pub fn child(&self, span_bits: u64) -> Self {
        Self { span_id: SpanId::from_random(span_bits), ..*self }
    }

    /// A `traceparent` header value. Version `00` is parsed exactly; a higher version is parsed
    /// by its version-00 prefix, as the specification asks, when what follows starts with `-`.
    pub fn parse(value: &str) -> Result<Self, TraceparentError> {
        let v = value.trim_matches([' ', '\t']);
        if v.len() < 55 || v.len() > MAX_TRACEPARENT || !v.is_ascii() {
            return Err(TraceparentError::Shape);
        }
        let version = &v[0..2];
        let version_bits = lower_hex(version).ok_or(TraceparentError::Shape)?;
        if version_bits == 0xff {
            return Err(TraceparentError::Version);
        }
        let sep = |i: usize| v.as_bytes()[i] == b'-';
        if !(sep(2) && sep(35) && sep(52)) {
            return Err(TraceparentError::Shape);
        }
        if version_bits == 0 && v.len() != 55 || v.len() > 55 && !sep(55) {
            return Err(TraceparentError::Shape);
        }
        let trace_id = TraceId::parse(&v[3..35]).ok_or(TraceparentError::TraceId)?;
        let span_id = SpanId::parse(&v[36..52]).ok_or(TraceparentError::ParentId)?;
        let flags = &v[53..55];
        let flags = lower_hex(flags).filter(|_| flags.len() == 2).ok_or(TraceparentError::Flags)?;
        Ok(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }
}

impl fmt::Display for TraceContext {
    /// The version-00 `traceparent` value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(value: &str, expected: Result<(&str, &str, bool), TraceparentError>) {
        let got = TraceContext::parse(value)
            .map(|c| (c.trace_id.to_string(), c.span_id.to_string(), c.sampled));
        let expected = expected.map(|(t, s, f)| (t.to_string(), s.to_string(), f));
        assert_eq!(got, expected, "{value:?}");
    }

    #[test]
    fn the_specifications_examples() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Ok((t, "00f067aa0ba902b7", true)),
        );
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            Ok((t, "00f067aa0ba902b7", false)),
        );
        // A later version: its version-00 prefix, when followed by '-'.
        check(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes",
            Ok((t, "00f067aa0ba902b7", true)),
        );
        check(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09x",
            Err(TraceparentError::Shape),
        );
    }

    #[test]
    fn what_the_specification_forbids_is_refused() {
        use TraceparentError::*;
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        check(&ok.replacen("00", "ff", 1), Err(Version));
        check(&ok.to_uppercase(), Err(TraceId));
        check("00-00000000000000000000000000000000-00f067aa0ba902b7-01", Err(TraceId));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", Err(ParentId));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", Err(Flags));
        check("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", Err(TraceId));
        check(&format!("{ok}-extra"), Err(Shape));
        check(&ok[..54], Err(Shape));
        check("", Err(Shape));
        check(&"-".repeat(55), Err(Shape));
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flag() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let child = parent.child(7);
        assert_eq!((child.trace_id, child.sampled), (parent.trace_id, false));
        assert_eq!(child.span_id.to_string(), "0000000000000007");
        assert_eq!(TraceContext::root(0, 0).trace_id.to_string(), format!("{:032x}", 1));
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(t in any::<u128>(), s in any::<u64>(), sampled: bool) {
            let c = TraceContext { sampled, ..TraceContext::root(t, s) };
            prop_assert_eq!(TraceContext::parse(&c.to_string()), Ok(c));
            prop_assert_eq!(c.to_string().len(), 55);
        }

        #[test]
        fn any_text_is_taken_or_refused_without_panic(v in "\\PC{0,80}") {
            if let Ok(c) = TraceContext::parse(&v) {
                // Whatever is taken is written back in version 00, the same ids.
                let again = TraceContext::parse(&c.to_string()).unwrap();
                prop_assert_eq!(again, c);
            }
        }

        #[test]
        fn near_misses_never_panic(v in "[0-9a-fA-F-]{50,60}") {
            let _ = TraceContext::parse(&v);
        }
    }
}
