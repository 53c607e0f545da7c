//! The server's limits and policies, with DESIGN.md's and api.md's defaults. Plain values:
//! every service takes what it needs from here; the configuration fills them in.

use crate::ratelimit::Rate;
use sdk_core::protocol::event_type_matches;
use std::time::Duration;

/// Defaults: documents up to 8 MiB, compacted once 256 KiB of changes have been appended.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_COMPACT_BYTES: i64 = 256 * 1024;
/// How long an event stream's pump gathers events after a delivery before the next one (the
/// platform document's message batching: up to 100 ms; see [`Limits::event_batch_window`]).
pub const DEFAULT_EVENT_BATCH_MS: u64 = 50;
/// api.md: 100 messages a minute per realtime connection.
pub const DEFAULT_WS_RATE_PER_MINUTE: u32 = 100;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Largest gap answered with `deltaUpdates`; beyond it the response says to take a snapshot.
    pub max_delta: u64,
    pub poll_rate: Rate,
    pub reconcile_rate: Rate,
    pub transaction_rate: Rate,
    pub event_retention: Duration,
    /// How long connection audits are kept (`--audit-retention-connection-days`).
    pub audit_retention_connection: Duration,
    /// How long every other audit entry is kept (`--audit-retention-days`).
    pub audit_retention: Duration,
    pub idempotency_retention: Duration,
    pub webhook_max_attempts: i64,
    pub webhook_base_delay: Duration,
    /// Browser origins allowed to open a socket (`*`, exact, or `scheme://host:*`).
    pub ws_allowed_origins: Vec<String>,
    /// Origins whose pages may call the REST API (CORS): exact origins, `scheme://host:*`, or
    /// `*`. Empty: no CORS headers (same-origin apps only).
    pub cors_allowed_origins: Vec<String>,
    pub ws_max_connections: usize,
    /// Largest WebSocket message; larger ones close the connection with 1009.
    pub ws_frame_bytes: usize,
    /// Messages per connection (api.md: 100 a minute).
    pub ws_rate: Rate,
    /// Frames buffered per connection before it counts as a slow consumer.
    pub ws_send_buffer: usize,
    /// Worker threads of the WebSocket sessions' own runtime (0: they share the HTTP runtime).
    pub realtime_threads: usize,
    /// How those threads run beside HTTP's (`SCHED_IDLE`, or nice steps below).
    pub realtime_nice: crate::realtime::runtime::Priority,
    /// After delivering to its live subscribers, a tenant's event pump waits this long before
    /// it delivers again, so that a busy stream reaches each socket as one write per window
    /// instead of one per event. An event after a quiet spell goes out at once.
    pub event_batch_window: Duration,
    pub ws_heartbeat: Duration,
    /// Silence after which a connection is dead (and its presence with it).
    pub ws_stale: Duration,
    /// How long a presence entry lives without a frame from its client (in Redis too, where a
    /// killed process's entries expire on their own).
    pub presence_ttl: Duration,
    /// Time a client has to send its request headers (slowloris).
    pub header_read_timeout: Duration,
    /// Files served at `/` when no API route matches (the demo app); `None`: JSON 404s.
    pub static_dir: Option<std::path::PathBuf>,
    /// The event bus: retention per type, critical types, delivery defaults.
    pub bus: BusPolicy,
    /// Largest stored form of a collaborative document.
    pub max_document_bytes: usize,
    /// Appended change bytes after which a document's changes are folded into its save.
    pub document_compact_bytes: i64,
}

impl Default for Limits {
    /// DESIGN.md and api.md defaults.
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch: sdk_core::apply::DEFAULT_MAX_BATCH,
            max_delta: 1_000,
            poll_rate: Rate::per_minute(60),
            reconcile_rate: Rate::per_minute(10),
            transaction_rate: Rate::per_minute(60),
            event_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention_connection: Duration::from_secs(90 * 86_400),
            audit_retention: Duration::from_secs(2557 * 86_400),
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            webhook_max_attempts: 8,
            webhook_base_delay: Duration::from_secs(1),
            ws_allowed_origins: vec![
                "http://localhost:*".into(),
                "https://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "https://127.0.0.1:*".into(),
            ],
            cors_allowed_origins: Vec::new(),
            ws_max_connections: 10_000,
            ws_frame_bytes: sdk_core::protocol::DEFAULT_MAX_FRAME,
            ws_rate: Rate::per_minute(DEFAULT_WS_RATE_PER_MINUTE),
            ws_send_buffer: 256,
            realtime_threads: crate::realtime::runtime::default_threads(),
            realtime_nice: crate::realtime::runtime::DEFAULT_PRIORITY,
            event_batch_window: Duration::from_millis(DEFAULT_EVENT_BATCH_MS),
            ws_heartbeat: Duration::from_secs(30),
            ws_stale: Duration::from_secs(90),
            presence_ttl: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(10),
            static_dir: None,
            bus: BusPolicy::default(),
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            document_compact_bytes: DEFAULT_COMPACT_BYTES,
        }
    }
}

/// How the bus keeps and delivers events (defaults: DESIGN.md's limits).
#[derive(Debug, Clone)]
pub struct BusPolicy {
    /// Retention of an event type, first matching pattern wins; others get the default
    /// (`Limits::event_retention`).
    pub retention: Vec<(String, Duration)>,
    /// Types kept indefinitely (never pruned).
    pub critical: Vec<String>,
    /// Deliveries before an event goes to the dead-letter queue.
    pub max_deliveries: u32,
    /// How long a claimed event stays leased to its consumer.
    pub lease: Duration,
    /// First retry delay; each further retry doubles it, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Events in one publish call.
    pub max_publish_batch: usize,
    /// Events published per second per tenant (api.md: 1,000).
    pub publish_rate: Rate,
}

impl Default for BusPolicy {
    fn default() -> Self {
        Self {
            retention: Vec::new(),
            critical: vec!["transaction.*".into()],
            max_deliveries: 3,
            lease: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_publish_batch: 500,
            publish_rate: Rate::per_second(1000),
        }
    }
}

impl BusPolicy {
    pub fn is_critical(&self, event_type: &str) -> bool {
        event_type_matches_any(&self.critical, event_type)
    }

    /// Retention of `event_type`: `None` keeps it forever.
    pub fn retention_of(&self, event_type: &str, default: Duration) -> Option<Duration> {
        if self.is_critical(event_type) {
            return None;
        }
        Some(
            self.retention
                .iter()
                .find(|(p, _)| event_type_matches(std::slice::from_ref(p), event_type))
                .map(|(_, d)| *d)
                .unwrap_or(default),
        )
    }
}

fn event_type_matches_any(patterns: &[String], event_type: &str) -> bool {
    !patterns.is_empty() && event_type_matches(patterns, event_type)
}
