//! A stock `socket.io-client@4.8` (npm, in tests/socketio) against the real server, driven by
//! tests/socketio/conformance.mjs through every api.md event — while a native `/v1/ws` client
//! sits in the same room and exchanges messages with it through the shared hub.
//!
//! Needs `node` and `npm ci --prefix sync-server/tests/socketio` (make test does it); missing
//! either fails the test.

mod common;

use common::{Backend, TestApp};
use futures_util::{SinkExt, StreamExt};
use sdk_core::ids::RoomId;
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_socket_io_client_speaks_every_api_md_event() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci --prefix sync-server/tests/socketio` (make test does) to install the stock client"
    );
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sync_server::serve(listener, app.state.clone(), async {
        let _ = stopped.await;
    }));
    let room = format!("room-{}", &app.tenant[2..]);

    // The native client joins the room first.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/ws?token={}&clientId=native-1",
        app.token("user-native")
    ))
    .await
    .unwrap();
    let codec = Codec::Json;
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >|
           -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                return codec.decode::<ServerFrame>(t.as_bytes(), usize::MAX).unwrap();
            }
        }
    };
    assert!(matches!(next(&mut ws).await, ServerFrame::Connected { .. }));
    let join = codec.encode(&ClientFrame::JoinRoom { room_id: RoomId::new(room.clone()).unwrap() });
    ws.send(Message::Text(String::from_utf8(join).unwrap().into())).await.unwrap();
    assert!(matches!(next(&mut ws).await, ServerFrame::RoomJoined { .. }));

    let node = tokio::process::Command::new("node")
        .arg("conformance.mjs")
        .current_dir(&dir)
        .env("URL", format!("http://{addr}"))
        .env("TOKEN_A", app.token("user-a"))
        .env("TOKEN_B", app.token("user-b"))
        .env("TOKEN_OTHER", app.token_for("another-tenant", "user-x", &[]))
        .env("ROOM", &room)
        .env("BAD_TOKENS", serde_json::to_string(&common::bad_tokens(&app.tenant)).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed");

    // When socket.io's room message arrives here, answer from the native side.
    loop {
        if let ServerFrame::Message { payload, sender_id, .. } = next(&mut ws).await
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
    ws.send(Message::Text(String::from_utf8(codec.encode(&reply)).unwrap().into())).await.unwrap();

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
}
