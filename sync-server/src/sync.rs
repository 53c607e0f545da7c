//! The sync service: reconcile (the one place an operation batch is validated, hashed for
//! idempotency, applied and counted), pulls (the delta paging rule is sdk-core's), entity and
//! collection snapshots, and manual conflict resolution. REST and `/v1/ws` call the same
//! functions; they only translate the answers.

use crate::clock::{iso_now, now_ms};
use crate::error::ApiError;
use crate::feed::ChangeFeed;
use crate::metrics::Metrics;
use crate::store::{ConflictRow, ReconcileView, Reconciled, Store};
use sdk_core::ErrorCode;
use sdk_core::apply::{ApplyEngine, ConflictChoice, EntityRecord, Outcome, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, EntityType, OperationId, TenantId};
use sdk_core::interaction::Transport;
use sdk_core::protocol::{
    ReconcileRequest, ReconcileResponse, ServerFrame, SnapshotHint, WireConflict, WireOpResult,
    WireOperation,
};
use std::sync::Arc;
use std::time::Instant;

/// What [`SyncService::reconcile`] answers: the stored response (replayed verbatim for a
/// retried request) and its typed form.
#[derive(Debug)]
pub struct Answer {
    pub body: String,
    pub response: ReconcileResponse,
}

/// One page of an entity type's collection.
#[derive(Debug)]
pub struct CollectionPage {
    /// The tenant's version when the page was read (pull a delta from it afterwards).
    pub version: u64,
    pub records: Vec<EntityRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SyncService {
    store: Arc<Store>,
    engine: Arc<ApplyEngine>,
    metrics: Arc<Metrics>,
    feed: ChangeFeed,
    max_batch: usize,
    /// Largest gap answered with `deltaUpdates`; beyond it the response says to take a snapshot.
    max_delta: u64,
}

impl SyncService {
    pub fn new(
        store: Arc<Store>,
        engine: Arc<ApplyEngine>,
        metrics: Arc<Metrics>,
        feed: ChangeFeed,
        max_batch: usize,
        max_delta: u64,
    ) -> Self {
        Self { store, engine, metrics, feed, max_batch, max_delta }
    }

