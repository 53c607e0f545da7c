//! The Socket.IO v4 transport at `/socket.io` (socketioxide), speaking shared/seeds/api.md's
//! events so any stock socket.io client works:
//!
//! - connect with `auth: { token }` (JWT) and optional `query: { clientId }`; a bad token gets
//!   `connect_error`;
//! - client → server: `message`, `join_room`, `leave_room`, `presence_update`, `ping`;
//! - server → client: `connected`, `message`, `message_ack`, `room_joined`, `room_left`, `pong`,
//!   `error`, and `presence_update` (another member's presence — api.md names no server event
//!   for it; this one mirrors the client's).
//!
//! Each socket has a [`Session`], the same as a `/v1/ws` connection's: this module only turns
//! api.md's events into [`ClientFrame`]s and the session's frames into api.md's events. Tenant
//! isolation, Class D refusal, rate limits, presence, audit and teardown are the session's.

use super::session::{self, Refusal, SOCKET_IO, Session};
use crate::auth::Identity;
use crate::realtime::mailbox::{Mailbox, Next};
use crate::state::AppState;
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, RoomId, UserId};
use sdk_core::interaction::InteractionClass;
use sdk_core::protocol::{ClientFrame, PresenceStatus, ServerFrame};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use std::sync::Arc;
use tokio::sync::Mutex;

pub fn layer(state: AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .with_state(state.clone())
        .max_payload(state.limits.ws_frame_bytes as u64)
        .max_buffer_size(state.limits.ws_send_buffer)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    layer
}

