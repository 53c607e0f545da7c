//! REST handlers: reconcile, snapshots, deltas, event polling, conflicts, Class D transactions,
//! audit. Paths and field names follow shared/seeds/api.md. Each handler translates between
//! HTTP and the store / sdk-core; no sync logic lives here.

use crate::auth::{Auth, SUPER_ADMIN};
use crate::error::ApiError;
use crate::extract::{JsonBody, Path, Query};
use crate::ratelimit::Rate;
use crate::state::AppState;
use crate::store::{ReconcileView, Reconciled, TransactionRow};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdk_core::ErrorCode;
use sdk_core::apply::{ConflictChoice, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityId, EntityKey, EntityType};
use sdk_core::protocol::{EventFilter, WireConflict, WireEntity, WireOpResult, WireOperation};
use sdk_core::snapshot::{canonical_json, checksum};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn iso_now() -> String {
    HlcTimestamp::new(now_ms(), 0).to_string()
}

fn rate_limit(state: &AppState, auth: &Auth, route: &str, rate: Rate) -> Result<(), ApiError> {
    let key = format!("{}\u{0}{}\u{0}{route}", auth.tenant, auth.user());
    state.rate.check(&key, rate, Instant::now()).map_err(|retry| {
        state.metrics.inc("pf2_rate_limited_total", &[("route", route)]);
        ApiError::rate_limited(retry)
    })
}

/// Raw JSON text as a response with a status.
fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// SHA-256 of the canonical form of a JSON value, minus the named top-level fields.
fn request_hash(value: &Value, ignore: &[&str]) -> String {
    let mut v = value.clone();
    if let Value::Object(o) = &mut v {
        for k in ignore {
            o.remove(*k);
        }
    }
    checksum(&canonical_json(&v))
}

// ---- reconcile ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReconcileRequest {
    request_id: String,
    client_id: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    last_known_version: Option<Value>,
    operations: Vec<WireOperation>,
}

/// `lastKnownVersion` as a tenant sequence: `"42"`, `"v42"` or `42`. Anything else (api.md's
/// example sends `"v1.0"`) means "unknown" and gets no delta.
fn parse_version(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.strip_prefix('v').unwrap_or(s).parse().ok(),
        _ => None,
    }
}

pub async fn reconcile(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "reconcile", state.limits.reconcile_rate)?;
    let started = Instant::now();
    let hash = request_hash(&body.value, &["requestedAt"]);
    let req: ReconcileRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid reconcile request: {e}")))?;
    if req.request_id.is_empty() || req.request_id.len() > 128 {
        return Err(ApiError::invalid("requestId must be 1 to 128 characters"));
    }
    let client = ClientId::new(req.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if req.tenant_id.as_deref().is_some_and(|t| t != auth.tenant.as_str()) {
        return Err(ApiError::tenant_violation());
    }
    if req.operations.len() > state.limits.max_batch {
        return Err(ApiError::invalid(format!(
            "{} operations in one request (limit {})",
            req.operations.len(),
            state.limits.max_batch
        )));
    }
    let batch = prepare_batch(req.operations, &client, sdk_core::interaction::Transport::Rest)?;
    let last_known = req.last_known_version.as_ref().and_then(parse_version);
    let request_id = req.request_id.clone();
    let tenant = auth.tenant.clone();
    let result = state
        .store
        .reconcile(
            &state.engine,
            &tenant,
            &request_id,
            &hash,
            batch,
            last_known,
            state.limits.max_delta,
            |view| reconcile_response(&request_id, tenant.as_str(), view),
        )
        .await?;
    match result {
        Reconciled::Replay { response, request_hash } => {
            if request_hash != hash {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    "this requestId was used with a different request body",
                ));
            }
            state.metrics.inc("pf2_reconcile_replays_total", &[]);
            Ok(json_text(StatusCode::OK, response))
        }
        Reconciled::Fresh { response, outcome, version } => {
            for r in &outcome.results {
                let label = match (&r.outcome, r.duplicate) {
                    (_, true) => "duplicate",
                    (sdk_core::apply::Outcome::Applied { .. }, _) => "applied",
                    (sdk_core::apply::Outcome::Conflict { .. }, _) => "conflict",
                    (sdk_core::apply::Outcome::Refused { .. }, _) => "refused",
                };
                state.metrics.inc("pf2_operations_total", &[("outcome", label)]);
            }
            state.metrics.observe("pf2_reconcile_duration_ms", &[], started.elapsed());
            if !outcome.changes.is_empty() {
                state.entities_changed(&auth.tenant, version);
            }
            Ok(json_text(StatusCode::OK, response))
        }
    }
}

