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

const EV: &str = "events";

/// One route: where, which method, what it does, and its handler.
#[derive(Debug)]
pub struct Route {
    /// The router's path (`{snake_case}` parameters).
    pub path: &'static str,
    pub method: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// Needs a bearer token.
    pub auth: bool,
    pub handler: MethodRouter<AppState>,
}

fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    let auth = !matches!(tag, "operations" | "realtime");
    Route { path, method, summary, tag, auth, handler }
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
    const REC: &str = "reconciliation";
    vec![
        route(
            "post",
            "/api/reconciliation/reconcile",
            "Apply a batch of operations idempotently",
            REC,
            post(reconcile::reconcile),
        ),
        route(
            "get",
            "/api/reconciliation/delta",
            "Entities changed since a version (the delta frame; under sync rules only what the caller may read, with channels/held as JSON arrays)",
            REC,
            get(reconcile::delta),
        ),
        route(
            "get",
            "/api/reconciliation/snapshot/{entity_type}/{entity_id}",
            "One entity's snapshot with checksum",
            REC,
            get(snapshots::entity_snapshot),
        ),
        route(
            "get",
            "/api/reconciliation/snapshot/{entity_type}",
            "A chunk of an entity type's collection snapshot",
            REC,
            get(snapshots::collection_snapshot),
        ),
        route(
            "get",
            "/api/reconciliation/conflicts",
            "Conflicts awaiting (or after) manual resolution",
            "conflicts",
            get(conflicts::list_conflicts),
        ),
        route(
            "post",
            "/api/reconciliation/conflicts/{conflict_id}/resolve",
            "Resolve a conflict (audited)",
            "conflicts",
            post(conflicts::resolve_conflict),
        ),
        route(
            "get",
            "/api/documents/{document_id}/snapshot",
            "A collaborative document's Automerge save, heads, checksum and stored size",
            "documents",
            get(documents::document_snapshot),
        ),
        route(
            "post",
            "/api/documents/{document_id}/sync",
            "Automerge's sync protocol over REST (long-polling clients): {clientId, message?} -> {messages}",
            "documents",
            post(documents::document_sync),
        ),
        route(
            "post",
            "/api/documents/sync",
            "Several documents' sync messages in one request (long-polling clients): {clientId, documents: [{documentId, message?}]} -> {documents: [{documentId, messages, version, error?}]}",
            "documents",
            post(documents::documents_sync),
        ),
    ]
}

/// The event log and the bus.
fn event_routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/events/poll",
            "Long-poll the tenant's event log (broadcast: the reader keeps its position)",
            EV,
            get(events::poll),
        ),
        route(
            "post",
            "/api/events",
            "Publish events durably, idempotent by eventId (service role); 201",
            EV,
            post(bus::publish),
        ),
        route(
            "get",
            "/api/events/subscriptions",
            "Durable subscriptions and consumer groups with lag",
            EV,
            get(bus::list_subscriptions),
        ),
        route(
            "get",
            "/api/events/subscriptions/{name}",
            "A subscription's settings, position and lag",
            EV,
            get(bus::get_subscription),
        ),
        route(
            "put",
            "/api/events/subscriptions/{name}",
            "Create or change a subscription (kind durable|group, filters, delivery settings)",
            EV,
            put(bus::put_subscription),
        ),
        route(
            "delete",
            "/api/events/subscriptions/{name}",
            "Delete a subscription and its pending deliveries",
            EV,
            delete(bus::delete_subscription),
        ),
        route(
            "get",
            "/api/events/subscriptions/{name}/poll",
            "A durable subscription's events after its position",
            EV,
            get(bus::poll_subscription),
        ),
        route(
            "post",
            "/api/events/subscriptions/{name}/ack",
            "Advance a durable position, or acknowledge group deliveries",
            EV,
            post(bus::ack),
        ),
        route(
            "post",
            "/api/events/subscriptions/{name}/claim",
            "Lease a consumer group's events (long-poll)",
            EV,
            post(bus::claim),
        ),
        route(
            "post",
            "/api/events/subscriptions/{name}/nack",
            "A delivery failed: retry with backoff or dead-letter",
            EV,
            post(bus::nack),
        ),
    ]
}

/// The dead-letter queue.
fn dlq_routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/events/dlq",
            "Dead letters by criteria",
            "dlq",
            get(bus::list_dead_letters),
        ),
        route("get", "/api/events/dlq/{id}", "One dead letter", "dlq", get(bus::get_dead_letter)),
        route(
            "patch",
            "/api/events/dlq/{id}",
            "Edit a dead letter's payload (audited)",
            "dlq",
            patch(bus::edit_dead_letter),
        ),
        route(
            "delete",
            "/api/events/dlq/{id}",
            "Delete a dead letter (audited)",
            "dlq",
            delete(bus::delete_dead_letter),
        ),
        route(
            "post",
            "/api/events/dlq/{id}/reprocess",
            "Send a dead letter back to its group (audited)",
            "dlq",
            post(bus::reprocess_dead_letter),
        ),
    ]
}

