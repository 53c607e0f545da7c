//! Conflicts awaiting a person, and their resolution (audited).

use super::extract::{Auth, JsonBody, Path, Query};
use super::openapi::TenantHeader;
use crate::error::{ApiError, ErrorBody, Refusals};
use crate::state::AppState;
use crate::store::ConflictRow;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::apply::ConflictChoice;
use sdk_core::protocol::WireConflict;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which conflicts to list.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictStatus {
    /// Awaiting a resolution (the default).
    #[default]
    Open,
    Resolved,
    All,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// `open` (the default), `resolved` or `all`.
    #[param(inline)]
    status: Option<ConflictStatus>,
    /// How many at most, clamped to 1…1000 (default 100).
    limit: Option<i64>,
}

/// A conflict with where it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConflictView {
    #[serde(flatten)]
    conflict: WireConflict,
    /// `open` or `resolved`.
    status: String,
    /// The choice that resolved it.
    resolution: Option<String>,
    /// The user who resolved it.
    resolved_by: Option<String>,
}

impl From<ConflictRow> for ConflictView {
    fn from(r: ConflictRow) -> Self {
        let ConflictRow { conflict, status, resolution, resolved_by } = r;
        Self { conflict, status, resolution, resolved_by }
    }
}

/// `GET /api/reconciliation/conflicts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"conflicts": [{"conflictId": "c-5d1e", "entityType": "document", "entityId": "d-9", "operationId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "clientId": "client-789", "fields": ["title"], "serverState": {"title": "Q3 plan"}, "clientState": {"title": "Q3 plan (draft)"}, "serverVersion": 40, "at": "2026-12-07T10:15:30.123Z", "status": "open", "resolution": null, "resolvedBy": null}]}))]
pub struct ConflictList {
    conflicts: Vec<ConflictView>,
}

/// `GET /api/reconciliation/conflicts?status=&limit=`: the tenant's conflicts (under sync
/// rules, those of entities the caller may read), newest first.
#[utoipa::path(
    get,
    path = "/api/reconciliation/conflicts",
    tag = "conflicts",
    summary = "Conflicts awaiting (or after) manual resolution",
    params(ConflictQuery, TenantHeader),
    responses(
        (status = 200, description = "The conflicts", body = ConflictList),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn list_conflicts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ConflictQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.unwrap_or_default() {
        ConflictStatus::Open => Some("open"),
        ConflictStatus::Resolved => Some("resolved"),
        ConflictStatus::All => None,
    };
    let rows =
        state.sync.conflicts(&auth.tenant, &auth.identity, status, q.limit.unwrap_or(100)).await?;
    let conflicts = rows.into_iter().map(ConflictView::from).collect();
    Ok(Json(ConflictList { conflicts }).into_response())
}

/// How to resolve a conflict.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "choice", rename_all = "lowercase")]
#[schema(example = json!({"choice": "merged", "state": {"title": "Q3 plan (final)"}}))]
pub enum Resolution {
    /// Keep the server's version.
    Server,
    /// Take the client's version.
    Client,
    /// Delete the entity.
    Delete,
    /// Store `state`, a merge made by a person.
    Merged { state: Map<String, Value> },
}

impl Resolution {
    fn name(&self) -> &'static str {
        match self {
            Resolution::Server => "server",
            Resolution::Client => "client",
            Resolution::Delete => "delete",
            Resolution::Merged { .. } => "merged",
        }
    }
}

/// The conflict's path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct ConflictPath {
    /// As the conflict list or a reconcile answer names it.
    #[param(example = "c-5d1e")]
    conflict_id: String,
}

/// The resolved conflict and the tenant's version after the resolution.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"conflictId": "c-5d1e", "entityType": "document", "entityId": "d-9", "operationId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "clientId": "client-789", "fields": ["title"], "serverState": {"title": "Q3 plan"}, "clientState": {"title": "Q3 plan (draft)"}, "serverVersion": 40, "at": "2026-12-07T10:15:30.123Z", "status": "resolved", "resolution": "merged", "resolvedBy": "alice", "currentVersion": "44"}))]
pub struct ResolvedConflict {
    #[serde(flatten)]
    conflict: ConflictView,
    current_version: String,
}

/// `POST /api/reconciliation/conflicts/{conflictId}/resolve`: resolve an open conflict (the
/// resolution is applied as a write of the resolver's, and audited).
#[utoipa::path(
    post,
    path = "/api/reconciliation/conflicts/{conflictId}/resolve",
    tag = "conflicts",
    summary = "Resolve a conflict (audited)",
    params(ConflictPath, TenantHeader),
    request_body = Resolution,
    responses(
        (status = 200, description = "Resolved", body = ResolvedConflict),
        (status = 404, description = "NOT_FOUND: no such conflict", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn resolve_conflict(
    State(state): State<AppState>,
    auth: Auth,
    Path(ConflictPath { conflict_id }): Path<ConflictPath>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    let resolution: Resolution = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid resolution: {e}")))?;
    let name = resolution.name();
    let choice = match resolution {
        Resolution::Server => ConflictChoice::KeepServer,
        Resolution::Client => ConflictChoice::TakeClient,
        Resolution::Delete => ConflictChoice::Delete,
        Resolution::Merged { state } => ConflictChoice::Replace(state),
    };
    let (row, version) = state
        .sync
        .resolve_conflict(&auth.tenant, &auth.identity, &conflict_id, name, choice)
        .await?;
    let conflict = ConflictView::from(row);
    Ok(Json(ResolvedConflict { conflict, current_version: version.to_string() }).into_response())
}
