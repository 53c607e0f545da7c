//! Entity and collection snapshots (`GET /api/reconciliation/snapshot/…`), with checksums.

use super::extract::{Auth, Path, Query};
use super::openapi::TenantHeader;
use crate::clock::iso_now;
use crate::error::{ApiError, ErrorBody, Refusals};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::{EntityId, EntityKey, EntityType};
use sdk_core::protocol::http::body_checksum;
use sdk_core::protocol::{CollectionItem, CollectionSnapshot, EntitySnapshot, WireEntity};
use serde::Deserialize;
use serde_json::json;

/// An entity's address: its type (a letter, then letters, digits, `-_.`; at most 64) and id
/// (letters, digits, `-_.:@`; at most 128).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct EntityPath {
    #[param(pattern = "^[A-Za-z][A-Za-z0-9_.-]{0,63}$", example = "todo")]
    entity_type: String,
    #[param(pattern = "^[A-Za-z0-9_.:@-]{1,128}$", example = "t-1")]
    entity_id: String,
}

/// An entity type (a letter, then letters, digits, `-_.`; at most 64).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct EntityTypePath {
    #[param(pattern = "^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
    entity_type: String,
}

/// `GET /api/reconciliation/snapshot/{entityType}/{entityId}`: one entity with the checksum of
/// its canonical JSON (404 for one that does not exist or, under sync rules, the caller may
/// not read).
#[utoipa::path(
    get,
    path = "/api/reconciliation/snapshot/{entityType}/{entityId}",
    tag = "reconciliation",
    summary = "One entity's snapshot with checksum",
    params(EntityPath, TenantHeader),
    responses(
        (status = 200, description = "The entity", body = EntitySnapshot),
        (status = 404, description = "NOT_FOUND: no such entity (or not readable)", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn entity_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(EntityPath { entity_type, entity_id }): Path<EntityPath>,
) -> Result<Response, ApiError> {
    let key = EntityKey::new(
        auth.tenant.clone(),
        EntityType::new(entity_type).map_err(|e| ApiError::invalid(e.to_string()))?,
        EntityId::new(entity_id).map_err(|e| ApiError::invalid(e.to_string()))?,
    );
    let rec = state.sync.entity(&auth.identity, &key).await?.ok_or_else(|| {
        ApiError::not_found(format!("no entity {}/{}", key.entity_type, key.entity_id))
    })?;
    let wire = WireEntity::from_record(&rec);
    let data = match &wire.crdt {
        Some(b) => json!({ "crdt": b }),
        None => wire.state.clone(),
    };
    Ok(Json(EntitySnapshot {
        snapshot_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: auth.tenant.to_string(),
        entity_type: key.entity_type.to_string(),
        entity_id: key.entity_id.to_string(),
        version: wire.version.to_string(),
        checksum: body_checksum(&data),
        data,
        vector_clock: wire.vector_clock,
        created_at: iso_now(),
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Where the previous page ended (its `nextCursor`).
    pub cursor: Option<String>,
    /// How many at most (clamped to the route's range).
    pub limit: Option<i64>,
}

/// `?limit=` alone (the audit log).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many at most: clamped to 1…1000 (default 100 for `/api/audit`, 50 for the ops page).
    pub limit: Option<i64>,
}

impl LimitQuery {
    /// The limit asked for, or `default`, within 1…1000.
    pub fn or(&self, default: i64) -> i64 {
        self.limit.unwrap_or(default).clamp(1, 1000)
    }
}

/// A chunk of an entity type's collection snapshot. Take `version` from the first chunk and pull
/// a delta from it afterwards: changes made while paging are in that delta.
#[utoipa::path(
    get,
    path = "/api/reconciliation/snapshot/{entityType}",
    tag = "reconciliation",
    summary = "A chunk of an entity type's collection snapshot",
    params(EntityTypePath, PageQuery, TenantHeader),
    responses(
        (status = 200, description = "A chunk; `nextCursor` leads to the next", body = CollectionSnapshot),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn collection_snapshot(
    State(state): State<AppState>,
    auth: Auth,
    Path(EntityTypePath { entity_type }): Path<EntityTypePath>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let entity_type = EntityType::new(entity_type).map_err(|e| ApiError::invalid(e.to_string()))?;
    let limit = q.limit.unwrap_or(500).clamp(1, 1000) as usize;
    let page = state
        .sync
        .collection(&auth.tenant, &auth.identity, &entity_type, q.cursor.as_deref(), limit)
        .await?;
    let items: Vec<CollectionItem> = page
        .records
        .iter()
        .map(|r| {
            let w = WireEntity::from_record(r);
            CollectionItem {
                entity_id: w.entity_id.to_string(),
                version: w.version,
                data: w.state,
                vector_clock: w.vector_clock,
            }
        })
        .collect();
    Ok(Json(CollectionSnapshot {
        snapshot_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: auth.tenant.to_string(),
        entity_type: entity_type.to_string(),
        version: page.version.to_string(),
        checksum: body_checksum(&items),
        items,
        next_cursor: page.next_cursor,
        created_at: iso_now(),
    })
    .into_response())
}