#[derive(Debug, Deserialize)]
struct AuthPayload {
    token: String,
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The socket's session, in its extensions (events of one socket are handled one at a time).
#[derive(Clone)]
struct Shared(Arc<Mutex<Option<Session>>>);

fn query_param(s: &SocketRef, name: &str) -> Option<String> {
    s.req_parts()
        .uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<AuthPayload>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    let origin =
        s.req_parts().headers.get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
    let host = s.req_parts().headers.get("host").and_then(|v| v.to_str().ok()).map(str::to_string);
    match session::admission(&state, SOCKET_IO, origin.as_deref(), host.as_deref(), "").await {
        Ok(()) => {}
        Err(Refusal::Origin) => {
            return Err(Refused(format!(
                "{}: this origin may not connect",
                ErrorCode::AuthzFailed
            )));
        }
        Err(Refusal::Capacity) => return Err(Refused("connection limit reached".into())),
    }
    let verified = match auth {
        Ok(a) => state.jwt.verify(&a.token),
        Err(_) => Err(crate::error::ApiError::auth("auth.token is required")),
    };
    match verified {
        Ok(identity) => {
            s.extensions.insert(identity);
            Ok(())
        }
        Err(e) => {
            session::auth_failed(&state, SOCKET_IO, &e.message, json!({ "origin": origin }));
            Err(Refused(format!("{}: {}", e.code, e.message)))
        }
    }
}

/// A hub frame as api.md's server event.
fn to_event(frame: &ServerFrame) -> Option<(&'static str, Value)> {
    match frame {
        ServerFrame::Message {
            message_id,
            message_type,
            interaction_class,
            tenant_id,
            sender_id,
            recipient_id,
            room_id,
            payload,
            timestamp,
            metadata,
        } => Some((
            "message",
            json!({
                "messageId": message_id,
                "type": message_type,
                "interactionClass": interaction_class,
                "tenantId": tenant_id,
                "senderId": sender_id,
                "recipientId": recipient_id,
                "roomId": room_id,
                "payload": payload,
                "timestamp": timestamp,
                "metadata": metadata,
            }),
        )),
        ServerFrame::Presence { user_id, client_id, status, metadata, room_id, .. } => Some((
            "presence_update",
            json!({ "userId": user_id, "clientId": client_id, "status": status, "metadata": metadata, "roomId": room_id }),
        )),
        ServerFrame::Error { code, message, details, request_id } => {
            // A refused message names it (api.md's socket.io `error` carries `messageId`).
            let details = match (details, request_id) {
                (Some(d), _) => d.clone(),
                (None, Some(id)) => json!({ "messageId": id }),
                (None, None) => Value::Null,
            };
            Some(("error", json!({ "error": message, "code": code.as_str(), "details": details })))
        }
        ServerFrame::MessageAck { message_id } => {
            Some(("message_ack", json!({ "messageId": message_id })))
        }
        ServerFrame::RoomJoined { room_id } => Some(("room_joined", json!({ "roomId": room_id }))),
        ServerFrame::RoomLeft { room_id } => Some(("room_left", json!({ "roomId": room_id }))),
        ServerFrame::Pong { .. } => Some(("pong", Value::Null)),
        // The session's `connected` is sent by `on_connect` in api.md's shape; sync frames
        // (pokes, deltas, events) are for the native protocol's SDK clients.
        _ => None,
    }
}

/// Frames from the mailbox were counted in `pf2_ws_messages_out_total` when they were queued
/// (the hub's fan-out, the session's replies), as for `/v1/ws`; only what bypasses it counts here.
fn emit(s: &SocketRef, event: &str, payload: &Value) -> bool {
    s.emit(event, payload).is_ok()
}

async fn on_connect(s: SocketRef, State(state): State<AppState>) {
    let Some(identity) = s.extensions.get::<Identity>() else {
        let _ = s.disconnect();
        return;
    };
    let client =
        query_param(&s, "clientId").and_then(|c| ClientId::new(c).ok()).unwrap_or_else(|| {
            ClientId::new(format!("sio-{}", s.id)).expect("socket ids are valid client ids")
        });
    let details = json!({ "transport": "socket.io" });
    let session = Session::open(state.clone(), SOCKET_IO, identity, client, details).await;
    let (mailbox, conn_id) = (session.tx.clone(), session.conn_id);
    let shared = Shared(Arc::new(Mutex::new(Some(session))));
    s.extensions.insert(shared.clone());
    tokio::spawn(drain(s.clone(), mailbox.clone()));
    tokio::spawn(watchdog(shared, mailbox));
    s.on("message", async |s: SocketRef, TryData(m): TryData<IoMessage>| {
        deliver(&s, m.map(IoMessage::into_frame).map_err(|e| format!("invalid message: {e}"))).await
    });
    s.on("join_room", async |s: SocketRef, TryData(r): TryData<RoomRequest>| {
        let room = r.ok().and_then(|r| RoomId::new(r.room_id).ok());
        let frame = room.map(|room_id| ClientFrame::JoinRoom { room_id });
        deliver(&s, frame.ok_or_else(|| "join_room needs a valid roomId".to_string())).await
    });
    s.on("leave_room", async |s: SocketRef, TryData(r): TryData<RoomRequest>| {
        let room = r.ok().and_then(|r| RoomId::new(r.room_id).ok());
        let frame = room.map(|room_id| ClientFrame::LeaveRoom { room_id });
        deliver(&s, frame.ok_or_else(|| "leave_room needs a valid roomId".to_string())).await
    });
    s.on("presence_update", async |s: SocketRef, TryData(p): TryData<PresenceRequest>| {
        let frame = p.map(|p| ClientFrame::Presence {
            status: p.status,
            metadata: p.metadata,
            room_id: None,
        });
        deliver(&s, frame.map_err(|_| "status must be online, away or offline".to_string())).await
    });
    s.on("ping", async |s: SocketRef| deliver(&s, Ok(ClientFrame::Ping { nonce: 0 })).await);
    s.on_disconnect(async |s: SocketRef| {
        let Some(shared) = s.extensions.get::<Shared>() else { return };
        if let Some(session) = shared.0.lock().await.take() {
            session.close("socket.io disconnect").await;
        }
    });
    // Only now, with every handler registered, tell the client it is connected: a client that
    // reacts to `connected` at once must not lose its first event.
    let sent = emit(
        &s,
        "connected",
        &json!({
            "connectionId": conn_id.to_string(),
            "serverTime": crate::clock::iso_now(),
            "interactionClasses": InteractionClass::ALL,
            "rateLimit": state.limits.ws_rate.wire(),
        }),
    );
    if sent {
        state.metrics.ws_messages_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The session's frames as api.md's events, in order. A slow consumer is disconnected at once;
/// a session that ends itself (rate limit, token expiry) is disconnected after what it queued
/// before (the warnings) is out.
async fn drain(s: SocketRef, mailbox: Arc<Mailbox>) {
    loop {
        match mailbox.next().await {
            Next::Frame(out) => {
                if let Some((event, payload)) = to_event(&out.frame) {
                    emit(&s, event, &payload);
                }
            }
            Next::Run(run) => {
                for out in &run.frames {
                    if let Some((event, payload)) = to_event(&out.frame) {
                        emit(&s, event, &payload);
                    }
                }
            }
            Next::Killed | Next::Close(Some(_)) => {
                let _ = s.disconnect();
                return;
            }
            Next::Close(None) => return,
        }
    }
}

/// Ends the session at its deadline (token expiry), as `/v1/ws`'s read loop does. Never holds the
/// session's lock while waiting; stops when the connection ends.
async fn watchdog(shared: Shared, mailbox: Arc<Mailbox>) {
    loop {
        let Some(deadline) = shared.0.lock().await.as_ref().map(Session::deadline) else { return };
        tokio::select! {
            _ = mailbox.ended() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let guard = shared.0.lock().await;
        let Some(session) = guard.as_ref() else { return };
        if let Some(closing) = session.overdue() {
            mailbox.close(Some(closing));
            return;
        }
    }
}

/// One event as a frame for the socket's session: admitted (rate limit), then handled; an event
/// that does not translate is answered with `error` after admission, as a bad frame would be.
/// A session over its limit is closed through its mailbox, so the warnings before go out first.
async fn deliver(s: &SocketRef, frame: Result<ClientFrame, String>) {
    let Some(shared) = s.extensions.get::<Shared>() else { return };
    let mut guard = shared.0.lock().await;
    let Some(session) = guard.as_mut() else { return };
    if session.tx.ending() {
        return;
    }
    if let Err(closing) = session.admit(frame.as_ref().ok()).await {
        session.tx.close(Some(closing));
        return;
    }
    match frame {
        Ok(frame) => session.handle(frame).await,
        Err(message) => session.error(crate::error::ApiError::invalid(message), None).await,
    }
}

/// api.md's `message` payload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IoMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    interaction_class: Option<String>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomRequest {
    room_id: String,
}

#[derive(Debug, Deserialize)]
struct PresenceRequest {
    status: PresenceStatus,
    #[serde(default)]
    metadata: Option<Value>,
}

impl IoMessage {
    fn into_frame(self) -> ClientFrame {
        ClientFrame::Message {
            message_id: None,
            message_type: self.kind,
            interaction_class: self
                .interaction_class
                .as_deref()
                .map(|c| InteractionClass::parse(c).unwrap_or(InteractionClass::C)),
            recipient_id: self.recipient_id.and_then(|u| UserId::new(u).ok()),
            room_id: self.room_id.and_then(|r| RoomId::new(r).ok()),
            payload: self.payload,
            metadata: self.metadata,
        }
    }
}
