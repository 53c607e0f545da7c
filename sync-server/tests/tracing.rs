//! Trace context end to end (docs/runbooks/monitoring.md, "Tracing"): a `traceparent` on a REST
//! request or a `/v1/ws` frame is continued — in the response's own `traceparent`, in every JSON
//! log line of the request, in `metadata.traceId` of the events it appends and in the webhook a
//! transaction triggers — and the spans go out over OTLP/HTTP to a real local receiver when the
//! server is started with `--otlp-endpoint`.

mod common;

use axum::http::Method;
use common::net::{self, SAFETY, WsClient};
use common::{Backend, TestApp};
use sdk_core::protocol::{ClientFrame, Codec, PROTOCOL_VERSION, ServerFrame};
use sdk_core::trace::TraceContext;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

on_both_backends!(
    a_request_continues_its_callers_trace_into_its_events,
    a_request_without_a_valid_traceparent_starts_a_trace,
    a_transactions_event_and_webhook_continue_the_creating_requests_trace,
    a_socket_frame_with_a_traceparent_traces_what_it_appends,
);

/// The server's `traceparent` answer.
#[track_caller]
fn answered(r: &common::Response) -> TraceContext {
    let v = r.headers.get("traceparent").expect("a traceparent answer").to_str().unwrap();
    TraceContext::parse(v).expect("a valid traceparent")
}

/// The `metadata.traceId` of every event in the tenant's log.
async fn trace_ids_of_events(app: &TestApp) -> Vec<Option<String>> {
    let events = app.get("/api/events/poll?limit=1000", &app.token("reader")).await.json();
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["traceId"].as_str().map(str::to_string))
        .collect()
}

fn reconcile_body(app: &TestApp, id: &str, client: &str, seq: u64, entity: &str) -> Vec<u8> {
    let ops = vec![app.op(client, seq).create("todo", entity, json!({"n": seq})).build()];
    serde_json::to_vec(&app.reconcile_body(id, client, ops)).unwrap()
}

async fn a_request_continues_its_callers_trace_into_its_events(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let body = reconcile_body(&app, "r1", "c1", 1, "a");
    let path = "/api/reconciliation/reconcile";
    let r =
        app.send(Method::POST, path, Some(&token), &[("traceparent", CALLER)], Some(body)).await;
    r.expect(200);
    let server = answered(&r);
    assert_eq!(server.trace_id.to_string(), CALLER_TRACE, "the caller's trace goes on");
    assert_ne!(server.span_id.to_string(), CALLER_SPAN, "under a span of the server's own");
    assert_eq!(trace_ids_of_events(&app).await, vec![Some(CALLER_TRACE.to_string())]);
    // A published event: the same, also to a live reader that takes it from memory.
    let svc = app.token_for(&app.tenant, "svc", &["service"]);
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let events = json!({"events": [
        {"eventType": "feed.item", "payload": {}},
        {"eventType": "feed.item", "payload": {}, "metadata": {"traceId": "publishers-own"}},
    ]});
    let r = app
        .send(
            Method::POST,
            "/api/events",
            Some(&svc),
            &[("traceparent", other)],
            Some(serde_json::to_vec(&events).unwrap()),
        )
        .await;
    r.expect(201);
    assert_eq!(
        trace_ids_of_events(&app).await,
        vec![
            Some(CALLER_TRACE.into()),
            Some("0af7651916cd43dd8448eb211c80319c".into()),
            Some("publishers-own".into()),
        ],
        "an event that names its own trace keeps it"
    );
}

async fn a_request_without_a_valid_traceparent_starts_a_trace(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let path = "/api/reconciliation/reconcile";
    let mut seen = Vec::new();
    let malformed = ["", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "ff-x"];
    for (i, header) in
        [None, Some(malformed[0]), Some(malformed[1]), Some(malformed[2])].into_iter().enumerate()
    {
        let headers: Vec<(&str, &str)> = header.map(|h| ("traceparent", h)).into_iter().collect();
        let body = reconcile_body(&app, &format!("r{i}"), "c1", i as u64 + 1, &format!("e{i}"));
        let r = app.send(Method::POST, path, Some(&token), &headers, Some(body)).await;
        r.expect(200);
        let server = answered(&r);
        assert_ne!(server.trace_id.to_string(), CALLER_TRACE);
        seen.push(Some(server.trace_id.to_string()));
    }
    assert_eq!(trace_ids_of_events(&app).await, seen, "each request its own new trace");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    // Errors answer with one too (a refused request is traced like any other).
    let r = app.send(Method::GET, "/api/events/poll", None, &[("traceparent", CALLER)], None).await;
    r.expect(401);
    assert_eq!(answered(&r).trace_id.to_string(), CALLER_TRACE);
}

