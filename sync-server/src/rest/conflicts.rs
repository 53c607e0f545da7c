//! Conflicts awaiting a person, and their resolution (audited).

use super::extract::{Auth, JsonBody, Path, Query};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::apply::ConflictChoice;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
pub struct ConflictQuery {
    status: Option<String>,
    limit: Option<i64>,
}

pub async fn list_conflicts(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ConflictQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("open") => Some("open"),
        Some("resolved") => Some("resolved"),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "status must be open, resolved or all, not {other:?}"
            )));
        }
    };
    let rows =
        state.sync.conflicts(&auth.tenant, &auth.identity, status, q.limit.unwrap_or(100)).await?;
    let conflicts: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.conflict).expect("serializes");
            v["status"] = json!(r.status);
            v["resolution"] = json!(r.resolution);
            v["resolvedBy"] = json!(r.resolved_by);
            v
        })
        .collect();
    Ok(Json(json!({ "conflicts": conflicts })).into_response())
}

#[derive(Deserialize)]
struct ResolveRequest {
    /// `server` (keep), `client` (take the client's version), `merged` (use `state`), `delete`.
    choice: String,
    #[serde(default)]
    state: Option<Value>,
}

pub async fn resolve_conflict(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    let req: ResolveRequest = serde_json::from_value(body.value)
        .map_err(|e| ApiError::invalid(format!("invalid resolution: {e}")))?;
    let choice = match (req.choice.as_str(), req.state) {
        ("server", _) => ConflictChoice::KeepServer,
        ("client", _) => ConflictChoice::TakeClient,
        ("delete", _) => ConflictChoice::Delete,
        ("merged", Some(Value::Object(o))) => ConflictChoice::Replace(o),
        ("merged", _) => return Err(ApiError::invalid("choice \"merged\" needs a state object")),
        (other, _) => return Err(ApiError::invalid(format!("unknown choice {other:?}"))),
    };
    let (row, version) =
        state.sync.resolve_conflict(&auth.tenant, &auth.identity, &id, &req.choice, choice).await?;
    let mut v = serde_json::to_value(&row.conflict).expect("serializes");
    v["status"] = json!(row.status);
    v["resolution"] = json!(row.resolution);
    v["resolvedBy"] = json!(row.resolved_by);
    v["currentVersion"] = json!(version.to_string());
    Ok(Json(v).into_response())
}
