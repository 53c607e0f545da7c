//! The realtime hub: who is connected, which rooms each client is in, presence, and fan-out.
//! Shared by every realtime endpoint (native WebSocket now, Socket.IO next).
//!
//! - Every key is tenant-scoped `(tenant, id)`: no frame can reach another tenant's room or user.
//! - Room membership belongs to the **client id**, not the connection, so it survives reconnects;
//!   a client's memberships are forgotten `membership_ttl` after its last connection closed.
//! - Each connection has a bounded outbound buffer. Fan-out uses `try_send`: when a buffer is full
//!   the connection is a slow consumer and is disconnected; memory never grows without bound.
//! - Presence (Class A) lives in memory with a TTL and disappears with the connection.
//! - With a cluster (a [`ClusterFanout`]), every fan-out that starts here is also handed to the
//!   cluster's outbox (never waiting: a full outbox drops it) and reaches the other processes'
//!   hubs through Redis, which deliver it with the `local_*` methods only. Presence and room
//!   membership changes go the same way, so Redis holds the cluster-wide view.

use super::fanout::{ClusterFanout, Envelope, LocalOnly, Remote};
use super::mailbox::{Mailbox, Offered};
use super::outbound::Outbound;
use crate::metrics::Metrics;
use sdk_core::ids::{ClientId, RoomId, TenantId, UserId};
use sdk_core::protocol::{PresenceStatus, ServerFrame};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hub's handle on one connection.
#[derive(Debug)]
struct Conn {
    tenant: TenantId,
    user: UserId,
    client: ClientId,
    mailbox: Arc<Mailbox>,
    /// The channels it reads (sync rules); `None`: everything (no rules, or tenant-wide).
    reads: Option<BTreeSet<String>>,
    /// When it registered (epoch ms), for operators.
    since_ms: u64,
}

/// What an operator sees of one tenant's realtime side in this process (`GET /api/ops/realtime`).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantView {
    /// (user, client, connected since, epoch ms), oldest first.
    pub connections: Vec<(UserId, ClientId, u64)>,
    /// (room, members), by room id.
    pub rooms: Vec<(RoomId, usize)>,
    /// Presence entries by status.
    pub presence: Vec<(PresenceStatus, usize)>,
}

#[derive(Debug, Clone)]
struct Presence {
    user: UserId,
    status: PresenceStatus,
    metadata: Option<Value>,
    expires: Instant,
}

/// A key scoped to a tenant: a user, client or room id within it. Stored owned; looked up
/// borrowed (`get(map, tenant, id)`), so fan-out — a lookup per member per frame — allocates nothing.
#[derive(Debug, Clone)]
struct Scoped {
    tenant: TenantId,
    id: String,
}

/// The borrowed view of a [`Scoped`] key. Hash and equality are defined on it alone, so an
/// owned key and a borrowed pair of `&str` agree (what `HashMap::get` through `Borrow` needs).
trait ScopedKey {
    fn parts(&self) -> (&str, &str);
}

impl ScopedKey for Scoped {
    fn parts(&self) -> (&str, &str) {
        (self.tenant.as_str(), &self.id)
    }
}

impl ScopedKey for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl std::hash::Hash for dyn ScopedKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
    }
}

impl PartialEq for dyn ScopedKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn ScopedKey + '_ {}

impl std::hash::Hash for Scoped {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self as &dyn ScopedKey).hash(h);
    }
}

