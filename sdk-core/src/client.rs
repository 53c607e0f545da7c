//! The client sync state machine (sans-io, after quinn-proto's `Connection`).
//!
//! Inputs: [`SyncClient::mutate`] (a local change), [`SyncClient::set_online`] (the browser's
//! `online`/`offline`), [`SyncClient::link_opened`] / [`SyncClient::link_closed`] (the transport),
//! [`SyncClient::handle_frame`], and [`SyncClient::handle_timeout`] at the instant
//! [`SyncClient::poll_timeout`] asked for. Outputs come from [`SyncClient::poll_output`]: open or
//! close a transport, send a frame, persist store writes, tell the app something.
//!
//! Status: `offline → connecting → syncing → live`, and `degraded` when the WebSocket failed
//! `ws_failures_before_degraded` times in a row and the client syncs over HTTP long-polling
//! instead (retrying the WebSocket every `websocket_retry_ms`). Reconnects wait a full-jitter
//! exponential backoff: the first wait is uniform in 0.5–3 s, both bounds double per attempt,
//! capped at 30 s.
//!
//! On a WebSocket the client paces itself within the connection's message budget (api.md: 100 a
//! minute, announced in `connected`) through a [`Pacer`]: a push, a pull, the subscription and
//! the heartbeat are slots, granted when the budget allows and built at grant time from what is
//! pending — so a burst of edits becomes one push, and no ping is sent while other traffic
//! proves the link alive. The shell's own frames (documents, presence, room messages) ask
//! through [`SyncClient::want_send`] and are granted with [`Output::Grant`].
//!
//! The local view is the confirmed (server) state with every own operation the server has not
//! yet confirmed re-applied on top — "rebase", as Replicache does it.

use crate::error::{Error, ErrorCode};
use crate::hlc::HybridClock;
use crate::ids::{ClientId, EntityId, EntityKey, EntityType, OperationId, TenantId};
use crate::interaction::{InteractionClass, Transport};
use crate::operation::{Object, Operation, OperationKind, OperationLimits, apply_patch};
use crate::pacing::{Pacer, Slot, WS_RATE};
use crate::protocol::{
    ClientFrame, ResultStatus, ServerFrame, WireConflict, WireEntity, WireEvent, WireOpResult,
    WireOperation, WireRemoval, WireScope,
};
use crate::queue::{OutboundQueue, QueueConfig};
use crate::rng::SplitMix64;
pub use crate::storage::ConfirmedEntity;
use crate::storage::{QuarantinedOp, StoreWrite, StoredState};
use crate::strategy::StrategyRegistry;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Reconnect backoff: attempt `n` (from 0) waits uniformly between `first_min_ms·2ⁿ` and
/// `first_max_ms·2ⁿ`, both capped at `cap_ms`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub first_min_ms: u64,
    pub first_max_ms: u64,
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first_min_ms: 500, first_max_ms: 3_000, cap_ms: 30_000 }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32, rng: &mut SplitMix64) -> u64 {
        let factor = 1u64 << attempt.min(20);
        let lo = self.first_min_ms.saturating_mul(factor).min(self.cap_ms);
        let hi = self.first_max_ms.saturating_mul(factor).min(self.cap_ms);
        rng.range(lo, hi)
    }
}

/// The degraded pull interval grows to at most this many times `poll_interval_ms` (a power of
/// two) while pulls bring nothing.
pub const IDLE_PULL_BACKOFF: u64 = 4;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub client_id: ClientId,
    pub tenant: TenantId,
    /// Seeds the client's random source (backoff jitter, batch ids).
    pub seed: u64,
    pub queue: QueueConfig,
    pub limits: OperationLimits,
    pub backoff: Backoff,
    pub ws_failures_before_degraded: u32,
    pub websocket_retry_ms: u64,
    /// A push or pull unanswered this long is sent again.
    pub request_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Nothing heard for this long: the link is dead.
    pub stale_after_ms: u64,
    /// How often to pull while degraded (no server pokes over long-polling); pulls that bring
    /// nothing back off, doubling up to [`IDLE_PULL_BACKOFF`] times this, until something
    /// changes here or there (the polling budget is shared with documents and events).
    pub poll_interval_ms: u64,
    pub pull_limit: u32,
    /// Partial sync under sync rules: only these of the channels granted (`None`: all).
    pub channels: Option<Vec<String>>,
}

impl ClientConfig {
    pub fn new(client_id: ClientId, tenant: TenantId, seed: u64) -> Self {
        Self {
            client_id,
            tenant,
            seed,
            queue: QueueConfig::default(),
            limits: OperationLimits::default(),
            backoff: Backoff::default(),
            ws_failures_before_degraded: 3,
            websocket_retry_ms: 60_000,
            request_timeout_ms: 15_000,
            heartbeat_ms: 30_000,
            stale_after_ms: 90_000,
            poll_interval_ms: 5_000,
            pull_limit: 500,
            channels: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Offline,
    Connecting,
    Syncing,
    Live,
    Degraded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Offline => "offline",
            Status::Connecting => "connecting",
            Status::Syncing => "syncing",
            Status::Live => "live",
            Status::Degraded => "degraded",
        }
    }
}

