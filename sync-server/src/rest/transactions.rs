//! Class D transactions: `POST /api/transactions` with `Idempotency-Key`, and their status.

use super::extract::{Auth, JsonBody, Path, json_text, rate_limit};
use super::openapi::TenantHeader;
use crate::clock::iso_now;
use crate::clock::now_ms;
use crate::error::{ApiError, ErrorBody, Refusals};
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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A Class D transaction to run (api.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"type": "payment.create", "payload": {"amount": 5}, "callbackUrl": "https://shop.example/hooks/pf2"}))]
pub struct TransactionRequest {
    /// What to do: 1 to 128 characters (`payment.create`).
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 128)]
    kind: String,
    /// The transaction's input, as the processor takes it.
    #[serde(default)]
    payload: Value,
    /// Where the signed webhook goes once it settles (`http://` or `https://`).
    #[serde(default)]
    #[schema(pattern = "^https?://")]
    callback_url: Option<String>,
}

/// The answer to a transaction accepted (and, byte for byte, to its replays).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"transactionId": "tx-8a7b", "status": "pending", "statusUrl": "/api/transactions/tx-8a7b", "createdAt": "2026-12-07T10:15:30.000Z"}))]
pub struct TransactionAccepted {
    transaction_id: String,
    /// `pending` until the server settles it.
    status: &'static str,
    /// Where to ask for its status (`GET`).
    status_url: String,
    created_at: String,
}

/// A transaction's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"transactionId": "tx-8a7b", "type": "payment.create", "status": "confirmed", "result": {"receipt": "r-1"}, "callback": {"state": "delivered", "attempts": 1}, "createdAt": "2026-12-07T10:15:30.000Z", "updatedAt": "2026-12-07T10:15:31.200Z"}))]
pub struct TransactionView {
    transaction_id: String,
    #[serde(rename = "type")]
    kind: String,
    /// `pending`, `processing`, `confirmed` or `failed`.
    status: String,
    /// What the processor answered, once settled.
    result: Option<Value>,
    callback: CallbackView,
    created_at: String,
    updated_at: String,
}

/// Its webhook's delivery: `none` (no callback URL), `pending`, `delivered` or `failed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackView {
    state: String,
    attempts: i64,
}

/// `POST /api/transactions` with `Idempotency-Key`: 202 with the status URL; the same key and
/// body replays the stored response, the same key with another body is 422.
#[utoipa::path(
    post,
    path = "/api/transactions",
    tag = "transactions",
    summary = "Create a Class D transaction (Idempotency-Key required); 202",
    params(
        ("Idempotency-Key" = String, Header, description = "1 to 255 visible characters; the same key and body replay the first answer, the same key with another body is 422", min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]{0,253}[!-~])?$"),
        TenantHeader,
    ),
    request_body = TransactionRequest,
    responses(
        (status = 202, description = "Accepted (or replayed)", body = TransactionAccepted),
        (status = 422, description = "IDEMPOTENCY_MISMATCH: the key was used with another body", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
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
    if req.kind.is_empty() || req.kind.chars().count() > 128 {
        return Err(ApiError::invalid("type must be 1 to 128 characters"));
    }
    if let Some(url) = &req.callback_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ApiError::invalid("callbackUrl must be an http(s) URL"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms() as i64;
    let response = serde_json::to_string(&TransactionAccepted {
        transaction_id: id.clone(),
        status: "pending",
        status_url: format!("/api/transactions/{id}"),
        created_at: iso_now(),
    })
    .expect("serializes");
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

/// `GET /api/transactions/{transactionId}`: its status (under sync rules, its creator's only).
#[utoipa::path(
    get,
    path = "/api/transactions/{transactionId}",
    tag = "transactions",
    summary = "A transaction's status",
    params(("transactionId" = String, Path, description = "As `POST /api/transactions` answered", example = "tx-8a7b"), TenantHeader),
    responses(
        (status = 200, description = "Its status", body = TransactionView),
        (status = 404, description = "NOT_FOUND: no such transaction (or not the caller's)", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
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
    let iso = |ms: i64| HlcTimestamp::new(ms.max(0) as u64, 0).to_string();
    Ok(Json(TransactionView {
        transaction_id: t.transaction_id,
        kind: t.kind,
        status: t.status,
        result: t.result,
        callback: CallbackView { state: t.callback_state, attempts: t.callback_attempts },
        created_at: iso(t.created_at),
        updated_at: iso(t.updated_at),
    })
    .into_response())
}
