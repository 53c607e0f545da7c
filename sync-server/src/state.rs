//! What every handler shares: the store, the apply engine, auth, limits, the long-poll
//! notifier, rate limiter and metrics. Built once by [`crate::config`], passed to
//! [`crate::app`] (dependencies are passed in, never global).

use crate::auth::JwtConfig;
use crate::metrics::Metrics;
use crate::ratelimit::{Rate, RateLimiter};
use crate::store::Store;
use sdk_core::apply::ApplyEngine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

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
    pub idempotency_retention: Duration,
    pub webhook_max_attempts: i64,
    pub webhook_base_delay: Duration,
    /// Browser origins allowed to open a socket (`*`, exact, or `scheme://host:*`).
    pub ws_allowed_origins: Vec<String>,
    pub ws_max_connections: usize,
    /// Largest WebSocket message; larger ones close the connection with 1009.
    pub ws_frame_bytes: usize,
    /// Messages per connection (api.md: 100 a minute).
    pub ws_rate: Rate,
    /// Frames buffered per connection before it counts as a slow consumer.
    pub ws_send_buffer: usize,
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
    pub bus: crate::bus::BusPolicy,
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
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            webhook_max_attempts: 8,
            webhook_base_delay: Duration::from_secs(1),
            ws_allowed_origins: vec![
                "http://localhost:*".into(),
                "https://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "https://127.0.0.1:*".into(),
            ],
            ws_max_connections: 10_000,
            ws_frame_bytes: sdk_core::protocol::DEFAULT_MAX_FRAME,
            ws_rate: Rate::per_minute(100),
            ws_send_buffer: 256,
            ws_heartbeat: Duration::from_secs(30),
            ws_stale: Duration::from_secs(90),
            presence_ttl: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(10),
            static_dir: None,
            bus: crate::bus::BusPolicy::default(),
            max_document_bytes: crate::documents::DEFAULT_MAX_DOCUMENT_BYTES,
            document_compact_bytes: crate::documents::DEFAULT_COMPACT_BYTES,
        }
    }
}

/// Wakes long-polls when a tenant's log grows (in-process; across processes with issue 5's bus).
#[derive(Debug, Default)]
pub struct Notifier {
    tenants: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Notifier {
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<u64> {
        let mut map = self.tenants.lock().expect("notifier lock");
        map.entry(tenant.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// How many long-polls are parked on `tenant` (tests wait for this instead of sleeping).
    pub fn waiting(&self, tenant: &str) -> usize {
        let map = self.tenants.lock().expect("notifier lock");
        map.get(tenant).map(|tx| tx.receiver_count()).unwrap_or(0)
    }

    /// Wake everyone waiting on `tenant` although the log did not grow (a dead letter went
    /// back to its group).
    pub fn kick(&self, tenant: &str) {
        let map = self.tenants.lock().expect("notifier lock");
        if let Some(tx) = map.get(tenant) {
            tx.send_modify(|_| {});
        }
    }

    /// Tenants someone is waiting on.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants.lock().expect("notifier lock").keys().cloned().collect()
    }

    pub fn notify(&self, tenant: &str, seq: u64) {
        let map = self.tenants.lock().expect("notifier lock");
        if let Some(tx) = map.get(tenant) {
            tx.send_if_modified(|v| {
                let grew = seq > *v;
                *v = (*v).max(seq);
                grew
            });
        }
    }
}

/// Wakes the Class D worker when a transaction is created.
pub type Wakeup = Arc<tokio::sync::Notify>;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub engine: Arc<ApplyEngine>,
    pub jwt: Arc<JwtConfig>,
    pub limits: Arc<Limits>,
    pub notifier: Arc<Notifier>,
    pub rate: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    pub transactions: Wakeup,
    pub hub: Arc<crate::realtime::hub::Hub>,
    pub webhook_secret: Arc<Vec<u8>>,
    pub http: reqwest::Client,
    /// Redis-joined scale-out; `None` on one machine.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Collaborative documents open on this process.
    pub documents: Arc<crate::documents::DocumentHub>,
}

impl AppState {
    /// Entities of `tenant` changed, up to `version`, whoever wrote them (REST reconcile, a push
    /// over `/v1/ws`, a conflict resolution): wake long-polls and event followers, and poke every
    /// live socket of the tenant to pull. One place, so no writer forgets the sockets.
    pub fn entities_changed(&self, tenant: &sdk_core::ids::TenantId, version: u64) {
        self.events_appended(tenant, version);
        self.hub.to_tenant(tenant, &sdk_core::protocol::ServerFrame::Poke { version });
    }

