//! Collaborative documents over REST: the snapshot, and Automerge's sync protocol for clients
//! on the long-polling transport.

use super::extract::{Auth, JsonBody, Path, rate_limit};
use super::openapi::TenantHeader;
use crate::clock::iso_now;
use crate::error::{ApiError, ErrorBody, Refusals};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::ClientId;
use sdk_core::protocol::http::{DocumentsSyncAnswer, DocumentsSyncRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A document's path: its id (letters, digits, `-_.:`; at most 128).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct DocumentPath {
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "notes")]
    document_id: String,
}

/// A document's stored form.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"documentId": "notes", "tenantId": "acme", "heads": ["1f0e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0"], "size": 412, "storedBytes": 530, "save": "hW9KgwEAAAA=", "checksum": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", "createdAt": "2026-12-07T10:16:00.000Z"}))]
pub struct DocumentSnapshot {
    document_id: String,
    tenant_id: String,
    /// The Automerge heads (hex change hashes) of the save.
    heads: Vec<String>,
    /// Bytes of `save`, decoded.
    size: usize,
    /// Bytes the server stores for the document (its compacted save and the changes after).
    stored_bytes: usize,
    /// `Automerge.save()` of the document, base64.
    save: String,
    /// `sha256:` and the hex SHA-256 of the decoded `save`.
    checksum: String,
    created_at: String,
}

/// `GET /api/documents/{documentId}/snapshot`: a collaborative document's Automerge save (404
/// for one that does not exist or, under sync rules, the caller may not read).
#[utoipa::path(
    get,
    path = "/api/documents/{documentId}/snapshot",
    tag = "documents",
    summary = "A collaborative document's Automerge save, heads, checksum and stored size",
    params(DocumentPath, TenantHeader),
    responses(
        (status = 200, description = "The document", body = DocumentSnapshot),
        (status = 404, description = "NOT_FOUND: no such document (or not readable)", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn document_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(DocumentPath { document_id: id }): Path<DocumentPath>,
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
    Ok(Json(DocumentSnapshot {
        document_id: id,
        tenant_id: auth.tenant.to_string(),
        heads,
        size: save.len(),
        stored_bytes,
        save: base64::engine::general_purpose::STANDARD.encode(&save),
        checksum: format!("sha256:{hex}"),
        created_at: iso_now(),
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"clientId": "client-789", "message": null}))]
pub struct DocumentSyncRequest {
    #[schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$")]
    client_id: String,
    /// A whole Automerge sync message (base64), or none to ask what is new.
    #[serde(default)]
    message: Option<String>,
}

/// What the server answers a document's sync message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"documentId": "notes", "messages": ["QgAAAQ=="], "version": 17}))]
pub struct DocumentSyncAnswer {
    document_id: String,
    /// Automerge sync messages for the client (base64), in order.
    messages: Vec<String>,
    /// The version now stored (the number of its last change): where the next poll watches from.
    version: u64,
}

/// `POST /api/documents/{documentId}/sync`: Automerge's sync protocol over REST, for clients on
/// the long-polling transport. `{clientId, message?}` → `{documentId, messages: [base64]}`.
/// On the long-polling lane's budget (`poll`, 60 a minute), as `POST /api/documents/sync`.
#[utoipa::path(
    post,
    path = "/api/documents/{documentId}/sync",
    tag = "documents",
    summary = "Automerge's sync protocol over REST (long-polling clients)",
    params(DocumentPath, TenantHeader),
    request_body = DocumentSyncRequest,
    responses(
        (status = 200, description = "What the client lacks", body = DocumentSyncAnswer),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body, or the document it would make, is over the limit", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn document_sync(
    State(state): State<AppState>,
    auth: Auth,
    Path(DocumentPath { document_id: id }): Path<DocumentPath>,
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
    Ok(Json(DocumentSyncAnswer { document_id: id, messages, version }).into_response())
}

/// `POST /api/documents/sync`: several documents' sync messages in one request (the
/// long-polling transport: one request per round, however many documents are open), on the
/// long-polling lane's budget. Each document is answered on its own: one refused (too large, a
/// bad message) carries its `error`, and the others are applied and answered.
#[utoipa::path(
    post,
    path = "/api/documents/sync",
    tag = "documents",
    summary = "Several documents' sync messages in one request (long-polling clients)",
    params(TenantHeader),
    request_body = DocumentsSyncRequest,
    responses(
        (status = 200, description = "Per document, what the client lacks, or the document's `error`", body = DocumentsSyncAnswer),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over the limit", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn documents_sync(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    use sdk_core::protocol::WireError;
    use sdk_core::protocol::http::{DocumentAnswer, MAX_DOCUMENTS_PER_REQUEST};
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
    // A malformed id is a malformed request (a document refused for what it holds is answered
    // on its own, below).
    for d in &req.documents {
        crate::documents::valid_document_id(&d.document_id)?;
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
