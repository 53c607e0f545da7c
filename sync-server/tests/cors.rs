//! CORS (`--cors-allowed-origin`): an app on its own origin calls the REST API from the browser.
//! Preflights are answered for listed origins only; an origin not listed gets no CORS header; the
//! headers the SDK reads are exposed; the WebSocket allowlist follows by default.

mod common;

use axum::http::Method;
use common::{Backend, Response, TestApp};

async fn app(origins: &[&str]) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    TestApp::start_with(Backend::Sqlite, |c| c.cors_allowed_origins = origins).await.unwrap()
}

async fn preflight(app: &TestApp, origin: &str) -> Response {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "authorization,content-type,idempotency-key,x-tenant-id",
        ),
    ];
    app.send(Method::OPTIONS, "/api/reconciliation/reconcile", None, &headers, None).await
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_listed_origin_is_answered_and_sees_the_headers_it_needs() {
    let app = app(&["https://app.example", "http://localhost:*"]).await;
    for origin in ["https://app.example", "http://localhost:5173"] {
        let r = preflight(&app, origin).await;
        assert!(r.status.is_success(), "{origin}: {}", r.status);
        assert_eq!(header(&r, "access-control-allow-origin"), Some(origin));
        let allowed = header(&r, "access-control-allow-headers").unwrap_or("").to_lowercase();
        for h in ["authorization", "content-type", "idempotency-key", "x-tenant-id"] {
            assert!(allowed.contains(h), "{h} not in {allowed}");
        }
        assert!(header(&r, "access-control-allow-methods").unwrap_or("").contains("POST"));
        assert_eq!(header(&r, "access-control-allow-credentials"), None, "tokens are no cookies");
    }
    let token = app.token("alice");
    let r = app
        .send(
            Method::GET,
            "/api/events/poll?lastEventId=0",
            Some(&token),
            &[("origin", "https://app.example")],
            None,
        )
        .await;
    r.expect(200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://app.example"));
    let exposed = header(&r, "access-control-expose-headers").unwrap_or("").to_lowercase();
    for h in [
        "x-request-id",
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
}

#[tokio::test]
async fn an_origin_not_listed_gets_no_cors_headers() {
    let app = app(&["https://app.example", "http://localhost:*"]).await;
    for origin in
        ["https://evil.example", "https://app.example.evil", "http://localhost:abc", "null"]
    {
        let r = preflight(&app, origin).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{origin}");
        let token = app.token("alice");
        let r = app.send(Method::GET, "/health", Some(&token), &[("origin", origin)], None).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{origin}");
    }
    // Without the flag nobody is answered: same-origin pages only, as before.
    let plain = TestApp::start(Backend::Sqlite).await.unwrap();
    let r = preflight(&plain, "http://localhost:5173").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn any_origin_when_asked_and_the_socket_allowlist_follows() {
    let app = app(&["*"]).await;
    let r = preflight(&app, "https://anywhere.example").await;
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));

    let app = self::app(&["https://app.example"]).await;
    let ws = &app.state.limits.ws_allowed_origins;
    assert_eq!(ws, &["https://app.example"], "the CORS origins replace the localhost default");
    let none = TestApp::start(Backend::Sqlite).await.unwrap();
    let ws = &none.state.limits.ws_allowed_origins;
    assert!(ws.iter().any(|o| o == "http://localhost:*"), "no CORS origins: the default: {ws:?}");
    let own = TestApp::start_with(Backend::Sqlite, |c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
        c.ws_allowed_origins = vec!["https://sockets.example".into()];
    })
    .await
    .unwrap();
    assert_eq!(
        own.state.limits.ws_allowed_origins,
        ["https://sockets.example"],
        "set, it is its own"
    );
}
