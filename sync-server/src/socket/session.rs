//! The realtime session: one per socket, whichever transport carries it (`/v1/ws`, Socket.IO).
//! Authentication's outcome, registration, room restore, presence, the rate limit, token
//! refresh, every frame's handling, audit and teardown live here, once; a transport only turns
//! its bytes or events into [`ClientFrame`]s and drains the session's mailbox back out (as
//! centrifuge's `Transport` interface does for its client). A rule added here applies to every
//! socket by construction.

use crate::audit::AuditRecord;
use crate::auth::Identity;
use crate::bus::EventBus;
use crate::error::ApiError;
use crate::ratelimit::Rate;
use crate::realtime::mailbox::{Closing, Mailbox};
use crate::realtime::outbound::Outbound;
use crate::rooms::Outgoing;
use crate::state::AppState;
use crate::store::{NackOutcome, SubscriptionKind};
use crate::sync::PullRequest;
use crate::tail::Interest;
use crate::{telemetry, trace};
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, TenantId};
use sdk_core::interaction::{InteractionClass, Transport};
use sdk_core::protocol::{
    ClientFrame, EventFilter, ReconcileRequest, ServerFrame, WireEntity, WireOperation,
};
use sdk_core::snapshot::{canonical_json, chunk};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;

/// Close codes.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Authentication failed or the token expired (4000–4999 are the application's).
pub const CLOSE_AUTH: u16 = 4401;

/// Messages over the rate limit tolerated (each answered with a warning) before disconnecting.
const RATE_GRACE: u32 = 10;

/// Which transport a session rides: what its audit entries and metrics name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    /// The audit log's target.
    pub target: &'static str,
    /// The `transport` label of the connection counter (none for the native protocol).
    pub label: Option<&'static str>,
    /// Whether the session judges liveness (a silent client goes stale), or the transport
    /// does (Socket.IO: engine.io's own ping, which never reaches the session).
    pub stale_check: bool,
}

pub const NATIVE: Endpoint =
    Endpoint { transport: Transport::WebSocket, target: "/v1/ws", label: None, stale_check: true };
pub const SOCKET_IO: Endpoint = Endpoint {
    transport: Transport::SocketIo,
    target: "/socket.io",
    label: Some("socket.io"),
    stale_check: false,
};

/// Why a socket may not open (checked before authentication, on both transports).
#[derive(Debug)]
pub enum Refusal {
    Origin,
    Capacity,
}

/// Whether a socket from `origin` may open now: the Origin allowlist and the connection limit.
pub async fn admission(
    state: &AppState,
    endpoint: Endpoint,
    origin: Option<&str>,
    host: Option<&str>,
    ip: &str,
) -> Result<(), Refusal> {
    if !super::origin_allowed(&state.limits.ws_allowed_origins, origin, host) {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "origin")]);
        state
            .audit
            .write(&AuditRecord {
                tenant: "-".into(),
                actor: "-".into(),
                action: "ws.refused",
                target: endpoint.target,
                outcome: "origin".into(),
                details: json!({ "origin": origin, "ip": ip }),
            })
            .await;
        return Err(Refusal::Origin);
    }
    if state.hub.connections() >= state.limits.ws_max_connections {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "capacity")]);
        return Err(Refusal::Capacity);
    }
    Ok(())
}

/// A token that did not verify (or never came): counted and audited, on both transports.
pub fn auth_failed(state: &AppState, endpoint: Endpoint, reason: &str, details: Value) {
    state.metrics.inc("pf2_ws_auth_failures_total", &[]);
    let mut details = details;
    details["reason"] = json!(reason);
    state.audit.spawn(AuditRecord {
        tenant: "-".into(),
        actor: "-".into(),
        action: "ws.auth_failed",
        target: endpoint.target,
        outcome: "denied".into(),
        details,
    });
}

fn deadline_of(identity: &Identity) -> TokioInstant {
    let now = jsonwebtoken::get_current_timestamp();
    TokioInstant::now() + Duration::from_secs(identity.exp.saturating_sub(now))
}

