//! `POST /api/reconciliation/reconcile` and `GET /api/reconciliation/delta`: the sync
//! service over REST (the same functions `/v1/ws` calls).

use super::extract::{Auth, JsonBody, Query, json_text, rate_limit};
use super::openapi::TenantHeader;
use crate::error::{ApiError, ErrorBody, Refusals};
use crate::state::AppState;
use crate::sync::PullRequest;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::ClientId;
use sdk_core::interaction::Transport;
use sdk_core::protocol::ReconcileRequest;
use sdk_core::protocol::http::{DeltaBody, ReconcileResponse};
use serde::Deserialize;
use serde_json::Value;

/// `POST /api/reconciliation/reconcile`: a batch of operations applied idempotently by
/// `requestId` (the same id and body replay the first answer). An operation that is malformed
/// in itself is refused alone, in `resolvedOperations`; the request as a whole is refused when
/// its own fields are (an operation's `operationId` or `clientId` included).
#[utoipa::path(
    post,
    path = "/api/reconciliation/reconcile",
    tag = "reconciliation",
    summary = "Apply a batch of operations idempotently",
    params(TenantHeader),
    request_body = ReconcileRequest,
    responses(
        (status = 200, description = "Every operation's result, the conflicts, the tenant's version and, with `lastKnownVersion`, the changes since it", body = ReconcileResponse),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over the server's limit (1 MiB by default)", body = ErrorBody),
        (status = 422, description = "IDEMPOTENCY_MISMATCH: the requestId was used with another body", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeltaQuery {
    /// The version the caller has (a delta's `version`; 0 or absent: from the start).
    #[param(example = 40)]
    since: Option<u64>,
    /// Entities per page, clamped to 1…1000 (default 500).
    limit: Option<i64>,
    /// The caller's client: the last page then says which of its operations the state includes.
    #[param(pattern = "^[A-Za-z0-9_.:@-]{1,128}$", example = "client-789")]
    client_id: Option<String>,
    /// Partial sync (sync rules): the channels to sync, a JSON array of strings.
    channels: Option<String>,
    /// The channels held through `since` (sync rules): a JSON array of strings.
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
#[utoipa::path(
    get,
    path = "/api/reconciliation/delta",
    tag = "reconciliation",
    summary = "Entities changed since a version (under sync rules only what the caller may read)",
    params(DeltaQuery, TenantHeader),
    responses(
        (status = 200, description = "One page of the delta; pull again from `version` while `hasMore`", body = DeltaBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
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
    let body = DeltaBody::from_frame(frame)
        .ok_or_else(|| ApiError::internal("a pull answered another frame than a delta"))?;
    Ok(Json(body).into_response())
}