    /// Apply `request` for `tenant`, arriving over `transport`, exactly once: a retried request
    /// (same `requestId`, same [`ReconcileRequest::idempotency_hash`]) gets the stored answer,
    /// another body under the same id is `IDEMPOTENCY_MISMATCH`.
    pub async fn reconcile(
        &self,
        tenant: &TenantId,
        request: ReconcileRequest,
        transport: Transport,
    ) -> Result<Answer, ApiError> {
        let started = Instant::now();
        let hash = request.idempotency_hash();
        let last_known = request.last_known();
        if request.request_id.is_empty() || request.request_id.len() > 128 {
            return Err(ApiError::invalid("requestId must be 1 to 128 characters"));
        }
        let client =
            ClientId::new(request.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
        if request.tenant_id.as_deref().is_some_and(|t| t != tenant.as_str()) {
            return Err(ApiError::tenant_violation());
        }
        if request.operations.len() > self.max_batch {
            return Err(ApiError::invalid(format!(
                "{} operations in one request (limit {})",
                request.operations.len(),
                self.max_batch
            )));
        }
        let batch = prepare_batch(request.operations, &client, transport)?;
        let request_id = request.request_id;
        // A socket's batch ids are its client's own: kept apart from REST request ids.
        let key = match transport {
            Transport::Rest => request_id.clone(),
            _ => format!("ws:{client}:{request_id}"),
        };
        let respond = |view: ReconcileView<'_>| response_body(&request_id, tenant, view);
        let max_delta = self.max_delta;
        let result = self
            .store
            .reconcile(&self.engine, tenant, &key, &hash, batch, last_known, max_delta, respond)
            .await?;
        let body = match result {
            Reconciled::Replay { response, request_hash } => {
                if request_hash != hash {
                    return Err(ApiError::new(
                        ErrorCode::IdempotencyMismatch,
                        "this requestId was used with a different request body",
                    ));
                }
                self.metrics.inc("pf2_reconcile_replays_total", &[]);
                response
            }
            Reconciled::Fresh { response, outcome, version } => {
                for r in &outcome.results {
                    let label = match (&r.outcome, r.duplicate) {
                        (_, true) => "duplicate",
                        (Outcome::Applied { .. }, _) => "applied",
                        (Outcome::Conflict { .. }, _) => "conflict",
                        (Outcome::Refused { .. }, _) => "refused",
                    };
                    self.metrics.inc("pf2_operations_total", &[("outcome", label)]);
                }
                self.metrics.observe("pf2_reconcile_duration_ms", &[], started.elapsed());
                if !outcome.changes.is_empty() {
                    self.feed.entities_changed(tenant, version);
                }
                response
            }
        };
        let response = stored_response(&body)?;
        Ok(Answer { body, response })
    }

    /// A pull: the `delta` frame after `since` (at most `limit` entities, 1–1000).
    pub async fn pull(
        &self,
        tenant: &TenantId,
        since: u64,
        limit: i64,
        client: Option<&ClientId>,
    ) -> Result<ServerFrame, ApiError> {
        Ok(self.store.pull(tenant.as_str(), since, limit.clamp(1, 1000), client).await?)
    }

    /// An entity as a snapshot shows it: `None` when absent or deleted.
    pub async fn entity(&self, key: &EntityKey) -> Result<Option<EntityRecord>, ApiError> {
        Ok(self.store.entity(key).await?.filter(|r| !r.is_deleted()))
    }

    /// At most `limit` entities of `entity_type` after `cursor`, and the tenant's version.
    pub async fn collection(
        &self,
        tenant: &TenantId,
        entity_type: &EntityType,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CollectionPage, ApiError> {
        let t = tenant.as_str();
        let (version, _) = self.store.tenant_seq(t).await?;
        let mut records =
            self.store.entities_page(t, entity_type, cursor, limit as i64 + 1).await?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next_cursor =
            if more { records.last().map(|r| r.key.entity_id.to_string()) } else { None };
        Ok(CollectionPage { version, records, next_cursor })
    }

    /// The tenant's version and the oldest sequence still retained.
    pub async fn tenant_seq(&self, tenant: &TenantId) -> Result<(u64, u64), ApiError> {
        Ok(self.store.tenant_seq(tenant.as_str()).await?)
    }

    /// Conflicts by status (`None`: all), newest first.
    pub async fn conflicts(
        &self,
        tenant: &TenantId,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConflictRow>, ApiError> {
        Ok(self.store.conflicts(tenant.as_str(), status, limit.clamp(1, 1000)).await?)
    }

    /// A person resolves conflict `id` (`choice` as the API names it); audited with the write.
    /// Returns the resolved row and the tenant's new version.
    pub async fn resolve_conflict(
        &self,
        tenant: &TenantId,
        id: &str,
        actor: &str,
        choice_name: &str,
        choice: ConflictChoice,
    ) -> Result<(ConflictRow, u64), ApiError> {
        let engine = self.engine.clone();
        let (row, version) = self
            .store
            .resolve_conflict(tenant, id, actor, choice_name, |wire, apply_state| {
                let conflict = stored_conflict(tenant, wire)?;
                let at = HlcTimestamp::new(now_ms(), 0);
                Ok(engine.resolve_conflict(apply_state, &conflict, choice, at))
            })
            .await?;
        self.feed.entities_changed(tenant, version);
        self.metrics.inc("pf2_conflicts_resolved_total", &[("choice", choice_name)]);
        Ok((row, version))
    }
}

/// A stored conflict as the apply engine takes it.
fn stored_conflict(
    tenant: &TenantId,
    wire: &WireConflict,
) -> Result<sdk_core::apply::Conflict, crate::store::StoreError> {
    Ok(sdk_core::apply::Conflict {
        id: wire.conflict_id.clone(),
        key: EntityKey::new(tenant.clone(), wire.entity_type.clone(), wire.entity_id.clone()),
        operation_id: OperationId::new(wire.operation_id.clone())
            .map_err(|e| crate::store::StoreError::internal(e.to_string()))?,
        client_id: wire.client_id.clone(),
        fields: wire.fields.clone(),
        server_state: wire.server_state.as_object().cloned(),
        client_state: wire.client_state.as_object().cloned(),
        server_version: wire.server_version,
        at: wire.at,
    })
}

/// Decode a batch's operations for the apply engine: the header of each must parse (else the
/// whole batch is invalid), each must belong to `client`, and each interaction class must be
/// allowed on `transport` (Class D never travels realtime).
pub fn prepare_batch(
    operations: Vec<WireOperation>,
    client: &ClientId,
    transport: Transport,
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

/// A stored response. Pushes over `/v1/ws` stored by a server from before both transports
/// shared [`SyncService::reconcile`] hold a `push_result` frame: read as the same answer.
fn stored_response(body: &str) -> Result<ReconcileResponse, ApiError> {
    if let Ok(r) = serde_json::from_str(body) {
        return Ok(r);
    }
    match serde_json::from_str::<ServerFrame>(body) {
        Ok(ServerFrame::PushResult { batch_id, results, current_version, conflicts }) => {
            Ok(ReconcileResponse {
                request_id: batch_id,
                conflicts,
                resolved_operations: results,
                current_version: current_version.to_string(),
                completed_at: String::new(),
                delta_updates: None,
                snapshot: None,
            })
        }
        _ => Err(ApiError::internal("a stored reconcile response does not decode")),
    }
}

/// The response stored with a batch (and replayed for a retried one).
fn response_body(request_id: &str, tenant: &TenantId, view: ReconcileView<'_>) -> String {
    let response = ReconcileResponse {
        request_id: request_id.to_string(),
        conflicts: view.outcome.conflicts.iter().map(WireConflict::from_conflict).collect(),
        resolved_operations: view.outcome.results.iter().map(WireOpResult::from_result).collect(),
        current_version: view.version.to_string(),
        completed_at: iso_now(),
        delta_updates: view.delta,
        snapshot: view.snapshot_required.then(|| SnapshotHint {
            required: true,
            reason: "the gap since lastKnownVersion is too large for a delta".into(),
            href: format!("/api/reconciliation/snapshot/{{entityType}}?tenant={tenant}"),
        }),
    };
    serde_json::to_string(&response).expect("responses serialize")
}
