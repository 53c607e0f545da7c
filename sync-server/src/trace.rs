//! The trace context a piece of work runs under (W3C Trace Context, parsed by
//! [`sdk_core::trace`]): a REST request's (continued from its `traceparent` header, or a new
//! trace), a `/v1/ws` frame's (from its `traceparent` field), a Class D transaction's webhook
//! (the context its creating request had, kept with the transaction).
//!
//! The context is ambient for the task doing the work ([`scope`], [`current`]), as
//! OpenTelemetry's own context is, so that what the work writes — an event's `metadata.traceId`
//! ([`stamp`]), a log line's `trace_id` — carries it without every function in between passing
//! it on. Where it comes from and where it goes stay in few places: the HTTP middleware
//! (`crate::lib`), the socket session, the store's event writes and the webhook worker.

use sdk_core::trace::TraceContext;
use serde_json::Value;
use std::future::Future;

/// The W3C Trace Context header (requests, responses, webhooks) and `/v1/ws` frame field.
pub const TRACEPARENT: &str = "traceparent";

/// The metadata key an event carries its trace id under.
pub const TRACE_ID_KEY: &str = "traceId";

tokio::task_local! {
    static CURRENT: TraceContext;
}

fn random_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// A new trace, with a random id.
pub fn new_trace() -> TraceContext {
    TraceContext::root(random_u128(), random_u128() as u64)
}

/// The caller's context in a `traceparent` value, if it is a valid one (a malformed value is
/// ignored, as the specification asks: the work starts a new trace).
pub fn caller(traceparent: Option<&str>) -> Option<TraceContext> {
    traceparent.and_then(|v| TraceContext::parse(v).ok())
}

/// The server's span for work a caller asked for: a child of the caller's span, or the root of
/// a new trace.
pub fn continue_or_start(caller: Option<&TraceContext>) -> TraceContext {
    match caller {
        Some(c) => child_of(c),
        None => new_trace(),
    }
}

/// A span under `parent`, with a random id.
pub fn child_of(parent: &TraceContext) -> TraceContext {
    parent.child(random_u128() as u64)
}

/// Run `work` with `cx` as its trace context.
pub async fn scope<F: Future>(cx: TraceContext, work: F) -> F::Output {
    CURRENT.scope(cx, work).await
}

/// The context of the work running now, if it has one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// An event's metadata as written: with `traceId` set to the current trace's id when there is
/// one and the event has none (an object only). A publisher's own `traceId` is kept: it is
/// saying which trace the event belongs to (the platform document's event schema has it).
pub fn stamp(metadata: &Value) -> Value {
    match (current(), metadata) {
        (Some(cx), Value::Object(m)) if !m.contains_key(TRACE_ID_KEY) => {
            let mut m = m.clone();
            m.insert(TRACE_ID_KEY.into(), Value::String(cx.trace_id.to_string()));
            Value::Object(m)
        }
        _ => metadata.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_header_is_continued_and_anything_else_starts_a_trace() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = continue_or_start(super::caller(Some(caller)).as_ref());
        assert_eq!(cx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(cx.span_id.to_string(), "00f067aa0ba902b7");
        for bad in [None, Some("00-nope"), Some("")] {
            assert_eq!(super::caller(bad), None);
            let a = continue_or_start(super::caller(bad).as_ref());
            let b = continue_or_start(None);
            assert_ne!(a.trace_id, b.trace_id, "a new trace each time");
        }
    }

    #[tokio::test]
    async fn metadata_is_stamped_only_inside_a_scope() {
        let meta = json!({ "source": "x" });
        assert_eq!(stamp(&meta), meta);
        let cx = new_trace();
        let stamped = scope(cx, async { stamp(&meta) }).await;
        assert_eq!(stamped["traceId"], cx.trace_id.to_string());
        assert_eq!(stamped["source"], "x");
        let own = json!({ "traceId": "publishers-own" });
        assert_eq!(scope(cx, async { stamp(&own) }).await, own, "a publisher's own is kept");
        assert_eq!(scope(cx, async { stamp(&json!(null)) }).await, json!(null));
    }
}
