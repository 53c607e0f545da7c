//! The sync service: reconcile (the one place an operation batch is validated, hashed for
//! idempotency, applied and counted), pulls (the delta paging rule is sdk-core's), entity and
//! collection snapshots, and manual conflict resolution. REST and `/v1/ws` call the same
//! functions; they only translate the answers.

use crate::access::{Access, AccessRules};
use crate::auth::Identity;
use crate::clock::{iso_now, now_ms};
use crate::error::ApiError;
use crate::feed::ChangeFeed;
use crate::metrics::Metrics;
use crate::store::{ConflictRow, ReconcileView, Reconciled, Store, Writer};
use sdk_core::ErrorCode;
use sdk_core::apply::{ApplyEngine, ConflictChoice, EntityRecord, Outcome, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, EntityType, OperationId, TenantId};
use sdk_core::interaction::Transport;
use sdk_core::protocol::http::{ScopedPage, scoped_delta_frame};
use sdk_core::protocol::{
    ReconcileRequest, ReconcileResponse, ServerFrame, SnapshotHint, WireConflict, WireEntity,
    WireOpResult, WireOperation,
};
use sdk_core::rules::{Scope, WriteCheck};
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

/// A pull, as every transport asks it.
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub since: u64,
    /// Entities per page (clamped to 1–1000).
    pub limit: i64,
    /// Partial sync: only these of the channels granted (`None`: all).
    pub channels: Option<Vec<String>>,
    /// The channels the client holds through `since` (`None`: the same as it syncs now).
    pub held: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct SyncService {
    store: Arc<Store>,
    access: AccessRules,
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
        let access = AccessRules::new(store.clone());
        Self { store, access, engine, metrics, feed, max_batch, max_delta }
    }

    /// Apply `request` for `tenant`, arriving over `transport`, exactly once: a retried request
    /// (same `requestId`, same [`ReconcileRequest::idempotency_hash`]) gets the stored answer,
    /// another body under the same id is `IDEMPOTENCY_MISMATCH`.
    #[tracing::instrument(name = "reconcile", skip_all, fields(tenant = %tenant, operations = request.operations.len(), transport = ?transport))]
    pub async fn reconcile(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        request: ReconcileRequest,
        transport: Transport,
    ) -> Result<Answer, ApiError> {
        let started = Instant::now();
        let hash = request.idempotency_hash();
        let last_known = request.last_known();
        let (channels, held) = (request.channels.clone(), request.held.clone());
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
        // Under rules a delta is made for its reader, after the batch, and never stored: a
        // replayed answer gets a fresh one.
        let ruled = self.access.enforced();
        let stored_last_known = if ruled { None } else { last_known };
        let writer = Writer {
            user: identity.user.as_str(),
            claims: &identity.claims,
            roles: &identity.roles,
        };
        let result = self
            .store
            .reconcile(
                &self.engine,
                tenant,
                &key,
                &hash,
                batch,
                stored_last_known,
                max_delta,
                writer,
                respond,
            )
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
            Reconciled::Fresh { response, outcome, version, followed } => {
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
                tracing::debug!(
                    operations = outcome.results.len(),
                    changes = outcome.changes.len(),
                    version,
                    "reconciled"
                );
                if !outcome.changes.is_empty() {
                    self.feed.entities_changed(tenant, version, followed.as_ref());
                }
                response
            }
        };
        let response = stored_response(&body)?;
        if !ruled {
            return Ok(Answer { body, response });
        }
        let pull =
            last_known.map(|since| PullRequest { since, limit: max_delta as i64, channels, held });
        self.for_reader(tenant, identity, &client, response, pull).await
    }

    /// Under rules, a reconcile answer with its delta made for `identity` (the stored answer
    /// holds none): `pull` when the request gave `lastKnownVersion`.
    async fn for_reader(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        client: &ClientId,
        mut response: ReconcileResponse,
        pull: Option<PullRequest>,
    ) -> Result<Answer, ApiError> {
        response.delta_updates = None;
        response.delta_removed = Vec::new();
        response.snapshot = None;
        if let Some(pull) = pull {
            let access = self.access.of(tenant, identity).await?;
            match self.pull_as(tenant, &access, pull, Some(client)).await? {
                ServerFrame::Delta { has_more: true, .. } => {
                    response.snapshot = Some(snapshot_hint(tenant));
                }
                ServerFrame::Delta { entities, removed, scope, .. } => {
                    response.delta_updates = Some(entities);
                    response.delta_removed = removed;
                    response.scope = scope;
                }
                _ => {}
            }
        }
        let body = serde_json::to_string(&response).expect("responses serialize");
        Ok(Answer { body, response })
    }

    /// A pull: the `delta` frame after `since` for `identity` — under sync rules only what they
    /// may read (and asked for), with removals and move-ins (docs/api/sync-rules.md).
    pub async fn pull(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        request: PullRequest,
        client: Option<&ClientId>,
    ) -> Result<ServerFrame, ApiError> {
        let access = self.access.of(tenant, identity).await?;
        self.pull_as(tenant, &access, request, client).await
    }

    /// [`SyncService::pull`] for an access already computed (a socket refreshes its own with it).
    pub async fn pull_as(
        &self,
        tenant: &TenantId,
        access: &Access,
        request: PullRequest,
        client: Option<&ClientId>,
    ) -> Result<ServerFrame, ApiError> {
        let (t, since, limit) = (tenant.as_str(), request.since, request.limit.clamp(1, 1000));
        let Some(scope) = access.scope(request.channels.as_deref()) else {
            return Ok(self.store.pull(t, since, limit, client).await?);
        };
        let wire_scope = access.wire_scope(&scope);
        let Scope::Channels(syncs) = &scope else {
            let mut frame = self.store.pull(t, since, limit, client).await?;
            if let ServerFrame::Delta { scope, .. } = &mut frame {
                *scope = wire_scope;
            }
            return Ok(frame);
        };
        // Read before the entities, as `Store::pull` does: a confirmation only conservative.
        let client_seq = match client {
            Some(c) => Some(self.store.client_seq(t, c).await?),
            None => None,
        };
        let (seq, pruned) = self.store.tenant_seq(t).await?;
        let mut wire_scope = wire_scope.expect("a scope under rules");
        if since > 0 && since < pruned {
            // The removals since `since` are past retention: the client must start over.
            wire_scope.reset = true;
            return Ok(scoped_delta_frame(since, seq, ScopedPage::default(), None, wire_scope));
        }
        let held = request.held.map(|h| h.into_iter().collect()).unwrap_or_else(|| syncs.clone());
        let read = self.store.scoped_delta(t, since, limit, syncs, &held).await?;
        let changed = read
            .changed
            .iter()
            .map(|r| WireEntity {
                channels: access.channels_of(r, &scope),
                ..WireEntity::from_record(r)
            })
            .collect();
        let page = ScopedPage {
            changed,
            changed_more: read.changed_more,
            removed: read.removed,
            removed_more: read.removed_more,
        };
        let mut frame = scoped_delta_frame(since, seq, page, client_seq, wire_scope);
        if let ServerFrame::Delta { has_more: true, version, remaining, .. } = &mut frame {
            *remaining = Some(self.store.entities_after_in(t, syncs, *version).await?);
        }
        Ok(frame)
    }

    /// What `identity` may read and write in `tenant` now (every surface that shows data asks).
    pub async fn access(&self, tenant: &TenantId, identity: &Identity) -> Result<Access, ApiError> {
        self.access.of(tenant, identity).await
    }

    /// An entity as a snapshot shows it to `identity`: `None` when absent, deleted or not
    /// readable — the three look the same.
    pub async fn entity(
        &self,
        identity: &Identity,
        key: &EntityKey,
    ) -> Result<Option<EntityRecord>, ApiError> {
        let Some(rec) = self.store.entity(key).await?.filter(|r| !r.is_deleted()) else {
            return Ok(None);
        };
        let access = self.access.of(&key.tenant, identity).await?;
        Ok(access.reads(&rec).then_some(rec))
    }

    /// At most `limit` entities of `entity_type` after `cursor` that `identity` may read, and
    /// the tenant's version.
    pub async fn collection(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        entity_type: &EntityType,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CollectionPage, ApiError> {
        let t = tenant.as_str();
        let access = self.access.of(tenant, identity).await?;
        let (version, _) = self.store.tenant_seq(t).await?;
        let page = limit as i64 + 1;
        let mut records = match access.scope(None) {
            Some(Scope::Channels(read)) => {
                self.store.entities_page_in(t, entity_type, cursor, page, &read).await?
            }
            _ => self.store.entities_page(t, entity_type, cursor, page).await?,
        };
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

    /// Conflicts by status (`None`: all), newest first — under rules only those on entities
    /// `identity` may read.
    pub async fn conflicts(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConflictRow>, ApiError> {
        let rows = self.store.conflicts(tenant.as_str(), status, limit.clamp(1, 1000)).await?;
        let access = self.access.of(tenant, identity).await?;
        if matches!(access, Access::Unruled) {
            return Ok(rows);
        }
        let mut readable = Vec::with_capacity(rows.len());
        for row in rows {
            let c = &row.conflict;
            let key = EntityKey::new(tenant.clone(), c.entity_type.clone(), c.entity_id.clone());
            if self.store.entity(&key).await?.is_some_and(|rec| access.reads(&rec)) {
                readable.push(row);
            }
        }
        Ok(readable)
    }

    /// A person resolves conflict `id` (`choice` as the API names it); audited with the write.
    /// Returns the resolved row and the tenant's new version.
    pub async fn resolve_conflict(
        &self,
        tenant: &TenantId,
        identity: &Identity,
        id: &str,
        choice_name: &str,
        choice: ConflictChoice,
    ) -> Result<(ConflictRow, u64), ApiError> {
        let engine = self.engine.clone();
        let access = self.access.of(tenant, identity).await?;
        let actor = identity.user.as_str();
        let (row, version, followed) = self
            .store
            .resolve_conflict(tenant, id, actor, choice_name, |wire, apply_state| {
                let conflict = stored_conflict(tenant, wire)?;
                check_resolver(&access, apply_state.entities.get(&conflict.key), id)?;
                let at = HlcTimestamp::new(now_ms(), 0);
                let change = engine.resolve_conflict(apply_state, &conflict, choice, at);
                if let (Some(c), Access::Ruled { rules, grants }) = (&change, &access) {
                    use sdk_core::apply::WriteGate;
                    WriteCheck::new(rules, grants)
                        .may_leave(&c.record)
                        .map_err(|m| crate::store::StoreError::new(ErrorCode::AuthzFailed, m))?;
                }
                Ok(change)
            })
            .await?;
        self.feed.entities_changed(tenant, version, followed.as_ref());
        self.metrics.inc("pf2_conflicts_resolved_total", &[("choice", choice_name)]);
        Ok((row, version))
    }
}

/// Resolving a conflict needs write on its entity; one a resolver may not read does not exist
/// for them (the same answer as an unknown id).
fn check_resolver(
    access: &Access,
    current: Option<&EntityRecord>,
    id: &str,
) -> Result<(), crate::store::StoreError> {
    use crate::store::StoreError;
    match current {
        _ if matches!(access, Access::Unruled) => Ok(()),
        Some(rec) if access.reads(rec) && access.writes(rec) => Ok(()),
        Some(rec) if access.reads(rec) => {
            Err(StoreError::new(ErrorCode::AuthzFailed, "resolving needs write on the entity"))
        }
        _ => Err(StoreError::not_found(format!("no conflict {id}"))),
    }
}

/// The hint a reconcile answer carries when its delta would not fit one page.
fn snapshot_hint(tenant: &TenantId) -> SnapshotHint {
    SnapshotHint {
        required: true,
        reason: "the gap since lastKnownVersion is too large for a delta".into(),
        href: format!("/api/reconciliation/snapshot/{{entityType}}?tenant={tenant}"),
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
                delta_removed: Vec::new(),
                scope: None,
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
        snapshot: view.snapshot_required.then(|| snapshot_hint(tenant)),
        delta_removed: Vec::new(),
        scope: None,
    };
    serde_json::to_string(&response).expect("responses serialize")
}
