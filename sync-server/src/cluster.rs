//! Scale-out: several `sync-server` processes on one PostgreSQL, joined by Redis.
//!
//! PostgreSQL stays the record: entities, the event log, consumer-group leases. Redis carries
//! only what may be lost — realtime fan-out and presence — so a Redis outage degrades the
//! experience and never correctness (INV-010):
//!
//! - **Fan-out.** Every room, direct and tenant frame a hub sends (see
//!   [`Hub::to_room`]) is also published on one channel, `pf2:fanout`, as
//!   an [`Envelope`] naming its node; every other process delivers it to its own connections.
//!   A `Log` envelope says a tenant's log grew, waking long-polls, event followers and consumer
//!   groups elsewhere.
//! - **Presence** is a key per client, `pf2:{tenant}:p:{client}`, with a TTL (the stale
//!   interval, 90 s by default). The process holding the client's connection refreshes it; a
//!   killed process stops refreshing, and its users go offline on their own. An index sorted by
//!   expiry lets any live process announce those departures to the rooms once.
//! - **Rooms.** A client's memberships live in `pf2:{tenant}:cr:{client}` (and each room's
//!   members in `pf2:{tenant}:r:{room}`), so a client that reconnects to another process is
//!   still in its rooms.
//!
//! With Redis down, each process keeps serving its own connections, REST, polling, the bus and
//! Class D; `/health` says `degraded`; long-polls and followers re-read the log every second
//! instead of waiting for wake-ups (every 30 s while Redis is up, as a safety net). When Redis returns, the process resubscribes, rewrites its
//! presence and pokes its sockets, so clients pull whatever they missed.

use crate::documents::DocumentHub;
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::realtime::fanout::{ClusterFanout, Envelope, Remote};
use crate::realtime::hub::Hub;
use crate::realtime::outbound::Outbound;
use crate::store::Store;
use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use sdk_core::ids::{ClientId, RoomId, TenantId, UserId};
use sdk_core::protocol::{PresenceStatus, ServerFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The one fan-out channel.
pub const CHANNEL: &str = "pf2:fanout";
const PRESENCE_INDEX: &str = "pf2:presence-index";
/// Memberships outlive a client's last connection by this long (as in the hub).
const MEMBERSHIP_TTL_S: u64 = 24 * 3600;
const OUTBOX: usize = 16_384;

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    #[serde(flatten)]
    envelope: Envelope,
}

#[derive(Serialize, Deserialize)]
struct StoredPresence {
    user: UserId,
    status: PresenceStatus,
    #[serde(default)]
    metadata: Option<Value>,
}

fn presence_key(tenant: &TenantId, client: &ClientId) -> String {
    format!("pf2:{{{tenant}}}:p:{client}")
}

fn client_rooms_key(tenant: &TenantId, client: &ClientId) -> String {
    format!("pf2:{{{tenant}}}:cr:{client}")
}

fn room_key(tenant: &TenantId, room: &RoomId) -> String {
    format!("pf2:{{{tenant}}}:r:{room}")
}

/// Index member: ids cannot contain the unit separator.
fn index_member(tenant: &TenantId, client: &ClientId, user: &UserId) -> String {
    format!("{tenant}\u{1f}{client}\u{1f}{user}")
}

fn parse_index_member(m: &str) -> Option<(TenantId, ClientId, UserId)> {
    let mut parts = m.split('\u{1f}');
    let t = TenantId::new(parts.next()?).ok()?;
    let c = ClientId::new(parts.next()?).ok()?;
    let u = UserId::new(parts.next()?).ok()?;
    Some((t, c, u))
}

fn now_ms() -> i64 {
    crate::clock::now_ms() as i64
}

/// What the cluster delivers into on this process.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub hub: Arc<Hub>,
    pub notifier: Arc<Notifier>,
    pub store: Arc<Store>,
    pub documents: Arc<DocumentHub>,
}

