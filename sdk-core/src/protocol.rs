//! The wire protocol between the SDK and the server, version 1.
//!
//! Every frame is an object `{"v": 1, "type": "<frame>", …fields in camelCase}`. Text frames are
//! JSON; binary frames are MessagePack (maps with field names) when the WebSocket subprotocol
//! `pf2.v1.msgpack` was negotiated. Decoders check the size limit before parsing, never panic on
//! any input, and report an unknown version as `UNSUPPORTED_VERSION`.
//!
//! Types here are the only ones in sdk-core that derive serde for the wire; internal types
//! (records, queue entries) convert to and from them explicitly. docs/protocol.md is the prose
//! description of every frame.

use crate::apply::{Conflict, EntityBody, EntityRecord, OpResult, Outcome, Resolution, Submitted};
use crate::error::{Error, ErrorCode};
use crate::hlc::HlcTimestamp;
use crate::ids::{
    ClientId, EntityId, EntityKey, EntityType, OperationId, RoomId, TenantId, UserId,
};
use crate::interaction::InteractionClass;
use crate::operation::{Operation, OperationKind};
use crate::vclock::VectorClock;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const PROTOCOL_VERSION: u32 = 1;
/// WebSocket subprotocol for JSON text frames (the default).
pub const JSON_SUBPROTOCOL: &str = "pf2.v1.json";
/// WebSocket subprotocol for MessagePack binary frames.
pub const MSGPACK_SUBPROTOCOL: &str = "pf2.v1.msgpack";
/// Default largest frame, in bytes (DESIGN.md limits).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// An operation as it travels (api.md's `Operation`, plus `clientSeq` and `interactionClass`).
/// Fields stay raw here so one malformed operation can be refused alone, by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireOperation {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$"))]
    pub operation_id: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$"))]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_seq: Option<u64>,
    pub tenant_id: String,
    pub entity_type: String,
    pub entity_id: String,
    pub operation_type: String,
    /// An object for CREATE/UPDATE, absent or null for DELETE, base64 change bytes for CRDT.
    #[serde(default)]
    pub payload: Value,
    pub timestamp: String,
    #[serde(default)]
    pub vector_clock: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_class: Option<String>,
}

impl WireOperation {
    pub fn from_operation(op: &Operation) -> Self {
        let payload = match &op.kind {
            OperationKind::Create(o) | OperationKind::Update(o) => Value::Object(o.clone()),
            OperationKind::Delete => Value::Null,
            OperationKind::Crdt(bytes) => Value::String(BASE64.encode(bytes)),
        };
        Self {
            operation_id: op.id.to_string(),
            client_id: op.client_id.to_string(),
            client_seq: op.client_seq,
            tenant_id: op.key.tenant.to_string(),
            entity_type: op.key.entity_type.to_string(),
            entity_id: op.key.entity_id.to_string(),
            operation_type: op.kind.name().to_string(),
            payload,
            timestamp: op.timestamp.to_string(),
            vector_clock: serde_json::to_value(&op.clock).expect("clock serializes"),
            interaction_class: Some(op.class.as_str().to_string()),
        }
    }

    /// Decode into something the apply engine takes. `Err` when even the header (operation id,
    /// client id) is unusable: the request as a whole is then invalid.
    pub fn into_submitted(self) -> Result<Submitted, Error> {
        let id = OperationId::new(self.operation_id.clone())?;
        let client_id = ClientId::new(self.client_id.clone())?;
        let client_seq = self.client_seq;
        Ok(match self.into_operation() {
            Ok(op) => Submitted::Valid(op),
            Err(error) => Submitted::Invalid { id, client_id, client_seq, error },
        })
    }

