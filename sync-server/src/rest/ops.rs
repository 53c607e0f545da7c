//! Operational endpoints: `GET /health` (api.md's shape), `GET /metrics` (Prometheus text),
//! `GET /openapi.json`, and the operators' page `GET /ops` with the JSON it reads beyond the
//! bus's own endpoints (`/api/ops/realtime`, `/api/ops/audit`).

use super::extract::{Auth, Query};
use super::openapi::TenantHeader;
use super::snapshots::LimitQuery;
use crate::clock::iso_now;
use crate::error::{ApiError, Refusals};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdk_core::hlc::HlcTimestamp;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A service's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
    /// Redis only: not configured (one process).
    Disabled,
}

/// `GET /health` (api.md's shape).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "healthy", "services": {"database": {"status": "healthy", "backend": "sqlite", "latency": 0.4, "lastCheck": "2026-12-07T10:15:30.000Z"}, "websocket": {"status": "healthy", "activeConnections": 12, "rooms": 3, "presenceEntries": 12, "lastCheck": "2026-12-07T10:15:30.000Z"}, "eventbus": {"status": "healthy", "eventsPerSecond": 0, "lastCheck": "2026-12-07T10:15:30.000Z"}, "reconciliation": {"status": "healthy", "lastCheck": "2026-12-07T10:15:30.000Z"}, "redis": {"status": "disabled", "lastCheck": "2026-12-07T10:15:30.000Z"}}, "timestamp": "2026-12-07T10:15:30.000Z"}))]
pub struct Health {
    /// `healthy`, `degraded` (Redis configured but down: realtime stays within this process) or
    /// `unhealthy` (the database does not answer; then the status is 503).
    status: Status,
    services: Services,
    timestamp: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Services {
    database: DatabaseHealth,
    websocket: WebsocketHealth,
    eventbus: EventbusHealth,
    reconciliation: ServiceHealth,
    redis: RedisHealth,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseHealth {
    status: Status,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// Milliseconds for a trivial query (-1 when it failed).
    latency: f64,
    last_check: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebsocketHealth {
    status: Status,
    /// Sockets of every tenant on this process.
    active_connections: usize,
    rooms: usize,
    presence_entries: usize,
    last_check: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventbusHealth {
    status: Status,
    events_per_second: u64,
    last_check: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    status: Status,
    last_check: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisHealth {
    /// `disabled` without `--redis-url`.
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<f64>,
    /// This process's id in the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    last_check: String,
}

/// `GET /health`: each service's state; 503 when the database does not answer.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Health per service",
    responses(
        (status = 200, description = "Healthy or degraded", body = Health),
        (status = 503, description = "Unhealthy: the database does not answer", body = Health),
    ),
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let now = iso_now();
    let db = state.store.ping().await;
    let db_ok = db.is_ok();
    let latency = db.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0);
    state.metrics.set_gauge("pf2_database_latency_ms", &[], latency);
    let service = |ok: bool| if ok { Status::Healthy } else { Status::Unhealthy };
    // Redis carries only realtime: without it the process degrades, it does not fail.
    let redis = match &state.cluster {
        None => RedisHealth {
            status: Status::Disabled,
            latency: None,
            node: None,
            error: None,
            last_check: now.clone(),
        },
        Some(c) => {
            let (up, latency, error) = c.health();
            RedisHealth {
                status: service(up),
                latency: Some(latency),
                node: Some(c.node_id().to_string()),
                error: (!up).then(|| error.unwrap_or_else(|| "not connected yet".into())),
                last_check: now.clone(),
            }
        }
    };
    let redis_down = state.cluster.as_ref().is_some_and(|c| !c.is_up());
    let overall = match (db_ok, redis_down) {
        (false, _) => Status::Unhealthy,
        (true, true) => Status::Degraded,
        (true, false) => Status::Healthy,
    };
    let body = Health {
        status: overall,
        services: Services {
            database: DatabaseHealth {
                status: service(db_ok),
                backend: state.store.backend().name(),
                latency,
                last_check: now.clone(),
            },
            websocket: WebsocketHealth {
                status: if redis_down { Status::Degraded } else { Status::Healthy },
                active_connections: state.hub.connections(),
                rooms: state.hub.rooms(),
                presence_entries: state.hub.presence_entries(),
                last_check: now.clone(),
            },
            eventbus: EventbusHealth {
                status: service(db_ok),
                events_per_second: 0,
                last_check: now.clone(),
            },
            reconciliation: ServiceHealth { status: service(db_ok), last_check: now.clone() },
            redis,
        },
        timestamp: now,
    };
    let status = if db_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (docs/runbooks/monitoring.md)",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub async fn openapi() -> Json<Value> {
    Json(crate::routes::openapi_document())
}

// ---- the operators' page ----------------------------------------------------------------------

/// `GET /ops`: the operators' page — one self-contained HTML file (no build step, nothing
/// fetched from elsewhere). It asks for an admin token, keeps it in the tab's session storage
/// and reads `/health`, the endpoints below and the event bus's (groups, dead letters).
#[utoipa::path(
    get,
    path = "/ops",
    tag = "operations",
    summary = "The operators' page (HTML; it asks for an admin token)",
    responses((status = 200, description = "The page", body = String, content_type = "text/html")),
)]
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

/// This process's live sockets, rooms and presence of the caller's tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeView {
    /// This process's cluster id (null without Redis): with several processes each answers for
    /// its own sockets.
    node: Option<String>,
    /// Oldest first.
    connections: Vec<ConnectionView>,
    rooms: Vec<RoomView>,
    /// Presence entries by status (`online`, `away`, …).
    #[schema(example = json!({"online": 3, "away": 1}))]
    presence: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    user_id: String,
    client_id: String,
    connected_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomView {
    room_id: String,
    members: usize,
}

/// `GET /api/ops/realtime` (admin): the tenant's live connections, rooms and presence on this
/// process.
#[utoipa::path(
    get,
    path = "/api/ops/realtime",
    tag = "ops",
    summary = "The tenant's live connections, rooms and presence on this process (admin; the ops page)",
    params(TenantHeader),
    responses((status = 200, description = "This process's view", body = RealtimeView), Refusals),
    security(("bearer" = [])),
)]
pub async fn realtime(State(state): State<AppState>, auth: Auth) -> Result<Response, ApiError> {
    auth.require_admin("the ops page")?;
    let view = state.hub.tenant_view(&auth.tenant);
    let connections = view
        .connections
        .iter()
        .map(|(user, client, since)| ConnectionView {
            user_id: user.to_string(),
            client_id: client.to_string(),
            connected_at: HlcTimestamp::new(*since, 0).to_string(),
        })
        .collect();
    let rooms = view
        .rooms
        .iter()
        .map(|(room, members)| RoomView { room_id: room.to_string(), members: *members })
        .collect();
    let presence = view
        .presence
        .iter()
        .filter_map(|(status, n)| match serde_json::to_value(status) {
            Ok(Value::String(s)) => Some((s, *n)),
            _ => None,
        })
        .collect();
    let node = state.cluster.as_ref().map(|c| c.node_id().to_string());
    Ok(Json(RealtimeView { node, connections, rooms, presence }).into_response())
}