/// This process's membership of the cluster.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    url: String,
    client: redis::Client,
    conn: RwLock<Option<MultiplexedConnection>>,
    /// No reconnect attempt before this instant (connecting to a dead Redis costs time).
    retry_at: Mutex<Instant>,
    /// The fan-out subscription is live.
    subscribed: AtomicBool,
    /// The last command on the command connection succeeded.
    commands_ok: AtomicBool,
    /// `subscribed && commands_ok`, as last reported (for transition logs and the gauge).
    up: AtomicBool,
    latency_ms: Mutex<f64>,
    last_error: Mutex<Option<String>>,
    outbox: mpsc::Sender<Remote>,
    inbox: Mutex<Option<mpsc::Receiver<Remote>>>,
    metrics: Arc<Metrics>,
}

type RedisResult<T> = Result<T, redis::RedisError>;

impl Cluster {
    /// A cluster member for `url` (`redis://host:port`); nothing connects until [`run`].
    pub fn new(url: &str, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))?;
        let (outbox, inbox) = mpsc::channel(OUTBOX);
        Ok(Self {
            node: uuid::Uuid::new_v4().to_string(),
            url: url.to_string(),
            client,
            conn: RwLock::new(None),
            retry_at: Mutex::new(Instant::now()),
            subscribed: AtomicBool::new(false),
            commands_ok: AtomicBool::new(false),
            up: AtomicBool::new(false),
            latency_ms: Mutex::new(-1.0),
            last_error: Mutex::new(None),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            metrics,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Whether the fan-out subscription is live and Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `(up, latency in ms, last error)` for `/health`.
    pub fn health(&self) -> (bool, f64, Option<String>) {
        (
            self.is_up(),
            *self.latency_ms.lock().expect("latency lock"),
            self.last_error.lock().expect("error lock").clone(),
        )
    }

    /// Record the subscription's or the command connection's state, and whether the cluster is
    /// up (both work) as a result.
    fn report(&self, part: &AtomicBool, ok: bool, error: Option<String>) {
        part.store(ok, Ordering::Relaxed);
        let up =
            self.subscribed.load(Ordering::Relaxed) && self.commands_ok.load(Ordering::Relaxed);
        let was = self.up.swap(up, Ordering::Relaxed);
        self.metrics.set_gauge("pf2_redis_up", &[], if up { 1.0 } else { 0.0 });
        if let Some(e) = error {
            if was {
                tracing::warn!(error = %e, "Redis unavailable: realtime fan-out and presence degraded");
            }
            *self.last_error.lock().expect("error lock") = Some(e);
        } else if !was && up {
            tracing::info!(url = %self.url, "Redis connected: cluster fan-out live");
        }
    }

    fn report_subscription(&self, ok: bool, error: Option<String>) {
        self.report(&self.subscribed, ok, error);
    }

    /// The command connection, connecting if there is none (at most every 500 ms).
    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conn.read().expect("conn lock").clone() {
            return Ok(c);
        }
        {
            let mut at = self.retry_at.lock().expect("retry lock");
            if Instant::now() < *at {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "Redis unavailable (waiting to reconnect)",
                )));
            }
            *at = Instant::now() + Duration::from_millis(500);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let c = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        *self.conn.write().expect("conn lock") = Some(c.clone());
        Ok(c)
    }

    /// Run `f` on the command connection; an I/O failure drops the connection and marks the
    /// cluster down.
    async fn with_conn<T, F, Fut>(&self, f: F) -> RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match self.conn().await {
            Ok(c) => f(c).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {
                if !self.commands_ok.load(Ordering::Relaxed) {
                    self.report(&self.commands_ok, true, None);
                }
            }
            Err(e) => {
                *self.conn.write().expect("conn lock") = None;
                self.report(&self.commands_ok, false, Some(e.to_string()));
                self.metrics.inc("pf2_redis_errors_total", &[]);
            }
        }
        result
    }

    /// A client's rooms as Redis knows them (empty when Redis is down).
    pub async fn rooms_of(&self, tenant: &TenantId, client: &ClientId) -> Vec<RoomId> {
        let key = client_rooms_key(tenant, client);
        let rooms: Vec<String> = self
            .with_conn(
                |mut c| async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await },
            )
            .await
            .unwrap_or_default();
        let mut rooms: Vec<RoomId> =
            rooms.into_iter().filter_map(|r| RoomId::new(r).ok()).collect();
        rooms.sort();
        rooms
    }

    /// Presence of `room`'s members across the cluster, as frames; `None` when Redis is down.
    pub async fn presence_in(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        ttl: Duration,
    ) -> Option<Vec<ServerFrame>> {
        let rkey = room_key(tenant, room);
        let members: Vec<String> = self
            .with_conn(|mut c| async move {
                redis::cmd("SMEMBERS").arg(&rkey).query_async(&mut c).await
            })
            .await
            .ok()?;
        let clients: Vec<ClientId> =
            members.into_iter().filter_map(|c| ClientId::new(c).ok()).collect();
        if clients.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = clients.iter().map(|c| presence_key(tenant, c)).collect();
        let values: Vec<Option<String>> = self
            .with_conn(
                |mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await },
            )
            .await
            .ok()?;
        let mut frames: Vec<ServerFrame> = clients
            .into_iter()
            .zip(values)
            .filter_map(|(client, v)| {
                let p: StoredPresence = serde_json::from_str(&v?).ok()?;
                Some(ServerFrame::Presence {
                    user_id: p.user,
                    client_id: client,
                    status: p.status,
                    metadata: p.metadata,
                    room_id: Some(room.clone()),
                    ttl_ms: Some(ttl.as_millis() as u64),
                })
            })
            .collect();
        frames.sort_by_key(|f| format!("{f:?}"));
        Some(frames)
    }

    async fn apply(&self, remote: Remote, ttl: Duration) -> RedisResult<()> {
        match remote {
            Remote::Fanout(mut envelope) => {
                envelope.set_node(&self.node);
                let text = serde_json::to_string(&Wire { v: 1, envelope: *envelope })
                    .expect("envelopes serialize");
                self.with_conn(|mut c| async move {
                    redis::cmd("PUBLISH").arg(CHANNEL).arg(text).query_async::<()>(&mut c).await
                })
                .await?;
                self.metrics.inc("pf2_cluster_published_total", &[]);
            }
            Remote::Presence { tenant, client, user, status, metadata } => {
                let key = presence_key(&tenant, &client);
                let member = index_member(&tenant, &client, &user);
                let mut pipe = redis::pipe();
                if status == PresenceStatus::Offline {
                    pipe.cmd("DEL")
                        .arg(&key)
                        .ignore()
                        .cmd("ZREM")
                        .arg(PRESENCE_INDEX)
                        .arg(&member)
                        .ignore();
                } else {
                    let value = serde_json::to_string(&StoredPresence { user, status, metadata })
                        .expect("presence serializes");
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .ignore()
                        .cmd("ZADD")
                        .arg(PRESENCE_INDEX)
                        .arg(now_ms() + ttl.as_millis() as i64)
                        .arg(&member)
                        .ignore();
                }
                self.with_conn(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await?;
            }
            Remote::Joined { tenant, client, room } => {
                let (ck, rk) = (client_rooms_key(&tenant, &client), room_key(&tenant, &room));
                let mut pipe = redis::pipe();
                pipe.cmd("SADD").arg(&ck).arg(room.as_str()).ignore();
                pipe.cmd("EXPIRE").arg(&ck).arg(MEMBERSHIP_TTL_S).ignore();
                pipe.cmd("SADD").arg(&rk).arg(client.as_str()).ignore();
                pipe.cmd("EXPIRE").arg(&rk).arg(MEMBERSHIP_TTL_S).ignore();
                self.with_conn(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await?;
            }
            Remote::Left { tenant, client, room } => {
                let (ck, rk) = (client_rooms_key(&tenant, &client), room_key(&tenant, &room));
                let mut pipe = redis::pipe();
                pipe.cmd("SREM").arg(&ck).arg(room.as_str()).ignore();
                pipe.cmd("SREM").arg(&rk).arg(client.as_str()).ignore();
                self.with_conn(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await?;
            }
        }
        Ok(())
    }

    /// Measure Redis, re-arm the TTL of the presence held here, and announce the presence that
    /// expired anywhere (a killed process's users), once per entry across the cluster.
    async fn maintain(&self, local: &LocalNode) {
        let ttl = local.hub.presence_ttl();
        let start = Instant::now();
        let ping = self
            .with_conn(
                |mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await },
            )
            .await;
        if ping.is_err() {
            return;
        }
        *self.latency_ms.lock().expect("latency lock") = start.elapsed().as_secs_f64() * 1000.0;
        for (tenant, client, user, status, metadata) in local.hub.local_presence() {
            let _ =
                self.apply(Remote::Presence { tenant, client, user, status, metadata }, ttl).await;
        }
        let now = now_ms();
        let due: Vec<String> = self
            .with_conn(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(PRESENCE_INDEX)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(500)
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap_or_default();
        for member in due {
            let Some((tenant, client, user)) = parse_index_member(&member) else { continue };
            let key = presence_key(&tenant, &client);
            let claimed: RedisResult<(bool, i64)> = self
                .with_conn(|mut c| async move {
                    let alive: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut c).await?;
                    if alive {
                        return Ok((true, 0));
                    }
                    let removed: i64 = redis::cmd("ZREM")
                        .arg(PRESENCE_INDEX)
                        .arg(&member)
                        .query_async(&mut c)
                        .await?;
                    Ok((false, removed))
                })
                .await;
            // Only the process whose ZREM removed the entry announces it.
            if let Ok((false, 1)) = claimed {
                self.metrics.inc("pf2_presence_expired_total", &[]);
                for room in self.rooms_of(&tenant, &client).await {
                    let frame = ServerFrame::Presence {
                        user_id: user.clone(),
                        client_id: client.clone(),
                        status: PresenceStatus::Offline,
                        metadata: None,
                        room_id: Some(room.clone()),
                        ttl_ms: Some(ttl.as_millis() as u64),
                    };
                    local.hub.to_room(&tenant, &room, &frame, None);
                }
            }
        }
    }

    /// Redis came (back): rewrite presence and poke every local socket and waiter, so whatever
    /// crossed no process while Redis was away is pulled from the log now.
    async fn resync(&self, local: &LocalNode) {
        self.maintain(local).await;
        for tenant in local.hub.local_tenants() {
            if let Ok((seq, _)) = local.store.tenant_seq(tenant.as_str()).await {
                local.hub.local_tenant(&tenant, &Outbound::new(ServerFrame::Poke { version: seq }));
            }
        }
        for tenant in local.notifier.tenants() {
            if let Ok((seq, _)) = local.store.tenant_seq(&tenant).await {
                local.notifier.notify(&tenant, seq);
            }
        }
    }
}

impl ClusterFanout for Cluster {
    fn joined(&self) -> bool {
        true
    }

    fn forward(&self, remote: Remote) {
        if self.outbox.try_send(remote).is_err() {
            self.metrics.inc("pf2_cluster_dropped_total", &[("reason", "outbox_full")]);
        }
    }

    /// While Redis is down, wake-ups from other processes cannot arrive: waiters re-read the
    /// log every second; while it is up, every 30 s as a safety net (a dropped envelope costs
    /// latency, not events).
    fn log_recheck(&self) -> Option<Duration> {
        Some(if self.is_up() { Duration::from_secs(30) } else { Duration::from_secs(1) })
    }

    fn rooms_of<'a>(
        &'a self,
        tenant: &'a TenantId,
        client: &'a ClientId,
    ) -> BoxFuture<'a, Vec<RoomId>> {
        Box::pin(Cluster::rooms_of(self, tenant, client))
    }

    fn presence_in<'a>(
        &'a self,
        tenant: &'a TenantId,
        room: &'a RoomId,
        ttl: Duration,
    ) -> BoxFuture<'a, Option<Vec<ServerFrame>>> {
        Box::pin(Cluster::presence_in(self, tenant, room, ttl))
    }
}

