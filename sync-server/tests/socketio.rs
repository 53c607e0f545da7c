//! A stock `socket.io-client@4.8` (npm, in tests/socketio) against the real server, driven by
//! tests/socketio/conformance.mjs through every api.md event — while a native `/v1/ws` client
//! sits in the same room and exchanges messages with it through the shared hub.
//!
//! Needs `node` and `npm ci --prefix sync-server/tests/socketio` (make test does it); missing
//! either fails the test.

mod common;

use common::net::WsClient;
use common::{Backend, TestApp};
use sdk_core::ids::RoomId;
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_socket_io_client_speaks_every_api_md_event() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci --prefix sync-server/tests/socketio` (make test does) to install the stock client"
    );
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let served = common::net::serve(app.state.clone()).await;
    let addr = served.addr;
    let room = format!("room-{}", &app.tenant[2..]);

    // The native client joins the room first.
    let mut ws = WsClient::connect(addr, &app.token("user-native"), "native-1", Codec::Json).await;
    ws.send(&ClientFrame::JoinRoom { room_id: RoomId::new(room.clone()).unwrap() }).await;
    assert!(matches!(ws.recv().await, ServerFrame::RoomJoined { .. }));

    let node = tokio::process::Command::new("node")
        .arg("conformance.mjs")
        .current_dir(&dir)
        .env("URL", format!("http://{addr}"))
        .env("TOKEN_A", app.token("user-a"))
        .env("TOKEN_B", app.token("user-b"))
        .env("TOKEN_OTHER", app.token_for("another-tenant", "user-x", &[]))
        .env("TOKEN_SHORT", {
            let now = jsonwebtoken::get_current_timestamp();
            app.state
                .jwt
                .mint(&sync_server::auth::Claims::new(&app.tenant, "user-a", now, 2))
                .unwrap()
        })
        .env("ROOM", &room)
        .env("BAD_TOKENS", serde_json::to_string(&common::bad_tokens(&app.tenant)).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed");

    // When socket.io's room message arrives here, answer from the native side.
    loop {
        if let ServerFrame::Message { payload, sender_id, .. } = ws.recv().await
            && payload == json!({"text": "from-socketio"})
        {
            assert_eq!(sender_id.as_str(), "user-a");
            break;
        }
    }
    let reply = ClientFrame::Message {
        message_id: None,
        message_type: "chat.message".into(),
        interaction_class: None,
        recipient_id: None,
        room_id: Some(RoomId::new(room.clone()).unwrap()),
        payload: json!({"text": "from-native"}),
        metadata: None,
    };
    ws.send(&reply).await;

    let out = tokio::time::timeout(Duration::from_secs(60), node.wait_with_output())
        .await
        .expect("node finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "conformance failed:\n{stdout}\n{stderr}"
    );
    // The session's rules, met over Socket.IO, counted as over /v1/ws.
    let m = &app.state.metrics;
    assert_eq!(m.counter("pf2_ws_disconnects_total", &[("reason", "rate_limit")]), 1);
    assert_eq!(m.counter("pf2_ws_disconnects_total", &[("reason", "token_expired")]), 1);
    // One series for what went out over both transports (a second one, counted again at emit
    // time, made the exposition invalid and doubled every Socket.IO frame).
    let exposition = m.render();
    assert_eq!(exposition.matches("# TYPE pf2_ws_messages_out_total counter").count(), 1);
    assert_eq!(m.counter("pf2_ws_messages_out_total", &[]), 0, "no by-name counter beside it");
}

/// Under sync rules, a stock socket.io-client is refused a room it may not read (the rule lives
/// in the session both socket transports share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_socket_io_client_is_refused_a_room_it_may_not_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "npm ci --prefix sync-server/tests/socketio"
    );
    let rules = "[grants]\nread = [\"lobby\"]\n";
    let app = TestApp::start_with(Backend::Sqlite, |c| c.sync_rules_text = Some(rules.into()))
        .await
        .unwrap();
    let served = common::net::serve(app.state.clone()).await;
    let out = tokio::process::Command::new("node")
        .arg("rules.mjs")
        .current_dir(&dir)
        .env("URL", format!("http://{}", served.addr))
        .env("TOKEN", app.token("user-r"))
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(60), out).await.expect("node finished").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("PASS"), "failed:\n{stdout}\n{stderr}");
}
