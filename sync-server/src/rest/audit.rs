//! `GET /api/audit`: the tenant's audit log.

use super::extract::{Auth, Query};
use super::openapi::TenantHeader;
use super::snapshots::LimitQuery;
use crate::error::ApiError;
use crate::error::Refusals;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

/// The tenant's audit log, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditLog {
    /// `{ actor, action, target, outcome, details, at }` (docs/api/rest.md lists the actions).
    #[schema(value_type = Vec<Object>)]
    entries: Vec<serde_json::Value>,
}

/// `GET /api/audit`: the tenant's audit log, newest first (tenant `admin` or `super_admin`).
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "audit",
    summary = "The tenant's audit log (admin)",
    params(LimitQuery, TenantHeader),
    responses((status = 200, description = "Newest first", body = AuditLog), Refusals),
    security(("bearer" = [])),
)]
pub async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    auth.require_admin("reading the audit log")?;
    let entries = state.store.audit_entries(auth.tenant.as_str(), q.or(100)).await?;
    Ok(Json(AuditLog { entries }).into_response())
}
