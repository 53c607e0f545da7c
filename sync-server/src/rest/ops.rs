//! Operational endpoints: `GET /health` (api.md's shape), `GET /metrics` (Prometheus text),
//! `GET /openapi.json`, and the operators' page `GET /ops` with the JSON it reads beyond the
//! bus's own endpoints (`/api/ops/realtime`, `/api/ops/audit`).

use super::extract::{Auth, Query};
use super::snapshots::PageQuery;
use crate::clock::iso_now;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdk_core::hlc::HlcTimestamp;
use serde_json::{Value, json};

pub async fn health(State(state): State<AppState>) -> Response {
    let now = iso_now();
    let db = state.store.ping().await;
    let db_ok = db.is_ok();
    let latency = db.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0);
    state.metrics.set_gauge("pf2_database_latency_ms", &[], latency);
    let service = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    // Redis carries only realtime: without it the process degrades, it does not fail.
    let redis = match &state.cluster {
        None => json!({ "status": "disabled", "lastCheck": now }),
        Some(c) => {
            let (up, latency, error) = c.health();
            let mut r = json!({
                "status": if up { "healthy" } else { "unhealthy" },
                "latency": latency,
                "node": c.node_id(),
                "lastCheck": now,
            });
            if !up {
                r["error"] = json!(error.unwrap_or_else(|| "not connected yet".into()));
            }
            r
        }
    };
    let redis_down = state.cluster.as_ref().is_some_and(|c| !c.is_up());
    let overall = match (db_ok, redis_down) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let body = json!({
        "status": overall,
        "services": {
            "database": {
                "status": service(db_ok),
                "backend": state.store.backend().name(),
                "latency": latency,
                "lastCheck": now,
            },
            "websocket": {
                "status": if redis_down { "degraded" } else { "healthy" },
                "activeConnections": state.hub.connections(),
                "rooms": state.hub.rooms(),
                "presenceEntries": state.hub.presence_entries(),
                "lastCheck": now,
            },
            "eventbus": {
                "status": service(db_ok),
                "eventsPerSecond": 0,
                "lastCheck": now,
            },
            "reconciliation": { "status": service(db_ok), "lastCheck": now },
            "redis": redis,
        },
        "timestamp": now,
    });
    let status = if db_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub async fn openapi() -> Json<Value> {
    Json(crate::routes::openapi_document())
}

// ---- the operators' page ----------------------------------------------------------------------

/// `GET /ops`: the operators' page — one self-contained HTML file (no build step, nothing
/// fetched from elsewhere). It asks for an admin token, keeps it in the tab's session storage
/// and reads `/health`, the endpoints below and the event bus's (groups, dead letters).
pub async fn ops_page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // Its own script and style only; it talks to this origin only.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ];
    (headers, include_str!("../../ops/index.html")).into_response()
}

/// `GET /api/ops/realtime` (admin): the tenant's live connections, rooms and presence on this
/// process.
pub async fn realtime(State(state): State<AppState>, auth: Auth) -> Result<Response, ApiError> {
    auth.require_admin("the ops page")?;
    let view = state.hub.tenant_view(&auth.tenant);
    let connections: Vec<Value> = view
        .connections
        .iter()
        .map(|(user, client, since)| {
            json!({
                "userId": user.as_str(),
                "clientId": client.as_str(),
                "connectedAt": HlcTimestamp::new(*since, 0).to_string(),
            })
        })
        .collect();
    let rooms: Vec<Value> = view
        .rooms
        .iter()
        .map(|(room, members)| json!({ "roomId": room.as_str(), "members": members }))
        .collect();
    let mut presence = serde_json::Map::new();
    for (status, n) in &view.presence {
        if let Value::String(s) = json!(status) {
            presence.insert(s, json!(n));
        }
    }
    Ok(Json(json!({
        "node": state.cluster.as_ref().map(|c| c.node_id().to_string()),
        "connections": connections,
        "rooms": rooms,
        "presence": presence,
    }))
    .into_response())
}

/// `GET /api/ops/audit` (admin): the tenant's recent audit entries, newest first, and whether
/// each of its chains verifies (as `sync-server audit verify --tenant` would say).
pub async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    auth.require_admin("the ops page")?;
    let t = auth.tenant.as_str();
    let entries = state.store.audit_entries(t, q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    let chains: Vec<Value> = state
        .store
        .verify_tenant_audit(t)
        .await?
        .iter()
        .map(|r| match &r.result {
            Ok(n) => {
                json!({ "chain": r.chain, "verified": true, "entries": n, "head": r.head.seq })
            }
            Err(b) => json!({
                "chain": r.chain, "verified": false, "head": r.head.seq, "broken": b.to_string(),
            }),
        })
        .collect();
    Ok(Json(json!({ "entries": entries, "chains": chains })).into_response())
}
