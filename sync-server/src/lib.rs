//! # sync-server — the PF-2 Sync server
//!
//! A thin axum + sqlx shell around sdk-core's apply engine. It applies batched idempotent
//! operations (`POST /api/reconciliation/reconcile`), serves snapshots and deltas, the tenant's
//! event log by long-polling, manual conflict resolution, Class D transactions with idempotency
//! keys and signed webhooks, health, metrics and an OpenAPI document. Storage is an embedded
//! SQLite file by default, PostgreSQL when one machine is not enough.
//!
//! ## Layout
//!
//! | module | what lives there |
//! | --- | --- |
//! Bottom to top; each layer imports only what is below it (ARCHITECTURE.md):
//!
//! | layer | modules |
//! | --- | --- |
//! | plain values | [`clock`], [`limits`], [`metrics`], [`ratelimit`], [`notifier`], [`auth`] (JWT) |
//! | storage | [`store`] (all SQL, its own error type), [`error`] (API codes) |
//! | realtime primitives | [`realtime`]: outbound frames, mailbox, hub, fan-out envelope |
//! | services | [`feed`], [`sync`], [`bus`], [`documents`], [`rooms`], [`audit`], [`cluster`] (Redis) |
//! | composition root | [`state`] (builds the services), [`config`], [`workers`] |
//! | transports | [`rest`] (by resource), [`socket`] (one session; `/v1/ws`, Socket.IO), [`routes`] |
//!
//! ## Example
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use sync_server::{config::Config, serve};
//! let config = Config::for_tests("sqlite://./data/example.db");
//! let state = config.build().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod documents;
pub mod error;
pub mod feed;
pub mod limits;
pub mod metrics;
pub mod notifier;
pub mod ratelimit;
pub mod realtime;
pub mod rest;
pub mod rooms;
pub mod routes;
pub mod socket;
pub mod state;
pub mod store;
pub mod sync;
pub mod tail;
pub mod telemetry;
pub mod trace;
pub mod workers;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use sdk_core::trace::TraceContext;
use state::AppState;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tower_http::LatencyUnit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

/// The HTTP application: every route, with body limits, request ids, tracing and metrics.
pub fn app(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
    let cors = cors_layer(&state.limits.cors_allowed_origins);
    let router = Router::new();
    // Static files (the demo) only where no API route matched; unknown `/api/…` paths still get
    // the JSON 404.
    let router = match &state.limits.static_dir {
        Some(dir) => router
            .route(
                "/api/{*rest}",
                axum::routing::any(|| async { error::ApiError::not_found("no such route") }),
            )
            .fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router.fallback(|| async { error::ApiError::not_found("no such route") }),
    };
    let router =
        routes::table().into_iter().fold(router, |r, route| r.route(route.path, route.handler));
    router
        .layer(socket::socketio::layer(state.clone()))
        .layer(middleware::from_fn(rest::extract::quota_headers))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let (cx, caller) = req
                        .extensions()
                        .get::<RequestTrace>()
                        .map(|t| (t.cx, t.caller))
                        .unwrap_or_else(|| (trace::new_trace(), None));
                    let span = tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id,
                        trace_id = %cx.trace_id,
                        span_id = %cx.span_id,
                    );
                    telemetry::adopt(&span, &cx, caller.as_ref());
                    span
                })
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(middleware::from_fn(trace_context))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(tower::util::option_layer(cors))
        .with_state(state)
}

/// CORS for the listed origins (`--cors-allowed-origin`; none listed: no layer, no CORS
/// headers). Preflights are answered here. Tokens travel in `Authorization`, never in cookies,
/// so credentials are never allowed, and `*` is safe. An origin not listed gets no CORS header:
/// the browser keeps the answer from its page.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let origins = origins.to_vec();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| socket::origin_allowed(&origins, Some(o), None))
        })
    };
    let name = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name("idempotency-key"),
                name("x-tenant-id"),
                name("x-justification"),
                name("x-request-id"),
                name(trace::TRACEPARENT),
            ])
            .expose_headers([
                name("x-request-id"),
                name(trace::TRACEPARENT),
                header::RETRY_AFTER,
                name("ratelimit-limit"),
                name("ratelimit-remaining"),
                name("ratelimit-reset"),
                name("ratelimit-policy"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// W3C Trace Context for every request: a valid `traceparent` header is continued (the server's
/// span is its child), anything else starts a new trace. The request's work runs in that context
/// (its log lines and the events it appends carry the trace id; `crate::trace`), and the answer
/// names the server's span in a `traceparent` header of its own.
async fn trace_context(mut req: Request, next: Next) -> Response {
    let caller = trace::caller(req.headers().get(trace::TRACEPARENT).and_then(|v| v.to_str().ok()));
    let cx = trace::continue_or_start(caller.as_ref());
    req.extensions_mut().insert(RequestTrace { cx, caller });
    let mut resp = trace::scope(cx, next.run(req)).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&cx.to_string()) {
        resp.headers_mut().insert(trace::TRACEPARENT, v);
    }
    resp
}

/// A request's trace context (the server's span) and its caller's, if it named one.
#[derive(Debug, Clone, Copy)]
struct RequestTrace {
    cx: TraceContext,
    caller: Option<TraceContext>,
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    state.metrics.inc("pf2_http_requests_total", &[("route", &route), ("status", &status)]);
    state.metrics.observe("pf2_http_request_duration_ms", &[("route", &route)], start.elapsed());
    resp
}

/// Serve `state` on `listener` until `shutdown` resolves, with the background workers (Class D
/// processing, webhooks, retention, presence sweeps) running alongside.
///
/// Connections are served by hyper's HTTP/1.1 server directly (not `axum::serve`) so that a
/// client that does not finish its request headers within `header_read_timeout` is dropped
/// (slowloris), and so that an upgraded `/v1/ws` connection is a plain TCP stream its session can
/// take to its own runtime (`socket::upgrade`). On shutdown the listener closes, in-flight
/// requests get up to 10 s to finish, then the workers stop.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let processor: Arc<dyn workers::TransactionProcessor> = Arc::new(workers::AcceptObjects);
    let mut worker_stop = stop_rx.clone();
    let worker = tokio::spawn(workers::run(state.clone(), processor, async move {
        let _ = worker_stop.wait_for(|s| *s).await;
    }));
    let mut cluster_stop = stop_rx.clone();
    let cluster = match state.cluster.clone() {
        Some(c) => tokio::spawn(cluster::run(c, state.local_node(), async move {
            let _ = cluster_stop.wait_for(|s| *s).await;
        })),
        None => tokio::spawn(async {}),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(state.limits.header_read_timeout);
    let router = app(state);
    // Every connection holds a receiver: `serving.closed()` resolves when the last one is done.
    let (serving, _) = tokio::sync::watch::channel(());
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
            req
        });
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let (alive, mut stopping) = (serving.subscribe(), stopping.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { drop(stopping.wait_for(|s| *s).await) } => {
                    // Finish the request in flight, then close (upgraded sockets are not ours).
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(alive);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), serving.closed()).await;
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = cluster.await;
    Ok(())
}
