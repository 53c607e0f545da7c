//! The Socket.IO v4 endpoint at `/socket.io` (socketioxide), speaking shared/seeds/api.md's
//! events so any stock socket.io client works:
//!
//! - connect with `auth: { token }` (JWT) and optional `query: { clientId }`; a bad token gets
//!   `connect_error`;
//! - client → server: `message`, `join_room`, `leave_room`, `presence_update`, `ping`;
//! - server → client: `connected`, `message`, `message_ack`, `room_joined`, `room_left`, `pong`,
//!   `error`, and `presence_update` (another member's presence — api.md names no server event
//!   for it; this one mirrors the client's).
//!
//! Sockets register in the same [`Hub`](super::hub::Hub) as native connections, so a socket.io
//! client and a native client in one room see each other's messages; hub frames are translated
//! to api.md's payloads here. Tenant isolation, Class D refusal, rate limits and the audit log
//! are the native endpoint's.

use crate::api::iso_now;
use crate::auth::Identity;
use crate::ratelimit::Rate;
use crate::realtime::mailbox::Next;
use crate::realtime::{Outgoing, origin_allowed, relay_message};
use crate::state::AppState;
use crate::store::AuditEntry;
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, RoomId, UserId};
use sdk_core::interaction::{InteractionClass, Transport};
use sdk_core::protocol::{PresenceStatus, ServerFrame};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Messages over the rate limit tolerated (each answered with an `error`) before disconnecting.
const RATE_GRACE: u32 = 10;

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

/// Per-socket facts, kept in the socket's extensions.
#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    client: ClientId,
    over_limit: Arc<AtomicU32>,
}

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
    if !origin_allowed(&state.limits.ws_allowed_origins, origin.as_deref()) {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "origin")]);
        return Err(Refused(format!("{}: this origin may not connect", ErrorCode::AuthzFailed)));
    }
    if state.hub.connections() >= state.limits.ws_max_connections {
        state.metrics.inc("pf2_ws_refused_total", &[("reason", "capacity")]);
        return Err(Refused("connection limit reached".into()));
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
            state.metrics.inc("pf2_ws_auth_failures_total", &[]);
            let entry = AuditEntry {
                tenant: "-",
                actor: "-",
                action: "ws.auth_failed",
                target: "/socket.io",
                outcome: "denied",
                details: json!({ "reason": e.message, "origin": origin }),
            };
            let _ = state.store.audit(&entry).await;
            Err(Refused(format!("{}: {}", e.code, e.message)))
        }
    }
}

fn error_payload(code: ErrorCode, message: &str) -> Value {
    json!({ "error": message, "code": code.as_str() })
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
        ServerFrame::Error { code, message, details, .. } => {
            Some(("error", json!({ "error": message, "code": code.as_str(), "details": details })))
        }
        // Sync frames (pokes, deltas, events) are for the native protocol's SDK clients.
        _ => None,
    }
}