/// Decode a batch's operations for the apply engine: the header of each must parse (else the
/// whole batch is invalid), each must belong to `client`, and each interaction class must be
/// allowed on `transport` (Class D never travels realtime).
pub fn prepare_batch(
    operations: Vec<WireOperation>,
    client: &ClientId,
    transport: sdk_core::interaction::Transport,
) -> Result<Vec<Submitted>, ApiError> {
    let mut batch = Vec::with_capacity(operations.len());
    for w in operations {
        let s =
            w.into_submitted().map_err(|e| ApiError::invalid(format!("operation header: {e}")))?;
        let op_client = match &s {
            Submitted::Valid(op) => &op.client_id,
            Submitted::Invalid { client_id, .. } => client_id,
        };
        if op_client != client {
            return Err(ApiError::invalid(
                "every operation's clientId must be the request's clientId",
            ));
        }
        if let Submitted::Valid(op) = &s {
            op.class.check_transport(transport)?;
        }
        batch.push(s);
    }
    Ok(batch)
}

fn reconcile_response(request_id: &str, tenant: &str, view: ReconcileView<'_>) -> String {
    let mut body = json!({
        "requestId": request_id,
        "conflicts": view.outcome.conflicts.iter().map(WireConflict::from_conflict).collect::<Vec<_>>(),
        "resolvedOperations": view.outcome.results.iter().map(WireOpResult::from_result).collect::<Vec<_>>(),
        "currentVersion": view.version.to_string(),
        "completedAt": iso_now(),
    });
    if let Some(delta) = view.delta {
        body["deltaUpdates"] = json!(delta);
    }
    if view.snapshot_required {
        body["snapshot"] = json!({
            "required": true,
            "reason": "the gap since lastKnownVersion is too large for a delta",
            "href": format!("/api/reconciliation/snapshot/{{entityType}}?tenant={tenant}"),
        });
    }
    body.to_string()
}

// ---- deltas and snapshots --------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct DeltaQuery {
    since: Option<u64>,
    limit: Option<i64>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

/// `GET /api/reconciliation/delta?since=&limit=&clientId=`: the `delta` frame over HTTP (what the
/// SDK pulls when it is degraded to long-polling).
pub async fn delta(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<DeltaQuery>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "poll", state.limits.poll_rate)?;
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(500).clamp(1, 1000);
    let client =
        q.client_id.map(ClientId::new).transpose().map_err(|e| ApiError::invalid(e.to_string()))?;
    let (entities, has_more, version, client_seq) =
        state.store.pull(auth.tenant.as_str(), since, limit, client.as_ref()).await?;
    let frame =
        sdk_core::protocol::ServerFrame::Delta { since, version, entities, has_more, client_seq };
    Ok(Json(frame).into_response())
}

