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
            "/api/documents/{documentId}/snapshot": { "get": op("A collaborative document's Automerge save, heads, checksum and stored size", "documents", true) },
            "/api/documents/{documentId}/sync": { "post": op("Automerge's sync protocol over REST (long-polling clients): {clientId, message?} -> {messages}", "documents", true) },
            "/api/events/poll": { "get": op("Long-poll the tenant's event log (broadcast: the reader keeps its position)", "events", true) },
            "/api/events": { "post": op("Publish events durably, idempotent by eventId (service role); 201", "events", true) },
            "/api/events/subscriptions": { "get": op("Durable subscriptions and consumer groups with lag", "events", true) },
            "/api/events/subscriptions/{name}": {
                "put": op("Create or change a subscription (kind durable|group, filters, delivery settings)", "events", true),
                "get": op("A subscription's settings, position and lag", "events", true),
                "delete": op("Delete a subscription and its pending deliveries", "events", true)
            },
            "/api/events/subscriptions/{name}/poll": { "get": op("A durable subscription's events after its position", "events", true) },
            "/api/events/subscriptions/{name}/ack": { "post": op("Advance a durable position, or acknowledge group deliveries", "events", true) },
            "/api/events/subscriptions/{name}/claim": { "post": op("Lease a consumer group's events (long-poll)", "events", true) },
            "/api/events/subscriptions/{name}/nack": { "post": op("A delivery failed: retry with backoff or dead-letter", "events", true) },
            "/api/events/dlq": { "get": op("Dead letters by criteria", "dlq", true) },
            "/api/events/dlq/{id}": {
                "get": op("One dead letter", "dlq", true),
                "patch": op("Edit a dead letter's payload (audited)", "dlq", true),
                "delete": op("Delete a dead letter (audited)", "dlq", true)
            },
            "/api/events/dlq/{id}/reprocess": { "post": op("Send a dead letter back to its group (audited)", "dlq", true) },
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