/// Transactions, audit, the socket endpoint and operations.
fn other_routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/api/transactions",
            "Create a Class D transaction (Idempotency-Key required); 202",
            "transactions",
            post(transactions::create_transaction),
        ),
        route(
            "get",
            "/api/transactions/{transaction_id}",
            "A transaction's status",
            "transactions",
            get(transactions::get_transaction),
        ),
        route("get", "/api/audit", "The tenant's audit log (admin)", "audit", get(audit::audit)),
        route(
            "get",
            "/api/ops/realtime",
            "The tenant's live connections, rooms and presence on this process (admin; the ops page)",
            "ops",
            get(ops::realtime),
        ),
        route(
            "get",
            "/api/ops/audit",
            "Recent audit entries and whether each of the tenant's audit chains verifies (admin; the ops page)",
            "ops",
            get(ops::audit),
        ),
        route(
            "get",
            "/v1/ws",
            "The native WebSocket protocol (docs/protocol.md); token by ?token= or the first frame",
            "realtime",
            get(native::upgrade),
        ),
        route("get", "/health", "Health per service", "operations", get(ops::health)),
        route("get", "/metrics", "Prometheus metrics", "operations", get(ops::metrics)),
        route("get", "/openapi.json", "This document", "operations", get(ops::openapi)),
        route(
            "get",
            "/ops",
            "The operators' page (HTML; it asks for an admin token)",
            "operations",
            get(ops::ops_page),
        ),
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

/// What the document says of a route whose handler is not annotated yet: its summary, the
/// common refusals, and the tag `not-yet-annotated` (the schemathesis check leaves these out).
fn operation(r: &Route) -> Value {
    let mut o = json!({
        "summary": r.summary,
        "tags": [r.tag, "not-yet-annotated"],
        "responses": {
            "200": { "description": "OK" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "429": { "$ref": "#/components/responses/Error" }
        }
    });
    if r.auth {
        o["security"] = json!([{ "bearer": [] }]);
        o["parameters"] = json!([{ "$ref": "#/components/parameters/TenantHeader" }]);
    }
    o
}

/// The operations documented by their handlers' own annotations and types (`#[utoipa::path]`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
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
        snapshots::entity_snapshot,
        snapshots::collection_snapshot,
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Routes still described by [`operation`] (a summary and the common refusals) while their
/// handlers gain `#[utoipa::path]` annotations; the test below keeps this list exact, and it
/// shrinks to nothing.
#[cfg(test)]
const NOT_YET_ANNOTATED: &[&str] = &[
    "post /api/reconciliation/reconcile",
    "get /api/reconciliation/delta",
    "get /api/reconciliation/conflicts",
    "post /api/reconciliation/conflicts/{conflict_id}/resolve",
    "get /api/documents/{document_id}/snapshot",
    "post /api/documents/{document_id}/sync",
    "post /api/documents/sync",
    "get /api/events/poll",
    "post /api/events",
    "get /v1/ws",
];

/// The OpenAPI 3.1 description of every route in [`table`]: the annotated operations as
/// their handlers declare them, the others from [`operation`].
pub fn openapi_document() -> Value {
    use utoipa::OpenApi;
    let annotated = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let mut paths = annotated["paths"].as_object().cloned().unwrap_or_default();
    for r in table() {
        let entry = paths.entry(openapi_path(r.path)).or_insert_with(|| json!({}));
        if entry.get(r.method).is_none() {
            entry[r.method] = operation(&r);
        }
    }
    let mut components = annotated["components"].clone();
    components["parameters"] = json!({
        "TenantHeader": { "name": "X-Tenant-ID", "in": "header", "required": false, "schema": { "type": "string" },
          "description": "Must equal the token's tenant (super_admin with X-Justification excepted, audited)" }
    });
    components["responses"] = json!({
        "Error": { "description": "An error", "content": { "application/json": { "schema": {
            "type": "object", "required": ["error"],
            "properties": { "error": { "type": "object", "required": ["code", "message"],
                "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } } } } }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "PF-2 Sync server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Offline-first sync: reconcile, snapshots, deltas, events, conflicts, Class D transactions. Errors are {\"error\": {\"code\", \"message\"}} with api.md's codes."
        },
        "paths": paths,
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route is documented by its handler's annotation, or still listed as not annotated —
    /// never both, never neither, and nothing is documented that is not served.
    #[test]
    fn every_route_is_documented_by_its_handler_or_listed_as_pending() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let served: Vec<(String, String)> =
            table().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        for (method, path) in &served {
            let annotated = doc["paths"][openapi_path(path)].get(method.as_str()).is_some();
            let pending = NOT_YET_ANNOTATED.contains(&format!("{method} {path}").as_str());
            assert!(
                annotated != pending,
                "{method} {path}: annotated {annotated}, listed {pending}"
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let served = served.iter().any(|(m, p)| m == method && &openapi_path(p) == path);
                assert!(served, "{method} {path} is documented but not served");
            }
        }
        for pending in NOT_YET_ANNOTATED {
            let (m, p) = pending.split_once(' ').unwrap();
            assert!(served.iter().any(|(sm, sp)| sm == m && sp == p), "{pending} is not served");
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
