//! `GET /api/audit`: the tenant's audit log.

use super::extract::{Auth, Query};
use super::snapshots::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /api/audit`: the tenant's audit log, newest first (tenant `admin` or `super_admin`).
pub async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    auth.require_admin("reading the audit log")?;
    let entries = state
        .store
        .audit_entries(auth.tenant.as_str(), q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}