impl Session {
    /// A verified socket joins: registered in the hub, back in its rooms, counted and audited.
    /// The `connected` frame is queued first.
    pub async fn open(
        state: AppState,
        endpoint: Endpoint,
        identity: Identity,
        client: ClientId,
        details: Value,
    ) -> Session {
        let tenant = identity.tenant.clone();
        let reg = state.hub.register(&tenant, &identity.user, &client);
        // Boxed: this future (Redis reads) would otherwise size the connection's whole state.
        Box::pin(state.rooms.restore(&tenant, &client)).await;
        match endpoint.label {
            Some(l) => state.metrics.inc("pf2_ws_connections_total", &[("transport", l)]),
            None => state.metrics.inc("pf2_ws_connections_total", &[]),
        }
        let connected = ServerFrame::Connected {
            connection_id: reg.id.to_string(),
            server_time: crate::clock::iso_now(),
            interaction_classes: InteractionClass::ALL.to_vec(),
            protocol_version: sdk_core::protocol::PROTOCOL_VERSION,
            heartbeat_ms: state.limits.ws_heartbeat.as_millis() as u64,
            rate_limit: Some(state.limits.ws_rate.wire()),
        };
        let _ = reg.mailbox.offer(Outbound::new(connected));
        // Under sync rules the socket is poked only for what it reads.
        match state.sync.access(&tenant, &identity).await {
            Ok(access) => state.hub.set_reads(reg.id, access.poke_reads()),
            Err(e) => {
                tracing::warn!(error = %e.message, "sync rules: this socket's grants could not be read; it is poked for every change")
            }
        }
        let session = Session {
            bucket: crate::ratelimit::Bucket::full(state.limits.ws_rate, Instant::now()),
            state,
            endpoint,
            conn_id: reg.id,
            token_deadline: deadline_of(&identity),
            identity,
            client,
            tx: reg.mailbox,
            subscription: None,
            bus: None,
            over_limit: 0,
            last_heard: Instant::now(),
        };
        let mut details = details;
        details["clientId"] = json!(session.client.as_str());
        details["connectionId"] = json!(session.conn_id);
        session.audit("ws.opened", "ok", details);
        session
    }

    /// When the connection must end unless the client is heard from (stale, where the session
    /// judges liveness) or refreshes its token, whichever is first; [`Session::expired`] says
    /// which. Every transport ends its socket at this instant.
    pub fn deadline(&self) -> TokioInstant {
        if !self.endpoint.stale_check {
            return self.token_deadline;
        }
        let stale_at = TokioInstant::from_std(self.last_heard + self.state.limits.ws_stale);
        stale_at.min(self.token_deadline)
    }

    /// Why the connection closes (counted), once [`Session::deadline`] has passed; `None`
    /// while the session is still within it (the deadline moved: heard from, or refreshed).
    pub fn overdue(&self) -> Option<Closing> {
        (TokioInstant::now() >= self.deadline()).then(|| self.expired())
    }

