//! The server over real TCP: `serve` on port 0 with its background workers, a stock HTTP
//! client, graceful shutdown. Plus a property test: arbitrary bytes posted to reconcile never
//! produce a 500 and never change state.

mod common;

use common::{Backend, TestApp};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tcp_runs_workers_and_shuts_down_gracefully() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let served = common::net::serve(app.state.clone()).await;
    let base = served.http("");
    let http = reqwest::Client::new();
    let health: Value =
        http.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    let token = app.token("payer");
    // A Class D transaction is confirmed by the server's own worker; the confirmation event ends
    // a long-poll (no sleeping, no manual processing).
    let r = http
        .post(format!("{base}/api/transactions"))
        .bearer_auth(&token)
        .header("idempotency-key", "tcp-1")
        .json(&json!({"type": "payment.create", "payload": {"amount": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("x-request-id"), "every response carries a request id");
    let id = r.json::<Value>().await.unwrap()["transactionId"].as_str().unwrap().to_string();
    let poll: Value = http
        .get(format!("{base}/api/events/poll?types=transaction.*&wait=20"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(poll["events"][0]["eventType"], "transaction.confirmed");
    assert_eq!(poll["events"][0]["payload"]["transactionId"], id.as_str());
    let status: Value = http
        .get(format!("{base}/api/transactions/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "confirmed");
    served.stop().await.unwrap();
    assert!(http.get(format!("{base}/health")).send().await.is_err(), "the listener is closed");
}

#[test]
fn arbitrary_reconcile_bodies_never_fail_inside_and_change_nothing_when_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::start(Backend::Sqlite)).unwrap();
    let token = app.token("u");
    let tenant = app.tenant.clone();
    let probe = || async { app.state.store.tenant_seq(&app.tenant).await.unwrap().0 };
    let path = "/api/reconciliation/reconcile";
    let valid = valid_body_bytes(&tenant);
    common::post_bodies_never_fail_inside(
        &rt,
        &app,
        path,
        &token,
        valid,
        200,
        &[400, 403, 413, 422],
        probe,
    );
}

/// A valid reconcile body for `tenant`, the seed the mutations start from.
fn valid_body_bytes(tenant: &str) -> Vec<u8> {
    let op = json!({
        "operationId": "op-1", "clientId": "c1", "clientSeq": 1, "tenantId": tenant,
        "entityType": "todo", "entityId": "a", "operationType": "CREATE", "payload": {"x": 1},
        "timestamp": "2026-01-30T12:00:00Z", "vectorClock": {"c1": 1}
    });
    serde_json::to_vec(&json!({"requestId": "r", "clientId": "c1", "operations": [op]})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let mut state = app.state.clone();
    let mut limits = (*state.limits).clone();
    limits.header_read_timeout = std::time::Duration::from_millis(500);
    state.limits = std::sync::Arc::new(limits);
    let served = common::net::serve(state).await;
    let addr = served.addr;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The server hangs up (EOF) instead of waiting forever for the rest of the headers.
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(20), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was never closed");
    // A well-behaved client is still served.
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}
