//! `POST /api/reconciliation/reconcile` and `GET /api/reconciliation/delta`: the sync
//! service over REST (the same functions `/v1/ws` calls).

use super::extract::{Auth, JsonBody, Query, json_text, rate_limit};
use crate::error::ApiError;
use crate::state::AppState;
use crate::sync::PullRequest;
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
    let answer =
        state.sync.reconcile(&auth.tenant, &auth.identity, request, Transport::Rest).await?;
    Ok(json_text(StatusCode::OK, answer.body))
}

#[derive(Debug, Deserialize)]
pub struct DeltaQuery {
    since: Option<u64>,
    limit: Option<i64>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    /// Partial sync (sync rules): a JSON array of channels.
    channels: Option<String>,
    /// The channels held through `since` (sync rules): a JSON array.
    held: Option<String>,
}

/// A channel list of the delta's query: a JSON array of strings.
fn channel_list(name: &str, raw: Option<String>) -> Result<Option<Vec<String>>, ApiError> {
    raw.map(|s| {
        serde_json::from_str(&s)
            .map_err(|_| ApiError::invalid(format!("{name} must be a JSON array of strings")))
    })
    .transpose()
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
    let pull = PullRequest {
        since: q.since.unwrap_or(0),
        limit: q.limit.unwrap_or(500),
        channels: channel_list("channels", q.channels)?,
        held: channel_list("held", q.held)?,
    };
    let frame = state.sync.pull(&auth.tenant, &auth.identity, pull, client.as_ref()).await?;
    Ok(Json(frame).into_response())
}