/// Run this process's part of the cluster until `shutdown`: publish what the hub hands over,
/// deliver what the others publish, keep presence alive, reconnect when Redis returns.
pub async fn run(cluster: Arc<Cluster>, local: LocalNode, shutdown: impl Future<Output = ()>) {
    let Some(mut inbox) = cluster.inbox.lock().expect("inbox lock").take() else { return };
    let ttl = local.hub.presence_ttl();
    let writer = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            while let Some(remote) = inbox.recv().await {
                if cluster.apply(remote, ttl).await.is_err() {
                    cluster.metrics.inc("pf2_cluster_dropped_total", &[("reason", "redis_down")]);
                }
            }
        })
    };
    let subscriber = tokio::spawn(subscribe_loop(local.clone(), cluster.clone()));
    let maintenance = {
        let (local, cluster) = (local.clone(), cluster.clone());
        let every = (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                cluster.maintain(&local).await;
            }
        })
    };
    shutdown.await;
    for task in [writer, subscriber, maintenance] {
        task.abort();
    }
}

async fn subscribe_loop(local: LocalNode, cluster: Arc<Cluster>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribe_once(&local, &cluster).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                cluster.report_subscription(false, Some(e.to_string()));
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        cluster.report_subscription(false, Some("fan-out subscription ended".into()));
        // Waiters sleeping on wake-ups that can no longer arrive re-read the log now, and then
        // every second until Redis is back (`AppState::log_recheck`).
        for tenant in local.notifier.tenants() {
            local.notifier.kick(&tenant);
        }
        tokio::time::sleep(backoff).await;
    }
}

