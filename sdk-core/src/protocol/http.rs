//! The REST wire contract: the bodies of reconcile, delta, snapshots and the event poll, used by
//! the server's handlers and by the client's long-polling transport (`rest.rs`) alike, so
//! the two sides cannot drift apart and still compile. Field names are shared/seeds/api.md's.

use super::{
    ServerFrame, WireConflict, WireEntity, WireEvent, WireOpResult, WireOperation, WireRemoval,
    WireScope,
};
use crate::snapshot::{canonical_json, checksum};
use crate::vclock::VectorClock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /api/reconciliation/reconcile`: a batch of operations, idempotent by `requestId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"requestId": "req-7f3a", "clientId": "client-789", "lastKnownVersion": "41", "operations": [{"operationId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "clientId": "client-789", "clientSeq": 12, "tenantId": "acme", "entityType": "todo", "entityId": "t-1", "operationType": "UPDATE", "payload": {"done": true}, "timestamp": "2026-12-07T10:15:30.123Z", "vectorClock": {"client-789": 12}, "interactionClass": "C"}], "requestedAt": "2026-12-07T10:15:30.200Z"})))]
pub struct ReconcileRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub request_id: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$"))]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// A tenant sequence (`42`, `"42"`, `"v42"`); anything else means "unknown", no delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_version: Option<Value>,
    pub operations: Vec<WireOperation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// Under sync rules, for `deltaUpdates`: partial sync's channels and the channels held
    /// through `lastKnownVersion`, as a pull says them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<String>>,
}

impl ReconcileRequest {
    /// `lastKnownVersion` as a tenant sequence, or `None` when absent or not a sequence
    /// (api.md's example sends `"v1.0"`).
    pub fn last_known(&self) -> Option<u64> {
        match self.last_known_version.as_ref()? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.strip_prefix('v').unwrap_or(s).parse().ok(),
            _ => None,
        }
    }

    /// What makes two requests under one `requestId` the same request: everything the request
    /// says except when it was sent (`requestedAt`). A retried request has the same hash;
    /// another body under the same id does not. For a body of exactly these fields (every body
    /// the SDK sends) this is the REST rule of earlier releases, so answers they stored still
    /// replay after an upgrade.
    pub fn idempotency_hash(&self) -> String {
        let mut body = serde_json::to_value(self).expect("a request serializes");
        if let Value::Object(fields) = &mut body {
            fields.remove("requestedAt");
        }
        checksum(&canonical_json(&body))
    }
}

/// The answer to a reconcile: every operation's result, the conflicts, the tenant's version,
/// and — when `lastKnownVersion` was given — the changes since it or a snapshot hint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"requestId": "req-7f3a", "conflicts": [], "resolvedOperations": [{"operationId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "clientSeq": 12, "status": "applied", "duplicate": false, "version": 42}], "currentVersion": "42", "completedAt": "2026-12-07T10:15:30.245Z", "deltaUpdates": [{"entityType": "todo", "entityId": "t-1", "version": 42, "state": {"title": "Ship it", "done": true}, "deleted": false, "vectorClock": {"client-789": 12}, "timestamp": "2026-12-07T10:15:30.123Z"}]})))]
pub struct ReconcileResponse {
    pub request_id: String,
    #[serde(default)]
    pub conflicts: Vec<WireConflict>,
    pub resolved_operations: Vec<WireOpResult>,
    /// The tenant's sequence, as a string (api.md).
    pub current_version: String,
    #[serde(default)]
    pub completed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_updates: Option<Vec<WireEntity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotHint>,
    /// Under sync rules, with `deltaUpdates`: the entities to forget, and what the delta was
    /// computed for (as a `delta` frame's `removed` and `scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_removed: Vec<WireRemoval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<WireScope>,
}

impl ReconcileResponse {
    /// `currentVersion` as a number.
    pub fn version(&self) -> Option<u64> {
        self.current_version.parse().ok()
    }

    /// The `push_result` frame this answer stands for (the same answer over a socket).
    pub fn into_push_result(self, batch_id: String) -> Option<ServerFrame> {
        Some(ServerFrame::PushResult {
            batch_id,
            current_version: self.version()?,
            results: self.resolved_operations,
            conflicts: self.conflicts,
        })
    }
}

/// The gap since `lastKnownVersion` is too large (or past retention) for a delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotHint {
    pub required: bool,
    pub reason: String,
    pub href: String,
}