impl PartialEq for Scoped {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Scoped {}

impl<'a> std::borrow::Borrow<dyn ScopedKey + 'a> for Scoped {
    fn borrow(&self) -> &(dyn ScopedKey + 'a) {
        self
    }
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u64, Conn>,
    by_tenant: HashMap<TenantId, HashSet<u64>>,
    by_user: HashMap<Scoped, HashSet<u64>>,
    by_client: HashMap<Scoped, HashSet<u64>>,
    rooms: HashMap<Scoped, HashSet<ClientId>>,
    /// The connections of each room's members (derived from `rooms` and `by_client`, kept in
    /// step by join, leave, register and unregister): fan-out is one lookup, not two per member.
    room_conns: HashMap<Scoped, Vec<(u64, Arc<Mailbox>)>>,
    client_rooms: HashMap<Scoped, HashSet<RoomId>>,
    /// The connections that read each channel (sync rules; [`Hub::set_reads`]), and per tenant
    /// those that read everything: a change's poke goes to its readers only.
    channel_conns: HashMap<Scoped, HashSet<u64>>,
    wide: HashMap<TenantId, HashSet<u64>>,
    /// Clients with memberships but no connection, and since when.
    idle_since: HashMap<Scoped, Instant>,
    presence: HashMap<Scoped, Presence>,
}

impl Inner {
    /// Take connection `id` out of the reader indexes (its channels, or the tenant-wide set).
    fn drop_reads(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else { return };
        let tenant = conn.tenant.clone();
        match conn.reads.clone() {
            None => {
                if let Some(set) = self.wide.get_mut(&tenant) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.wide.remove(&tenant);
                    }
                }
            }
            Some(channels) => {
                for ch in &channels {
                    if let Some(set) = get_mut(&mut self.channel_conns, &tenant, ch) {
                        set.remove(&id);
                        if set.is_empty() {
                            remove(&mut self.channel_conns, &tenant, ch);
                        }
                    }
                }
            }
        }
    }

    /// Forget the connections of `room` that `gone` names (a room left with none is dropped).
    fn drop_room_conns(&mut self, tenant: &TenantId, room: &RoomId, gone: impl Fn(u64) -> bool) {
        let Some(conns) = get_mut(&mut self.room_conns, tenant, room.as_str()) else { return };
        conns.retain(|(id, _)| !gone(*id));
        if conns.is_empty() {
            remove(&mut self.room_conns, tenant, room.as_str());
        }
    }
}

/// What a new connection gets from the hub.
#[derive(Debug)]
pub struct Registration {
    pub id: u64,
    /// The connection's bounded outbound queue: the hub offers fan-out, the session sends its
    /// replies, the writer drains it. Killed when the connection is a slow consumer.
    pub mailbox: Arc<Mailbox>,
}

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    send_buffer: usize,
    presence_ttl: Duration,
    membership_ttl: Duration,
    /// The other processes (a no-op for one process).
    cluster: Arc<dyn ClusterFanout>,
}

/// An owned key, for inserting.
fn scoped(tenant: &TenantId, id: &str) -> Scoped {
    Scoped { tenant: tenant.clone(), id: id.to_string() }
}

/// `map[(tenant, id)]`, without building an owned key.
fn get<'m, V>(map: &'m HashMap<Scoped, V>, tenant: &TenantId, id: &str) -> Option<&'m V> {
    map.get(&(tenant.as_str(), id) as &dyn ScopedKey)
}

fn get_mut<'m, V>(
    map: &'m mut HashMap<Scoped, V>,
    tenant: &TenantId,
    id: &str,
) -> Option<&'m mut V> {
    map.get_mut(&(tenant.as_str(), id) as &dyn ScopedKey)
}

fn remove<V>(map: &mut HashMap<Scoped, V>, tenant: &TenantId, id: &str) -> Option<V> {
    map.remove(&(tenant.as_str(), id) as &dyn ScopedKey)
}

impl Hub {
    /// A hub for one process.
    pub fn new(metrics: Arc<Metrics>, send_buffer: usize, presence_ttl: Duration) -> Self {
        Self::with_cluster(metrics, send_buffer, presence_ttl, Arc::new(LocalOnly))
    }

