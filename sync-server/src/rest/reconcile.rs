//! `POST /api/reconciliation/reconcile` and `GET /api/reconciliation/delta`: the sync
//! service over REST (the same functions `/v1/ws` calls).

use super::extract::{Auth, JsonBody, Query, json_text, rate_limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::ClientId;
use sdk_core::interaction::Transport;
use sdk_core::protocol::ReconcileRequest;
use serde::Deserialize;
use serde_json::Value;

pub async fn reconcile(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "reconcile", state.limits.reconcile_rate)?;
    let request: ReconcileRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid reconcile request: {e}")))?;
    let answer = state.sync.reconcile(&auth.tenant, request, Transport::Rest).await?;
    Ok(json_text(StatusCode::OK, answer.body))
}

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
    let client =
        q.client_id.map(ClientId::new).transpose().map_err(|e| ApiError::invalid(e.to_string()))?;
    let frame = state
        .sync
        .pull(&auth.tenant, q.since.unwrap_or(0), q.limit.unwrap_or(500), client.as_ref())
        .await?;
    Ok(Json(frame).into_response())
}