/// Something the app should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum AppEvent {
    Status(Status),
    /// The local view of these entities changed.
    Changed(Vec<EntityKey>),
    /// The server resolved a conflict on one of our operations (or recorded one for a person).
    Conflict {
        result: WireOpResult,
        conflict: Option<WireConflict>,
    },
    /// An operation will never apply and was quarantined.
    Rejected(QuarantinedOp),
    /// A Class B event, in sequence order, each once.
    Event(WireEvent),
    /// The server refused the token: call `link_opened`/`refresh_token` with a fresh one.
    AuthRequired,
    /// The event offset is older than retention: events since then are not available.
    EventsUnavailable {
        after: Option<u64>,
    },
    /// A sync of more than one page is under way (the first sync of a large tenant): `received`
    /// entities of `total` so far; the last page reports `received == total`.
    Progress {
        received: u64,
        total: u64,
    },
    /// Any other frame (presence, messages, rooms, snapshot chunks) for the shell to route.
    Frame(ServerFrame),
}

// Outputs are drained right after each input, so the queue stays a few entries long; boxing the
// frame variants would cost an allocation per frame for no memory gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a link over this transport (WebSocket, or long-polling + REST when degraded).
    Connect(Transport),
    /// Close the current link.
    Disconnect,
    Send(ClientFrame),
    /// Send the shell's frame for this slot now — built from everything pending for it (a
    /// document's edits, the latest presence): its share of the budget is taken.
    Grant(Slot),
    /// Make these writes durable, in order, atomically.
    Store(Vec<StoreWrite>),
    Event(AppEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Opening(Transport),
    Up(Transport),
}

#[derive(Debug, Clone)]
struct InFlight {
    id: String,
    deadline: u64,
}

#[derive(Debug)]
pub struct SyncClient {
    config: ClientConfig,
    strategies: StrategyRegistry,
    status: Status,
    online: bool,
    link: Link,
    transport: Transport,
    ws_failures: u32,
    attempt: u32,
    reconnect_at: Option<u64>,
    ws_retry_at: Option<u64>,
    next_ping_at: Option<u64>,
    next_poll_at: Option<u64>,
    /// Pulls in a row that brought nothing (the degraded pull interval backs off with them).
    idle_pulls: u32,
    last_heard: u64,
    queue: OutboundQueue,
    /// Acknowledged operations the confirmed state may not include yet.
    awaiting: Vec<Operation>,
    confirmed: BTreeMap<EntityKey, ConfirmedEntity>,
    /// What the confirmed state was synced for (sync rules; `None`: no rules).
    scope: Option<WireScope>,
    /// The channels asked for (partial sync; `None`: all granted).
    channels: Option<Vec<String>>,
    /// They changed while a pull was out: pull again when it is answered.
    pull_again: bool,
    /// Entities received so far by a sync of several pages (`None`: none under way).
    sync_progress: Option<u64>,
    cursor: u64,
    /// The highest tenant version heard of (pokes, push results); pull until the cursor reaches it.
    known_version: u64,
    confirmed_seq: u64,
    last_event: Option<u64>,
    subscription: Option<Vec<String>>,
    hlc: HybridClock,
    rng: SplitMix64,
    push: Option<InFlight>,
    pull: Option<InFlight>,
    counter: u64,
    outputs: VecDeque<Output>,
    /// The WebSocket's message budget.
    pacer: Pacer,
    /// When this client last sent a frame (a heartbeat is due only after a silence).
    last_sent: u64,
}

impl SyncClient {
    pub fn new(config: ClientConfig, strategies: StrategyRegistry) -> Self {
        Self::recover(config, strategies, StoredState::default())
    }

