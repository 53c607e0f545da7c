//! `GET /v1/ws`: the native WebSocket endpoint, speaking sdk-core's protocol (docs/protocol.md).
//!
//! One connection = one reader loop (this module's `Session`) and one writer task. The writer
//! drains the connection's bounded [`Mailbox`]: hub fan-out never waits (a full mailbox disconnects
//! the slow consumer); replies and the event stream (Class B) wait for room, so replay is paced by
//! the client's reading speed. Nothing is unbounded.

use crate::api::{iso_now, prepare_batch};
use crate::auth::Identity;
use crate::bus::EventBus;
use crate::error::ApiError;
use crate::ratelimit::Rate;
use crate::realtime::hub::Outbound;
use crate::realtime::mailbox::{Closing, Mailbox, Next};
use crate::realtime::origin_allowed;
use crate::state::AppState;
use crate::store::{AuditEntry, NackOutcome, SubscriptionKind};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, TenantId};
use sdk_core::interaction::{InteractionClass, Transport};
use sdk_core::protocol::{
    ClientFrame, Codec, EventFilter, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, ServerFrame,
    WireConflict, WireOpResult,
};
use sdk_core::snapshot::{canonical_json, checksum, chunk};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

/// Close codes.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Authentication failed or the token expired (4000–4999 are the application's).
pub const CLOSE_AUTH: u16 = 4401;

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake may wait for the peer's Close.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Messages over the rate limit tolerated (each answered with a warning) before disconnecting.
const RATE_GRACE: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WsQuery {
    token: Option<String>,
    client_id: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub async fn upgrade(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let ip = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let origin = header(&headers, "origin");
    if !origin_allowed(&state.limits.ws_allowed_origins, origin) {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "origin")]);
        let _ = state
            .store
            .audit(&AuditEntry {
                tenant: "-",
                actor: "-",
                action: "ws.refused",
                target: "/v1/ws",
                outcome: "origin",
                details: json!({ "origin": origin, "ip": ip }),
            })
            .await;
        return ApiError::new(ErrorCode::AuthzFailed, "this origin may not open a socket")
            .into_response();
    }
    if state.hub.connections() >= state.limits.ws_max_connections {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "capacity")]);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "5")],
            "connection limit reached",
        )
            .into_response();
    }
    let offered: Vec<&str> = header(&headers, "sec-websocket-protocol")
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let codec =
        if offered.contains(&MSGPACK_SUBPROTOCOL) { Codec::MessagePack } else { Codec::Json };
    let limit = state.limits.ws_frame_bytes;
    let meta =
        Meta { ip, user_agent: header(&headers, "user-agent").unwrap_or_default().to_string() };
    ws.protocols([MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL])
        // The library refuses frames far over the limit; the session enforces the limit exactly
        // and closes with 1009.
        .max_message_size(limit * 2)
        // Small per-connection buffers: an idle socket should cost kilobytes, not the library's
        // 128 KiB defaults. They grow for large frames and shrink back.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_frame_size(limit * 2)
        .on_upgrade(move |socket| run(socket, state, codec, q, meta))
}

#[derive(Debug, Clone)]
struct Meta {
    ip: String,
    user_agent: String,
}

fn closing(code: u16, reason: &'static str) -> Closing {
    Closing { code, reason }
}

fn encode(codec: Codec, frame: &ServerFrame) -> Message {
    let bytes = codec.encode(frame);
    match codec {
        Codec::Json => Message::Text(String::from_utf8(bytes).expect("JSON is UTF-8").into()),
        Codec::MessagePack => Message::Binary(bytes.into()),
    }
}

fn close_message(c: &Closing) -> Message {
    Message::Close(Some(CloseFrame { code: c.code, reason: c.reason.into() }))
}

/// Write an audit entry without holding up the connection (lifecycle events are frequent: a
/// reconnect storm must not queue behind the audit table).
async fn audit(
    state: &AppState,
    tenant: &str,
    actor: &str,
    action: &str,
    outcome: &str,
    details: Value,
) {
    let (state, tenant, actor, action, outcome) = (
        state.clone(),
        tenant.to_string(),
        actor.to_string(),
        action.to_string(),
        outcome.to_string(),
    );
    tokio::spawn(async move {
        let entry = AuditEntry {
            tenant: &tenant,
            actor: &actor,
            action: &action,
            target: "/v1/ws",
            outcome: &outcome,
            details,
        };
        if let Err(e) = state.store.audit(&entry).await {
            tracing::warn!(error = %e, "audit write failed");
        }
    });
}