    /// The deadline passed: why the connection closes (counted).
    pub fn expired(&self) -> Closing {
        if TokioInstant::now() >= self.token_deadline {
            self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "token_expired")]);
            return Closing { code: CLOSE_AUTH, reason: "token expired" };
        }
        self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "stale")]);
        Closing { code: CLOSE_GOING_AWAY, reason: "heartbeat timeout" }
    }

    /// The largest frame a client may send.
    pub fn frame_limit(&self) -> usize {
        self.state.limits.ws_frame_bytes
    }

    /// A frame over the size limit: the connection closes with 1009.
    pub fn too_large(&self, bytes: usize) -> Option<Closing> {
        (bytes > self.state.limits.ws_frame_bytes).then(|| {
            self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "frame_too_large")]);
            Closing { code: CLOSE_TOO_BIG, reason: "frame too large" }
        })
    }

    /// The session ends (`reason` as the close reason): tasks stop, documents close, the hub
    /// forgets the connection, and the end is counted and audited.
    pub async fn close(mut self, reason: &'static str) {
        if let Some(sub) = self.subscription.take() {
            sub.abort();
        }
        let tenant = self.identity.tenant.clone();
        if let Some(b) = self.bus.take() {
            for c in b.consumers {
                c.task.abort();
            }
            for d in b.documents {
                self.state.documents.close(&tenant, &self.client, &d).await;
            }
        }
        self.state.hub.unregister(self.conn_id);
        self.state.metrics.inc("pf2_ws_closed_total", &[("reason", reason)]);
        let details = json!({ "clientId": self.client.as_str(), "connectionId": self.conn_id });
        self.audit("ws.closed", reason, details);
    }

    fn audit(&self, action: &'static str, outcome: &str, details: Value) {
        self.state.audit.spawn(AuditRecord {
            tenant: self.identity.tenant.to_string(),
            actor: self.identity.user.to_string(),
            action,
            target: self.endpoint.target,
            outcome: outcome.to_string(),
            details,
        });
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("endpoint", &self.endpoint)
            .field("conn_id", &self.conn_id)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

pub struct Session {
    state: AppState,
    endpoint: Endpoint,
    pub conn_id: u64,
    pub identity: Identity,
    pub client: ClientId,
    /// This connection's outbound queue (replies and the event stream wait for room in it).
    pub tx: Arc<Mailbox>,
    subscription: Option<JoinHandle<()>>,
    /// The event bus on this socket, once it is used (boxed: idle sockets stay small).
    bus: Option<Box<SocketBus>>,
    token_deadline: TokioInstant,
    over_limit: u32,
    /// This connection's own rate bucket (no shared lock on the message path).
    bucket: crate::ratelimit::Bucket,
    pub last_heard: Instant,
}

impl Session {
    /// The caller's access now; the hub's record of what this socket reads (which changes poke
    /// it) follows. Every pull refreshes it, and a grant change pokes the user's sockets, so a
    /// new grant is in force from the pull it causes.
    /// A revoked grant ends here too: the event stream stops carrying that channel's events,
    /// and the rooms the socket may no longer read are left.
    async fn refresh_access(&self) -> Result<crate::access::Access, ApiError> {
        let access = self.state.sync.access(self.tenant(), &self.identity).await?;
        self.state.hub.set_reads(self.conn_id, access.poke_reads());
        if let Some(r) = self.bus.as_ref().and_then(|b| b.stream_reader.as_ref()) {
            r.set(access.grants());
        }
        self.state.rooms.leave_unreadable(&access, self.tenant(), &self.client);
        Ok(access)
    }

    fn tenant(&self) -> &TenantId {
        &self.identity.tenant
    }

    /// A reply to this connection: waits for buffer space (the client asked for it).
    async fn reply(&self, frame: ServerFrame) {
        if self.tx.send(Outbound::new(frame)).await.is_ok() {
            self.state.metrics.ws_messages_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn error(&self, e: ApiError, request_id: Option<String>) {
        self.reply(ServerFrame::error(e.code, e.message, request_id)).await;
    }

    /// Every frame from the client, before it is handled: keep the connection and its
    /// presence alive, and apply api.md's 100 messages a minute per connection — over it, a
    /// warning per message, and after [`RATE_GRACE`] such warnings, a disconnect (audited).
    ///
    /// `frame` is the decoded frame (`None`: it did not decode, and costs a token): what it
    /// costs is `Tickets::charge` — a document acknowledgement answering a message the server
    /// sent is free (docs/protocol.md, "Pacing").
    pub async fn admit(&mut self, frame: Option<&ClientFrame>) -> Result<(), Closing> {
        self.last_heard = Instant::now();
        self.state.metrics.ws_messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state.hub.touch(self.tenant(), &self.client);
        let cost = match frame {
            Some(f) => self.state.documents.charge(self.tenant(), &self.client, f),
            None => 1,
        };
        if cost == 0 {
            self.state.metrics.inc("pf2_ws_free_replies_total", &[]);
            return Ok(());
        }
        let rate: Rate = self.state.limits.ws_rate;
        let Err(retry) = self.bucket.take_n(rate, Instant::now(), cost) else { return Ok(()) };
        self.over_limit += 1;
        if self.over_limit > RATE_GRACE {
            self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "rate_limit")]);
            self.audit("ws.rate_limited", "disconnected", json!({ "connectionId": self.conn_id }));
            return Err(Closing { code: CLOSE_POLICY, reason: "rate limit exceeded" });
        }
        let e = ApiError::rate_limited(retry);
        let frame = ServerFrame::Error {
            code: e.code,
            message: e.message,
            request_id: None,
            details: Some(json!({ "retryAfter": retry })),
        };
        self.reply(frame).await;
        Ok(())
    }

    /// [`Session::handle`] in the frame's trace context when it carries one (`traceparent`): the
    /// work it asks for continues the caller's trace, as a REST request's does — its span,
    /// its log lines, the events it appends. A frame without one is not traced (a socket
    /// carries many small frames; a client that wants one traced says so).
    pub async fn handle_traced(&mut self, frame: ClientFrame, traceparent: Option<&str>) {
        let Some(caller) = trace::caller(traceparent) else { return self.handle(frame).await };
        let cx = trace::child_of(&caller);
        let span = tracing::info_span!("ws.frame", trace_id = %cx.trace_id, span_id = %cx.span_id);
        telemetry::adopt(&span, &cx, Some(&caller));
        trace::scope(cx, self.handle(frame)).instrument(span).await
    }

    /// One frame from the client, after [`Session::admit`]: everything both transports do.
    pub async fn handle(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Ping { nonce } => self.reply(ServerFrame::Pong { nonce }).await,
            ClientFrame::Auth { .. } => {
                self.error(ApiError::invalid("this socket is already authenticated"), None).await
            }
            ClientFrame::RefreshToken { token } => match self.state.jwt.verify(&token) {
                Ok(id) if id.tenant == self.identity.tenant && id.user == self.identity.user => {
                    self.token_deadline = deadline_of(&id);
                    self.identity = id;
                }
                Ok(_) => {
                    self.error(
                        ApiError::new(
                            ErrorCode::AuthzFailed,
                            "a refreshed token must name the same user and tenant",
                        ),
                        None,
                    )
                    .await
                }
                Err(e) => self.error(e, None).await,
            },
            ClientFrame::Push { batch_id, operations } => self.push(batch_id, operations).await,
            ClientFrame::Pull { since, limit, channels, held } => {
                let limit = limit.unwrap_or(500) as i64;
                let pull = PullRequest { since, limit, channels, held };
                let access = match self.refresh_access().await {
                    Ok(a) => a,
                    Err(e) => return self.error(e, None).await,
                };
                let sync = &self.state.sync;
                match sync.pull_as(self.tenant(), &access, pull, Some(&self.client)).await {
                    Ok(delta) => self.reply(delta).await,
                    Err(e) => self.error(e, None).await,
                }
            }
            ClientFrame::Presence { status, metadata, .. } => {
                self.state.rooms.set_presence(
                    self.conn_id,
                    &self.identity,
                    &self.client,
                    status,
                    metadata,
                );
            }
            ClientFrame::JoinRoom { room_id } => {
                let joined = match self.state.sync.access(self.tenant(), &self.identity).await {
                    Ok(access) => {
                        self.state.rooms.join(&access, self.tenant(), &self.client, &room_id)
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = joined {
                    return self.error(e, Some(room_id.to_string())).await;
                }
                self.reply(ServerFrame::RoomJoined { room_id: room_id.clone() }).await;
                for p in self.state.rooms.presence_in(self.tenant(), &room_id).await {
                    self.reply(p).await;
                }
            }
            ClientFrame::LeaveRoom { room_id } => {
                self.state.rooms.leave(self.tenant(), &self.client, &room_id);
                self.reply(ServerFrame::RoomLeft { room_id }).await;
            }
            ClientFrame::Message {
                message_id,
                message_type,
                interaction_class,
                recipient_id,
                room_id,
                payload,
                metadata,
            } => {
                self.message(Outgoing {
                    message_id,
                    message_type,
                    class: interaction_class,
                    recipient: recipient_id,
                    room: room_id,
                    payload,
                    metadata,
                })
                .await
            }
            ClientFrame::SnapshotRequest { request_id, entity_type, entity_id, cursor } => {
                self.snapshot(request_id, entity_type, entity_id, cursor).await
            }
            other => self.handle_streams(other).await,
        }
    }

    /// The frames of event streams, consumer groups and documents.
    async fn handle_streams(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe { after, event_types, attributes } => {
                self.set_followed(None);
                self.subscribe(after, EventFilter { event_types, attributes }).await
            }
            ClientFrame::Follow { subscription } => self.follow_durable(subscription).await,
            ClientFrame::DocSync { document_id, message, more } => {
                let (state, tenant) = (self.state.clone(), self.identity.tenant.clone());
                let access = match state.sync.access(&tenant, &self.identity).await {
                    Ok(a) => a,
                    Err(e) => return self.error(e, Some(document_id)).await,
                };
                let (client, tx) = (&self.client, &self.tx);
                match state
                    .documents
                    .receive(&access, &tenant, client, tx, &document_id, &message, more)
                    .await
                {
                    Ok(()) => {
                        let open = &mut self.bus.get_or_insert_with(Box::default).documents;
                        if !open.contains(&document_id) {
                            open.push(document_id);
                        }
                    }
                    Err(e) => self.error(e, Some(document_id)).await,
                }
            }
            ClientFrame::DocClose { document_id } => {
                if let Some(b) = self.bus.as_mut() {
                    b.documents.retain(|d| d != &document_id);
                }
                let tenant = self.identity.tenant.clone();
                self.state.documents.close(&tenant, &self.client, &document_id).await;
            }
            ClientFrame::Unsubscribe {} => {
                if let Some(s) = self.subscription.take() {
                    s.abort();
                }
                self.set_followed(None);
            }
            ClientFrame::Consume { group, max_in_flight } => {
                self.consume(group, max_in_flight.unwrap_or(10)).await
            }
            ClientFrame::DeliveryAck { group, sequence, lease_token } => {
                let bus = &self.state.bus;
                let held = bus.ack(self.tenant(), &group, &[(sequence, lease_token)]).await;
                self.settled(&group, sequence, held.map(|h| h.first().copied().unwrap_or(false)))
                    .await
            }
            ClientFrame::DeliveryNack { group, sequence, lease_token, reason } => {
                let bus = &self.state.bus;
                let reason = reason.as_deref().unwrap_or("rejected by the consumer");
                let outcome =
                    bus.nack(self.tenant(), &group, sequence, &lease_token, reason, None).await;
                self.settled(&group, sequence, outcome.map(|o| o != NackOutcome::LeaseLost)).await
            }
            ClientFrame::Ack { sequence } => {
                match self.bus.as_ref().and_then(|b| b.followed.clone()) {
                    Some(name) => {
                        let bus = &self.state.bus;
                        if let Err(e) = bus.ack_position(self.tenant(), &name, sequence).await {
                            self.error(e, None).await
                        }
                    }
                    None => {
                        self.error(
                            ApiError::invalid(
                                "Ack needs a durable subscription (Follow) on this socket",
                            ),
                            None,
                        )
                        .await
                    }
                }
            }
            // Handled by `handle`.
            _ => {}
        }
    }

    async fn push(&mut self, batch_id: String, operations: Vec<WireOperation>) {
        let request = ReconcileRequest {
            request_id: batch_id.clone(),
            client_id: self.client.to_string(),
            tenant_id: None,
            last_known_version: None,
            operations,
            requested_at: None,
            channels: None,
            held: None,
        };
        let tenant = self.identity.tenant.clone();
        let answer = self
            .state
            .sync
            .reconcile(&tenant, &self.identity, request, self.endpoint.transport)
            .await;
        match answer.map(|a| a.response.into_push_result(batch_id.clone())) {
            Ok(Some(frame)) => self.reply(frame).await,
            Ok(None) => {
                let e = ApiError::internal("a stored push result has no version");
                self.error(e, Some(batch_id)).await
            }
            Err(e) => self.error(e, Some(batch_id)).await,
        }
    }

    async fn subscribe(&mut self, after: Option<u64>, filter: EventFilter) {
        if let Some(s) = self.subscription.take() {
            s.abort();
        }
        if let Err(e) = filter.validate() {
            return self.error(e.into(), None).await;
        }
        let tenant = self.tenant().as_str().to_string();
        let (current, pruned) = match self.state.sync.tenant_seq(self.tenant()).await {
            Ok(v) => v,
            Err(e) => return self.error(e, None).await,
        };
        let after = after.unwrap_or(current);
        if after < pruned {
            return self
                .error(
                    ApiError::new(
                        ErrorCode::SnapshotRequired,
                        format!("events up to {pruned} are past retention"),
                    ),
                    None,
                )
                .await;
        }
        let reader = match self.state.sync.access(self.tenant(), &self.identity).await {
            Ok(access) => access.event_reader(),
            Err(e) => return self.error(e, None).await,
        };
        if reader.is_some() || self.bus.is_some() {
            self.bus.get_or_insert_with(Box::default).stream_reader = reader.clone();
        }
        let interest = Interest { filter, reader };
        let follow = self.state.tail.clone().follow(tenant, after, interest, self.tx.clone());
        self.subscription = Some(tokio::spawn(follow));
    }

    fn set_followed(&mut self, name: Option<String>) {
        match (&mut self.bus, name) {
            (Some(b), name) => b.followed = name,
            (None, Some(name)) => {
                self.bus =
                    Some(Box::new(SocketBus { followed: Some(name), ..SocketBus::default() }))
            }
            (None, None) => {}
        }
    }

    /// `Follow`: the event stream of a durable subscription, from its stored position.
    async fn follow_durable(&mut self, name: String) {
        let bus = &self.state.bus;
        let sub = match bus.subscription(self.tenant(), &name, SubscriptionKind::Durable).await {
            Ok(s) => s,
            Err(e) => return self.error(e, None).await,
        };
        self.subscribe(Some(sub.cursor), sub.filter).await;
        if self.subscription.is_some() {
            self.set_followed(Some(name));
        }
    }

    /// `Consume`: join consumer group `group`; a task pushes leased deliveries, at most
    /// `max_in_flight` unsettled.
    async fn consume(&mut self, group: String, max_in_flight: u32) {
        if let Err(e) = crate::bus::require_operator(&self.identity) {
            return self.error(e, None).await;
        }
        // A member whose task ended (its group was deleted) no longer counts.
        let consumers = &mut self.bus.get_or_insert_with(Box::default).consumers;
        consumers.retain(|c| !c.task.is_finished());
        let (already, count) = (consumers.iter().any(|c| c.group == group), consumers.len());
        if already {
            return self
                .error(ApiError::invalid(format!("already consuming {group:?}")), None)
                .await;
        }
        if count >= 8 {
            return self
                .error(ApiError::invalid("at most 8 consumer groups per socket"), None)
                .await;
        }
        let bus = &self.state.bus;
        if let Err(e) = bus.subscription(self.tenant(), &group, SubscriptionKind::Group).await {
            return self.error(e, None).await;
        }
        let slots = Arc::new(Slots::new(max_in_flight.clamp(1, 100)));
        let consumer = format!("ws:{}:{}", self.client, self.conn_id);
        let task = tokio::spawn(consume(
            self.state.bus.clone(),
            self.tenant().clone(),
            group.clone(),
            consumer,
            slots.clone(),
            self.tx.clone(),
        ));
        self.bus.get_or_insert_with(Box::default).consumers.push(GroupMember {
            group,
            slots,
            task,
        });
    }

    /// A delivery was acked or nacked (`Ok(false)`: the lease was already lost).
    async fn settled(&mut self, group: &str, sequence: u64, held: Result<bool, ApiError>) {
        if let Some(m) =
            self.bus.as_ref().and_then(|b| b.consumers.iter().find(|c| c.group == group))
        {
            m.slots.release(sequence);
        }
        match held {
            Ok(true) => {}
            Ok(false) => {
                self.error(
                    ApiError::invalid(format!(
                        "delivery {sequence} of {group:?}: the lease was lost (expired and taken by another member)"
                    )),
                    Some(sequence.to_string()),
                )
                .await
            }
            Err(e) => self.error(e, Some(sequence.to_string())).await,
        }
    }

    async fn message(&mut self, m: Outgoing) {
        let access = match self.state.sync.access(self.tenant(), &self.identity).await {
            Ok(a) => a,
            Err(e) => return self.error(e, m.message_id).await,
        };
        let (identity, client, transport) = (&self.identity, &self.client, self.endpoint.transport);
        match self
            .state
            .rooms
            .relay_message(&access, identity, client, self.conn_id, transport, m)
            .await
        {
            Ok(message_id) => self.reply(ServerFrame::MessageAck { message_id }).await,
            Err((e, message_id)) => self.error(e, Some(message_id)).await,
        }
    }

    async fn snapshot(
        &mut self,
        request_id: String,
        entity_type: sdk_core::ids::EntityType,
        entity_id: Option<sdk_core::ids::EntityId>,
        cursor: Option<String>,
    ) {
        let (version, _) = match self.state.sync.tenant_seq(self.tenant()).await {
            Ok(v) => v,
            Err(e) => return self.error(e, Some(request_id)).await,
        };
        let (items, next_cursor): (Value, Option<String>) = match entity_id {
            Some(id) => {
                let key = sdk_core::ids::EntityKey::new(self.tenant().clone(), entity_type, id);
                match self.state.sync.entity(&self.identity, &key).await {
                    Ok(Some(r)) => (json!([WireEntity::from_record(&r)]), None),
                    Ok(None) => {
                        let e = ApiError::not_found("no such entity");
                        return self.error(e, Some(request_id)).await;
                    }
                    Err(e) => return self.error(e, Some(request_id)).await,
                }
            }
            None => {
                let (tenant, cursor) = (self.tenant().clone(), cursor.as_deref());
                let identity = &self.identity;
                match self.state.sync.collection(&tenant, identity, &entity_type, cursor, 500).await
                {
                    Ok(page) => {
                        let items: Vec<WireEntity> =
                            page.records.iter().map(WireEntity::from_record).collect();
                        (json!(items), page.next_cursor)
                    }
                    Err(e) => return self.error(e, Some(request_id)).await,
                }
            }
        };
        let bytes = canonical_json(&items);
        let snapshot_id = uuid::Uuid::new_v4().to_string();
        // Chunks leave room for base64 growth and the frame's other fields within the frame limit.
        let size = (self.state.limits.ws_frame_bytes / 2).max(1024);
        use base64::Engine as _;
        for c in chunk(&bytes, size) {
            self.reply(ServerFrame::SnapshotChunk {
                request_id: request_id.clone(),
                snapshot_id: snapshot_id.clone(),
                version,
                index: c.index,
                total: c.total,
                data: base64::engine::general_purpose::STANDARD.encode(&c.data),
                checksum: c.checksum,
                total_checksum: c.total_checksum,
                next_cursor: next_cursor.clone(),
            })
            .await;
        }
    }
}