    pub fn into_operation(self) -> Result<Operation, Error> {
        let key = EntityKey::parse(&self.tenant_id, &self.entity_type, &self.entity_id)?;
        let kind = match (self.operation_type.as_str(), self.payload) {
            ("CREATE", Value::Object(o)) => OperationKind::Create(o),
            ("UPDATE", Value::Object(o)) => OperationKind::Update(o),
            ("DELETE", Value::Null) => OperationKind::Delete,
            ("CRDT", Value::String(s)) => OperationKind::Crdt(
                BASE64.decode(s).map_err(|e| Error::invalid_op(format!("CRDT payload: {e}")))?,
            ),
            ("CREATE" | "UPDATE", _) => return Err(Error::invalid_op("payload must be an object")),
            ("DELETE", _) => return Err(Error::invalid_op("a DELETE carries no payload")),
            ("CRDT", _) => return Err(Error::invalid_op("a CRDT payload is base64 change bytes")),
            (other, _) => {
                return Err(Error::invalid_op(format!("unknown operationType {other:?}")));
            }
        };
        let clock: VectorClock = match self.vector_clock {
            Value::Null => VectorClock::new(),
            v => serde_json::from_value(v)
                .map_err(|e| Error::invalid_op(format!("vectorClock: {e}")))?,
        };
        let class = match self.interaction_class.as_deref() {
            None => InteractionClass::C,
            Some(s) => InteractionClass::parse(s)
                .ok_or_else(|| Error::invalid_op(format!("unknown interactionClass {s:?}")))?,
        };
        Ok(Operation {
            id: OperationId::new(self.operation_id)?,
            client_id: ClientId::new(self.client_id)?,
            client_seq: self.client_seq,
            key,
            kind,
            timestamp: HlcTimestamp::parse(&self.timestamp)?,
            clock,
            class,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Applied,
    Conflict,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireError {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub code: ErrorCode,
    pub message: String,
}

/// The outcome of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireOpResult {
    pub operation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_seq: Option<u64>,
    pub status: ResultStatus,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields_from_client: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields_kept_server: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl WireOpResult {
    pub fn from_result(r: &OpResult) -> Self {
        let mut w = Self {
            operation_id: r.operation_id.to_string(),
            client_seq: r.client_seq,
            status: ResultStatus::Applied,
            duplicate: r.duplicate,
            version: None,
            resolution: None,
            fields_from_client: Vec::new(),
            fields_kept_server: Vec::new(),
            conflict_id: None,
            error: None,
        };
        match &r.outcome {
            Outcome::Applied { version } => w.version = Some(*version),
            Outcome::Conflict { resolution, version, conflict_id } => {
                w.status = ResultStatus::Conflict;
                w.version = *version;
                w.conflict_id = conflict_id.clone();
                w.resolution = Some(match resolution {
                    Resolution::Custom(name) => format!("custom:{name}"),
                    other => other.name().to_string(),
                });
                if let Resolution::FieldsMerged { from_client, kept_server } = resolution {
                    w.fields_from_client = from_client.clone();
                    w.fields_kept_server = kept_server.clone();
                }
            }
            Outcome::Refused { code, message } => {
                w.status = ResultStatus::Refused;
                w.error = Some(WireError { code: *code, message: message.clone() });
            }
        }
        w
    }
}

impl WireOpResult {
    /// The engine outcome this result describes (for results stored and replayed by a server).
    pub fn to_outcome(&self) -> Outcome {
        match self.status {
            ResultStatus::Applied => Outcome::Applied { version: self.version.unwrap_or(0) },
            ResultStatus::Refused => {
                let (code, message) = self
                    .error
                    .as_ref()
                    .map(|e| (e.code, e.message.clone()))
                    .unwrap_or((ErrorCode::InternalError, String::new()));
                Outcome::Refused { code, message }
            }
            ResultStatus::Conflict => {
                let resolution = match self.resolution.as_deref().unwrap_or("") {
                    "incoming-won" => Resolution::IncomingWon,
                    "fields-merged" => Resolution::FieldsMerged {
                        from_client: self.fields_from_client.clone(),
                        kept_server: self.fields_kept_server.clone(),
                    },
                    "manual" => Resolution::Manual,
                    other => match other.strip_prefix("custom:") {
                        Some(name) => Resolution::Custom(name.to_string()),
                        None => Resolution::ServerKept,
                    },
                };
                Outcome::Conflict {
                    resolution,
                    version: self.version,
                    conflict_id: self.conflict_id.clone(),
                }
            }
        }
    }
}

/// An entity's current state, as deltas and snapshots carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireEntity {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_type: EntityType,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_id: EntityId,
    pub version: u64,
    /// The object state (`null` for deleted entities and CRDT documents).
    #[serde(default)]
    pub state: Value,
    /// Base64 document bytes of a CRDT entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt: Option<String>,
    #[serde(default)]
    pub deleted: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, u64>))]
    pub vector_clock: VectorClock,
    /// The stamp of the latest write (clients observe it so their next writes order after it).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub timestamp: HlcTimestamp,
    /// Under sync rules, to a client syncing channels: the channels the entity belongs to (the
    /// client forgets it when it holds none of them any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// An entity the client must forget: it left every channel the client syncs (sync rules).
/// `version` is the change that took it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireRemoval {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_type: EntityType,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_id: EntityId,
    pub version: u64,
}