pub async fn entity_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path((entity_type, entity_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = EntityKey::new(
        auth.tenant.clone(),
        EntityType::new(entity_type).map_err(|e| ApiError::invalid(e.to_string()))?,
        EntityId::new(entity_id).map_err(|e| ApiError::invalid(e.to_string()))?,
    );
    let rec = state.store.entity(&key).await?.filter(|r| !r.is_deleted()).ok_or_else(|| {
        ApiError::not_found(format!("no entity {}/{}", key.entity_type, key.entity_id))
    })?;
    let wire = WireEntity::from_record(&rec);
    let data = match &wire.crdt {
        Some(b) => json!({ "crdt": b }),
        None => wire.state.clone(),
    };
    Ok(Json(json!({
        "snapshotId": uuid::Uuid::new_v4().to_string(),
        "tenantId": auth.tenant.as_str(),
        "entityType": key.entity_type.as_str(),
        "entityId": key.entity_id.as_str(),
        "version": wire.version.to_string(),
        "data": data,
        "vectorClock": wire.vector_clock,
        "createdAt": iso_now(),
        "checksum": checksum(&canonical_json(&data)),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// A chunk of an entity type's collection snapshot. Take `version` from the first chunk and pull
/// a delta from it afterwards: changes made while paging are in that delta.
pub async fn collection_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(entity_type): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let entity_type = EntityType::new(entity_type).map_err(|e| ApiError::invalid(e.to_string()))?;
    let limit = q.limit.unwrap_or(500).clamp(1, 1000);
    let t = auth.tenant.as_str();
    let (version, _) = state.store.tenant_seq(t).await?;
    let page = state.store.entities_page(t, &entity_type, q.cursor.as_deref(), limit + 1).await?;
    let has_more = page.len() as i64 > limit;
    let items: Vec<Value> = page
        .iter()
        .take(limit as usize)
        .map(|r| {
            let w = WireEntity::from_record(r);
            json!({ "entityId": w.entity_id, "version": w.version, "data": w.state, "vectorClock": w.vector_clock })
        })
        .collect();
    let next_cursor = if has_more { items.last().map(|i| i["entityId"].clone()) } else { None };
    let items = Value::Array(items);
    Ok(Json(json!({
        "snapshotId": uuid::Uuid::new_v4().to_string(),
        "tenantId": t,
        "entityType": entity_type.as_str(),
        "version": version.to_string(),
        "items": items,
        "nextCursor": next_cursor,
        "createdAt": iso_now(),
        "checksum": checksum(&canonical_json(&items)),
    }))
    .into_response())
}

/// `GET /api/documents/{documentId}/snapshot`: a collaborative document's Automerge save.
pub async fn document_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let crate::documents::Snapshot { save, heads, stored_bytes } = state
        .documents
        .snapshot(&state, &auth.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?}")))?;
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&save));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Json(json!({
        "documentId": id,
        "tenantId": auth.tenant,
        "heads": heads,
        "size": save.len(),
        "storedBytes": stored_bytes,
        "save": base64::engine::general_purpose::STANDARD.encode(&save),
        "checksum": format!("sha256:{hex}"),
        "createdAt": iso_now(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentSyncRequest {
    client_id: String,
    /// A whole Automerge sync message (base64), or none to ask what is new.
    #[serde(default)]
    message: Option<String>,
}

/// `POST /api/documents/{documentId}/sync`: Automerge's sync protocol over REST, for clients on
/// the long-polling transport. `{clientId, message?}` → `{documentId, messages: [base64]}`.
pub async fn document_sync(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    rate_limit(&state, &auth, "reconcile", state.limits.reconcile_rate)?;
    let req: DocumentSyncRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid document sync request: {e}")))?;
    let client = ClientId::new(req.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let message = match &req.message {
        Some(m) => Some(
            b64.decode(m).map_err(|e| ApiError::invalid(format!("message: not base64 ({e})")))?,
        ),
        None => None,
    };
    let answers = state
        .documents
        .sync_over_http(&state, &auth.tenant, &client, &id, message.as_deref())
        .await?;
    let messages: Vec<String> = answers.iter().map(|m| b64.encode(m)).collect();
    Ok(Json(json!({ "documentId": id, "messages": messages })).into_response())
}

// ---- event polling ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollQuery {
    last_event_id: Option<String>,
    limit: Option<i64>,
    wait: Option<u64>,
    /// Comma-separated event type patterns (`order.*,todo.created`).
    types: Option<String>,
    /// Payload attribute equalities as a JSON object (`{"region":"eu"}`).
    filter: Option<String>,
}

/// `GET /api/events/poll`: events after `lastEventId` (a sequence number or an event id), at
/// most `limit` (default 100, at most 1000), waiting up to `wait` seconds (≤ 30) for the first.
pub async fn poll(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "poll", state.limits.poll_rate)?;
    let t = auth.tenant.as_str();
    let after = match q.last_event_id.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => n,
            Err(_) => state
                .store
                .event_seq(t, s)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("unknown lastEventId {s:?}")))?,
        },
    };
    let filter = EventFilter {
        event_types: q
            .types
            .map(|s| {
                s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default(),
        attributes: match q.filter.as_deref() {
            None | Some("") => Default::default(),
            Some(f) => serde_json::from_str(f).map_err(|e| {
                ApiError::invalid(format!(
                    "filter must be a JSON object of payload attributes: {e}"
                ))
            })?,
        },
    };
    filter.validate()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as u32;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(30));
    let page = crate::bus::EventBus::new(state.clone())
        .read(&auth.tenant, after, limit, &filter, wait)
        .await?;
    state.metrics.add("pf2_events_polled_total", &[], page.events.len() as u64);
    Ok(Json(json!({
        "events": page.events,
        "hasMore": page.has_more,
        "nextEventId": page.next.to_string(),
    }))
    .into_response())
}

// ---- conflicts -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct ConflictQuery {
    status: Option<String>,
    limit: Option<i64>,
}

pub async fn list_conflicts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ConflictQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("open") => Some("open"),
        Some("resolved") => Some("resolved"),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "status must be open, resolved or all, not {other:?}"
            )));
        }
    };
    let rows = state
        .store
        .conflicts(auth.tenant.as_str(), status, q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    let conflicts: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.conflict).expect("serializes");
            v["status"] = json!(r.status);
            v["resolution"] = json!(r.resolution);
            v["resolvedBy"] = json!(r.resolved_by);
            v
        })
        .collect();
    Ok(Json(json!({ "conflicts": conflicts })).into_response())
}

#[derive(Deserialize)]
struct ResolveRequest {
    /// `server` (keep), `client` (take the client's version), `merged` (use `state`), `delete`.
    choice: String,
    #[serde(default)]
    state: Option<Value>,
}