    /// The tenant's log grew to `seq` (any writer, any event): wake long-polls, followers and
    /// consumer groups here and, through the cluster, in every other process.
    pub fn events_appended(&self, tenant: &sdk_core::ids::TenantId, seq: u64) {
        self.notifier.notify(tenant.as_str(), seq);
        self.forward(crate::cluster::Envelope::Log {
            node: String::new(),
            tenant: tenant.clone(),
            seq,
        });
    }

    /// Wake the tenant's log waiters here and in every other process although the log did not
    /// grow (a dead letter went back to its group).
    pub fn kick_waiters(&self, tenant: &sdk_core::ids::TenantId) {
        self.notifier.kick(tenant.as_str());
        self.forward(crate::cluster::Envelope::Kick {
            node: String::new(),
            tenant: tenant.clone(),
        });
    }

    /// Document `id` of `tenant` changed here: the processes that have it open re-read it.
    pub fn documents_changed(&self, tenant: &sdk_core::ids::TenantId, id: &str) {
        self.forward(crate::cluster::Envelope::Document {
            node: String::new(),
            tenant: tenant.clone(),
            document_id: id.to_string(),
        });
    }

    fn forward(&self, envelope: crate::cluster::Envelope) {
        if let Some(c) = &self.cluster
            && c.outbox().try_send(crate::cluster::Remote::Fanout(Box::new(envelope))).is_err()
        {
            self.metrics.inc("pf2_cluster_dropped_total", &[("reason", "outbox_full")]);
        }
    }

    /// How long a log waiter may sleep without a wake-up. In a cluster, wake-ups from other
    /// processes travel through Redis: while it is down, waiters re-read the log every second;
    /// while it is up, every 30 s as a safety net (a dropped envelope costs latency, not events).
    pub fn log_recheck(&self) -> Option<Duration> {
        self.cluster
            .as_ref()
            .map(|c| if c.is_up() { Duration::from_secs(30) } else { Duration::from_secs(1) })
    }

    /// Presence in `room`: the cluster's view from Redis, or this process's when there is no
    /// cluster or Redis is down.
    pub async fn presence_in(
        &self,
        tenant: &sdk_core::ids::TenantId,
        room: &sdk_core::ids::RoomId,
    ) -> Vec<sdk_core::protocol::ServerFrame> {
        if let Some(c) = &self.cluster
            && let Some(frames) = c.presence_in(tenant, room, self.hub.presence_ttl()).await
        {
            return frames;
        }
        self.hub.presence_in(tenant, room)
    }

    /// A client connected here: it is back in the rooms it joined through any process.
    pub async fn restore_rooms(
        &self,
        tenant: &sdk_core::ids::TenantId,
        client: &sdk_core::ids::ClientId,
    ) {
        if let Some(c) = &self.cluster {
            for room in c.rooms_of(tenant, client).await {
                self.hub.join(tenant, client, &room);
            }
        }
    }

    pub fn new(
        store: Store,
        engine: ApplyEngine,
        jwt: JwtConfig,
        limits: Limits,
        webhook_secret: Vec<u8>,
    ) -> Self {
        let metrics: Arc<Metrics> = Arc::default();
        let hub = crate::realtime::hub::Hub::new(
            metrics.clone(),
            limits.ws_send_buffer,
            limits.presence_ttl,
        );
        Self {
            hub: Arc::new(hub),
            store: Arc::new(store),
            engine: Arc::new(engine),
            jwt: Arc::new(jwt),
            limits: Arc::new(limits),
            notifier: Arc::default(),
            rate: Arc::default(),
            metrics,
            transactions: Arc::default(),
            webhook_secret: Arc::new(webhook_secret),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
            cluster: None,
            documents: Arc::default(),
        }
    }

    /// Join the Redis cluster at `url` (connections start with [`crate::serve`]).
    pub fn with_cluster(mut self, url: &str) -> Result<Self, String> {
        let cluster = crate::cluster::Cluster::new(url, self.metrics.clone())?;
        self.hub.attach_remote(cluster.outbox());
        self.cluster = Some(Arc::new(cluster));
        Ok(self)
    }
}
