//! Operational endpoints: `GET /health` (api.md's shape), `GET /metrics` (Prometheus text) and
//! `GET /openapi.json`.

use crate::clock::iso_now;
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
    Json(crate::routes::openapi_document())
}
