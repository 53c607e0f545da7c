//! Collaborative documents over REST: the snapshot, and Automerge's sync protocol for clients
//! on the long-polling transport.

use super::extract::{Auth, JsonBody, Path, rate_limit};
use crate::clock::iso_now;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::ClientId;
use serde::Deserialize;
use serde_json::{Value, json};

/// `GET /api/documents/{documentId}/snapshot`: a collaborative document's Automerge save.
pub async fn document_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let crate::documents::Snapshot { save, heads, stored_bytes } = state
        .documents
        .snapshot(&auth.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?}")))?;
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&save));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Json(json!({
        "documentId": id,
        "tenantId": auth.tenant,
        "heads": heads,
        "size": save.len(),
        "storedBytes": stored_bytes,
        "save": base64::engine::general_purpose::STANDARD.encode(&save),
        "checksum": format!("sha256:{hex}"),
        "createdAt": iso_now(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentSyncRequest {
    client_id: String,
    /// A whole Automerge sync message (base64), or none to ask what is new.
    #[serde(default)]
    message: Option<String>,
}

/// `POST /api/documents/{documentId}/sync`: Automerge's sync protocol over REST, for clients on
/// the long-polling transport. `{clientId, message?}` → `{documentId, messages: [base64]}`.
pub async fn document_sync(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    rate_limit(&state, &auth, "reconcile", state.limits.reconcile_rate)?;
    let req: DocumentSyncRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid document sync request: {e}")))?;
    let client = ClientId::new(req.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let message = match &req.message {
        Some(m) => Some(
            b64.decode(m).map_err(|e| ApiError::invalid(format!("message: not base64 ({e})")))?,
        ),
        None => None,
    };
    let answers =
        state.documents.sync_over_http(&auth.tenant, &client, &id, message.as_deref()).await?;
    let messages: Vec<String> = answers.iter().map(|m| b64.encode(m)).collect();
    Ok(Json(json!({ "documentId": id, "messages": messages })).into_response())
}