/// The delta paging rule, shared by every transport (REST delta, `/v1/ws` pull) and the
/// simulator: the `changed` entities after `since` (oldest first, one page), `has_more` when
/// the page is not the last. A page that is not the last continues from its last entity's
/// version; the last one from the tenant's version `current`, and only the last carries the
/// client's applied `clientSeq`, because only then does the state include everything it did.
pub fn delta_frame(
    since: u64,
    current: u64,
    changed: Vec<WireEntity>,
    has_more: bool,
    client_seq: Option<u64>,
) -> ServerFrame {
    let version = if has_more {
        changed.last().map(|e| e.version).unwrap_or(since)
    } else {
        current.max(since)
    };
    ServerFrame::Delta {
        since,
        version,
        entities: changed,
        has_more,
        client_seq: if has_more { None } else { client_seq },
        removed: Vec::new(),
        scope: None,
        remaining: None,
    }
}

/// The body of `GET /api/reconciliation/delta`: the `delta` frame, typed on its own so the
/// OpenAPI document can describe it ([`DeltaBody::from_frame`] takes every field of the frame,
/// so the two cannot drift apart and still compile; a test checks they serialize alike).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"type": "delta", "since": 40, "version": 42, "entities": [{"entityType": "todo", "entityId": "t-1", "version": 42, "state": {"title": "Ship it", "done": true}, "deleted": false, "vectorClock": {"client-789": 12}, "timestamp": "2026-12-07T10:15:30.123Z"}], "hasMore": false, "clientSeq": 12})))]
pub struct DeltaBody {
    /// Always `delta`.
    #[serde(rename = "type")]
    pub kind: DeltaType,
    pub since: u64,
    /// Where the next pull continues from.
    pub version: u64,
    pub entities: Vec<WireEntity>,
    pub has_more: bool,
    /// The caller's last operation the state includes (`clientId` given; the last page only).
    pub client_seq: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<WireRemoval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<WireScope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

/// The `type` of a [`DeltaBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeltaType {
    Delta,
}

impl DeltaBody {
    /// The body of a `delta` frame; `None` for any other frame.
    pub fn from_frame(frame: ServerFrame) -> Option<Self> {
        let ServerFrame::Delta {
            since,
            version,
            entities,
            has_more,
            client_seq,
            removed,
            scope,
            remaining,
        } = frame
        else {
            return None;
        };
        let kind = DeltaType::Delta;
        Some(Self {
            kind,
            since,
            version,
            entities,
            has_more,
            client_seq,
            removed,
            scope,
            remaining,
        })
    }
}

/// What a store read for one page of a scoped delta (sync rules): the entities of the client's
/// channels and the removals after `since`, each in version order and at most the page's limit,
/// each saying whether more follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopedPage {
    pub changed: Vec<WireEntity>,
    pub changed_more: bool,
    pub removed: Vec<WireRemoval>,
    pub removed_more: bool,
}

/// [`delta_frame`] for a client syncing channels: the two streams of a [`ScopedPage`] are cut at
/// the same version — where the first one with more to come ends — so that a page that is not
/// the last continues from a version through which the client has everything, puts and
/// removals alike.
pub fn scoped_delta_frame(
    since: u64,
    current: u64,
    page: ScopedPage,
    client_seq: Option<u64>,
    scope: WireScope,
) -> ServerFrame {
    let last_changed = page.changed.last().map(|e| e.version).unwrap_or(since);
    let last_removed = page.removed.last().map(|r| r.version).unwrap_or(since);
    let end = match (page.changed_more, page.removed_more) {
        (false, false) => None,
        (true, false) => Some(last_changed),
        (false, true) => Some(last_removed),
        (true, true) => Some(last_changed.min(last_removed)),
    };
    let (mut changed, mut removed) = (page.changed, page.removed);
    if let Some(end) = end {
        changed.retain(|e| e.version <= end);
        removed.retain(|r| r.version <= end);
    }
    let has_more = end.is_some();
    ServerFrame::Delta {
        since,
        version: end.unwrap_or(current.max(since)),
        entities: changed,
        has_more,
        client_seq: if has_more { None } else { client_seq },
        removed,
        scope: Some(scope),
        remaining: None,
    }
}

