//! Logs and traces. Every process writes JSON log lines to stderr; a line written while a request
//! (or a `/v1/ws` frame, or a webhook) is handled names its span list, whose root carries the
//! `trace_id`. With `--otlp-endpoint` the server's spans — request, reconcile, apply, store
//! transaction, fan-out, webhook delivery — are also exported over OTLP/HTTP (protobuf) by the
//! opentelemetry crates; without it nothing is exported and no exporter exists.
//!
//! The ids are the server's own ([`crate::trace`]): the `traceparent` a response names, the
//! `metadata.traceId` of the events a request appends and the exported span ids are the same,
//! because the span a piece of work runs in is started with its context's ids ([`adopt`]).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use sdk_core::trace::TraceContext;
use std::cell::Cell;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// The default log filter (`PF2_LOG` overrides it).
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,tower_http=info";

/// The spans that are exported: the server's own (not its libraries').
fn exported() -> Targets {
    Targets::new().with_target("sync_server", tracing::Level::INFO)
}

/// The exporter behind a process's spans: flushes what it holds when dropped.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// OTLP/HTTP to `endpoint` — a collector's base URL (`http://127.0.0.1:4318`, to which
    /// `/v1/traces` is added) or the full URL of its traces path.
    pub fn otlp(endpoint: &str) -> anyhow::Result<Self> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let url = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(std::time::Duration::from_secs(10))
            .with_headers(Default::default())
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter for {url}: {e}"))?;
        let resource =
            opentelemetry_sdk::Resource::builder().with_service_name("pf2-sync-server").build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(PresetIds)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// Send what is buffered now (tests; shutdown does it too).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") }
}

/// The process's subscriber: JSON lines to `writer` filtered by `filter`, and the exporter's
/// layer when there is one.
pub fn subscriber<W>(
    writer: W,
    filter: tracing_subscriber::EnvFilter,
    exporter: Option<&Exporter>,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(writer)
        .with_filter(filter);
    let spans = exporter.map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.provider.tracer("sync-server"))
            .with_filter(exported())
    });
    tracing_subscriber::registry().with(logs).with(spans)
}

thread_local! {
    /// The ids the next span started on this thread takes (see [`adopt`]).
    static PRESET: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Ids for the exporter's spans: the ones [`adopt`] preset for the span it starts, random for
/// any other.
#[derive(Debug)]
struct PresetIds;

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        let (t, s) = PRESET.get();
        PRESET.set((None, s));
        t.unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        let (t, s) = PRESET.get();
        PRESET.set((t, None));
        s.unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}

fn otel_span_context(cx: &TraceContext) -> SpanContext {
    let flags = if cx.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    SpanContext::new(
        TraceId::from_bytes(cx.trace_id.to_bytes()),
        SpanId::from_bytes(cx.span_id.to_bytes()),
        flags,
        true,
        TraceState::default(),
    )
}

/// Make `span` the exported form of `cx`: a child of `caller` (a span of another process: the
/// `traceparent` a request or frame came with, or the request a webhook continues), or the
/// root of `cx`'s trace, under `cx`'s own span id. Call it before the span is first entered.
/// Without an exporter it does nothing.
pub fn adopt(span: &Span, cx: &TraceContext, caller: Option<&TraceContext>) {
    if span.is_disabled() {
        return;
    }
    if let Some(caller) = caller {
        let parent =
            opentelemetry::Context::new().with_remote_span_context(otel_span_context(caller));
        // No exporter layer: nothing to adopt.
        if span.set_parent(parent).is_err() {
            return;
        }
    }
    let trace_id = TraceId::from_bytes(cx.trace_id.to_bytes());
    PRESET.set((Some(trace_id), Some(SpanId::from_bytes(cx.span_id.to_bytes()))));
    // Starts the span now, on this thread, so it draws the preset ids.
    let started = span.context();
    PRESET.set((None, None));
    debug_assert!(
        !started.span().span_context().is_valid()
            || started.span().span_context().trace_id() == trace_id
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
