//! Class D transactions: `POST /api/transactions` with `Idempotency-Key`, and their status.

use super::extract::{Auth, JsonBody, Path, json_text, rate_limit};
use crate::clock::iso_now;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::TransactionRow;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sdk_core::ErrorCode;
use sdk_core::hlc::HlcTimestamp;
use sdk_core::snapshot::{canonical_json, checksum};
use serde::Deserialize;
use serde_json::{Value, json};

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
    let hash = checksum(&canonical_json(&body.value));
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
        traceparent: crate::trace::current().map(|cx| cx.to_string()),
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
    let missing = || ApiError::not_found(format!("no transaction {id}"));
    let t = state.store.transaction(auth.tenant.as_str(), &id).await?.ok_or_else(missing)?;
    // Under sync rules a transaction is its creator's (and tenant-wide readers'): to anyone
    // else it does not exist.
    let access = state.sync.access(&auth.tenant, &auth.identity).await?;
    if !access.reads_transaction_of(&t.user_id) {
        return Err(missing());
    }
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