/// `GET /api/reconciliation/snapshot/{entityType}/{entityId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"snapshotId": "0b7c1d52-7f57-4f0e-9d0b-1f3c2e9a6d11", "tenantId": "acme", "entityType": "todo", "entityId": "t-1", "version": "42", "data": {"title": "Ship it", "done": true}, "vectorClock": {"client-789": 12}, "createdAt": "2026-12-07T10:16:00.000Z", "checksum": "9b1c5e0d6f0a4e7d8c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a0918273645"})))]
pub struct EntitySnapshot {
    pub snapshot_id: String,
    pub tenant_id: String,
    pub entity_type: String,
    pub entity_id: String,
    pub version: String,
    /// The state, or `{"crdt": base64}` for a CRDT entity.
    pub data: Value,
    /// Each client's counter (`{"client-789": 3}`).
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, u64>))]
    pub vector_clock: VectorClock,
    pub created_at: String,
    /// SHA-256 of the canonical JSON of `data`.
    pub checksum: String,
}

/// One entity of a collection snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CollectionItem {
    pub entity_id: String,
    pub version: u64,
    pub data: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, u64>))]
    pub vector_clock: VectorClock,
}

/// `GET /api/reconciliation/snapshot/{entityType}`: one chunk of a type's collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"snapshotId": "0b7c1d52-7f57-4f0e-9d0b-1f3c2e9a6d11", "tenantId": "acme", "entityType": "todo", "version": "42", "items": [{"entityId": "t-1", "version": 42, "data": {"title": "Ship it", "done": true}, "vectorClock": {"client-789": 12}}], "nextCursor": null, "createdAt": "2026-12-07T10:16:00.000Z", "checksum": "5e4d3c2b1a0918273645a39281706f9b1c5e0d6f0a4e7d8c3b2a19f8e7d6c5b4"})))]
pub struct CollectionSnapshot {
    pub snapshot_id: String,
    pub tenant_id: String,
    pub entity_type: String,
    /// Take it from the first chunk and pull a delta from it afterwards.
    pub version: String,
    pub items: Vec<CollectionItem>,
    pub next_cursor: Option<String>,
    pub created_at: String,
    /// SHA-256 of the canonical JSON of `items`.
    pub checksum: String,
}

/// The checksum a snapshot body carries: SHA-256 of the canonical JSON of `value`.
pub fn body_checksum<T: Serialize>(value: &T) -> String {
    checksum(&canonical_json(&serde_json::to_value(value).unwrap_or(Value::Null)))
}

/// `GET /api/events/poll`: a page of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"events": [{"sequence": 43, "eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "eventType": "order.created", "tenantId": "acme", "timestamp": "2026-12-07T10:15:31.000Z", "payload": {"orderId": "o-1", "region": "eu"}, "metadata": {"source": "orders", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}, "schemaVersion": "1.0"}], "hasMore": false, "nextEventId": "43"})))]
pub struct EventPage {
    pub events: Vec<WireEvent>,
    #[serde(default)]
    pub has_more: bool,
    /// Where the next poll resumes (it passes events that did not match the filter).
    pub next_event_id: String,
    /// Of the documents the poll watched (`documents=`), those stored past the version it
    /// named: sync them (`POST /api/documents/sync`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<DocumentVersion>,
}

/// A document and the version of it that is stored (the number of its last change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DocumentVersion {
    pub document_id: String,
    pub version: u64,
}

/// Documents one poll may watch, and one `POST /api/documents/sync` may carry.
pub const MAX_DOCUMENTS_PER_REQUEST: usize = 16;

/// The poll's `documents` parameter, `notes@17,todo@0`: documents and the version each client
/// has. At most [`MAX_DOCUMENTS_PER_REQUEST`], each id a valid [`crate::ids::DocumentId`].
pub fn watched_documents(param: &str) -> Result<Vec<DocumentVersion>, String> {
    let watched: Vec<DocumentVersion> = param
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, version) = item.rsplit_once('@').unwrap_or((item, "0"));
            crate::ids::DocumentId::new(id).map_err(|e| e.to_string())?;
            let version = version.parse().map_err(|_| format!("{item:?}: not id@version"))?;
            Ok(DocumentVersion { document_id: id.to_string(), version })
        })
        .collect::<Result<_, String>>()?;
    if watched.len() > MAX_DOCUMENTS_PER_REQUEST {
        return Err(format!("at most {MAX_DOCUMENTS_PER_REQUEST} documents per poll"));
    }
    Ok(watched)
}