/// Not `async`: the socket is split before the connection's future is built, so that future
/// holds the two small halves, not the 368-byte socket, for its whole life (an async fn keeps
/// its arguments' space even after they are moved out).
fn run(
    socket: WebSocket,
    state: AppState,
    codec: Codec,
    q: WsQuery,
    meta: Meta,
) -> impl std::future::Future<Output = ()> {
    let (sink, stream) = socket.split();
    connection(sink, stream, state, codec, q, meta)
}

async fn connection(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    state: AppState,
    codec: Codec,
    q: WsQuery,
    meta: Meta,
) {
    let (identity, client) = match Box::pin(authenticate(&mut stream, &state, codec, q)).await {
        Ok(ok) => ok,
        Err((e, reason)) => {
            state.metrics.inc("pf2_ws_auth_failures_total", &[]);
            audit(
                &state,
                "-",
                "-",
                "ws.auth_failed",
                "denied",
                json!({ "ip": meta.ip, "userAgent": meta.user_agent, "reason": e.message }),
            )
            .await;
            let frame = ServerFrame::error(e.code, e.message, None);
            let _ = sink.send(encode(codec, &frame)).await;
            let _ = sink.send(close_message(&closing(CLOSE_AUTH, reason))).await;
            drain_until_close(&mut stream).await;
            return;
        }
    };
    let tenant = identity.tenant.clone();
    let reg = state.hub.register(&tenant, &identity.user, &client);
    let conn_id = reg.id;
    // Boxed: this future (Redis reads) would otherwise size the connection's whole state.
    Box::pin(state.restore_rooms(&tenant, &client)).await;
    state.metrics.inc("pf2_ws_connections_total", &[]);
    audit(
        &state,
        tenant.as_str(),
        identity.user.as_str(),
        "ws.opened",
        "ok",
        json!({ "ip": meta.ip, "userAgent": meta.user_agent, "clientId": client.as_str(), "connectionId": conn_id }),
    )
    .await;
    let connected = ServerFrame::Connected {
        connection_id: conn_id.to_string(),
        server_time: iso_now(),
        interaction_classes: InteractionClass::ALL.to_vec(),
        protocol_version: sdk_core::protocol::PROTOCOL_VERSION,
        heartbeat_ms: state.limits.ws_heartbeat.as_millis() as u64,
    };
    let mailbox = reg.mailbox;
    let _ = mailbox.offer(Outbound::new(connected));
    let mut writer = tokio::spawn(write_loop(sink, mailbox.clone(), codec));
    let mut session = Session {
        state: state.clone(),
        codec,
        conn_id,
        token_deadline: deadline_of(&identity),
        identity,
        client,
        tx: mailbox.clone(),
        subscription: None,
        bus: None,
        over_limit: 0,
        bucket: crate::ratelimit::Bucket::full(state.limits.ws_rate, Instant::now()),
        last_heard: Instant::now(),
    };
    let outcome = session.read_loop(&mut stream, &mut writer).await;
    if let Some(sub) = session.subscription.take() {
        sub.abort();
    }
    if let Some(b) = session.bus.take() {
        for c in b.consumers {
            c.task.abort();
        }
        for d in b.documents {
            state.documents.close(&tenant, &session.client, &d).await;
        }
    }
    let reason = outcome.reason;
    let we_close = outcome.code != CLOSE_NORMAL || reason != "client closed";
    mailbox.close(we_close.then_some(outcome));
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    if we_close {
        drain_until_close(&mut stream).await;
    }
    state.hub.unregister(conn_id);
    state.metrics.inc("pf2_ws_closed_total", &[("reason", reason)]);
    audit(
        &state,
        tenant.as_str(),
        session.identity.user.as_str(),
        "ws.closed",
        reason,
        json!({ "clientId": session.client.as_str(), "connectionId": conn_id }),
    )
    .await;
}