/// What a delta was computed for, under sync rules: the rule file's fingerprint (when it
/// changes, a client starts over from zero) and the channels the client syncs, or `None`
/// when it syncs the whole tenant. A client sends these channels back as `held` with its next
/// pull; what it did not hold before arrives whole (move-in), what it holds no more it forgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WireScope {
    pub rules: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The client's `since` is older than what the server keeps of the channels' history
    /// (the log's retention): this delta is not applied, the client starts over from zero.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

impl WireEntity {
    pub fn from_record(r: &EntityRecord) -> Self {
        let (state, crdt) = match (&r.body, r.is_deleted()) {
            (_, true) => (Value::Null, None),
            (EntityBody::Object(o), false) => (Value::Object(o.clone()), None),
            (EntityBody::Crdt(b), false) => (Value::Null, Some(BASE64.encode(b))),
        };
        Self {
            entity_type: r.key.entity_type.clone(),
            entity_id: r.key.entity_id.clone(),
            version: r.version,
            state,
            crdt,
            deleted: r.is_deleted(),
            vector_clock: r.clock.clone(),
            timestamp: r.last_write.time,
            channels: None,
        }
    }

    pub fn crdt_bytes(&self) -> Result<Option<Vec<u8>>, Error> {
        self.crdt
            .as_ref()
            .map(|s| BASE64.decode(s).map_err(|e| Error::Decode(format!("crdt bytes: {e}"))))
            .transpose()
    }
}

/// A conflict awaiting a person, as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"conflictId": "c-5d1e", "entityType": "document", "entityId": "d-9", "operationId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "clientId": "client-789", "fields": ["title"], "serverState": {"title": "Q3 plan"}, "clientState": {"title": "Q3 plan (draft)"}, "serverVersion": 40, "at": "2026-12-07T10:15:30.123Z"})))]
pub struct WireConflict {
    pub conflict_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_type: EntityType,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub entity_id: EntityId,
    pub operation_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub client_id: ClientId,
    #[serde(default)]
    pub fields: Vec<String>,
    pub server_state: Value,
    pub client_state: Value,
    pub server_version: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub at: HlcTimestamp,
}

impl WireConflict {
    pub fn from_conflict(c: &Conflict) -> Self {
        let obj = |o: &Option<crate::operation::Object>| {
            o.as_ref().map(|o| Value::Object(o.clone())).unwrap_or(Value::Null)
        };
        Self {
            conflict_id: c.id.clone(),
            entity_type: c.key.entity_type.clone(),
            entity_id: c.key.entity_id.clone(),
            operation_id: c.operation_id.to_string(),
            client_id: c.client_id.clone(),
            fields: c.fields.clone(),
            server_state: obj(&c.server_state),
            client_state: obj(&c.client_state),
            server_version: c.server_version,
            at: c.at,
        }
    }
}

/// An event of the tenant's log (architecture.md §5 fields) with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"sequence": 43, "eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "eventType": "order.created", "tenantId": "acme", "timestamp": "2026-12-07T10:15:31.000Z", "payload": {"orderId": "o-1", "region": "eu"}, "metadata": {"source": "orders"}, "schemaVersion": "1.0"})))]
pub struct WireEvent {
    /// Its position in the tenant's log (1, 2, …; gap-free).
    pub sequence: u64,
    pub event_id: String,
    pub event_type: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant_id: TenantId,
    /// RFC 3339, milliseconds, UTC.
    pub timestamp: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub metadata: Value,
    pub schema_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// Whether `event_type` matches any of `patterns` (exact names, or a prefix ending in `*`:
/// `order.*`). No patterns match everything. Used by subscriptions on every transport.
pub fn event_type_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => p == event_type,
        })
}

/// What a subscription receives: event-type patterns (see [`event_type_matches`]) and payload
/// attribute equalities (`{"region": "eu", "customer.tier": "gold"}`: a dotted key walks nested
/// objects). Evaluated by the server, so a consumer is sent only what it asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
}

impl EventFilter {
    /// Largest filter a subscription may carry (patterns plus attributes).
    pub const MAX_TERMS: usize = 32;

    pub fn matches(&self, event_type: &str, payload: &Value) -> bool {
        event_type_matches(&self.event_types, event_type)
            && self.attributes.iter().all(|(path, want)| {
                path.split('.')
                    .try_fold(payload, |v, key| v.as_object().and_then(|o| o.get(key)))
                    .is_some_and(|got| got == want)
            })
    }