/// `POST /api/documents/sync`: Automerge sync messages for several documents at once (the
/// long-polling transport), `{clientId, documents: [{documentId, message?}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"clientId": "client-789", "documents": [{"documentId": "notes", "message": null}]})))]
pub struct DocumentsSyncRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$"))]
    pub client_id: String,
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub documents: Vec<DocumentMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentMessage {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$"))]
    pub document_id: String,
    /// A whole sync message (base64), or none to ask what is new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer: per document, what the client lacks and the version now stored (where its next
/// poll watches from). A document refused (too large, a bad message) says so in `error` and
/// the others are still answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", schema(example = json!({"documents": [{"documentId": "notes", "messages": ["QgAAAQ=="], "version": 17}]})))]
pub struct DocumentsSyncAnswer {
    pub documents: Vec<DocumentAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DocumentAnswer {
    pub document_id: String,
    #[serde(default)]
    pub messages: Vec<String>,
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<super::WireError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delta_body_serializes_as_its_frame() {
        let entity = WireEntity {
            entity_type: crate::ids::EntityType::new("todo").unwrap(),
            entity_id: crate::ids::EntityId::new("t1").unwrap(),
            version: 3,
            state: json!({"title": "x"}),
            crdt: None,
            deleted: false,
            vector_clock: VectorClock::new(),
            timestamp: crate::hlc::HlcTimestamp::default(),
            channels: None,
        };
        let last = delta_frame(1, 3, vec![entity.clone()], false, Some(2));
        let mut page = delta_frame(0, 9, vec![entity], true, None);
        if let ServerFrame::Delta { remaining, scope, removed, .. } = &mut page {
            *remaining = Some(4);
            *scope = Some(WireScope { rules: "r".into(), channels: Some(vec![]), reset: false });
            removed.push(WireRemoval {
                entity_type: crate::ids::EntityType::new("todo").unwrap(),
                entity_id: crate::ids::EntityId::new("t2").unwrap(),
                version: 2,
            });
        }
        for frame in [last, page] {
            let body = DeltaBody::from_frame(frame.clone()).unwrap();
            assert_eq!(serde_json::to_value(body).unwrap(), serde_json::to_value(frame).unwrap());
        }
        assert_eq!(DeltaBody::from_frame(ServerFrame::Poke { version: 1 }), None);
    }

    fn body(ops: Value, requested_at: &str) -> Value {
        json!({
            "requestId": "r-1", "clientId": "c1", "tenantId": "t1", "lastKnownVersion": "v4",
            "requestedAt": requested_at, "operations": ops,
        })
    }

    fn op(payload: Value) -> Value {
        json!({
            "operationId": "op-1", "clientId": "c1", "clientSeq": 1, "tenantId": "t1",
            "entityType": "todo", "entityId": "a", "operationType": "CREATE", "payload": payload,
            "timestamp": "2026-01-30T12:00:00.000Z-0000", "vectorClock": {"c1": 1}
        })
    }

    fn hash_of(v: &Value) -> String {
        serde_json::from_value::<ReconcileRequest>(v.clone()).unwrap().idempotency_hash()
    }

    /// Earlier servers hashed the body as received, minus `requestedAt`: a request stored by one
    /// of them and retried against this one must replay, not answer IDEMPOTENCY_MISMATCH.
    #[test]
    fn the_hash_is_the_earlier_rest_rule_for_the_sdks_bodies() {
        let v = body(json!([op(json!({"title": "milk"}))]), "2026-01-30T12:00:00Z");
        let mut earlier = v.clone();
        earlier.as_object_mut().unwrap().remove("requestedAt");
        assert_eq!(hash_of(&v), checksum(&canonical_json(&earlier)));
    }

    #[test]
    fn a_retry_hashes_the_same_and_another_body_does_not() {
        let v = body(json!([op(json!({"title": "milk"}))]), "2026-01-30T12:00:00Z");
        let retry = body(json!([op(json!({"title": "milk"}))]), "2026-01-30T12:05:00Z");
        let other = body(json!([op(json!({"title": "eggs"}))]), "2026-01-30T12:00:00Z");
        assert_eq!(hash_of(&v), hash_of(&retry));
        assert_ne!(hash_of(&v), hash_of(&other));
        let mut elsewhere = v.clone();
        elsewhere["lastKnownVersion"] = json!("v5");
        assert_ne!(hash_of(&v), hash_of(&elsewhere));
    }
}