async fn subscribe_once(local: &LocalNode, cluster: &Cluster) -> RedisResult<()> {
    use futures_util::StreamExt;
    let mut pubsub = cluster.client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    // The command connection must work too before the cluster counts as up.
    cluster
        .with_conn(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
        .await?;
    cluster.report_subscription(true, None);
    cluster.resync(local).await;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Ok(text) = msg.get_payload::<String>() else { continue };
        let Ok(wire) = serde_json::from_str::<Wire>(&text) else {
            cluster.metrics.inc("pf2_cluster_invalid_total", &[]);
            continue;
        };
        if wire.v != 1 || wire.envelope.node() == cluster.node {
            continue;
        }
        cluster.metrics.inc("pf2_cluster_received_total", &[]);
        match wire.envelope {
            Envelope::Log { tenant, seq, .. } => local.notifier.notify(tenant.as_str(), seq),
            Envelope::Kick { tenant, .. } => local.notifier.kick(tenant.as_str()),
            Envelope::Document { tenant, document_id, .. } => {
                let documents = local.documents.clone();
                tokio::spawn(async move { documents.refresh(&tenant, &document_id).await });
            }
            envelope => local.hub.deliver_remote(envelope),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tenant_prefixed_and_unambiguous() {
        let t = TenantId::new("a:b").unwrap();
        let c = ClientId::new("c").unwrap();
        assert_eq!(presence_key(&t, &c), "pf2:{a:b}:p:c");
        let m = index_member(&t, &c, &UserId::new("u").unwrap());
        let (t2, c2, u2) = parse_index_member(&m).unwrap();
        assert_eq!((t2.as_str(), c2.as_str(), u2.as_str()), ("a:b", "c", "u"));
        assert!(parse_index_member("only-one-part").is_none());
    }

    #[test]
    fn envelopes_round_trip_with_their_version() {
        let e = Envelope::Log { node: "n1".into(), tenant: TenantId::new("t").unwrap(), seq: 7 };
        let text = serde_json::to_string(&Wire { v: 1, envelope: e }).unwrap();
        assert!(text.contains("\"kind\":\"log\"") && text.contains("\"v\":1"), "{text}");
        let back: Wire = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.envelope, Envelope::Log { seq: 7, .. }));
        assert!(serde_json::from_str::<Wire>("{\"v\":1,\"kind\":\"nope\"}").is_err());
    }

    proptest::proptest! {
        /// Whatever arrives on the channel (another version, a stranger, garbage) is decoded
        /// or refused, never a panic.
        #[test]
        fn arbitrary_channel_messages_never_panic(text in ".{0,200}", flips in proptest::collection::vec((0usize..400, 0u8..128), 0..4)) {
            let _ = serde_json::from_str::<Wire>(&text);
            let e = Envelope::Room {
                node: "n".into(),
                tenant: TenantId::new("t").unwrap(),
                room: RoomId::new("r").unwrap(),
                frame: ServerFrame::Poke { version: 3 },
            };
            let mut bytes = serde_json::to_vec(&Wire { v: 1, envelope: e }).unwrap();
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = serde_json::from_str::<Wire>(text);
            }
        }
    }
}
