//! The operators' surface behind `/ops`: the page itself and the JSON it reads beyond the bus's
//! own endpoints, on both backends. The page is driven in Chromium by js/test/ops.test.mjs.

mod common;

use common::net::{self, WsClient};
use common::{Backend, TestApp};
use sdk_core::ids::RoomId;
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use sync_server::store::AuditEntry;

on_both_backends!(
    the_ops_data_needs_the_admin_role_and_reveals_nothing_without_it,
    the_realtime_view_shows_this_tenants_sockets_rooms_and_presence_only,
    the_audit_view_says_whether_each_chain_verifies,
);

fn admin(app: &TestApp) -> String {
    app.token_for(&app.tenant, "ops-alice", &["admin"])
}

async fn the_ops_data_needs_the_admin_role_and_reveals_nothing_without_it(backend: Backend) {
    let app = app!(backend);
    for path in ["/api/ops/realtime", "/api/ops/audit"] {
        let none = app.send(axum::http::Method::GET, path, None, &[], None).await;
        none.expect(401);
        for refused in [app.token("ann"), app.token_for(&app.tenant, "svc", &["service"])] {
            let r = app.get(path, &refused).await;
            r.expect(403);
            assert_eq!(r.error_code(), "AUTHZ_FAILED");
            assert!(!String::from_utf8_lossy(&r.body).contains("connections"));
        }
        app.get(path, &admin(&app)).await.expect(200);
        // Another tenant's admin sees its own tenant, never this one.
        let other = app.token_for("someone-else", "boss", &["admin"]);
        let r = app.get(path, &other).await;
        r.expect(200);
        assert!(!String::from_utf8_lossy(&r.body).contains(&app.tenant));
    }
}

async fn the_realtime_view_shows_this_tenants_sockets_rooms_and_presence_only(backend: Backend) {
    let app = app!(backend);
    let served = net::serve(app.state.clone()).await;
    let mut ann =
        WsClient::connect(served.addr, &app.token("ann"), "ann-laptop", Codec::Json).await;
    let room = RoomId::new("standup").unwrap();
    ann.send(&ClientFrame::JoinRoom { room_id: room.clone() }).await;
    ann.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    let online = sdk_core::protocol::PresenceStatus::Online;
    ann.send(&ClientFrame::Presence { status: online, metadata: None, room_id: None }).await;
    // Frames are handled in order: the pong says the presence before it is in.
    ann.send(&ClientFrame::Ping { nonce: 7 }).await;
    ann.recv_until(|f| matches!(f, ServerFrame::Pong { nonce: 7 })).await;
    let stranger = app.token_for("other-tenant", "eve", &[]);
    let _eve = WsClient::connect(served.addr, &stranger, "eve-phone", Codec::Json).await;
    let v = app.get("/api/ops/realtime", &admin(&app)).await.json();
    let clients: Vec<&str> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientId"].as_str().unwrap())
        .collect();
    assert_eq!(clients, vec!["ann-laptop"], "{v}");
    assert_eq!(v["connections"][0]["userId"], "ann");
    assert!(v["connections"][0]["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["rooms"], serde_json::json!([{ "roomId": "standup", "members": 1 }]));
    assert_eq!(v["presence"]["online"], 1, "{v}");
}

async fn the_audit_view_says_whether_each_chain_verifies(backend: Backend) {
    let app = app!(backend);
    let entry = |i: u64| AuditEntry {
        tenant: &app.tenant,
        actor: "ann",
        action: "conflict.resolve",
        target: "todo/t1",
        outcome: "ok",
        details: serde_json::json!({ "i": i }),
    };
    for i in 0..3 {
        app.state.store.audit_all(&[entry(i)]).await.unwrap();
    }
    let v = app.get("/api/ops/audit", &admin(&app)).await.json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["chains"],
        serde_json::json!([{ "chain": "data", "verified": true, "entries": 3, "head": 3 }])
    );
    // An entry changed behind the server's back: the page says which.
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&app.config.database_url).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE tenant_id = $1 AND chain_seq = 2")
        .bind(&app.tenant)
        .execute(&mut conn)
        .await
        .unwrap();
    let v = app.get("/api/ops/audit", &admin(&app)).await.json();
    assert_eq!(v["chains"][0]["verified"], false);
    assert!(v["chains"][0]["broken"].as_str().unwrap().contains("altered"), "{v}");
}

#[tokio::test]
async fn the_page_is_one_self_contained_file() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let r = app.send(axum::http::Method::GET, "/ops", None, &[], None).await;
    r.expect(200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = String::from_utf8(r.body.clone()).unwrap();
    assert!(html.contains("Dead letters") && html.contains("/api/ops/realtime"));
    for outside in ["src=\"http", "href=\"http", "src=\"//", "innerHTML"] {
        assert!(!html.contains(outside), "the page must not load or inject {outside}");
    }
}
