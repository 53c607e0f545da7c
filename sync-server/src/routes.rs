//! The one route table: the router ([`crate::app`]), the OpenAPI document (`/openapi.json`) and
//! the tests all read [`table`], so a route cannot be served undocumented or documented unserved.

use crate::rest::openapi::BearerScheme;
use crate::rest::{
    audit, bus, conflicts, documents, events, ops, reconcile, snapshots, transactions,
};
use crate::socket::native;
use crate::state::AppState;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use serde_json::{Value, json};

/// One route: where, which method, and its handler (whose `#[utoipa::path]` annotation says
/// what it does, in the OpenAPI document).
#[derive(Debug)]
pub struct Route {
    /// The router's path (`{snake_case}` parameters).
    pub path: &'static str,
    pub method: &'static str,
    pub handler: MethodRouter<AppState>,
}

fn route(method: &'static str, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route { path, method, handler }
}

/// Every route the server answers.
pub fn table() -> Vec<Route> {
    let mut routes = sync_routes();
    routes.extend(event_routes());
    routes.extend(dlq_routes());
    routes.extend(other_routes());
    routes
}

/// Reconciliation, snapshots, conflicts and documents.
fn sync_routes() -> Vec<Route> {
    vec![
        route("post", "/api/reconciliation/reconcile", post(reconcile::reconcile)),
        route("get", "/api/reconciliation/delta", get(reconcile::delta)),
        route(
            "get",
            "/api/reconciliation/snapshot/{entity_type}/{entity_id}",
            get(snapshots::entity_snapshot),
        ),
        route(
            "get",
            "/api/reconciliation/snapshot/{entity_type}",
            get(snapshots::collection_snapshot),
        ),
        route("get", "/api/reconciliation/conflicts", get(conflicts::list_conflicts)),
        route(
            "post",
            "/api/reconciliation/conflicts/{conflict_id}/resolve",
            post(conflicts::resolve_conflict),
        ),
        route("get", "/api/documents/{document_id}/snapshot", get(documents::document_snapshot)),
        route("post", "/api/documents/{document_id}/sync", post(documents::document_sync)),
        route("post", "/api/documents/sync", post(documents::documents_sync)),
    ]
}

/// The event log and the bus.
fn event_routes() -> Vec<Route> {
    vec![
        route("get", "/api/events/poll", get(events::poll)),
        route("post", "/api/events", post(bus::publish)),
        route("get", "/api/events/subscriptions", get(bus::list_subscriptions)),
        route("get", "/api/events/subscriptions/{name}", get(bus::get_subscription)),
        route("put", "/api/events/subscriptions/{name}", put(bus::put_subscription)),
        route("delete", "/api/events/subscriptions/{name}", delete(bus::delete_subscription)),
        route("get", "/api/events/subscriptions/{name}/poll", get(bus::poll_subscription)),
        route("post", "/api/events/subscriptions/{name}/ack", post(bus::ack)),
        route("post", "/api/events/subscriptions/{name}/claim", post(bus::claim)),
        route("post", "/api/events/subscriptions/{name}/nack", post(bus::nack)),
    ]
}

/// The dead-letter queue.
fn dlq_routes() -> Vec<Route> {
    vec![
        route("get", "/api/events/dlq", get(bus::list_dead_letters)),
        route("get", "/api/events/dlq/{id}", get(bus::get_dead_letter)),
        route("patch", "/api/events/dlq/{id}", patch(bus::edit_dead_letter)),
        route("delete", "/api/events/dlq/{id}", delete(bus::delete_dead_letter)),
        route("post", "/api/events/dlq/{id}/reprocess", post(bus::reprocess_dead_letter)),
    ]
}

/// Transactions, audit, the socket endpoint and operations.
fn other_routes() -> Vec<Route> {
    vec![
        route("post", "/api/transactions", post(transactions::create_transaction)),
        route("get", "/api/transactions/{transaction_id}", get(transactions::get_transaction)),
        route("get", "/api/audit", get(audit::audit)),
        route("get", "/api/ops/realtime", get(ops::realtime)),
        route("get", "/api/ops/audit", get(ops::audit)),
        route("get", "/v1/ws", get(native::upgrade)),
        route("get", "/health", get(ops::health)),
        route("get", "/metrics", get(ops::metrics)),
        route("get", "/openapi.json", get(ops::openapi)),
        route("get", "/ops", get(ops::ops_page)),
    ]
}

/// A router path as OpenAPI writes it: `{entity_type}` → `{entityType}`.
pub fn openapi_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let (mut in_param, mut upper) = (false, false);
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => in_param = false,
            '_' if in_param => {
                upper = true;
                continue;
            }
            _ => {}
        }
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = false;
    }
    out
}

/// The operations documented by their handlers' own annotations and types (`#[utoipa::path]`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        reconcile::reconcile,
        reconcile::delta,
        snapshots::entity_snapshot,
        snapshots::collection_snapshot,
        conflicts::list_conflicts,
        conflicts::resolve_conflict,
        documents::document_snapshot,
        documents::document_sync,
        documents::documents_sync,
        events::poll,
        bus::publish,
        native::upgrade,
        transactions::create_transaction,
        transactions::get_transaction,
        audit::audit,
        ops::realtime,
        ops::audit,
        ops::health,
        ops::metrics,
        ops::openapi,
        ops::ops_page,
        bus::list_dead_letters,
        bus::get_dead_letter,
        bus::edit_dead_letter,
        bus::reprocess_dead_letter,
        bus::delete_dead_letter,
        bus::list_subscriptions,
        bus::get_subscription,
        bus::put_subscription,
        bus::delete_subscription,
        bus::poll_subscription,
        bus::ack,
        bus::claim,
        bus::nack,
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The OpenAPI 3.1 description of every route in [`table`], from the handlers' annotations
/// (the test below checks that every route has one).
pub fn openapi_document() -> Value {
    use utoipa::OpenApi;
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "PF-2 Sync server",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Offline-first sync: reconcile, snapshots, deltas, events, conflicts, Class D transactions. Errors are {\"error\": {\"code\", \"message\"}} with api.md's codes."
    });
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is documented by its handler's annotation, and nothing is documented that
    /// is not served: a route added without `#[utoipa::path]` (or left out of [`ApiDoc`]) fails.
    #[test]
    fn every_route_is_documented_by_its_handler() {
        let doc = openapi_document();
        let served: Vec<(String, String)> =
            table().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        for (method, path) in &served {
            let op = &doc["paths"][openapi_path(path)][method.as_str()];
            assert!(op.is_object(), "{method} {path} has no annotation");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let served = served.iter().any(|(m, p)| m == method && &openapi_path(p) == path);
                assert!(served, "{method} {path} is documented but not served");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (method, path) in &served {
            assert!(seen.insert((method, path)), "{method} {path} is in the table twice");
        }
    }

    #[test]
    fn router_paths_become_openapi_paths() {
        assert_eq!(
            openapi_path("/api/reconciliation/snapshot/{entity_type}/{entity_id}"),
            "/api/reconciliation/snapshot/{entityType}/{entityId}"
        );
        assert_eq!(openapi_path("/api/events/dlq/{id}"), "/api/events/dlq/{id}");
        assert_eq!(openapi_path("/api/some_thing"), "/api/some_thing");
    }
}
