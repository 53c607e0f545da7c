//! Operational endpoints: `GET /health` (api.md's shape), `GET /metrics` (Prometheus text) and
//! `GET /openapi.json`.

use crate::api::iso_now;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub async fn health(State(state): State<AppState>) -> Response {
    let now = iso_now();
    let db = state.store.ping().await;
    let db_ok = db.is_ok();
    let latency = db.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0);
    state.metrics.set_gauge("pf2_database_latency_ms", &[], latency);
    let service = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let body = json!({
        "status": if db_ok { "healthy" } else { "unhealthy" },
        "services": {
            "database": {
                "status": service(db_ok),
                "backend": state.store.backend().name(),
                "latency": latency,
                "lastCheck": now,
            },
                        "websocket": {
                "status": "healthy",
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
            "redis": { "status": "disabled", "lastCheck": now },
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
    Json(openapi_document())
}

fn op(summary: &str, tag: &str, auth: bool) -> Value {
    let mut o = json!({
        "summary": summary,
        "tags": [tag],
        "responses": {
            "200": { "description": "OK" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "429": { "$ref": "#/components/responses/Error" }
        }
    });
    if auth {
        o["security"] = json!([{ "bearer": [] }]);
        o["parameters"] = json!([{ "$ref": "#/components/parameters/TenantHeader" }]);
    }
    o
}

/// The OpenAPI 3.1 description of every route (`app` serves exactly these; a test checks it).
pub fn openapi_document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "PF-2 Sync server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Offline-first sync: reconcile, snapshots, deltas, events, conflicts, Class D transactions. Errors are {\"error\": {\"code\", \"message\"}} with api.md's codes."
        },
        "paths": {
            "/api/reconciliation/reconcile": { "post": op("Apply a batch of operations idempotently", "reconciliation", true) },
            "/api/reconciliation/delta": { "get": op("Entities changed since a version (the delta frame)", "reconciliation", true) },
            "/api/reconciliation/snapshot/{entityType}/{entityId}": { "get": op("One entity's snapshot with checksum", "reconciliation", true) },
            "/api/reconciliation/snapshot/{entityType}": { "get": op("A chunk of an entity type's collection snapshot", "reconciliation", true) },
            "/api/reconciliation/conflicts": { "get": op("Conflicts awaiting (or after) manual resolution", "conflicts", true) },
            "/api/reconciliation/conflicts/{conflictId}/resolve": { "post": op("Resolve a conflict (audited)", "conflicts", true) },
            "/api/events/poll": { "get": op("Long-poll the tenant's event log", "events", true) },
            "/api/transactions": { "post": op("Create a Class D transaction (Idempotency-Key required); 202", "transactions", true) },
            "/api/transactions/{transactionId}": { "get": op("A transaction's status", "transactions", true) },
                        "/api/audit": { "get": op("The tenant's audit log (admin)", "audit", true) },
            "/v1/ws": { "get": op("The native WebSocket protocol (docs/protocol.md); token by ?token= or the first frame", "realtime", false) },
            "/health": { "get": op("Health per service", "operations", false) },
            "/metrics": { "get": op("Prometheus metrics", "operations", false) },
            "/openapi.json": { "get": op("This document", "operations", false) }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "parameters": {
                "TenantHeader": { "name": "X-Tenant-ID", "in": "header", "required": false, "schema": { "type": "string" },
                  "description": "Must equal the token's tenant (super_admin with X-Justification excepted, audited)" }
            },
            "responses": {
                "Error": { "description": "An error", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } } } } }
            }
        }
    })
}