async fn a_transactions_event_and_webhook_continue_the_creating_requests_trace(backend: Backend) {
    use axum::routing::post;
    let app = app!(backend);
    type Deliveries = Arc<Mutex<Vec<axum::http::HeaderMap>>>;
    let received: Deliveries = Arc::default();
    let r2 = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| async move {
            r2.lock().unwrap().push(headers);
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let token = app.token("payer");
    let body = json!({"type": "order.create", "payload": {"sku": "x"}, "callbackUrl": url});
    let r = app
        .send(
            Method::POST,
            "/api/transactions",
            Some(&token),
            &[("idempotency-key", "trace-1"), ("traceparent", CALLER)],
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
    r.expect(202);
    let created = answered(&r);
    let processor = sync_server::workers::AcceptObjects;
    let state = &app.state;
    sync_server::workers::process_pending_in(state, &processor, Some(&app.tenant)).await.unwrap();
    let delivered = sync_server::workers::deliver_callbacks_in(state, Some(&app.tenant));
    assert_eq!(delivered.await.unwrap(), 1);
    assert_eq!(trace_ids_of_events(&app).await, vec![Some(CALLER_TRACE.to_string())]);
    let got = received.lock().unwrap().clone();
    let hook = TraceContext::parse(got[0]["traceparent"].to_str().unwrap()).unwrap();
    assert_eq!(hook.trace_id.to_string(), CALLER_TRACE, "the receiver continues the same trace");
    assert_ne!(hook.span_id, created.span_id, "under the webhook's own span");
}

async fn a_socket_frame_with_a_traceparent_traces_what_it_appends(backend: Backend) {
    use futures_util::SinkExt;
    let app = app!(backend);
    let served = net::serve(app.state.clone()).await;
    let mut ws = WsClient::connect(served.addr, &app.token("u"), "laptop", Codec::Json).await;
    let op: sdk_core::protocol::WireOperation =
        serde_json::from_value(app.op("laptop", 1).create("todo", "x", json!({})).build()).unwrap();
    // A frame as a client writes one: the envelope's `traceparent` beside `v` and `type`.
    let mut frame = serde_json::to_value(ClientFrame::Push {
        batch_id: "b1".into(),
        operations: vec![op.clone()],
    })
    .unwrap();
    frame["v"] = json!(PROTOCOL_VERSION);
    frame["traceparent"] = json!(CALLER);
    let text = tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into());
    ws.ws.send(text).await.unwrap();
    ws.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await;
    // Without one the frame is not traced.
    let second = serde_json::from_value::<sdk_core::protocol::WireOperation>(
        app.op("laptop", 2).create("todo", "y", json!({})).build(),
    )
    .unwrap();
    ws.send(&ClientFrame::Push { batch_id: "b2".into(), operations: vec![second] }).await;
    ws.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await;
    assert_eq!(trace_ids_of_events(&app).await, vec![Some(CALLER_TRACE.to_string()), None]);
}

// ---- OTLP export -----------------------------------------------------------------------------

/// A real OTLP/HTTP receiver: every span of every `POST /v1/traces` (protobuf), by name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<tokio::sync::Notify>,
}

#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    async fn start(&self) -> String {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
                let mut spans = me.spans.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            spans.push(Span {
                                name: s.name,
                                trace_id: hex(&s.trace_id),
                                span_id: hex(&s.span_id),
                                parent: hex(&s.parent_span_id),
                            });
                        }
                    }
                }
                me.arrived.notify_waiters();
                axum::http::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans.lock().unwrap().iter().filter(|s| s.name == name).cloned().collect()
    }
}

/// The real binary with `--otlp-endpoint`: one reconcile under a caller's `traceparent`, then a
/// graceful stop (which flushes the exporter). Its spans arrive linked parent to child:
/// caller → request → reconcile → store transaction → apply, and the fan-out under reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_reconcile_are_exported_over_otlp_linked_parent_to_child() {
    use std::io::BufRead;
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = common::TempDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["serve", "--otlp-endpoint", &endpoint])
        .env("PF2_DATABASE_URL", format!("sqlite://{}/pf2.db", dir.0.display()))
        .env("PF2_LISTEN", "127.0.0.1:0")
        .env("PF2_JWT_SECRET", common::SECRET)
        .env("PF2_DATA_DIR", &dir.0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The address it listens on, from its first log lines.
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(a) = v["fields"]["address"].as_str()
            {
                let _ = addr_tx.send(a.to_string());
            }
        }
    });
    let addr =
        tokio::task::spawn_blocking(move || addr_rx.recv_timeout(SAFETY).unwrap()).await.unwrap();
    let tenant = "otlp";
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["token", "--tenant", tenant, "--user", "u"])
        .env("PF2_JWT_SECRET", common::SECRET)
        .env("PF2_DATA_DIR", &dir.0)
        .output()
        .unwrap();
    let jwt = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let op = json!({
        "operationId": "op-1", "clientId": "c1", "tenantId": tenant, "clientSeq": 1,
        "entityType": "todo", "entityId": "a", "operationType": "CREATE",
        "payload": {"title": "milk"}, "timestamp": "2026-12-07T12:00:00Z", "vectorClock": {"c1": 1}
    });
    let body = json!({"requestId": "r1", "clientId": "c1", "tenantId": tenant, "operations": [op]});
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/reconciliation/reconcile"))
        .bearer_auth(&jwt)
        .header("traceparent", CALLER)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let server = TraceContext::parse(r.headers()["traceparent"].to_str().unwrap()).unwrap();
    // A graceful stop flushes what the exporter holds.
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "{exited:?}");
    let wanted = ["request", "reconcile", "store.transaction", "apply", "fanout"];
    let arrived = receiver.arrived.notified();
    if wanted.iter().any(|n| receiver.named(n).is_empty()) {
        let _ = tokio::time::timeout(SAFETY, arrived).await;
    }
    let one = |name: &str| {
        let s = receiver.named(name);
        assert_eq!(s.len(), 1, "one {name} span: {:?}", receiver.spans.lock().unwrap());
        s[0].clone()
    };
    let (request, reconcile, store_tx, apply, fanout) =
        (one("request"), one("reconcile"), one("store.transaction"), one("apply"), one("fanout"));
    for s in [&request, &reconcile, &store_tx, &apply, &fanout] {
        assert_eq!(s.trace_id, CALLER_TRACE, "{s:?}");
    }
    assert_eq!(request.parent, CALLER_SPAN, "the request's parent is the caller's span");
    assert_eq!(request.span_id, server.span_id.to_string(), "the answer names the request span");
    assert_eq!(reconcile.parent, request.span_id);
    assert_eq!(store_tx.parent, reconcile.span_id);
    assert_eq!(apply.parent, store_tx.span_id);
    assert_eq!(fanout.parent, reconcile.span_id);
}
