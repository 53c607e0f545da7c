//! The composition root: [`AppState`] builds every service from its parts, once, and hands
//! them to the transports ([`crate::app`], the workers). Nothing below the transports imports
//! this file; services get their dependencies explicitly.

use crate::audit::Audit;
use crate::auth::JwtConfig;
use crate::bus::EventBus;
use crate::cluster::{Cluster, LocalNode};
use crate::documents::DocumentHub;
use crate::feed::ChangeFeed;
pub use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::ratelimit::RateLimiter;
use crate::realtime::fanout::{ClusterFanout, LocalOnly};
use crate::realtime::hub::Hub;
use crate::realtime::runtime::SessionRuntime;
use crate::rooms::Rooms;
use crate::store::Store;
use crate::sync::SyncService;
use crate::tail::EventTail;
use sdk_core::apply::ApplyEngine;
use std::sync::Arc;
use std::time::Duration;

/// Wakes the Class D worker when a transaction is created.
pub type Wakeup = Arc<tokio::sync::Notify>;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub jwt: Arc<JwtConfig>,
    pub limits: Arc<Limits>,
    pub notifier: Arc<Notifier>,
    pub rate: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    pub transactions: Wakeup,
    pub hub: Arc<Hub>,
    pub webhook_secret: Arc<Vec<u8>>,
    pub http: reqwest::Client,
    /// Redis-joined scale-out; `None` on one machine.
    pub cluster: Option<Arc<Cluster>>,
    /// The services (behind `Arc`s: every socket's session holds a clone of this state, so it
    /// stays a row of pointers).
    pub sync: Arc<SyncService>,
    pub bus: Arc<EventBus>,
    pub documents: Arc<DocumentHub>,
    pub rooms: Arc<Rooms>,
    pub feed: ChangeFeed,
    /// The shared tail of every tenant's event log (what live readers are served from).
    pub tail: Arc<EventTail>,
    pub audit: Arc<Audit>,
    /// Where WebSocket sessions run (apart from HTTP, see [`SessionRuntime`]).
    pub sessions: Arc<SessionRuntime>,
}

impl AppState {
    /// One process on its own.
    pub fn new(
        store: Store,
        engine: ApplyEngine,
        jwt: JwtConfig,
        limits: Limits,
        webhook_secret: Vec<u8>,
    ) -> Self {
        Self::assemble(store, engine, jwt, limits, webhook_secret, None)
            .expect("no cluster to refuse, and a runtime builds")
    }

    /// One process of several, joined by the Redis at `url` (connections start with
    /// [`crate::serve`]).
    pub fn clustered(
        store: Store,
        engine: ApplyEngine,
        jwt: JwtConfig,
        limits: Limits,
        webhook_secret: Vec<u8>,
        url: &str,
    ) -> Result<Self, String> {
        Self::assemble(store, engine, jwt, limits, webhook_secret, Some(url))
    }

    fn assemble(
        store: Store,
        engine: ApplyEngine,
        jwt: JwtConfig,
        limits: Limits,
        webhook_secret: Vec<u8>,
        redis_url: Option<&str>,
    ) -> Result<Self, String> {
        let metrics: Arc<Metrics> = Arc::default();
        let cluster = match redis_url {
            Some(url) => Some(Arc::new(Cluster::new(url, metrics.clone())?)),
            None => None,
        };
        let fanout: Arc<dyn ClusterFanout> = match &cluster {
            Some(c) => c.clone(),
            None => Arc::new(LocalOnly),
        };
        let hub = Arc::new(Hub::with_cluster(
            metrics.clone(),
            limits.ws_send_buffer,
            limits.presence_ttl,
            fanout.clone(),
        ));
        let notifier: Arc<Notifier> = Arc::default();
        let store = Arc::new(store);
        let feed = ChangeFeed::new(notifier.clone(), hub.clone(), fanout.clone());
        let sync = SyncService::new(
            store.clone(),
            Arc::new(engine),
            metrics.clone(),
            feed.clone(),
            limits.max_batch,
            limits.max_delta,
        );
        let tail = Arc::new(EventTail::new(
            store.clone(),
            metrics.clone(),
            feed.clone(),
            limits.event_batch_window,
        ));
        let bus = EventBus::new(
            store.clone(),
            Arc::new(limits.bus.clone()),
            metrics.clone(),
            feed.clone(),
            tail.clone(),
        );
        let documents = Arc::new(DocumentHub::new(
            store.clone(),
            metrics.clone(),
            feed.clone(),
            limits.max_document_bytes,
            limits.document_compact_bytes,
        ));
        let rooms = Rooms::new(hub.clone(), fanout, store.clone(), metrics.clone(), feed.clone());
        let sessions = SessionRuntime::new(limits.realtime_threads, limits.realtime_nice)
            .map_err(|e| format!("the session runtime: {e}"))?;
        Ok(Self {
            sessions: Arc::new(sessions),
            tail,
            audit: Arc::new(Audit::new(store.clone())),
            hub,
            store,
            jwt: Arc::new(jwt),
            limits: Arc::new(limits),
            notifier,
            rate: Arc::default(),
            metrics,
            transactions: Arc::default(),
            webhook_secret: Arc::new(webhook_secret),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
            cluster,
            sync: Arc::new(sync),
            bus: Arc::new(bus),
            documents,
            rooms: Arc::new(rooms),
            feed,
        })
    }

    /// What the cluster delivers into on this process.
    pub fn local_node(&self) -> LocalNode {
        LocalNode {
            hub: self.hub.clone(),
            notifier: self.notifier.clone(),
            store: self.store.clone(),
            documents: self.documents.clone(),
        }
    }
}
