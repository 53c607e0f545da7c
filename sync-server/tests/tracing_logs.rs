//! Every JSON log line of a request names its trace. Alone in its own test binary: the
//! subscriber is installed for this thread only, and tracing caches what a log statement's
//! subscribers want per process, so another test hitting the same statements on another thread at
//! the same moment could leave this one without some of its lines.

mod common;

use axum::http::Method;
use common::{Backend, TestApp};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn reconcile_body(app: &TestApp, id: &str, client: &str, seq: u64, entity: &str) -> Vec<u8> {
    let ops = vec![app.op(client, seq).create("todo", entity, json!({"n": seq})).build()];
    serde_json::to_vec(&app.reconcile_body(id, client, ops)).unwrap()
}

// ---- logs ------------------------------------------------------------------------------------

/// The log lines a subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Every JSON line the server logs while it handles a request — the HTTP layer's, the
/// reconcile's, the store's (at `debug`, so that there are several) — names the request's
/// trace. The request runs on this thread, where the subscriber is installed.
#[tokio::test(flavor = "current_thread")]
async fn every_log_line_of_a_request_names_its_trace() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let lines = Lines::default();
    let filter = tracing_subscriber::EnvFilter::new("debug");
    let subscriber = sync_server::telemetry::subscriber(lines.clone(), filter, None);
    let guard = tracing::subscriber::set_default(subscriber);
    let body = reconcile_body(&app, "r1", "c1", 1, "a");
    let token = app.token("u");
    let path = "/api/reconciliation/reconcile";
    let r =
        app.send(Method::POST, path, Some(&token), &[("traceparent", CALLER)], Some(body)).await;
    drop(guard);
    r.expect(200);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(logged.len() >= 4, "the request's lines, its reconcile's and its answer: {text}");
    for line in &logged {
        let root = &line["spans"][0];
        assert_eq!(root["name"], "request", "{line}");
        assert_eq!(root["trace_id"], CALLER_TRACE, "{line}");
    }
    let inner: Vec<&str> =
        logged.iter().filter_map(|l| l["span"]["name"].as_str()).collect::<Vec<_>>();
    for name in ["reconcile", "store.transaction", "request"] {
        assert!(inner.contains(&name), "a line from inside {name}: {inner:?}");
    }
}