/// A socket's use of the event bus and of documents.
#[derive(Default)]
struct SocketBus {
    /// The durable subscription the event stream follows (its position advances with `Ack`).
    followed: Option<String>,
    /// Consumer groups this socket is a member of (`Consume`).
    consumers: Vec<GroupMember>,
    /// Collaborative documents open on this socket (`doc_sync`).
    documents: Vec<String>,
    /// Under sync rules, the grants the event stream filters by (refreshed with the socket's).
    stream_reader: Option<Arc<crate::tail::Reader>>,
}

/// One consumer group this socket belongs to.
struct GroupMember {
    group: String,
    slots: Arc<Slots>,
    task: JoinHandle<()>,
}

/// A socket's unsettled deliveries of one group: at most `max`, each until its lease ends.
struct Slots {
    max: u32,
    held: std::sync::Mutex<std::collections::HashMap<u64, i64>>,
    freed: tokio::sync::Notify,
}

impl Slots {
    fn new(max: u32) -> Self {
        Self { max, held: Default::default(), freed: tokio::sync::Notify::new() }
    }

    /// Free slots at `now` (an expired lease frees its slot: the group will redeliver it), and
    /// when the next held lease ends.
    fn free(&self, now: i64) -> (u32, Option<i64>) {
        let mut held = self.held.lock().expect("slots lock");
        held.retain(|_, until| *until > now);
        (self.max.saturating_sub(held.len() as u32), held.values().min().copied())
    }