/// Recent audit entries and the state of each of the tenant's chains.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpsAudit {
    /// Newest first, as `GET /api/audit` lists them.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
    chains: Vec<ChainView>,
}

/// One audit chain as `sync-server audit verify --tenant` sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainView {
    /// `connection`, `access` or `data`.
    chain: String,
    verified: bool,
    /// Entries verified since the chain's anchor (when verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<u64>,
    /// The head's position.
    head: u64,
    /// Where it breaks (when not verified): "entry 12 (position 2) was altered".
    #[serde(skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
}

/// `GET /api/ops/audit` (admin): the tenant's recent audit entries, newest first, and whether
/// each of its chains verifies (as `sync-server audit verify --tenant` would say).
#[utoipa::path(
    get,
    path = "/api/ops/audit",
    operation_id = "ops_audit",
    tag = "ops",
    summary = "Recent audit entries and whether each of the tenant's audit chains verifies (admin; the ops page)",
    params(LimitQuery, TenantHeader),
    responses((status = 200, description = "Entries and chains", body = OpsAudit), Refusals),
    security(("bearer" = [])),
)]
pub async fn audit(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    auth.require_admin("the ops page")?;
    let t = auth.tenant.as_str();
    let entries = state.store.audit_entries(t, q.or(50)).await?;
    let chains = state
        .store
        .verify_tenant_audit(t)
        .await?
        .into_iter()
        .map(|r| ChainView {
            chain: r.chain,
            verified: r.result.is_ok(),
            entries: r.result.as_ref().ok().copied(),
            head: r.head.seq,
            broken: r.result.err().map(|b| b.to_string()),
        })
        .collect();
    Ok(Json(OpsAudit { entries, chains }).into_response())
}
