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
    let access = state.sync.access(&auth.tenant, &auth.identity).await?;
    let crate::documents::Snapshot { save, heads, stored_bytes } = state
        .documents
        .snapshot(&access, &auth.tenant, &id)
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
/// On the long-polling lane's budget (`poll`, 60 a minute), as `POST /api/documents/sync`.
pub async fn document_sync(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    rate_limit(&state, &auth, "poll", state.limits.poll_rate)?;
    let req: DocumentSyncRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid document sync request: {e}")))?;
    let client = ClientId::new(req.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let message = match &req.message {
        Some(m) => Some(
            b64.decode(m).map_err(|e| ApiError::invalid(format!("message: not base64 ({e})")))?,
        ),
        None => None,
    };
    let access = state.sync.access(&auth.tenant, &auth.identity).await?;
    let (answers, version) = state
        .documents
        .sync_over_http(&access, &auth.tenant, &client, &id, message.as_deref())
        .await?;
    let messages: Vec<String> = answers.iter().map(|m| b64.encode(m)).collect();
    Ok(Json(json!({ "documentId": id, "messages": messages, "version": version })).into_response())
}

/// `POST /api/documents/sync`: several documents' sync messages in one request (the
/// long-polling transport: one request per round, however many documents are open), on the
/// long-polling lane's budget. Each document is answered on its own: one refused (too large, a
/// bad message) carries its `error`, and the others are applied and answered.
pub async fn documents_sync(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    use sdk_core::protocol::WireError;
    use sdk_core::protocol::http::{
        DocumentAnswer, DocumentsSyncAnswer, DocumentsSyncRequest, MAX_DOCUMENTS_PER_REQUEST,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    rate_limit(&state, &auth, "poll", state.limits.poll_rate)?;
    let req: DocumentsSyncRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid documents sync request: {e}")))?;
    let client = ClientId::new(req.client_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if req.documents.len() > MAX_DOCUMENTS_PER_REQUEST {
        return Err(ApiError::invalid(format!(
            "at most {MAX_DOCUMENTS_PER_REQUEST} documents per request"
        )));
    }
    let access = state.sync.access(&auth.tenant, &auth.identity).await?;
    let mut answers = Vec::with_capacity(req.documents.len());
    for d in req.documents {
        let message = d
            .message
            .as_deref()
            .map(|m| b64.decode(m))
            .transpose()
            .map_err(|e| ApiError::invalid(format!("message: not base64 ({e})")));
        let synced = match message {
            Ok(m) => {
                let hub = &state.documents;
                let id = &d.document_id;
                hub.sync_over_http(&access, &auth.tenant, &client, id, m.as_deref()).await
            }
            Err(e) => Err(e),
        };
        let (messages, version, error) = match synced {
            Ok((m, version)) => (m.iter().map(|m| b64.encode(m)).collect(), version, None),
            Err(e) => (Vec::new(), 0, Some(WireError { code: e.code, message: e.message })),
        };
        answers.push(DocumentAnswer { document_id: d.document_id, messages, version, error });
    }
    Ok(Json(DocumentsSyncAnswer { documents: answers }).into_response())
}