    fn hold(&self, sequence: u64, until: i64) {
        self.held.lock().expect("slots lock").insert(sequence, until);
    }

    fn release(&self, sequence: u64) {
        self.held.lock().expect("slots lock").remove(&sequence);
        self.freed.notify_one();
    }
}

/// Push a consumer group's deliveries to one socket while it has free slots.
async fn consume(
    bus: Arc<EventBus>,
    tenant: TenantId,
    group: String,
    consumer: String,
    slots: Arc<Slots>,
    tx: Arc<Mailbox>,
) {
    loop {
        let now = crate::clock::now_ms() as i64;
        let (free, next_end) = slots.free(now);
        if free == 0 {
            let until =
                Duration::from_millis(next_end.map(|e| (e - now).max(1)).unwrap_or(1000) as u64);
            let _ = tokio::time::timeout(until, slots.freed.notified()).await;
            continue;
        }
        match bus.claim(&tenant, &group, &consumer, free, Duration::from_secs(25)).await {
            Ok(claimed) => {
                for c in claimed {
                    slots.hold(c.event.sequence, c.lease_expires_at);
                    let frame = ServerFrame::Delivery {
                        group: group.clone(),
                        event: c.event,
                        attempt: c.attempt,
                        lease_token: c.lease_token,
                        lease_expires_at: c.lease_expires_at.max(0) as u64,
                    };
                    if tx.send(Outbound::new(frame)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Outbound::new(ServerFrame::error(e.code, e.message, None))).await;
                return;
            }
        }
    }
}