fn emit(state: &AppState, s: &SocketRef, event: &str, payload: &Value) {
    if s.emit(event, payload).is_ok() {
        state.metrics.inc("pf2_ws_messages_out_total", &[]);
    }
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
    let reg = state.hub.register(&identity.tenant, &identity.user, &client);
    state.restore_rooms(&identity.tenant, &client).await;
    let conn = Conn { id: reg.id, client: client.clone(), over_limit: Arc::default() };
    s.extensions.insert(conn.clone());
    // Forward hub fan-out to this socket; a slow consumer is disconnected.
    let (mailbox, fs, fstate) = (reg.mailbox, s.clone(), state.clone());
    tokio::spawn(async move {
        loop {
            match mailbox.next().await {
                Next::Frame(out) => {
                    if let Some((event, payload)) = to_event(&out.frame) {
                        emit(&fstate, &fs, event, &payload)
                    }
                }
                Next::Killed => {
                    let _ = fs.disconnect();
                    return;
                }
                Next::Close(_) => return,
            }
        }
    });

    s.on("message", async |s: SocketRef, TryData(m): TryData<IoMessage>, State(state): State<AppState>| {
        let Some((identity, conn)) = admit(&state, &s).await else { return };
        let m = match m {
            Ok(m) => m,
            Err(e) => return emit(&state, &s, "error", &error_payload(ErrorCode::InvalidRequest, &format!("invalid message: {e}"))),
        };
        let out = Outgoing {
            message_id: None,
            message_type: m.kind,
            class: m.interaction_class.as_deref().map(|c| InteractionClass::parse(c).unwrap_or(InteractionClass::C)),
            recipient: m.recipient_id.and_then(|u| UserId::new(u).ok()),
            room: m.room_id.and_then(|r| RoomId::new(r).ok()),
            payload: m.payload,
            metadata: m.metadata,
        };
        match relay_message(&state, &identity, &conn.client, conn.id, Transport::SocketIo, out).await {
            Ok(id) => emit(&state, &s, "message_ack", &json!({ "messageId": id })),
            Err((e, id)) => emit(&state, &s, "error", &json!({ "error": e.message, "code": e.code.as_str(), "details": { "messageId": id } })),
        }
    });
    s.on(
        "join_room",
        async |s: SocketRef, TryData(r): TryData<RoomRequest>, State(state): State<AppState>| {
            room_change(&state, &s, r.ok(), true).await
        },
    );
    s.on(
        "leave_room",
        async |s: SocketRef, TryData(r): TryData<RoomRequest>, State(state): State<AppState>| {
            room_change(&state, &s, r.ok(), false).await
        },
    );
    s.on(
        "presence_update",
        async |s: SocketRef,
               TryData(p): TryData<PresenceRequest>,
               State(state): State<AppState>| {
            let Some((identity, conn)) = admit(&state, &s).await else { return };
            match p {
                Ok(p) => state.hub.set_presence(
                    conn.id,
                    &identity.tenant,
                    &conn.client,
                    &identity.user,
                    p.status,
                    p.metadata,
                ),
                Err(_) => emit(
                    &state,
                    &s,
                    "error",
                    &error_payload(
                        ErrorCode::InvalidRequest,
                        "status must be online, away or offline",
                    ),
                ),
            }
        },
    );
    s.on("ping", async |s: SocketRef, State(state): State<AppState>| {
        if admit(&state, &s).await.is_some() {
            emit(&state, &s, "pong", &Value::Null);
        }
    });
    s.on_disconnect(async |s: SocketRef, State(state): State<AppState>| {
        let (Some(identity), Some(conn)) =
            (s.extensions.get::<Identity>(), s.extensions.get::<Conn>())
        else {
            return;
        };
        state.hub.unregister(conn.id);
        state.metrics.inc("pf2_ws_closed_total", &[("reason", "socket.io disconnect")]);
        let entry = AuditEntry {
            tenant: identity.tenant.as_str(),
            actor: identity.user.as_str(),
            action: "ws.closed",
            target: "/socket.io",
            outcome: "disconnected",
            details: json!({ "clientId": conn.client.as_str(), "connectionId": conn.id }),
        };
        let _ = state.store.audit(&entry).await;
    });
    // Only now, with every handler registered, tell the client it is connected: a client that
    // reacts to `connected` at once must not lose its first event.
    state.metrics.inc("pf2_ws_connections_total", &[("transport", "socket.io")]);
    let details =
        json!({ "clientId": client.as_str(), "connectionId": reg.id, "transport": "socket.io" });
    let (astate, tenant, user) =
        (state.clone(), identity.tenant.to_string(), identity.user.to_string());
    tokio::spawn(async move {
        let entry = AuditEntry {
            tenant: &tenant,
            actor: &user,
            action: "ws.opened",
            target: "/socket.io",
            outcome: "ok",
            details,
        };
        let _ = astate.store.audit(&entry).await;
    });
    emit(
        &state,
        &s,
        "connected",
        &json!({
            "connectionId": reg.id.to_string(),
            "serverTime": iso_now(),
            "interactionClasses": InteractionClass::ALL,
        }),
    );
}

/// `join_room` / `leave_room`: change membership and confirm with `room_joined` / `room_left`.
async fn room_change(state: &AppState, s: &SocketRef, request: Option<RoomRequest>, join: bool) {
    let Some((identity, conn)) = admit(state, s).await else { return };
    let (verb, answer) =
        if join { ("join_room", "room_joined") } else { ("leave_room", "room_left") };
    let Some(room) = request.and_then(|r| RoomId::new(r.room_id).ok()) else {
        return emit(
            state,
            s,
            "error",
            &error_payload(ErrorCode::InvalidRequest, &format!("{verb} needs a valid roomId")),
        );
    };
    if join {
        state.hub.join(&identity.tenant, &conn.client, &room);
    } else {
        state.hub.leave(&identity.tenant, &conn.client, &room);
    }
    emit(state, s, answer, &json!({ "roomId": room }));
}

/// Count the message, keep presence alive, apply the per-connection rate limit (a warning per
/// message over it, a disconnect after [`RATE_GRACE`]). `None`: do not handle the message.
async fn admit(state: &AppState, s: &SocketRef) -> Option<(Identity, Conn)> {
    let identity = s.extensions.get::<Identity>()?;
    let conn = s.extensions.get::<Conn>()?;
    state.metrics.inc("pf2_ws_messages_in_total", &[]);
    state.hub.touch(&identity.tenant, &conn.client);
    let rate: Rate = state.limits.ws_rate;
    if let Err(retry) = state.rate.check(&format!("ws\u{0}{}", conn.id), rate, Instant::now()) {
        let over = conn.over_limit.fetch_add(1, Ordering::SeqCst) + 1;
        if over > RATE_GRACE {
            state.metrics.inc("pf2_ws_disconnects_total", &[("reason", "rate_limit")]);
            let entry = AuditEntry {
                tenant: identity.tenant.as_str(),
                actor: identity.user.as_str(),
                action: "ws.rate_limited",
                target: "/socket.io",
                outcome: "disconnected",
                details: json!({ "connectionId": conn.id }),
            };
            let _ = state.store.audit(&entry).await;
            let _ = s.clone().disconnect();
        } else {
            emit(
                state,
                s,
                "error",
                &json!({ "error": "rate limit exceeded", "code": "RATE_LIMIT", "details": { "retryAfter": retry } }),
            );
        }
        return None;
    }
    Some((identity, conn))
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
