//! Rooms and presence (Class A) and realtime messages, for every socket transport alike: the
//! hub on this process, the cluster's view across processes, and the event log for Class B
//! messages.

use crate::access::Access;
use crate::auth::Identity;
use crate::clock::iso_now;
use crate::error::ApiError;
use crate::feed::ChangeFeed;
use crate::metrics::Metrics;
use crate::realtime::fanout::ClusterFanout;
use crate::realtime::hub::Hub;
use crate::store::Store;
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, RoomId, TenantId, UserId};
use sdk_core::interaction::{InteractionClass, Transport};
use sdk_core::protocol::ServerFrame;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Rooms {
    hub: Arc<Hub>,
    cluster: Arc<dyn ClusterFanout>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    feed: ChangeFeed,
}

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

impl Rooms {
    pub fn new(
        hub: Arc<Hub>,
        cluster: Arc<dyn ClusterFanout>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        feed: ChangeFeed,
    ) -> Self {
        Self { hub, cluster, store, metrics, feed }
    }

    /// Join `room` (membership belongs to the client id and survives reconnects); under sync
    /// rules only with read on the room's channel.
    pub fn join(
        &self,
        access: &Access,
        tenant: &TenantId,
        client: &ClientId,
        room: &RoomId,
    ) -> Result<(), ApiError> {
        access.check_room_read(room.as_str())?;
        self.hub.join(tenant, client, room);
        Ok(())
    }

    /// Under sync rules, leave every room `client` may no longer read (its grants changed).
    pub fn leave_unreadable(&self, access: &Access, tenant: &TenantId, client: &ClientId) {
        if matches!(access, Access::Unruled) {
            return;
        }
        for room in self.hub.rooms_of(tenant, client) {
            if access.check_room_read(room.as_str()).is_err() {
                self.hub.leave(tenant, client, &room);
            }
        }
    }

    pub fn leave(&self, tenant: &TenantId, client: &ClientId, room: &RoomId) {
        self.hub.leave(tenant, client, room);
    }

    /// Presence in `room`: the cluster's view, or this process's when there is no cluster or
    /// it cannot tell.
    pub async fn presence_in(&self, tenant: &TenantId, room: &RoomId) -> Vec<ServerFrame> {
        if let Some(frames) = self.cluster.presence_in(tenant, room, self.hub.presence_ttl()).await
        {
            return frames;
        }
        self.hub.presence_in(tenant, room)
    }

    /// A client connected here: it is back in the rooms it joined through any process.
    pub async fn restore(&self, tenant: &TenantId, client: &ClientId) {
        if !self.cluster.joined() {
            return;
        }
        for room in self.cluster.rooms_of(tenant, client).await {
            self.hub.join(tenant, client, &room);
        }
    }

    /// Set a client's presence from connection `conn` and tell its rooms.
    pub fn set_presence(
        &self,
        conn: u64,
        identity: &Identity,
        client: &ClientId,
        status: sdk_core::protocol::PresenceStatus,
        metadata: Option<Value>,
    ) {
        self.hub.set_presence(conn, &identity.tenant, client, &identity.user, status, metadata);
    }

    /// Relay a message for every realtime endpoint alike: Class D refused, exactly one of recipient
    /// (all of that user's connections in the tenant) or room (the other connections of its members;
    /// the sender must be a member), Class B also appended to the event log. Returns the message id.
    pub async fn relay_message(
        &self,
        access: &Access,
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
            self.metrics.inc("pf2_ws_class_d_refused_total", &[]);
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
        // Under sync rules the event a Class B message is logged as goes to its readers only.
        let channels = match (&m.recipient, &m.room) {
            (Some(user), None) => access
                .direct(identity.user.as_str(), user.as_str())
                .map_err(|e| (e, message_id.clone()))?,
            (None, Some(room)) => {
                access.check_room_write(room.as_str()).map_err(|e| (e, message_id.clone()))?;
                matches!(access, Access::Ruled { .. }).then(|| [room.to_string()].into())
            }
            _ => None,
        };
        match (&m.recipient, &m.room) {
            (Some(user), None) => {
                self.hub.to_user(tenant, user, &frame);
            }
            (None, Some(room)) => {
                if !self.hub.is_member(tenant, client, room) {
                    return Err(fail(ApiError::new(
                        ErrorCode::AuthzFailed,
                        "join the room before sending to it",
                    )));
                }
                self.hub.to_room(tenant, room, &frame, Some(conn_id));
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
            let mut meta = json!({ "source": "realtime", "metadata": m.metadata });
            if let Some(c) = channels {
                meta[sdk_core::rules::EVENT_CHANNELS] = json!(c);
            }
            let event_id = uuid::Uuid::new_v4().to_string();
            let seq = self
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
                .map_err(|e| fail(e.into()))?;
            self.feed.events_appended(tenant, seq);
        }
        Ok(message_id)
    }
}
