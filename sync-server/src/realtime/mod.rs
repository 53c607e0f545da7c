//! The realtime gateway: the [`hub::Hub`] shared by every realtime endpoint, the native
//! WebSocket endpoint `/v1/ws` ([`native`]) speaking sdk-core's protocol, and the Socket.IO v4
//! endpoint `/socket.io` ([`socketio`]) speaking api.md's events.

pub mod hub;
pub mod mailbox;
pub mod native;
pub mod socketio;

/// Whether a browser `Origin` may open a socket. Patterns are exact origins, `*` (anything), or
/// end in `:*` for any port (`http://localhost:*`). A request without `Origin` (a native app, a
/// server) is not a browser and is allowed; its token still has to verify.
pub fn origin_allowed(patterns: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    patterns.iter().any(|p| {
        p == "*"
            || p == origin
            || p.strip_suffix(":*").is_some_and(|base| {
                origin == base
                    || origin
                        .strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins_match_exactly_or_by_port_wildcard() {
        let p = vec!["http://localhost:*".to_string(), "https://app.example".to_string()];
        assert!(origin_allowed(&p, None));
        assert!(origin_allowed(&p, Some("http://localhost:5173")));
        assert!(origin_allowed(&p, Some("http://localhost")));
        assert!(origin_allowed(&p, Some("https://app.example")));
        assert!(!origin_allowed(&p, Some("https://app.example.evil")));
        assert!(!origin_allowed(&p, Some("http://localhost.evil:80")));
        assert!(!origin_allowed(&p, Some("http://localhost:80x")));
        assert!(!origin_allowed(&p, Some("https://evil.example")));
        assert!(origin_allowed(&["*".to_string()], Some("https://anything")));
    }
}

use crate::api::iso_now;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::state::AppState;
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, RoomId, UserId};
use sdk_core::interaction::{InteractionClass, Transport};
use sdk_core::protocol::ServerFrame;
use serde_json::{Value, json};

/// A message to relay, from any realtime endpoint.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message_id: Option<String>,
    pub message_type: String,
    pub class: Option<InteractionClass>,
    pub recipient: Option<UserId>,
    pub room: Option<RoomId>,
    pub payload: Value,
    pub metadata: Option<Value>,
}

/// Relay a message for every realtime endpoint alike: Class D refused, exactly one of recipient
/// (all of that user's connections in the tenant) or room (the other connections of its members;
/// the sender must be a member), Class B also appended to the event log. Returns the message id.
pub async fn relay_message(
    state: &AppState,
    identity: &Identity,
    client: &ClientId,
    conn_id: u64,
    transport: Transport,
    m: Outgoing,
) -> Result<String, (ApiError, String)> {
    let message_id = m
        .message_id
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let fail = |e: ApiError| (e, message_id.clone());
    let class = m.class.unwrap_or(InteractionClass::C);
    if let Err(e) = class.check_transport(transport) {
        state.metrics.inc("pf2_ws_class_d_refused_total", &[]);
        return Err(fail(e.into()));
    }
    if m.message_type.is_empty() || m.message_type.len() > 128 {
        return Err(fail(ApiError::invalid("the message type must be 1 to 128 characters")));
    }
    let tenant = &identity.tenant;
    let frame = ServerFrame::Message {
        message_id: message_id.clone(),
        message_type: m.message_type.clone(),
        interaction_class: class,
        tenant_id: tenant.clone(),
        sender_id: identity.user.clone(),
        recipient_id: m.recipient.clone(),
        room_id: m.room.clone(),
        payload: m.payload.clone(),
        timestamp: iso_now(),
        metadata: m.metadata.clone(),
    };
    match (&m.recipient, &m.room) {
        (Some(user), None) => {
            state.hub.to_user(tenant, user, &frame);
        }
        (None, Some(room)) => {
            if !state.hub.is_member(tenant, client, room) {
                return Err(fail(ApiError::new(
                    ErrorCode::AuthzFailed,
                    "join the room before sending to it",
                )));
            }
            state.hub.to_room(tenant, room, &frame, Some(conn_id));
        }
        _ => {
            return Err(fail(ApiError::invalid(
                "a message names exactly one of recipientId or roomId",
            )));
        }
    }
    if class == InteractionClass::B {
        let body = json!({
            "messageId": message_id,
            "senderId": identity.user.as_str(),
            "recipientId": m.recipient,
            "roomId": m.room,
            "payload": m.payload,
        });
        let meta = json!({ "source": "realtime", "metadata": m.metadata });
        let event_id = uuid::Uuid::new_v4().to_string();
        let seq = state
            .store
            .append_event(
                tenant.as_str(),
                &event_id,
                &format!("message.{}", m.message_type),
                &body,
                &meta,
                false,
            )
            .await
            .map_err(fail)?;
        state.events_appended(tenant, seq);
    }
    Ok(message_id)
}