    /// Start from what the store held (queue, cache, cursors) after a reload or crash.
    pub fn recover(
        config: ClientConfig,
        strategies: StrategyRegistry,
        stored: StoredState,
    ) -> Self {
        let queue = OutboundQueue::recover(config.client_id.clone(), config.queue.clone(), &stored);
        let rng = SplitMix64::new(config.seed);
        let transport = Transport::WebSocket;
        Self {
            strategies,
            status: Status::Offline,
            online: false,
            link: Link::Down,
            transport,
            ws_failures: 0,
            attempt: 0,
            reconnect_at: None,
            ws_retry_at: None,
            next_ping_at: None,
            next_poll_at: None,
            idle_pulls: 0,
            last_heard: 0,
            queue,
            awaiting: Vec::new(),
            confirmed: stored.entities.into_iter().map(|e| (e.key.clone(), e)).collect(),
            scope: stored.scope,
            channels: config.channels.clone(),
            pull_again: false,
            sync_progress: None,
            cursor: stored.cursor,
            known_version: stored.cursor,
            confirmed_seq: stored.confirmed_seq,
            last_event: stored.last_event,
            subscription: None,
            hlc: HybridClock::new().resume(stored.clock),
            rng,
            push: None,
            pull: None,
            counter: 0,
            outputs: VecDeque::new(),
            pacer: Pacer::new(WS_RATE, 0),
            last_sent: 0,
            config,
        }
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn queue(&self) -> &OutboundQueue {
        &self.queue
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn last_event(&self) -> Option<u64> {
        self.last_event
    }

    pub fn client_id(&self) -> &ClientId {
        &self.config.client_id
    }

    pub fn confirmed(&self) -> impl Iterator<Item = &ConfirmedEntity> {
        self.confirmed.values()
    }

    /// Whether every own operation is confirmed by the server's state as this client knows it.
    pub fn is_settled(&self) -> bool {
        self.queue.is_empty() && self.unconfirmed().next().is_none()
    }

    fn unconfirmed(&self) -> impl Iterator<Item = &Operation> {
        let floor = self.confirmed_seq;
        self.awaiting
            .iter()
            .chain(self.queue.pending().map(|q| &q.op))
            .filter(move |op| op.client_seq.unwrap_or(u64::MAX) > floor)
    }

    /// The optimistic local view of an object entity (`None`: missing or deleted).
    pub fn get(&self, key: &EntityKey) -> Option<Object> {
        let base = self.confirmed.get(key);
        let mut state = base.and_then(|e| if e.deleted { None } else { e.state.clone() });
        for op in self.unconfirmed().filter(|op| &op.key == key) {
            match &op.kind {
                OperationKind::Create(o) => {
                    state = Some(
                        o.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                }
                OperationKind::Update(p) => apply_patch(state.get_or_insert_with(Object::new), p),
                OperationKind::Delete => state = None,
                OperationKind::Crdt(_) => {}
            }
        }
        state
    }

    /// The optimistic local view of a CRDT document: confirmed bytes with pending changes merged.
    pub fn get_crdt(&self, key: &EntityKey) -> Option<Vec<u8>> {
        let merger = self.strategies.crdt_for(&key.entity_type)?;
        let mut doc = self.confirmed.get(key).filter(|e| !e.deleted).and_then(|e| e.crdt.clone());
        for op in self.unconfirmed().filter(|op| &op.key == key) {
            match &op.kind {
                OperationKind::Crdt(change) => {
                    if let Ok(d) = merger.apply(doc.as_deref(), change) {
                        doc = Some(d);
                    }
                }
                OperationKind::Delete => doc = None,
                _ => {}
            }
        }
        doc
    }

    /// Every visible entity of a type, in id order.
    pub fn query(&self, entity_type: &EntityType) -> Vec<(EntityId, Object)> {
        let keys: BTreeSet<&EntityKey> = self
            .confirmed
            .keys()
            .chain(self.unconfirmed().map(|op| &op.key))
            .filter(|k| &k.entity_type == entity_type)
            .collect();
        keys.into_iter().filter_map(|k| self.get(k).map(|o| (k.entity_id.clone(), o))).collect()
    }

    // ---- outputs -------------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest instant at which [`Self::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.reconnect_at,
            self.ws_retry_at,
            self.next_ping_at,
            self.next_poll_at,
            self.push.as_ref().map(|p| p.deadline),
            self.pull.as_ref().map(|p| p.deadline),
            self.link_up().then(|| self.pacer.poll_timeout()).flatten(),
            self.link_up().then(|| self.last_heard + self.config.stale_after_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- inputs --------------------------------------------------------------------------

    /// Make a local change: validated, queued durably, visible at once in the local view, and
    /// sent when a link is up. Class C.
    pub fn mutate(
        &mut self,
        now_ms: u64,
        id: OperationId,
        key: EntityKey,
        kind: OperationKind,
    ) -> Result<(), Error> {
        self.idle_pulls = 0;
        if key.tenant != self.config.tenant {
            return Err(Error::invalid_op("the entity belongs to another tenant"));
        }
        let seq = self.queue.next_seq();
        let mut clock = self.confirmed.get(&key).map(|e| e.clock.clone()).unwrap_or_default();
        for op in self.unconfirmed().filter(|op| op.key == key) {
            clock.merge(&op.clock);
        }
        clock.set(self.config.client_id.clone(), seq);
        let timestamp = self.hlc.now(now_ms);
        let op = Operation {
            id,
            client_id: self.config.client_id.clone(),
            client_seq: Some(seq),
            key: key.clone(),
            kind,
            timestamp,
            clock,
            class: InteractionClass::C,
        };
        op.validate(&self.config.limits)?;
        if matches!(op.kind, OperationKind::Crdt(_))
            && self.strategies.crdt_for(&key.entity_type).is_none()
        {
            return Err(Error::invalid_op(format!(
                "entity type {} is not a CRDT type",
                key.entity_type
            )));
        }
        let mut writes = self.queue.push(op);
        writes.push(StoreWrite::SetClock(timestamp));
        self.outputs.push_back(Output::Store(writes));
        self.emit(AppEvent::Changed(vec![key]));
        self.pump(now_ms);
        Ok(())
    }

    /// The device's connectivity changed (`online` / `offline` events).
    pub fn set_online(&mut self, now_ms: u64, online: bool) {
        if online == self.online {
            return;
        }
        self.online = online;
        if online {
            // A fresh start: back to the WebSocket, whatever failed before.
            self.attempt = 0;
            self.ws_failures = 0;
            self.transport = Transport::WebSocket;
            self.connect(now_ms);
        } else {
            if self.link != Link::Down {
                self.outputs.push_back(Output::Disconnect);
            }
            self.drop_link();
            self.reconnect_at = None;
            self.ws_retry_at = None;
        }
        self.update_status();
    }

    /// The transport asked for with [`Output::Connect`] is open. `token` authenticates a
    /// WebSocket (long-polling sends it as a header instead).
    pub fn link_opened(&mut self, now_ms: u64, token: &str) {
        let Link::Opening(t) = self.link else { return };
        self.link = Link::Up(t);
        self.last_heard = now_ms;
        if t == Transport::WebSocket {
            // The server's budget starts full once it has the token (which it does not count).
            let rate = self.pacer.rate();
            self.pacer.reset(rate, now_ms);
            self.outputs.push_back(Output::Send(ClientFrame::Auth {
                token: token.to_string(),
                client_id: self.config.client_id.clone(),
            }));
            self.next_ping_at = Some(now_ms + self.config.heartbeat_ms);
        } else {
            self.attempt = 0;
            self.idle_pulls = 0;
            self.next_poll_at = Some(now_ms + self.config.poll_interval_ms);
        }
        if self.subscription.is_some() {
            self.send_subscribe(now_ms);
        }
        self.send_pull(now_ms);
        self.pump(now_ms);
        self.update_status();
    }

    /// The link failed to open or dropped. Schedules a reconnect; after repeated WebSocket
    /// failures, falls back to long-polling.
    pub fn link_closed(&mut self, now_ms: u64) {
        if self.link == Link::Down {
            return;
        }
        let was_ws = matches!(
            self.link,
            Link::Opening(Transport::WebSocket) | Link::Up(Transport::WebSocket)
        );
        self.drop_link();
        if was_ws {
            self.ws_failures += 1;
            if self.ws_failures >= self.config.ws_failures_before_degraded
                && self.transport == Transport::WebSocket
            {
                self.transport = Transport::LongPoll;
                self.ws_retry_at = Some(now_ms + self.config.websocket_retry_ms);
                self.attempt = 0;
            }
        }
        if self.online {
            let delay = self.config.backoff.delay(self.attempt, &mut self.rng);
            self.attempt = self.attempt.saturating_add(1);
            self.reconnect_at = Some(now_ms + delay);
        }
        self.update_status();
    }

    /// A fresh token for the live socket (token refresh).
    pub fn refresh_token(&mut self, now_ms: u64, token: &str) {
        if self.link == Link::Up(Transport::WebSocket) {
            // It cannot wait (the old token is about to expire): sent now, and counted.
            self.pacer.spend(now_ms);
            self.last_sent = now_ms;
            self.outputs.push_back(Output::Send(ClientFrame::RefreshToken { token: token.into() }));
        }
    }

    /// The slot a shell's realtime frame waits in: presence by room (its latest value wins),
    /// anything else on its own as the `n`th such frame.
    pub fn realtime_slot(frame: &ClientFrame, n: u64) -> Slot {
        match frame {
            ClientFrame::Presence { room_id, .. } => {
                Slot::Presence(room_id.as_ref().map(|r| r.to_string()).unwrap_or_default())
            }
            _ => Slot::Frame(n),
        }
    }

    /// The shell sent `frames` for a slot granted with [`Output::Grant`] (a document's sync
    /// message, possibly in parts): each is charged as the server charges it (`Tickets::charge`:
    /// the grant paid for the first; a reply on a ticket is free), so the mirror stays true.
    pub fn sent_granted(&mut self, now_ms: u64, frames: &[ClientFrame]) {
        if self.link == Link::Up(Transport::WebSocket) {
            let replies: Vec<Option<&str>> = frames.iter().map(ClientFrame::reply_to).collect();
            self.pacer.sent(now_ms, &replies);
            self.last_sent = now_ms;
        }
    }

    /// The shell wants to send its frame for `slot` (a document's sync message, presence, a
    /// room message): granted now or when the budget allows, as [`Output::Grant`]; wanting a
    /// slot that already waits adds nothing. `false` when no WebSocket is up (the shell has
    /// its own way over HTTP, or sends once a link is back).
    pub fn want_send(&mut self, now_ms: u64, slot: Slot) -> bool {
        if self.link != Link::Up(Transport::WebSocket) {
            return false;
        }
        self.pacer.want(slot);
        self.flush(now_ms);
        true
    }

    /// Class B: follow the tenant's event stream, resuming after the last event seen.
    pub fn subscribe(&mut self, now_ms: u64, event_types: Vec<String>) {
        self.subscription = Some(event_types);
        self.send_subscribe(now_ms);
    }

    /// Class B from a chosen position: events after `after` (0: from the beginning of what the
    /// server retains), then live. Moves this client's stream position, durably.
    pub fn subscribe_from(&mut self, now_ms: u64, event_types: Vec<String>, after: u64) {
        self.last_event = Some(after);
        self.outputs.push_back(Output::Store(vec![StoreWrite::SetLastEvent(after)]));
        self.subscribe(now_ms, event_types);
    }

    pub fn handle_frame(&mut self, now_ms: u64, frame: ServerFrame) {
        if let ServerFrame::Batch { frames } = frame {
            // One level only: a batch inside a batch is not a frame the server sends.
            for f in frames.into_iter().filter(|f| !matches!(f, ServerFrame::Batch { .. })) {
                self.handle_frame(now_ms, f);
            }
            return;
        }
        if !self.link_up() {
            return;
        }
        self.last_heard = now_ms;
        match frame {
            ServerFrame::Connected { rate_limit, .. } => {
                self.attempt = 0;
                self.ws_failures = 0;
                if let Some(rate) = rate_limit.filter(|r| r.limit > 0 && r.window_ms > 0) {
                    self.pacer.set_rate(rate, now_ms);
                }
            }
            ServerFrame::PushResult { batch_id, results, conflicts, current_version } => {
                self.heard_of(now_ms, current_version);
                if self.push.as_ref().is_some_and(|p| p.id == batch_id) {
                    self.push = None;
                    self.settle_push(results, conflicts);
                    // Acknowledged writes leave the local view only when a delta confirms them,
                    // even those that changed nothing on the server (no poke will come for them).
                    if !self.awaiting.is_empty() && self.pull.is_none() {
                        self.send_pull(now_ms);
                    }
                }
            }
            ServerFrame::Delta {
                since,
                version,
                entities,
                has_more,
                client_seq,
                removed,
                scope,
                remaining,
            } => {
                self.progress(since, entities.len() as u64, has_more, remaining);
                let page = DeltaPage { since, version, entities, has_more, client_seq, removed };
                self.apply_delta(now_ms, page, scope);
            }
            ServerFrame::Poke { version } => self.heard_of(now_ms, version),
            ServerFrame::Event { event } => {
                if self.last_event.is_none_or(|last| event.sequence > last) {
                    self.last_event = Some(event.sequence);
                    self.outputs
                        .push_back(Output::Store(vec![StoreWrite::SetLastEvent(event.sequence)]));
                    self.emit(AppEvent::Event(event));
                }
            }
            ServerFrame::Pong { .. } => {}
            ServerFrame::DocSync { ref document_id, more: false, ticket: true, .. } => {
                self.pacer.ticket(document_id);
                self.emit(AppEvent::Frame(frame));
            }
            ServerFrame::Error { code, message, request_id, details } => {
                self.handle_error(now_ms, code, message, request_id, details);
            }
            other => self.emit(AppEvent::Frame(other)),
        }
        self.pump(now_ms);
        self.update_status();
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.reconnect_at.is_some_and(|t| t <= now_ms) {
            self.reconnect_at = None;
            self.connect(now_ms);
        }
        if self.ws_retry_at.is_some_and(|t| t <= now_ms) {
            self.ws_retry_at = None;
            // Try the WebSocket again; one more failure returns to long-polling at once.
            self.transport = Transport::WebSocket;
            self.ws_failures = self.config.ws_failures_before_degraded.saturating_sub(1);
            if self.link != Link::Down {
                self.outputs.push_back(Output::Disconnect);
                self.drop_link();
                self.connect(now_ms);
            }
        }
        if self.link_up() && now_ms >= self.last_heard + self.config.stale_after_ms {
            self.outputs.push_back(Output::Disconnect);
            self.link_closed(now_ms);
            return;
        }
        if self.push.as_ref().is_some_and(|p| p.deadline <= now_ms) {
            self.push = None;
            self.queue.requeue_in_flight();
        }
        if self.pull.as_ref().is_some_and(|p| p.deadline <= now_ms) {
            self.pull = None;
            self.send_pull(now_ms);
        }
        if self.next_ping_at.is_some_and(|t| t <= now_ms) {
            // Traffic both ways within the interval already proves the link alive.
            let quiet = |at: u64| now_ms.saturating_sub(at) >= self.config.heartbeat_ms;
            if quiet(self.last_sent) || quiet(self.last_heard) {
                self.pacer.want(Slot::Ping);
            }
            self.next_ping_at = Some(now_ms + self.config.heartbeat_ms);
        }
        if self.next_poll_at.is_some_and(|t| t <= now_ms) {
            if self.pull.is_none() {
                self.send_pull(now_ms);
            }
            let backoff = 1u64 << self.idle_pulls.min(IDLE_PULL_BACKOFF.trailing_zeros());
            self.next_poll_at = Some(now_ms + self.config.poll_interval_ms * backoff);
        }
        self.pump(now_ms);
        self.flush(now_ms);
        self.update_status();
    }

    // ---- internals -----------------------------------------------------------------------

    /// The tenant is at least at `version`: pull unless a pull is already on its way (its
    /// answer is checked against `known_version` when it lands).
    fn heard_of(&mut self, now_ms: u64, version: u64) {
        self.known_version = self.known_version.max(version);
        if self.known_version > self.cursor && self.pull.is_none() {
            self.send_pull(now_ms);
        }
    }

    fn link_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    fn emit(&mut self, e: AppEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    fn connect(&mut self, _now_ms: u64) {
        if !self.online || self.link != Link::Down {
            return;
        }
        self.link = Link::Opening(self.transport);
        self.outputs.push_back(Output::Connect(self.transport));
    }

    fn drop_link(&mut self) {
        // What is still needed is wanted again on the next link.
        self.pacer.clear();
        self.link = Link::Down;
        self.push = None;
        self.pull = None;
        self.next_ping_at = None;
        self.next_poll_at = None;
        self.queue.requeue_in_flight();
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}-{:08x}", self.counter, self.rng.next_u64() as u32)
    }

    /// Operations the server acknowledged: each stays in the local view — and in the store —
    /// until a delta's state includes it, so that whoever reads the store (a crash recovery,
    /// another tab) never sees it vanish between the ack and the delta. A recovered client
    /// sends such an operation again; the server answers it as a duplicate.
    fn await_confirmation(&mut self, acked: Vec<Operation>, writes: &mut Vec<StoreWrite>) {
        for op in acked {
            if op.client_seq.unwrap_or(0) > self.confirmed_seq {
                self.awaiting.push(op);
            } else {
                writes.push(StoreWrite::DeleteOp(op.id.clone()));
            }
        }
    }

    fn send_pull(&mut self, now_ms: u64) {
        self.send_slot(now_ms, Slot::Pull);
    }

    /// Send `slot`'s frame: within the budget on a WebSocket, at once over HTTP, not at all
    /// without a link.
    fn send_slot(&mut self, now_ms: u64, slot: Slot) {
        if self.link == Link::Up(Transport::WebSocket) {
            self.pacer.want(slot);
            self.flush(now_ms);
        } else if self.link_up() {
            self.build(now_ms, slot);
        }
    }

    /// The frame for `slot`, built now from what is pending.
    fn build(&mut self, now_ms: u64, slot: Slot) {
        match slot {
            Slot::Push => self.push_now(now_ms),
            Slot::Pull if self.pull.is_none() => self.pull_now(now_ms),
            Slot::Pull => {}
            Slot::Subscribe => self.subscribe_now(),
            Slot::Ping => {
                self.counter += 1;
                self.outputs.push_back(Output::Send(ClientFrame::Ping { nonce: self.counter }));
            }
            other => self.outputs.push_back(Output::Grant(other)),
        }
    }

    fn pull_now(&mut self, now_ms: u64) {
        let id = self.next_id("pull");
        self.pull = Some(InFlight { id, deadline: now_ms + self.config.request_timeout_ms });
        self.outputs.push_back(Output::Send(ClientFrame::Pull {
            since: self.cursor,
            limit: Some(self.config.pull_limit),
            channels: self.channels.clone(),
            held: self.scope.as_ref().and_then(|s| s.channels.clone()),
        }));
    }

    fn send_subscribe(&mut self, now_ms: u64) {
        self.send_slot(now_ms, Slot::Subscribe);
    }

    fn subscribe_now(&mut self) {
        let Some(types) = self.subscription.clone() else { return };
        self.outputs.push_back(Output::Send(ClientFrame::Subscribe {
            after: self.last_event,
            event_types: types,
            attributes: Default::default(),
        }));
    }

    /// Send what the budget allows of what waits, each frame built now from what is pending.
    fn flush(&mut self, now_ms: u64) {
        if self.link != Link::Up(Transport::WebSocket) {
            return;
        }
        while let Some(slot) = self.pacer.poll_grant(now_ms) {
            self.last_sent = now_ms;
            self.build(now_ms, slot);
        }
    }

    /// Send the next batch if the link is up and none is in flight.
    fn pump(&mut self, now_ms: u64) {
        if self.push.is_none() && self.queue.pending().next().is_some() {
            self.send_slot(now_ms, Slot::Push);
        }
    }

    fn push_now(&mut self, now_ms: u64) {
        if self.push.is_some() {
            return;
        }
        let Some(batch) = self.queue.take_batch() else { return };
        let id = self.next_id("batch");
        self.push =
            Some(InFlight { id: id.clone(), deadline: now_ms + self.config.request_timeout_ms });
        let operations = batch.iter().map(WireOperation::from_operation).collect();
        self.outputs.push_back(Output::Send(ClientFrame::Push { batch_id: id, operations }));
    }

    fn settle_push(&mut self, results: Vec<WireOpResult>, conflicts: Vec<WireConflict>) {
        let mut writes = Vec::new();
        let mut changed = BTreeSet::new();
        let mut stop = false;
        for r in results {
            let Some(seq) = r.client_seq else { continue };
            if stop {
                break;
            }
            match r.status {
                ResultStatus::Applied | ResultStatus::Conflict => {
                    let (acked, _) = self.queue.ack_up_to(seq);
                    self.await_confirmation(acked, &mut writes);
                    if r.status == ResultStatus::Conflict {
                        let conflict = r
                            .conflict_id
                            .as_ref()
                            .and_then(|id| conflicts.iter().find(|c| &c.conflict_id == id))
                            .cloned();
                        self.emit(AppEvent::Conflict { result: r, conflict });
                    }
                }
                ResultStatus::Refused => {
                    let (code, message) = r
                        .error
                        .map(|e| (e.code, e.message))
                        .unwrap_or((ErrorCode::InternalError, "refused".into()));
                    if code.is_transient() {
                        // Resend from here later (SEQ_GAP, RATE_LIMIT, …).
                        stop = true;
                        continue;
                    }
                    let consumed = !matches!(code, ErrorCode::SeqReused);
                    // Operations before it in the batch are settled.
                    let (acked, _) = self.queue.ack_up_to(seq - 1);
                    self.await_confirmation(acked, &mut writes);
                    let (q, w) = self.queue.quarantine(seq, code, message, consumed);
                    writes.extend(w);
                    if let Some(q) = q {
                        changed.insert(q.op.key.clone());
                        self.emit(AppEvent::Rejected(q));
                    }
                }
            }
        }
        self.queue.settle();
        if !writes.is_empty() {
            self.outputs.push_back(Output::Store(writes));
        }
        if !changed.is_empty() {
            self.emit(AppEvent::Changed(changed.into_iter().collect()));
        }
    }

    fn apply_delta(&mut self, now_ms: u64, page: DeltaPage, scope: Option<WireScope>) {
        let DeltaPage { since, version, entities, has_more, client_seq, removed } = page;
        if since > self.cursor {
            // A delta from a cursor we never reached would skip changes: ask again.
            self.pull = None;
            self.send_pull(now_ms);
            return;
        }
        if version < self.cursor {
            // A late copy of an answer already overtaken (the network duplicated or reordered
            // it): its entities are older than ours, and its scope would take back channels
            // granted since — forgetting their entities for good.
            return;
        }
        let rules = |s: &Option<WireScope>| s.as_ref().map(|s| s.rules.clone());
        let reset = scope.as_ref().is_some_and(|s| s.reset);
        if reset
            || rules(&self.scope) != rules(&scope)
                && (self.cursor > 0 || !self.confirmed.is_empty())
        {
            // The sync rules changed (or came, or went): what is cached may no longer be
            // readable, and what is readable may never have come. Start over from zero.
            self.start_over(now_ms);
            return;
        }
        self.idle_pulls = if entities.is_empty() && removed.is_empty() {
            self.idle_pulls.saturating_add(1)
        } else {
            0
        };
        let mut writes = Vec::new();
        let mut changed = BTreeSet::new();
        for e in entities {
            let Ok(crdt) = e.crdt_bytes() else { continue };
            let key = EntityKey::new(self.config.tenant.clone(), e.entity_type, e.entity_id);
            if self.confirmed.get(&key).is_some_and(|c| c.version >= e.version) {
                continue;
            }
            let _ = self.hlc.observe(e.timestamp, now_ms);
            let entity = ConfirmedEntity {
                key: key.clone(),
                version: e.version,
                state: match e.state {
                    Value::Object(o) => Some(o),
                    _ => None,
                },
                crdt,
                deleted: e.deleted,
                clock: e.vector_clock,
                timestamp: e.timestamp,
                channels: e.channels,
            };
            writes.push(StoreWrite::PutEntity(entity.clone()));
            self.confirmed.insert(key.clone(), entity);
            changed.insert(key);
        }
        for r in removed {
            let key = EntityKey::new(self.config.tenant.clone(), r.entity_type, r.entity_id);
            if self.confirmed.get(&key).is_some_and(|c| c.version <= r.version) {
                self.confirmed.remove(&key);
                writes.push(StoreWrite::DeleteEntity(key.clone()));
                changed.insert(key);
            }
        }
        if scope != self.scope {
            self.forget_unreadable(scope.as_ref(), &mut writes, &mut changed);
            writes.push(StoreWrite::SetScope(scope.clone()));
            self.scope = scope;
        }
        self.cursor = self.cursor.max(version);
        if !has_more && let Some(s) = client_seq.filter(|s| *s > self.confirmed_seq) {
            self.confirmed_seq = s;
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting)
                .into_iter()
                .partition(|op| op.client_seq.unwrap_or(0) <= s);
            self.awaiting = keep;
            for op in done {
                // Stored until now: the same transaction stores the state that includes it.
                writes.push(StoreWrite::DeleteOp(op.id.clone()));
                changed.insert(op.key);
            }
        }
        writes.push(StoreWrite::SetCursor {
            version: self.cursor,
            confirmed_seq: self.confirmed_seq,
        });
        writes.push(StoreWrite::SetClock(self.hlc.last()));
        self.outputs.push_back(Output::Store(writes));
        if !changed.is_empty() {
            self.emit(AppEvent::Changed(changed.into_iter().collect()));
        }
        self.pull = None;
        // Acknowledged operations are in the server's ledger, so a pull answered after their
        // acknowledgement confirms them: pull again until none is left waiting.
        let again = std::mem::take(&mut self.pull_again);
        if has_more || again || self.known_version > self.cursor || !self.awaiting.is_empty() {
            self.send_pull(now_ms);
        }
    }

    /// The channels synced changed to `scope`'s: forget every cached entity that belongs to
    /// none of them any more (move-out), with a `Changed` for each.
    fn forget_unreadable(
        &mut self,
        scope: Option<&WireScope>,
        writes: &mut Vec<StoreWrite>,
        changed: &mut BTreeSet<EntityKey>,
    ) {
        let Some(held) = scope.and_then(|s| s.channels.as_ref()) else { return };
        let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
        let gone: Vec<EntityKey> = self
            .confirmed
            .values()
            .filter(|e| {
                e.channels.as_ref().is_some_and(|c| !c.iter().any(|c| held.contains(c.as_str())))
            })
            .map(|e| e.key.clone())
            .collect();
        for key in gone {
            self.confirmed.remove(&key);
            writes.push(StoreWrite::DeleteEntity(key.clone()));
            changed.insert(key);
        }
    }

    /// Forget the cached state and pull from zero (the sync rules changed).
    fn start_over(&mut self, now_ms: u64) {
        let keys: Vec<EntityKey> = std::mem::take(&mut self.confirmed).into_keys().collect();
        let mut writes: Vec<StoreWrite> =
            keys.iter().cloned().map(StoreWrite::DeleteEntity).collect();
        self.cursor = 0;
        self.scope = None;
        writes.push(StoreWrite::SetScope(None));
        writes.push(StoreWrite::SetCursor { version: 0, confirmed_seq: self.confirmed_seq });
        self.outputs.push_back(Output::Store(writes));
        if !keys.is_empty() {
            self.emit(AppEvent::Changed(keys));
        }
        self.pull = None;
        self.send_pull(now_ms);
    }

    /// A multi-page sync's progress: started by a page with more to come, counted on until the
    /// last page (a page not continuing from the cursor restarts the count).
    fn progress(&mut self, since: u64, received: u64, has_more: bool, remaining: Option<u64>) {
        if since > self.cursor {
            return;
        }
        let so_far = match self.sync_progress {
            Some(p) if since == self.cursor => p + received,
            _ if has_more => received,
            _ => return,
        };
        let total = so_far + if has_more { remaining.unwrap_or(0) } else { 0 };
        self.sync_progress = has_more.then_some(so_far);
        self.emit(AppEvent::Progress { received: so_far, total: total.max(so_far) });
    }

    /// Partial sync: sync only these of the channels granted (`None`: all). What the new set
    /// adds arrives whole with the next delta; what it drops is forgotten then.
    pub fn set_channels(&mut self, now_ms: u64, channels: Option<Vec<String>>) {
        if self.channels == channels {
            return;
        }
        self.channels = channels;
        if self.pull.is_some() {
            self.pull_again = true;
        } else if self.link_up() {
            self.send_pull(now_ms);
        }
    }

    /// The channels asked for (partial sync), `None`: all granted.
    pub fn channels(&self) -> Option<&[String]> {
        self.channels.as_deref()
    }

    /// What the cached state was synced for (sync rules), `None` without rules.
    pub fn scope(&self) -> Option<&WireScope> {
        self.scope.as_ref()
    }

    fn handle_error(
        &mut self,
        now_ms: u64,
        code: ErrorCode,
        message: String,
        request_id: Option<String>,
        details: Option<Value>,
    ) {
        let about_push =
            request_id.is_some() && self.push.as_ref().map(|p| &p.id) == request_id.as_ref();
        match code {
            ErrorCode::AuthFailed => self.emit(AppEvent::AuthRequired),
            ErrorCode::SnapshotRequired if !about_push => {
                self.emit(AppEvent::EventsUnavailable { after: self.last_event })
            }
            _ if about_push => {
                self.push = None;
                if code.is_transient() {
                    self.queue.requeue_in_flight();
                } else {
                    let (q, writes) = self.queue.batch_refused(code, message);
                    self.outputs.push_back(Output::Store(writes));
                    if let Some(q) = q {
                        let key = q.op.key.clone();
                        self.emit(AppEvent::Rejected(q));
                        self.emit(AppEvent::Changed(vec![key]));
                    }
                }
            }
            _ => self.emit(AppEvent::Frame(ServerFrame::Error {
                code,
                message,
                request_id,
                details,
            })),
        }
        let _ = now_ms;
    }

    fn update_status(&mut self) {
        let next = match self.link {
            _ if !self.online => Status::Offline,
            Link::Down | Link::Opening(_) => Status::Connecting,
            Link::Up(Transport::LongPoll) => Status::Degraded,
            Link::Up(_) => {
                let waiting = self.pacer.is_waiting(&Slot::Pull);
                if self.pull.is_none() && !waiting && self.push.is_none() && self.queue.is_empty() {
                    Status::Live
                } else {
                    Status::Syncing
                }
            }
        };
        if next != self.status {
            self.status = next;
            self.emit(AppEvent::Status(next));
        }
    }
}

/// One `delta` frame's page, as [`SyncClient::apply_delta`] takes it.
struct DeltaPage {
    since: u64,
    version: u64,
    entities: Vec<WireEntity>,
    has_more: bool,
    client_seq: Option<u64>,
    removed: Vec<WireRemoval>,
}

#[cfg(test)]
mod tests;