/// The closing handshake (RFC 6455 §7.1.1): after our Close, read — and discard — until the
/// peer's Close or EOF, for at most [`CLOSE_DRAIN`]. Dropping the socket with unread bytes in the
/// kernel's receive buffer makes it send RST, and the client would see 1006 instead of our code.
async fn drain_until_close(stream: &mut futures_util::stream::SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn deadline_of(identity: &Identity) -> TokioInstant {
    let now = jsonwebtoken::get_current_timestamp();
    TokioInstant::now() + Duration::from_secs(identity.exp.saturating_sub(now))
}

/// Authenticate by `?token=` or by the first frame (`auth`), within [`AUTH_TIMEOUT`].
async fn authenticate(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    state: &AppState,
    codec: Codec,
    q: WsQuery,
) -> Result<(Identity, ClientId), (ApiError, &'static str)> {
    let query_client = q
        .client_id
        .map(ClientId::new)
        .transpose()
        .map_err(|e| (ApiError::invalid(e.to_string()), "bad client id"))?;
    if let Some(token) = q.token {
        let identity = state.jwt.verify(&token).map_err(|e| (e, "auth failed"))?;
        let client = query_client.unwrap_or_else(|| {
            ClientId::new(format!("anon-{}", uuid::Uuid::new_v4().simple())).expect("valid")
        });
        return Ok((identity, client));
    }
    let first = tokio::time::timeout(AUTH_TIMEOUT, stream.next())
        .await
        .map_err(|_| (ApiError::auth("no auth frame within 10 s"), "auth timeout"))?;
    let bytes = match first {
        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        _ => return Err((ApiError::auth("the first frame must be auth"), "auth failed")),
    };
    match codec.decode::<ClientFrame>(&bytes, state.limits.ws_frame_bytes) {
        Ok(ClientFrame::Auth { token, client_id }) => {
            let identity = state.jwt.verify(&token).map_err(|e| (e, "auth failed"))?;
            Ok((identity, client_id))
        }
        _ => Err((ApiError::auth("the first frame must be auth"), "auth failed")),
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mailbox: Arc<Mailbox>,
    codec: Codec,
) {
    /// Frames written per flush when several are already queued (one syscall for a burst).
    const BURST: usize = 32;
    loop {
        let first = match mailbox.next().await {
            Next::Frame(f) => f,
            Next::Killed => {
                // A slow consumer: try to say why, but never wait on it.
                let close = close_message(&closing(CLOSE_TRY_AGAIN, "slow consumer"));
                let _ = tokio::time::timeout(Duration::from_millis(100), sink.send(close)).await;
                return;
            }
            Next::Close(c) => {
                if let Some(c) = c {
                    let _ = tokio::time::timeout(CLOSE_DRAIN, sink.send(close_message(&c))).await;
                }
                return;
            }
        };
        let write = async {
            sink.feed(first.message(codec)).await?;
            for _ in 1..BURST {
                match mailbox.try_next() {
                    Some(Next::Frame(f)) => sink.feed(f.message(codec)).await?,
                    _ => break,
                }
            }
            sink.flush().await
        };
        // Only a blocked write needs the kill signal: it is how a slow consumer is cut off.
        tokio::select! {
            r = write => if r.is_err() { return },
            _ = mailbox.until_killed() => return,
        }
    }
}

struct Session {
    state: AppState,
    codec: Codec,
    conn_id: u64,
    identity: Identity,
    client: ClientId,
    /// This connection's outbound queue (replies and the event stream wait for room in it).
    tx: Arc<Mailbox>,
    subscription: Option<JoinHandle<()>>,
    /// The event bus on this socket, once it is used (boxed: idle sockets stay small).
    bus: Option<Box<SocketBus>>,
    token_deadline: TokioInstant,
    over_limit: u32,
    /// This connection's own rate bucket (no shared lock on the message path).
    bucket: crate::ratelimit::Bucket,
    last_heard: Instant,
}

impl Session {
    fn tenant(&self) -> &TenantId {
        &self.identity.tenant
    }

    /// A reply to this connection: waits for buffer space (the client asked for it).
    async fn reply(&self, frame: ServerFrame) {
        if self.tx.send(Outbound::new(frame)).await.is_ok() {
            self.state.metrics.ws_messages_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn error(&self, e: ApiError, request_id: Option<String>) {
        self.reply(ServerFrame::error(e.code, e.message, request_id)).await;
    }

    async fn read_loop(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        writer: &mut JoinHandle<()>,
    ) -> Closing {
        let stale = self.state.limits.ws_stale;
        loop {
            let stale_at = TokioInstant::from_std(self.last_heard + stale);
            // One timer for both deadlines (an idle connection carries one `Sleep`, not two).
            let wake_at = stale_at.min(self.token_deadline);
            let msg = tokio::select! {
                // The writer stops on its own only for a slow consumer or a dead socket.
                _ = &mut *writer => {
                    return if self.tx.killed() {
                        closing(CLOSE_TRY_AGAIN, "slow consumer")
                    } else {
                        closing(CLOSE_NORMAL, "client closed")
                    };
                }
                _ = tokio::time::sleep_until(wake_at) => {
                    if TokioInstant::now() >= self.token_deadline {
                        self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "token_expired")]);
                        return closing(CLOSE_AUTH, "token expired");
                    }
                    self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "stale")]);
                    return closing(CLOSE_GOING_AWAY, "heartbeat timeout");
                }
                m = stream.next() => m,
            };
            let bytes = match msg {
                None | Some(Err(_)) => return closing(CLOSE_NORMAL, "client closed"),
                Some(Ok(Message::Close(_))) => return closing(CLOSE_NORMAL, "client closed"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    self.last_heard = Instant::now();
                    continue;
                }
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
            };
            self.last_heard = Instant::now();
            self.state.metrics.ws_messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.state.hub.touch(self.tenant(), &self.client);
            if bytes.len() > self.state.limits.ws_frame_bytes {
                self.state
                    .metrics
                    .inc("pf2_ws_disconnects_total", &[("reason", "frame_too_large")]);
                return closing(CLOSE_TOO_BIG, "frame too large");
            }
            // Boxed: the handlers (push → reconcile …) are large state machines; inline, every
            // idle connection would carry their size in its task.
            if let Some(c) = Box::pin(self.on_frame(bytes)).await {
                return c;
            }
        }
    }

    /// One frame from the client, after the size check: rate limit, decode, handle.
    async fn on_frame(&mut self, bytes: Vec<u8>) -> Option<Closing> {
        if let Err(c) = self.rate_limit().await {
            return Some(c);
        }
        match self.codec.decode::<ClientFrame>(&bytes, self.state.limits.ws_frame_bytes) {
            Ok(frame) => self.handle(frame).await,
            Err(e) => self.error(e.into(), None).await,
        }
        None
    }

    /// api.md: 100 messages a minute per connection; over it, a warning per message, and after
    /// [`RATE_GRACE`] such warnings, a disconnect.
    async fn rate_limit(&mut self) -> Result<(), Closing> {
        let rate: Rate = self.state.limits.ws_rate;

        match self.bucket.take(rate, Instant::now()) {
            Ok(()) => Ok(()),
            Err(retry) => {
                self.over_limit += 1;
                if self.over_limit > RATE_GRACE {
                    self.state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "rate_limit")]);
                    audit(
                        &self.state,
                        self.tenant().as_str(),
                        self.identity.user.as_str(),
                        "ws.rate_limited",
                        "disconnected",
                        json!({ "connectionId": self.conn_id }),
                    )
                    .await;
                    return Err(closing(CLOSE_POLICY, "rate limit exceeded"));
                }
                self.error(ApiError::rate_limited(retry), None).await;
                Ok(())
            }
        }
    }

    async fn handle(&mut self, frame: ClientFrame) {
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
            ClientFrame::Pull { since, limit } => {
                let limit = limit.unwrap_or(500).clamp(1, 1000) as i64;
                match self
                    .state
                    .store
                    .pull(self.tenant().as_str(), since, limit, Some(&self.client))
                    .await
                {
                    Ok((entities, has_more, version, client_seq)) => {
                        self.reply(ServerFrame::Delta {
                            since,
                            version,
                            entities,
                            has_more,
                            client_seq,
                        })
                        .await
                    }
                    Err(e) => self.error(e, None).await,
                }
            }
            ClientFrame::Subscribe { after, event_types, attributes } => {
                self.set_followed(None);
                self.subscribe(after, EventFilter { event_types, attributes }).await
            }
            ClientFrame::Follow { subscription } => self.follow_durable(subscription).await,
            ClientFrame::DocSync { document_id, message, more } => {
                let (state, tenant) = (self.state.clone(), self.identity.tenant.clone());
                match state
                    .documents
                    .receive(&state, &tenant, &self.client, &self.tx, &document_id, &message, more)
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
                let bus = EventBus::new(self.state.clone());
                let held = bus.ack(self.tenant(), &group, &[(sequence, lease_token)]).await;
                self.settled(&group, sequence, held.map(|h| h.first().copied().unwrap_or(false)))
                    .await
            }
            ClientFrame::DeliveryNack { group, sequence, lease_token, reason } => {
                let bus = EventBus::new(self.state.clone());
                let reason = reason.as_deref().unwrap_or("rejected by the consumer");
                let outcome =
                    bus.nack(self.tenant(), &group, sequence, &lease_token, reason, None).await;
                self.settled(&group, sequence, outcome.map(|o| o != NackOutcome::LeaseLost)).await
            }
            ClientFrame::Presence { status, metadata, .. } => {
                let (t, c, u) =
                    (self.identity.tenant.clone(), self.client.clone(), self.identity.user.clone());
                self.state.hub.set_presence(self.conn_id, &t, &c, &u, status, metadata);
            }
            ClientFrame::JoinRoom { room_id } => {
                self.state.hub.join(self.tenant(), &self.client, &room_id);
                self.reply(ServerFrame::RoomJoined { room_id: room_id.clone() }).await;
                for p in self.state.presence_in(self.tenant(), &room_id).await {
                    self.reply(p).await;
                }
            }
            ClientFrame::LeaveRoom { room_id } => {
                self.state.hub.leave(self.tenant(), &self.client, &room_id);
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
                self.message(crate::realtime::Outgoing {
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
            ClientFrame::Ack { sequence } => {
                match self.bus.as_ref().and_then(|b| b.followed.clone()) {
                    Some(name) => {
                        let bus = EventBus::new(self.state.clone());
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
            ClientFrame::SnapshotRequest { request_id, entity_type, entity_id, cursor } => {
                self.snapshot(request_id, entity_type, entity_id, cursor).await
            }
        }
    }

    async fn push(&mut self, batch_id: String, operations: Vec<sdk_core::protocol::WireOperation>) {
        let hash =
            checksum(&canonical_json(&serde_json::to_value(&operations).unwrap_or(Value::Null)));
        let batch = match prepare_batch(operations, &self.client, Transport::WebSocket) {
            Ok(b) => b,
            Err(e) => return self.error(e, Some(batch_id)).await,
        };
        let request_id = format!("ws:{}:{batch_id}", self.client);
        let tenant = self.identity.tenant.clone();
        let id = batch_id.clone();
        let result = self
            .state
            .store
            .reconcile(&self.state.engine, &tenant, &request_id, &hash, batch, None, 0, |view| {
                let frame = ServerFrame::PushResult {
                    batch_id: id,
                    results: view.outcome.results.iter().map(WireOpResult::from_result).collect(),
                    current_version: view.version,
                    conflicts: view
                        .outcome
                        .conflicts
                        .iter()
                        .map(WireConflict::from_conflict)
                        .collect(),
                };
                serde_json::to_string(&frame).expect("frames serialize")
            })
            .await;
        let (response, changed_to) = match result {
            Ok(crate::store::Reconciled::Fresh { response, outcome, version }) => {
                (response, (!outcome.changes.is_empty()).then_some(version))
            }
            Ok(crate::store::Reconciled::Replay { response, request_hash })
                if request_hash == hash =>
            {
                (response, None)
            }
            Ok(crate::store::Reconciled::Replay { .. }) => {
                return self
                    .error(
                        ApiError::new(
                            ErrorCode::IdempotencyMismatch,
                            "this batchId was used with other operations",
                        ),
                        Some(batch_id),
                    )
                    .await;
            }
            Err(e) => return self.error(e, Some(batch_id)).await,
        };
        match serde_json::from_str::<ServerFrame>(&response) {
            Ok(frame) => self.reply(frame).await,
            Err(e) => {
                self.error(ApiError::internal(format!("stored push result: {e}")), Some(batch_id))
                    .await
            }
        }
        if let Some(version) = changed_to {
            self.state.entities_changed(&tenant, version);
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
        let (current, pruned) = match self.state.store.tenant_seq(&tenant).await {
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
        let state = self.state.clone();
        let tx = self.tx.clone();
        self.subscription = Some(tokio::spawn(follow(state, tenant, after, filter, tx)));
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
        let bus = EventBus::new(self.state.clone());
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
        let bus = EventBus::new(self.state.clone());
        if let Err(e) = bus.subscription(self.tenant(), &group, SubscriptionKind::Group).await {
            return self.error(e, None).await;
        }
        let slots = Arc::new(Slots::new(max_in_flight.clamp(1, 100)));
        let consumer = format!("ws:{}:{}", self.client, self.conn_id);
        let task = tokio::spawn(consume(
            self.state.clone(),
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

    async fn message(&mut self, m: crate::realtime::Outgoing) {
        match crate::realtime::relay_message(
            &self.state,
            &self.identity,
            &self.client,
            self.conn_id,
            Transport::WebSocket,
            m,
        )
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
        let t = self.tenant().as_str().to_string();
        let (version, _) = match self.state.store.tenant_seq(&t).await {
            Ok(v) => v,
            Err(e) => return self.error(e, Some(request_id)).await,
        };
        let (items, next_cursor): (Value, Option<String>) = match entity_id {
            Some(id) => {
                let key = sdk_core::ids::EntityKey::new(self.tenant().clone(), entity_type, id);
                match self.state.store.entity(&key).await {
                    Ok(Some(r)) if !r.is_deleted() => {
                        (json!([sdk_core::protocol::WireEntity::from_record(&r)]), None)
                    }
                    Ok(_) => {
                        return self
                            .error(ApiError::not_found("no such entity"), Some(request_id))
                            .await;
                    }
                    Err(e) => return self.error(e, Some(request_id)).await,
                }
            }
            None => match self
                .state
                .store
                .entities_page(&t, &entity_type, cursor.as_deref(), 501)
                .await
            {
                Ok(mut page) => {
                    let more = page.len() > 500;
                    page.truncate(500);
                    let next =
                        if more { page.last().map(|r| r.key.entity_id.to_string()) } else { None };
                    (
                        json!(
                            page.iter()
                                .map(sdk_core::protocol::WireEntity::from_record)
                                .collect::<Vec<_>>()
                        ),
                        next,
                    )
                }
                Err(e) => return self.error(e, Some(request_id)).await,
            },
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

/// Class B: replay the log after `after`, then follow it. Both phases read the log by sequence
/// (`seq > last sent`), so the switch from replay to live has no gap and no duplicate.
async fn follow(
    state: AppState,
    tenant: String,
    mut after: u64,
    filter: EventFilter,
    tx: Arc<Mailbox>,
) {
    let mut wake = state.notifier.subscribe(&tenant);
    loop {
        wake.borrow_and_update();
        let rows = match state.store.events_after(&tenant, after, 500).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Outbound::new(ServerFrame::error(e.code, e.message, None))).await;
                return;
            }
        };
        if rows.is_empty() {
            let changed = match state.log_recheck() {
                Some(r) => tokio::time::timeout(r, wake.changed()).await.unwrap_or(Ok(())),
                None => wake.changed().await,
            };
            if changed.is_err() {
                return;
            }
            continue;
        }
        for e in rows {
            after = e.event.sequence;
            if filter.matches(&e.event.event_type, &e.event.payload)
                && tx.send(Outbound::new(ServerFrame::Event { event: e.event })).await.is_err()
            {
                return;
            }
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
    state: AppState,
    tenant: TenantId,
    group: String,
    consumer: String,
    slots: Arc<Slots>,
    tx: Arc<Mailbox>,
) {
    let bus = EventBus::new(state);
    loop {
        let now = crate::api::now_ms() as i64;
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