    /// A hub that also hands every fan-out, presence and membership change to `cluster`.
    pub fn with_cluster(
        metrics: Arc<Metrics>,
        send_buffer: usize,
        presence_ttl: Duration,
        cluster: Arc<dyn ClusterFanout>,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
            send_buffer: send_buffer.max(1),
            presence_ttl,
            membership_ttl: Duration::from_secs(24 * 3600),
            cluster,
        }
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }

    /// Tell the cluster, if any (`remote` is only built when there is one). Never waits:
    /// realtime loss degrades, it does not block.
    fn forward(&self, remote: impl FnOnce() -> Remote) {
        if self.cluster.joined() {
            self.cluster.forward(remote());
        }
    }

    /// Tenants with a connection here.
    pub fn local_tenants(&self) -> Vec<TenantId> {
        let mut v: Vec<TenantId> = self.lock().by_tenant.keys().cloned().collect();
        v.sort();
        v
    }

    /// Presence entries held here (the cluster refreshes their TTL in Redis).
    pub fn local_presence(
        &self,
    ) -> Vec<(TenantId, ClientId, UserId, PresenceStatus, Option<Value>)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .presence
            .iter()
            .filter_map(|(Scoped { tenant: t, id: c }, p)| {
                Some((
                    t.clone(),
                    ClientId::new(c.clone()).ok()?,
                    p.user.clone(),
                    p.status,
                    p.metadata.clone(),
                ))
            })
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    /// Deliver what another process fanned out, to the connections here only.
    pub fn deliver_remote(&self, envelope: Envelope) {
        match envelope {
            Envelope::Room { tenant, room, frame, .. } => {
                self.local_room(&tenant, &room, &Outbound::new(frame), None);
            }
            Envelope::User { tenant, user, frame, .. } => {
                self.local_user(&tenant, &user, &Outbound::new(frame));
            }
            Envelope::Tenant { tenant, frame, .. } => {
                self.local_tenant(&tenant, &Outbound::new(frame));
            }
            Envelope::Readers { tenant, channels, frame, .. } => {
                self.local_readers(&tenant, &channels, &Outbound::new(frame));
            }
            Envelope::Log { .. } | Envelope::Kick { .. } | Envelope::Document { .. } => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub lock")
    }

    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn rooms(&self) -> usize {
        self.lock().rooms.len()
    }

    pub fn presence_entries(&self) -> usize {
        self.lock().presence.len()
    }

    /// One tenant's connections, rooms and presence in this process.
    pub fn tenant_view(&self, tenant: &TenantId) -> TenantView {
        let inner = self.lock();
        let mut connections: Vec<(UserId, ClientId, u64)> = inner
            .by_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.conns.get(id))
            .map(|c| (c.user.clone(), c.client.clone(), c.since_ms))
            .collect();
        connections.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
        let mut rooms: Vec<(RoomId, usize)> = inner
            .rooms
            .iter()
            .filter(|(k, _)| &k.tenant == tenant)
            .filter_map(|(k, members)| Some((RoomId::new(k.id.clone()).ok()?, members.len())))
            .collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut by_status: std::collections::BTreeMap<String, (PresenceStatus, usize)> =
            Default::default();
        for (k, p) in &inner.presence {
            if &k.tenant == tenant {
                by_status.entry(format!("{:?}", p.status)).or_insert((p.status, 0)).1 += 1;
            }
        }
        TenantView { connections, rooms, presence: by_status.into_values().collect() }
    }

    fn gauges(&self, inner: &Inner) {
        self.metrics.set_gauge("pf2_ws_active_connections", &[], inner.conns.len() as f64);
        self.metrics.set_gauge("pf2_ws_rooms", &[], inner.rooms.len() as f64);
        self.metrics.set_gauge("pf2_ws_presence_entries", &[], inner.presence.len() as f64);
    }

    pub fn register(&self, tenant: &TenantId, user: &UserId, client: &ClientId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Mailbox::new(self.send_buffer);
        let mut inner = self.lock();
        inner.conns.insert(
            id,
            Conn {
                tenant: tenant.clone(),
                user: user.clone(),
                client: client.clone(),
                mailbox: mailbox.clone(),
                reads: None,
                since_ms: crate::clock::now_ms(),
            },
        );
        inner.by_tenant.entry(tenant.clone()).or_default().insert(id);
        inner.wide.entry(tenant.clone()).or_default().insert(id);
        inner.by_user.entry(scoped(tenant, user.as_str())).or_default().insert(id);
        inner.by_client.entry(scoped(tenant, client.as_str())).or_default().insert(id);
        remove(&mut inner.idle_since, tenant, client.as_str());
        let rooms: Vec<Scoped> = get(&inner.client_rooms, tenant, client.as_str())
            .into_iter()
            .flatten()
            .map(|room| scoped(tenant, room.as_str()))
            .collect();
        for room in rooms {
            inner.room_conns.entry(room).or_default().push((id, mailbox.clone()));
        }
        self.prune(&mut inner, Instant::now());
        self.gauges(&inner);
        Registration { id, mailbox }
    }

    /// Remove a connection; its presence goes offline when it was the client's last connection.
    pub fn unregister(&self, id: u64) {
        let offline = {
            let mut inner = self.lock();
            inner.drop_reads(id);
            let Some(conn) = inner.conns.remove(&id) else { return };
            // Ends the connection's writer if it is still waiting (a no-op after the session's
            // own close, which came first).
            conn.mailbox.close(None);
            if let Some(set) = inner.by_tenant.get_mut(&conn.tenant) {
                set.remove(&id);
                if set.is_empty() {
                    inner.by_tenant.remove(&conn.tenant);
                }
            }
            let user_key = scoped(&conn.tenant, conn.user.as_str());
            let client_key = scoped(&conn.tenant, conn.client.as_str());
            let rooms: Vec<RoomId> =
                inner.client_rooms.get(&client_key).into_iter().flatten().cloned().collect();
            for room in rooms {
                inner.drop_room_conns(&conn.tenant, &room, |c| c == id);
            }
            if let Some(set) = inner.by_user.get_mut(&user_key) {
                set.remove(&id);
                if set.is_empty() {
                    inner.by_user.remove(&user_key);
                }
            }
            let last = match inner.by_client.get_mut(&client_key) {
                Some(set) => {
                    set.remove(&id);
                    set.is_empty()
                }
                None => true,
            };
            let offline = if last {
                inner.by_client.remove(&client_key);
                if inner.client_rooms.contains_key(&client_key) {
                    inner.idle_since.insert(client_key.clone(), Instant::now());
                }
                inner
                    .presence
                    .remove(&client_key)
                    .map(|p| (conn.tenant.clone(), conn.client.clone(), p))
            } else {
                None
            };
            self.gauges(&inner);
            offline
        };
        if let Some((tenant, client, p)) = offline {
            self.broadcast_presence(&tenant, &client, &p.user, PresenceStatus::Offline, None);
        }
    }

    /// Count `n` frames queued by one fan-out (one atomic add per fan-out, not per frame).
    fn delivered(&self, n: usize) -> usize {
        self.metrics.ws_messages_out.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Queue a frame for one connection; a full buffer marks it a slow consumer and kills it.
    /// The caller counts what was queued ([`Hub::delivered`]).
    fn offer(&self, mailbox: &Mailbox, frame: &Arc<Outbound>) -> bool {
        match mailbox.offer(frame.clone()) {
            Offered::Queued => true,
            Offered::Full => {
                self.metrics.inc("pf2_ws_disconnects_total", &[("reason", "slow_consumer")]);
                false
            }
            Offered::Closed => false,
        }
    }

    /// Join `room`; returns whether the client was not yet a member.
    pub fn join(&self, tenant: &TenantId, client: &ClientId, room: &RoomId) -> bool {
        let mut inner = self.lock();
        let added =
            inner.rooms.entry(scoped(tenant, room.as_str())).or_default().insert(client.clone());
        inner.client_rooms.entry(scoped(tenant, client.as_str())).or_default().insert(room.clone());
        if added {
            let conns: Vec<(u64, Arc<Mailbox>)> = get(&inner.by_client, tenant, client.as_str())
                .into_iter()
                .flatten()
                .filter_map(|id| Some((*id, inner.conns.get(id)?.mailbox.clone())))
                .collect();
            if !conns.is_empty() {
                inner.room_conns.entry(scoped(tenant, room.as_str())).or_default().extend(conns);
            }
        }
        self.gauges(&inner);
        drop(inner);
        self.forward(|| Remote::Joined {
            tenant: tenant.clone(),
            client: client.clone(),
            room: room.clone(),
        });
        added
    }

    pub fn leave(&self, tenant: &TenantId, client: &ClientId, room: &RoomId) -> bool {
        let mut inner = self.lock();
        let key = scoped(tenant, room.as_str());
        let removed = inner.rooms.get_mut(&key).is_some_and(|m| m.remove(client));
        if removed {
            let ids: HashSet<u64> =
                get(&inner.by_client, tenant, client.as_str()).cloned().unwrap_or_default();
            inner.drop_room_conns(tenant, room, |c| ids.contains(&c));
        }
        if inner.rooms.get(&key).is_some_and(HashSet::is_empty) {
            inner.rooms.remove(&key);
        }
        let ckey = scoped(tenant, client.as_str());
        if let Some(rs) = inner.client_rooms.get_mut(&ckey) {
            rs.remove(room);
            if rs.is_empty() {
                inner.client_rooms.remove(&ckey);
            }
        }
        self.gauges(&inner);
        drop(inner);
        self.forward(|| Remote::Left {
            tenant: tenant.clone(),
            client: client.clone(),
            room: room.clone(),
        });
        removed
    }

    pub fn is_member(&self, tenant: &TenantId, client: &ClientId, room: &RoomId) -> bool {
        get(&self.lock().rooms, tenant, room.as_str()).is_some_and(|m| m.contains(client))
    }

    pub fn rooms_of(&self, tenant: &TenantId, client: &ClientId) -> Vec<RoomId> {
        let inner = self.lock();
        let mut rooms: Vec<RoomId> = inner
            .client_rooms
            .get(&scoped(tenant, client.as_str()))
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        rooms.sort();
        rooms
    }

    /// Send to every connection of every member of `room` except the `skip` connection, here
    /// and (through the cluster) in every other process. Returns how many connections here were
    /// offered the frame.
    pub fn to_room(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        frame: &ServerFrame,
        skip: Option<u64>,
    ) -> usize {
        let n = self.local_room(tenant, room, &Outbound::new(frame.clone()), skip);
        self.forward(|| {
            Remote::Fanout(Box::new(Envelope::Room {
                node: String::new(),
                tenant: tenant.clone(),
                room: room.clone(),
                frame: frame.clone(),
            }))
        });
        n
    }

    fn local_room(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        frame: &Arc<Outbound>,
        skip: Option<u64>,
    ) -> usize {
        let inner = self.lock();
        let Some(conns) = get(&inner.room_conns, tenant, room.as_str()) else { return 0 };
        let mut n = 0;
        for (id, mailbox) in conns {
            if Some(*id) != skip {
                n += self.offer(mailbox, frame) as usize;
            }
        }
        self.delivered(n)
    }

    /// Send to every connection of `tenant` (pokes), here and in every other process.
    pub fn to_tenant(&self, tenant: &TenantId, frame: &ServerFrame) -> usize {
        let n = self.local_tenant(tenant, &Outbound::new(frame.clone()));
        self.forward(|| {
            Remote::Fanout(Box::new(Envelope::Tenant {
                node: String::new(),
                tenant: tenant.clone(),
                frame: frame.clone(),
            }))
        });
        n
    }

    /// Send to every connection of `tenant` here only.
    pub fn local_tenant(&self, tenant: &TenantId, frame: &Arc<Outbound>) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for id in inner.by_tenant.get(tenant).into_iter().flatten() {
            if let Some(conn) = inner.conns.get(id) {
                n += self.offer(&conn.mailbox, frame) as usize;
            }
        }
        self.delivered(n)
    }

    /// What connection `id` reads, for pokes (sync rules): `None`, everything.
    pub fn set_reads(&self, id: u64, reads: Option<BTreeSet<String>>) {
        let mut inner = self.lock();
        if inner.conns.get(&id).is_none_or(|c| c.reads == reads) {
            return;
        }
        inner.drop_reads(id);
        let conn = inner.conns.get_mut(&id).expect("checked above");
        conn.reads = reads.clone();
        let tenant = conn.tenant.clone();
        match reads {
            None => {
                inner.wide.entry(tenant).or_default().insert(id);
            }
            Some(channels) => {
                for ch in channels {
                    inner.channel_conns.entry(scoped(&tenant, &ch)).or_default().insert(id);
                }
            }
        }
    }

    /// Send to the connections of `tenant` that read one of `channels` or everything, here and
    /// in every other process (a change's poke under sync rules: a connection that may not read
    /// it is never offered it).
    pub fn to_readers(&self, tenant: &TenantId, channels: &BTreeSet<String>, frame: &ServerFrame) {
        self.local_readers(tenant, channels, &Outbound::new(frame.clone()));
        self.forward(|| {
            Remote::Fanout(Box::new(Envelope::Readers {
                node: String::new(),
                tenant: tenant.clone(),
                channels: channels.iter().cloned().collect(),
                frame: frame.clone(),
            }))
        });
    }

    fn local_readers<'a>(
        &self,
        tenant: &TenantId,
        channels: impl IntoIterator<Item = &'a String>,
        frame: &Arc<Outbound>,
    ) -> usize {
        let inner = self.lock();
        let mut ids: BTreeSet<u64> =
            inner.wide.get(tenant).into_iter().flatten().copied().collect();
        for ch in channels {
            ids.extend(get(&inner.channel_conns, tenant, ch).into_iter().flatten());
        }
        let mut n = 0;
        for id in ids {
            if let Some(conn) = inner.conns.get(&id) {
                n += self.offer(&conn.mailbox, frame) as usize;
            }
        }
        self.delivered(n)
    }

    /// Send to every connection of `user` in `tenant`, here and in every other process.
    pub fn to_user(&self, tenant: &TenantId, user: &UserId, frame: &ServerFrame) -> usize {
        let n = self.local_user(tenant, user, &Outbound::new(frame.clone()));
        self.forward(|| {
            Remote::Fanout(Box::new(Envelope::User {
                node: String::new(),
                tenant: tenant.clone(),
                user: user.clone(),
                frame: frame.clone(),
            }))
        });
        n
    }

    fn local_user(&self, tenant: &TenantId, user: &UserId, frame: &Arc<Outbound>) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for id in get(&inner.by_user, tenant, user.as_str()).into_iter().flatten() {
            if let Some(conn) = inner.conns.get(id) {
                n += self.offer(&conn.mailbox, frame) as usize;
            }
        }
        self.delivered(n)
    }

    /// Set a client's presence from connection `conn` and tell the members of its rooms.
    /// Ignored when `conn` is no longer registered (a presence update racing its own disconnect
    /// must not leave a ghost entry behind).
    pub fn set_presence(
        &self,
        conn: u64,
        tenant: &TenantId,
        client: &ClientId,
        user: &UserId,
        status: PresenceStatus,
        metadata: Option<Value>,
    ) {
        {
            let mut inner = self.lock();
            if !inner.conns.contains_key(&conn) {
                return;
            }
            let key = scoped(tenant, client.as_str());
            if status == PresenceStatus::Offline {
                inner.presence.remove(&key);
            } else {
                inner.presence.insert(
                    key,
                    Presence {
                        user: user.clone(),
                        status,
                        metadata: metadata.clone(),
                        expires: Instant::now() + self.presence_ttl,
                    },
                );
            }
            self.gauges(&inner);
        }
        self.broadcast_presence(tenant, client, user, status, metadata);
    }

    /// Keep a client's presence alive (any frame from it counts).
    pub fn touch(&self, tenant: &TenantId, client: &ClientId) {
        let mut inner = self.lock();
        if let Some(p) = get_mut(&mut inner.presence, tenant, client.as_str()) {
            p.expires = Instant::now() + self.presence_ttl;
        }
    }

    fn broadcast_presence(
        &self,
        tenant: &TenantId,
        client: &ClientId,
        user: &UserId,
        status: PresenceStatus,
        metadata: Option<Value>,
    ) {
        self.forward(|| Remote::Presence {
            tenant: tenant.clone(),
            client: client.clone(),
            user: user.clone(),
            status,
            metadata: metadata.clone(),
        });
        let ttl_ms = Some(self.presence_ttl.as_millis() as u64);
        for room in self.rooms_of(tenant, client) {
            let frame = ServerFrame::Presence {
                user_id: user.clone(),
                client_id: client.clone(),
                status,
                metadata: metadata.clone(),
                room_id: Some(room.clone()),
                ttl_ms,
            };
            self.to_room(tenant, &room, &frame, None);
        }
    }

    /// Presence entries in `room`, as frames (what a joiner is told).
    pub fn presence_in(&self, tenant: &TenantId, room: &RoomId) -> Vec<ServerFrame> {
        let inner = self.lock();
        let now = Instant::now();
        let Some(members) = get(&inner.rooms, tenant, room.as_str()) else {
            return Vec::new();
        };
        let mut frames: Vec<ServerFrame> = members
            .iter()
            .filter_map(|c| {
                get(&inner.presence, tenant, c.as_str()).filter(|p| p.expires > now).map(|p| (c, p))
            })
            .map(|(c, p)| ServerFrame::Presence {
                user_id: p.user.clone(),
                client_id: c.clone(),
                status: p.status,
                metadata: p.metadata.clone(),
                room_id: Some(room.clone()),
                ttl_ms: Some(p.expires.saturating_duration_since(now).as_millis() as u64),
            })
            .collect();
        frames.sort_by_key(|f| format!("{f:?}"));
        frames
    }

    /// Drop expired presence (announcing it offline) and memberships of long-gone clients.
    pub fn sweep(&self) {
        let expired: Vec<(TenantId, ClientId, UserId)> = {
            let mut inner = self.lock();
            let now = Instant::now();
            let gone: Vec<Scoped> = inner
                .presence
                .iter()
                .filter(|(_, p)| p.expires <= now)
                .map(|(k, _)| k.clone())
                .collect();
            let mut out = Vec::new();
            for k in gone {
                if let (Some(p), Ok(client)) =
                    (inner.presence.remove(&k), ClientId::new(k.id.clone()))
                {
                    out.push((k.tenant.clone(), client, p.user));
                }
            }
            self.prune(&mut inner, now);
            self.gauges(&inner);
            out
        };
        for (tenant, client, user) in expired {
            self.broadcast_presence(&tenant, &client, &user, PresenceStatus::Offline, None);
        }
    }

    fn prune(&self, inner: &mut Inner, now: Instant) {
        let stale: Vec<Scoped> = inner
            .idle_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) > self.membership_ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            inner.idle_since.remove(&key);
            let Ok(client) = ClientId::new(key.id.clone()) else { continue };
            for room in inner.client_rooms.remove(&key).into_iter().flatten() {
                let rkey = scoped(&key.tenant, room.as_str());
                if let Some(m) = inner.rooms.get_mut(&rkey) {
                    m.remove(&client);
                    if m.is_empty() {
                        inner.rooms.remove(&rkey);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &str, u: &str, c: &str) -> (TenantId, UserId, ClientId) {
        (TenantId::new(t).unwrap(), UserId::new(u).unwrap(), ClientId::new(c).unwrap())
    }

    fn next_frame(r: &Registration) -> Option<ServerFrame> {
        match r.mailbox.try_next() {
            Some(crate::realtime::mailbox::Next::Frame(f)) => Some(f.frame.clone()),
            _ => None,
        }
    }

    fn pong() -> ServerFrame {
        ServerFrame::Pong { nonce: 1 }
    }

    #[test]
    fn an_operator_sees_one_tenants_connections_rooms_and_presence_only() {
        let hub = Hub::new(Arc::default(), 8, Duration::from_secs(90));
        let (t1, u1, c1) = ids("t1", "u1", "c1");
        let (t2, u2, c2) = ids("t2", "u2", "c2");
        let a = hub.register(&t1, &u1, &c1);
        let _b = hub.register(&t2, &u2, &c2);
        hub.join(&t1, &c1, &RoomId::new("lobby").unwrap());
        hub.join(&t2, &c2, &RoomId::new("other").unwrap());
        hub.set_presence(a.id, &t1, &c1, &u1, PresenceStatus::Online, None);
        let view = hub.tenant_view(&t1);
        assert_eq!(view.connections.len(), 1);
        assert_eq!((&view.connections[0].0, &view.connections[0].1), (&u1, &c1));
        assert_eq!(view.rooms, vec![(RoomId::new("lobby").unwrap(), 1)]);
        assert_eq!(view.presence, vec![(PresenceStatus::Online, 1)]);
        assert_eq!(hub.tenant_view(&TenantId::new("nobody").unwrap()).connections, vec![]);
    }

    #[test]
    fn rooms_are_tenant_scoped_and_membership_survives_reconnects() {
        let hub = Hub::new(Arc::default(), 8, Duration::from_secs(90));
        let room = RoomId::new("r").unwrap();
        let (t1, u1, c1) = ids("t1", "u1", "c1");
        let (t2, u2, c2) = ids("t2", "u2", "c2");
        let a = hub.register(&t1, &u1, &c1);
        let b = hub.register(&t2, &u2, &c2);
        hub.join(&t1, &c1, &room);
        hub.join(&t2, &c2, &room);
        assert_eq!(
            hub.to_room(&t1, &room, &pong(), None),
            1,
            "same room name, other tenant: not reached"
        );
        assert!(next_frame(&a).is_some());
        assert!(next_frame(&b).is_none());
        hub.unregister(a.id);
        let again = hub.register(&t1, &u1, &c1);
        assert!(hub.is_member(&t1, &c1, &room), "membership belongs to the client id");
        assert_eq!(hub.to_room(&t1, &room, &pong(), None), 1);
        assert!(next_frame(&again).is_some());
    }

    #[test]
    fn a_room_reaches_exactly_its_members_connections_through_joins_leaves_and_reconnects() {
        let hub = Hub::new(Arc::default(), 64, Duration::from_secs(90));
        let room = RoomId::new("r").unwrap();
        let (t, u, c) = ids("t", "u", "c");
        let other = ClientId::new("other").unwrap();
        let phone = hub.register(&t, &u, &c);
        let stranger = hub.register(&t, &u, &other);
        hub.join(&t, &c, &room);
        hub.join(&t, &c, &room);
        assert_eq!(hub.to_room(&t, &room, &pong(), None), 1, "joined twice, reached once");
        // A second connection of a member is in the room at once; the sender can be skipped.
        let laptop = hub.register(&t, &u, &c);
        assert_eq!(hub.to_room(&t, &room, &pong(), None), 2);
        assert_eq!(hub.to_room(&t, &room, &pong(), Some(laptop.id)), 1);
        hub.unregister(phone.id);
        assert_eq!(hub.to_room(&t, &room, &pong(), None), 1, "a closed connection is gone");
        assert!(hub.leave(&t, &c, &room));
        assert_eq!(hub.to_room(&t, &room, &pong(), None), 0, "left: no connection reached");
        assert!(next_frame(&stranger).is_none(), "never a member, never reached");
        hub.unregister(laptop.id);
        assert!(hub.lock().room_conns.is_empty(), "nothing stays behind");
    }

    #[test]
    fn a_change_is_offered_only_to_its_readers_and_the_tenant_wide() {
        let hub = Hub::new(Arc::default(), 64, Duration::from_secs(90));
        let t = TenantId::new("t").unwrap();
        let conn = |user: &str| {
            hub.register(&t, &UserId::new(user).unwrap(), &ClientId::new(user).unwrap())
        };
        let (alice, bob, admin) = (conn("alice"), conn("bob"), conn("admin"));
        let set = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        hub.set_reads(alice.id, Some(set(&["user:alice", "project:p1"])));
        hub.set_reads(bob.id, Some(set(&["user:bob"])));
        let reached =
            |channels: &[&str]| hub.local_readers(&t, &set(channels), &Outbound::new(pong()));
        assert_eq!(reached(&["user:alice"]), 2, "alice and the tenant-wide admin");
        assert_eq!(reached(&["project:p1", "user:alice"]), 2, "each reader once");
        assert_eq!(reached(&["project:p9"]), 1, "nobody but the admin reads p9");
        // Grants change: bob now reads p1, alice no longer.
        hub.set_reads(bob.id, Some(set(&["user:bob", "project:p1"])));
        hub.set_reads(alice.id, Some(set(&["user:alice"])));
        assert_eq!(reached(&["project:p1"]), 2, "bob and the admin");
        hub.unregister(bob.id);
        hub.unregister(alice.id);
        assert_eq!(reached(&["project:p1", "user:alice"]), 1);
        let inner = hub.lock();
        assert!(inner.channel_conns.is_empty(), "nothing stays behind");
        assert_eq!(inner.wide.get(&t).map(|w| w.len()), Some(1));
        drop(inner);
        hub.unregister(admin.id);
        assert!(hub.lock().wide.is_empty());
    }

    #[test]
    fn direct_messages_reach_every_connection_of_the_user() {
        let hub = Hub::new(Arc::default(), 8, Duration::from_secs(90));
        let (t, u, c) = ids("t", "u", "phone");
        let laptop = ClientId::new("laptop").unwrap();
        let a = hub.register(&t, &u, &c);
        let b = hub.register(&t, &u, &laptop);
        assert_eq!(hub.to_user(&t, &u, &pong()), 2);
        assert!(next_frame(&a).is_some() && next_frame(&b).is_some());
        assert_eq!(hub.to_user(&TenantId::new("other").unwrap(), &u, &pong()), 0);
    }

    #[test]
    fn a_full_buffer_kills_the_slow_consumer_once() {
        let metrics: Arc<Metrics> = Arc::default();
        let hub = Hub::new(metrics.clone(), 2, Duration::from_secs(90));
        let (t, u, c) = ids("t", "u", "c");
        let reg = hub.register(&t, &u, &c);
        for _ in 0..5 {
            hub.to_user(&t, &u, &pong());
        }
        assert!(reg.mailbox.killed());
        assert_eq!(metrics.counter("pf2_ws_disconnects_total", &[("reason", "slow_consumer")]), 1);
    }

    #[test]
    fn presence_is_broadcast_to_rooms_and_goes_offline_with_the_last_connection() {
        let hub = Hub::new(Arc::default(), 16, Duration::from_secs(90));
        let room = RoomId::new("r").unwrap();
        let (t, u1, c1) = ids("t", "u1", "c1");
        let (_, u2, c2) = ids("t", "u2", "c2");
        let a = hub.register(&t, &u1, &c1);
        let b = hub.register(&t, &u2, &c2);
        hub.join(&t, &c1, &room);
        hub.join(&t, &c2, &room);
        hub.set_presence(a.id, &t, &c1, &u1, PresenceStatus::Away, None);
        assert!(matches!(
            next_frame(&b),
            Some(ServerFrame::Presence { status: PresenceStatus::Away, .. })
        ));
        assert_eq!(hub.presence_in(&t, &room).len(), 1);
        hub.unregister(a.id);
        assert!(matches!(
            next_frame(&b),
            Some(ServerFrame::Presence { status: PresenceStatus::Offline, .. })
        ));
        assert_eq!(hub.presence_entries(), 0);
    }

    #[test]
    fn expired_presence_is_swept_and_announced() {
        let hub = Hub::new(Arc::default(), 16, Duration::ZERO);
        let room = RoomId::new("r").unwrap();
        let (t, u1, c1) = ids("t", "u1", "c1");
        let (_, u2, c2) = ids("t", "u2", "c2");
        let a = hub.register(&t, &u1, &c1);
        let b = hub.register(&t, &u2, &c2);
        hub.join(&t, &c1, &room);
        hub.join(&t, &c2, &room);
        hub.set_presence(a.id, &t, &c1, &u1, PresenceStatus::Online, None);
        let _ = next_frame(&b);
        hub.sweep();
        assert_eq!(hub.presence_entries(), 0);
        assert!(matches!(
            next_frame(&b),
            Some(ServerFrame::Presence { status: PresenceStatus::Offline, .. })
        ));
    }
}