    /// A filter's shape: at most [`Self::MAX_TERMS`] terms, patterns non-empty with `*` only at
    /// the end, attribute paths of non-empty segments, values scalars.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidFilter(m));
        if self.event_types.len() + self.attributes.len() > Self::MAX_TERMS {
            return bad(format!("a filter has at most {} terms", Self::MAX_TERMS));
        }
        for p in &self.event_types {
            let body = p.strip_suffix('*').unwrap_or(p);
            if p.is_empty() || p.len() > 128 || body.contains('*') {
                return bad(format!("event type pattern {p:?}: a name, or a prefix ending in *"));
            }
        }
        for (path, v) in &self.attributes {
            if path.is_empty() || path.len() > 128 || path.split('.').any(str::is_empty) {
                return bad(format!("attribute path {path:?}: dot-separated names"));
            }
            if v.is_object() || v.is_array() {
                return bad(format!(
                    "attribute {path:?}: compare with a string, number, bool or null"
                ));
            }
        }
        Ok(())
    }
}

/// Rewrite every number of `v` that has no fractional part (`1441.0`, `1e3`) as an integer, as
/// JSON Schema reads it (an `integer` is any number without a fraction), so such a body
/// deserializes into integer fields. Numbers beyond ±2^53 keep their form (no longer exact).
pub fn integral_numbers(v: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT) {
                *v = if f < 0.0 { Value::from(f as i64) } else { Value::from(f as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ClientFrame {
    /// First frame on a socket (unless the token came in the URL).
    Auth {
        token: String,
        client_id: ClientId,
    },
    /// A fresh token for a live socket.
    RefreshToken {
        token: String,
    },
    /// Class C operations, in `clientSeq` order.
    Push {
        batch_id: String,
        operations: Vec<WireOperation>,
    },
    /// Entities changed since version `since`.
    Pull {
        since: u64,
        #[serde(default)]
        limit: Option<u32>,
        /// Partial sync under sync rules: only these of the channels granted (`None`: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channels: Option<Vec<String>>,
        /// The channels the client holds through `since` (the last delta's `scope.channels`);
        /// the rest of what it syncs arrives whole. `None`: the same as it syncs now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held: Option<Vec<String>>,
    },
    /// Class B: the tenant's event stream after sequence `after` (replay, then live): a broadcast
    /// subscription whose position the client keeps.
    Subscribe {
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        event_types: Vec<String>,
        /// Payload attribute equalities (see [`EventFilter`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        attributes: BTreeMap<String, Value>,
    },
    /// Class B from a durable subscription: the server keeps the position (advanced by `Ack`)
    /// and the filter; replay after the position, then live.
    Follow {
        subscription: String,
    },
    Unsubscribe {},
    /// Join consumer group `group` as a competing consumer: the server pushes `Delivery` frames,
    /// at most `maxInFlight` unacknowledged at a time, each leased to this socket.
    Consume {
        group: String,
        #[serde(default)]
        max_in_flight: Option<u32>,
    },
    /// The delivery was handled: it leaves the group for good.
    DeliveryAck {
        group: String,
        sequence: u64,
        lease_token: String,
    },
    /// The delivery failed: retried after a backoff, or dead-lettered after the last attempt.
    DeliveryNack {
        group: String,
        sequence: u64,
        lease_token: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Class A presence (fire-and-forget).
    Presence {
        status: PresenceStatus,
        #[serde(default)]
        metadata: Option<Value>,
        #[serde(default)]
        room_id: Option<RoomId>,
    },
    JoinRoom {
        room_id: RoomId,
    },
    LeaveRoom {
        room_id: RoomId,
    },
    /// A direct (`recipientId`) or room (`roomId`) message; api.md's `type` is `messageType`.
    Message {
        #[serde(default)]
        message_id: Option<String>,
        message_type: String,
        #[serde(default)]
        interaction_class: Option<InteractionClass>,
        #[serde(default)]
        recipient_id: Option<UserId>,
        #[serde(default)]
        room_id: Option<RoomId>,
        #[serde(default)]
        payload: Value,
        #[serde(default)]
        metadata: Option<Value>,
    },
    /// An Automerge sync message for document `documentId` (base64): the first one opens the
    /// document on this socket; the server answers with its own until both are in sync, and
    /// pushes more when others change it. A message larger than a frame travels as parts of
    /// at most 32 KiB, each but the last with `more: true`.
    DocSync {
        document_id: String,
        message: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Stop receiving a document's changes.
    DocClose {
        document_id: String,
    },
    /// Acknowledge events up to `sequence` (durable subscriptions).
    Ack {
        sequence: u64,
    },
    Ping {
        #[serde(default)]
        nonce: u64,
    },
    SnapshotRequest {
        request_id: String,
        entity_type: EntityType,
        #[serde(default)]
        entity_id: Option<EntityId>,
        #[serde(default)]
        cursor: Option<String>,
    },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ServerFrame {
    Connected {
        connection_id: String,
        server_time: String,
        interaction_classes: Vec<InteractionClass>,
        protocol_version: u32,
        heartbeat_ms: u64,
        /// The connection's message budget (api.md: 100 a minute), which the client paces
        /// itself within (`sdk_core::pacing`). Absent from older servers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<crate::pacing::Rate>,
    },
    PushResult {
        batch_id: String,
        results: Vec<WireOpResult>,
        current_version: u64,
        #[serde(default)]
        conflicts: Vec<WireConflict>,
    },
    /// Entities changed after `since`, up to `version`. `clientSeq` is the last operation of the
    /// requesting client the state includes (sent only on the last page).
    Delta {
        since: u64,
        version: u64,
        entities: Vec<WireEntity>,
        has_more: bool,
        #[serde(default)]
        client_seq: Option<u64>,
        /// Entities to forget (sync rules), in version order with `entities`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<WireRemoval>,
        /// Under sync rules: what this delta was computed for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<WireScope>,
        /// On a page that is not the last: how many entities the pages after it still hold
        /// (what a client shows as the progress of a long sync).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remaining: Option<u64>,
    },
    /// Something changed: the tenant is now at `version`.
    Poke {
        version: u64,
    },
    Event {
        event: WireEvent,
    },
    /// An Automerge sync message for document `documentId` (base64), or one part of it
    /// (`more: true` on every part but the last).
    DocSync {
        document_id: String,
        message: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
        /// On a whole message (or its last part) that others' changes caused: one answer to it
        /// that carries no changes is not charged (`sdk_core::pacing`, reply tickets).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ticket: bool,
    },
    /// One event of a consumer group, leased to this socket until `leaseExpiresAt` (epoch ms);
    /// `attempt` counts deliveries, this one included. Settle with `DeliveryAck` / `DeliveryNack`.
    Delivery {
        group: String,
        event: WireEvent,
        attempt: u32,
        lease_token: String,
        lease_expires_at: u64,
    },
    Presence {
        user_id: UserId,
        client_id: ClientId,
        status: PresenceStatus,
        #[serde(default)]
        metadata: Option<Value>,
        #[serde(default)]
        room_id: Option<RoomId>,
        #[serde(default)]
        ttl_ms: Option<u64>,
    },
    RoomJoined {
        room_id: RoomId,
    },
    RoomLeft {
        room_id: RoomId,
    },
    Message {
        message_id: String,
        message_type: String,
        interaction_class: InteractionClass,
        tenant_id: TenantId,
        sender_id: UserId,
        #[serde(default)]
        recipient_id: Option<UserId>,
        #[serde(default)]
        room_id: Option<RoomId>,
        #[serde(default)]
        payload: Value,
        timestamp: String,
        #[serde(default)]
        metadata: Option<Value>,
    },
    MessageAck {
        message_id: String,
    },
    Pong {
        #[serde(default)]
        nonce: u64,
    },
    SnapshotChunk {
        request_id: String,
        snapshot_id: String,
        version: u64,
        index: u32,
        total: u32,
        /// Base64 of this chunk's bytes of the canonical snapshot.
        data: String,
        checksum: String,
        total_checksum: String,
        #[serde(default)]
        next_cursor: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The batch or request this error answers, when it answers one.
        #[serde(default)]
        request_id: Option<String>,
        #[serde(default)]
        details: Option<Value>,
    },
    /// Several frames in one WebSocket message, in order — sent only to a connection that asked
    /// for them (`/v1/ws?batch=1`), when several frames are waiting at once. Never nested. See
    /// [`Codec::encode_batch`].
    Batch {
        frames: Vec<ServerFrame>,
    },
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<String>) -> Self {
        ServerFrame::Error { code, message: message.into(), request_id, details: None }
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    #[serde(flatten)]
    frame: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    v: u32,
    /// W3C Trace Context of the work the frame asks for (any frame may carry one).
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(flatten)]
    frame: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// The two encodings of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    MessagePack,
}

impl Codec {
    /// The codec for a negotiated WebSocket subprotocol (`None` for an unknown one).
    pub fn from_subprotocol(p: &str) -> Option<Self> {
        match p {
            JSON_SUBPROTOCOL => Some(Codec::Json),
            MSGPACK_SUBPROTOCOL => Some(Codec::MessagePack),
            _ => None,
        }
    }

    pub fn encode<T: Serialize>(self, frame: &T) -> Vec<u8> {
        let env = EnvelopeOut { v: PROTOCOL_VERSION, frame };
        match self {
            Codec::Json => serde_json::to_vec(&env).expect("frames always serialize"),
            Codec::MessagePack => rmp_serde::to_vec_named(&env).expect("frames always serialize"),
        }
    }

    /// A `batch` frame holding `frames`, each already encoded by this codec (their own `v`
    /// fields are ignored when decoded), built without decoding or re-encoding any of them.
    pub fn encode_batch<B: AsRef<[u8]>>(self, frames: &[B]) -> Vec<u8> {
        let body: usize = frames.iter().map(|f| f.as_ref().len() + 1).sum();
        let mut out = Vec::with_capacity(body + 48);
        match self {
            Codec::Json => {
                out.extend_from_slice(b"{\"v\":");
                out.extend_from_slice(PROTOCOL_VERSION.to_string().as_bytes());
                out.extend_from_slice(b",\"type\":\"batch\",\"frames\":[");
                for (i, f) in frames.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(f.as_ref());
                }
                out.extend_from_slice(b"]}");
            }
            Codec::MessagePack => {
                // A map of three: "v", "type": "batch", "frames": [...]; keys as fixstr.
                out.push(0x83);
                out.extend_from_slice(b"\xa1v");
                out.extend(rmp_serde::to_vec(&PROTOCOL_VERSION).expect("an integer encodes"));
                out.extend_from_slice(b"\xa4type\xa5batch\xa6frames");
                match frames.len() {
                    n @ 0..=15 => out.push(0x90 | n as u8),
                    n @ 16..=0xffff => {
                        out.push(0xdc);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        out.push(0xdd);
                        out.extend_from_slice(&(n as u32).to_be_bytes());
                    }
                }
                for f in frames {
                    out.extend_from_slice(f.as_ref());
                }
            }
        }
        out
    }

    /// Decode one frame of at most `max_bytes`. Never panics.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8], max_bytes: usize) -> Result<T, Error> {
        self.decode_traced(bytes, max_bytes).map(|(frame, _)| frame)
    }

    /// [`Codec::decode`], and the frame's `traceparent` (a string, unparsed:
    /// [`crate::trace::TraceContext::parse`] says whether it is one) if it carries one.
    pub fn decode_traced<T: DeserializeOwned>(
        self,
        bytes: &[u8],
        max_bytes: usize,
    ) -> Result<(T, Option<String>), Error> {
        if bytes.len() > max_bytes {
            return Err(Error::FrameTooLarge { size: bytes.len(), limit: max_bytes });
        }
        let parsed: Result<EnvelopeIn<T>, String> = match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        let version = || -> Option<u32> {
            match self {
                Codec::Json => serde_json::from_slice::<VersionOnly>(bytes).ok().map(|h| h.v),
                Codec::MessagePack => rmp_serde::from_slice::<VersionOnly>(bytes).ok().map(|h| h.v),
            }
        };
        match parsed {
            Ok(env) if env.v == PROTOCOL_VERSION => Ok((env.frame, env.traceparent)),
            Ok(env) => Err(Error::UnsupportedVersion(env.v)),
            Err(e) => match version() {
                Some(v) if v != PROTOCOL_VERSION => Err(Error::UnsupportedVersion(v)),
                _ => Err(Error::Decode(e)),
            },
        }
    }
}

impl ClientFrame {
    /// The document this frame answers, when it is a reply that may ride a reply ticket: a
    /// whole `doc_sync` message carrying no changes (`pacing::is_reply_message`).
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            ClientFrame::DocSync { document_id, message, more } => {
                crate::pacing::is_reply_message(*more, message).then_some(document_id.as_str())
            }
            _ => None,
        }
    }
}

pub mod http;
pub use http::{
    CollectionItem, CollectionSnapshot, EntitySnapshot, EventPage, ReconcileRequest,
    ReconcileResponse, SnapshotHint, delta_frame,
};

#[cfg(test)]
mod tests;