pub async fn resolve_conflict(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    let req: ResolveRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid resolution: {e}")))?;
    let choice = match (req.choice.as_str(), req.state) {
        ("server", _) => ConflictChoice::KeepServer,
        ("client", _) => ConflictChoice::TakeClient,
        ("delete", _) => ConflictChoice::Delete,
        ("merged", Some(Value::Object(o))) => ConflictChoice::Replace(o),
        ("merged", _) => return Err(ApiError::invalid("choice \"merged\" needs a state object")),
        (other, _) => return Err(ApiError::invalid(format!("unknown choice {other:?}"))),
    };
    let engine = state.engine.clone();
    let tenant = auth.tenant.clone();
    let (row, version) = state
        .store
        .resolve_conflict(&tenant, &id, auth.user(), &req.choice, |wire, apply_state| {
            let conflict = sdk_core::apply::Conflict {
                id: wire.conflict_id.clone(),
                key: EntityKey::new(
                    tenant.clone(),
                    wire.entity_type.clone(),
                    wire.entity_id.clone(),
                ),
                operation_id: sdk_core::ids::OperationId::new(wire.operation_id.clone())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                client_id: wire.client_id.clone(),
                fields: wire.fields.clone(),
                server_state: wire.server_state.as_object().cloned(),
                client_state: wire.client_state.as_object().cloned(),
                server_version: wire.server_version,
                at: wire.at,
            };
            Ok(engine.resolve_conflict(
                apply_state,
                &conflict,
                choice,
                HlcTimestamp::new(now_ms(), 0),
            ))
        })
        .await?;
    state.entities_changed(&auth.tenant, version);
    state.metrics.inc("pf2_conflicts_resolved_total", &[("choice", &req.choice)]);
    let mut v = serde_json::to_value(&row.conflict).expect("serializes");
    v["status"] = json!(row.status);
    v["resolution"] = json!(row.resolution);
    v["resolvedBy"] = json!(row.resolved_by);
    v["currentVersion"] = json!(version.to_string());
    Ok(Json(v).into_response())
}

// ---- Class D transactions ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransactionRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    callback_url: Option<String>,
}

/// `POST /api/transactions` with `Idempotency-Key`: 202 with the status URL; the same key and
/// body replays the stored response, the same key with another body is 422.
pub async fn create_transaction(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "transactions", state.limits.transaction_rate)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid("an Idempotency-Key header (1 to 255 characters) is required")
        })?
        .to_string();
    let hash = request_hash(&body.value, &[]);
    let req: TransactionRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid transaction: {e}")))?;
    if req.kind.is_empty() || req.kind.len() > 128 {
        return Err(ApiError::invalid("type must be 1 to 128 characters"));
    }
    if let Some(url) = &req.callback_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ApiError::invalid("callbackUrl must be an http(s) URL"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms() as i64;
    let response = json!({
        "transactionId": id,
        "status": "pending",
        "statusUrl": format!("/api/transactions/{id}"),
        "createdAt": iso_now(),
    })
    .to_string();
    let row = TransactionRow {
        tenant_id: auth.tenant.to_string(),
        transaction_id: id,
        kind: req.kind,
        body: req.payload,
        user_id: auth.user().to_string(),
        status: "pending".into(),
        result: None,
        callback_url: req.callback_url,
        callback_state: "none".into(),
        callback_attempts: 0,
        created_at: now,
        updated_at: now,
    };
    match state.store.create_transaction(&row, &key, &hash, &response).await? {
        None => {
            state.metrics.inc("pf2_transactions_total", &[("status", "created")]);
            state.transactions.notify_one();
            Ok(json_text(StatusCode::ACCEPTED, response))
        }
        Some((stored, stored_hash)) if stored_hash == hash => {
            state.metrics.inc("pf2_transactions_total", &[("status", "replayed")]);
            Ok(json_text(StatusCode::ACCEPTED, stored))
        }
        Some(_) => Err(ApiError::new(
            ErrorCode::IdempotencyMismatch,
            "this Idempotency-Key was used with a different body",
        )),
    }
}

pub async fn get_transaction(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = state
        .store
        .transaction(auth.tenant.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no transaction {id}")))?;
    Ok(Json(json!({
        "transactionId": t.transaction_id,
        "type": t.kind,
        "status": t.status,
        "result": t.result,
        "callback": { "state": t.callback_state, "attempts": t.callback_attempts },
        "createdAt": HlcTimestamp::new(t.created_at.max(0) as u64, 0).to_string(),
        "updatedAt": HlcTimestamp::new(t.updated_at.max(0) as u64, 0).to_string(),
    }))
    .into_response())
}

// ---- audit -------------------------------------------------------------------------------------

/// `GET /api/audit`: the tenant's audit log, newest first (tenant `admin` or `super_admin`).
pub async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    if !(auth.identity.has_role("admin") || auth.identity.has_role(SUPER_ADMIN)) {
        return Err(ApiError::new(
            ErrorCode::AuthzFailed,
            "reading the audit log needs the admin role",
        ));
    }
    let entries = state
        .store
        .audit_entries(auth.tenant.as_str(), q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}
