//! The native WebSocket endpoint `/v1/ws`, driven by a stock tokio-tungstenite client over real
//! TCP. Waits are for frames, closes or counts — never fixed sleeps (a safety timeout only turns a
//! hang into a failure).

mod common;

use common::net::{self, SAFETY, Ws, WsClient as Client};
use common::{Backend, TestApp};
use futures_util::SinkExt;
use sdk_core::ids::{ClientId, RoomId, UserId};
use sdk_core::interaction::InteractionClass;
use sdk_core::protocol::{ClientFrame, Codec, PresenceStatus, ServerFrame, WireOperation};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

struct Server {
    app: TestApp,
    addr: std::net::SocketAddr,
    _served: net::Served,
}

async fn server(tweak: impl FnOnce(&mut sync_server::config::Config)) -> Server {
    server_on(Backend::Sqlite, tweak).await.unwrap()
}

/// `None` when PostgreSQL is not reachable and not required (said loudly by `TestApp`).
async fn server_on(
    backend: Backend,
    tweak: impl FnOnce(&mut sync_server::config::Config),
) -> Option<Server> {
    let app = TestApp::start_with(backend, tweak).await?;
    let served = net::serve(app.state.clone()).await;
    Some(Server { app, addr: served.addr, _served: served })
}

async fn connect_raw(
    s: &Server,
    query: &str,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    net::open(s.addr, query, protocol, origin).await
}

/// Connect and authenticate with the first frame; returns after `connected`.
async fn connect(s: &Server, user: &str, client: &str) -> Client {
    Client::connect(s.addr, &s.app.token(user), client, Codec::Json).await
}

async fn connect_with(s: &Server, token: &str, client: &str, codec: Codec) -> Client {
    Client::connect(s.addr, token, client, codec).await
}

/// Wait until the audit log of `tenant` holds an entry for which `pred` is true (the socket
/// writes its audit entries off the connection's path).
async fn audited(s: &Server, tenant: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let entries = s.app.state.store.audit_entries(tenant, 1000).await.unwrap();
        if entries.iter().any(&pred) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching audit entry for {tenant}");
        tokio::task::yield_now().await;
    }
}

fn room(r: &str) -> RoomId {
    RoomId::new(r).unwrap()
}

fn wire_op(app: &TestApp, client: &str, seq: u64, entity: &str) -> WireOperation {
    serde_json::from_value(app.op(client, seq).create("todo", entity, json!({"n": seq})).build())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_by_first_frame_or_query_and_refuses_bad_tokens() {
    let s = server(|_| {}).await;
    let mut a = connect(&s, "alice", "c1").await;
    a.send(&ClientFrame::Ping { nonce: 7 }).await;
    assert_eq!(a.recv().await, ServerFrame::Pong { nonce: 7 });
    let ws = connect_raw(&s, &format!("?token={}&clientId=c2", s.app.token("alice")), None, None)
        .await
        .unwrap();
    let mut b = Client { ws, codec: Codec::Json };
    assert!(matches!(b.recv().await, ServerFrame::Connected { .. }));
    let ws = connect_raw(&s, "?token=nope", None, None).await.unwrap();
    let mut bad = Client { ws, codec: Codec::Json };
    let e = bad.recv().await;
    assert!(matches!(e, ServerFrame::Error { code: sdk_core::ErrorCode::AuthFailed, .. }), "{e:?}");
    assert_eq!(bad.closed().await.0, 4401);
    audited(&s, &s.app.tenant, |e| e["action"] == "ws.opened" && e["details"]["clientId"] == "c1")
        .await;
    audited(&s, "-", |e| e["action"] == "ws.auth_failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_matrix_is_refused_over_the_socket() {
    let s = server(|_| {}).await;
    for (name, token) in common::bad_tokens(&s.app.tenant) {
        // By URL …
        let ws = connect_raw(&s, &format!("?token={token}"), None, None).await.unwrap();
        let mut c = Client { ws, codec: Codec::Json };
        let e = c.recv().await;
        assert!(
            matches!(e, ServerFrame::Error { code: sdk_core::ErrorCode::AuthFailed, .. }),
            "{name}: {e:?}"
        );
        assert_eq!(c.closed().await.0, 4401, "{name}");
        // … and by the first frame.
        let ws = connect_raw(&s, "", None, None).await.unwrap();
        let mut c = Client { ws, codec: Codec::Json };
        c.send(&ClientFrame::Auth { token: token.clone(), client_id: ClientId::new("c").unwrap() })
            .await;
        let e = c.recv().await;
        assert!(
            matches!(e, ServerFrame::Error { code: sdk_core::ErrorCode::AuthFailed, .. }),
            "{name}: {e:?}"
        );
        assert_eq!(c.closed().await.0, 4401, "{name}");
    }
    // The control.
    let ok = connect_with(&s, &common::good_raw_token(&s.app.tenant), "c1", Codec::Json).await;
    drop(ok);
    assert!(s.app.state.hub.connections() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_is_negotiated_by_subprotocol() {
    let s = server(|_| {}).await;
    let mut c = connect_with(&s, &s.app.token("u"), "c1", Codec::MessagePack).await;
    c.send(&ClientFrame::Ping { nonce: 3 }).await;
    assert_eq!(c.recv().await, ServerFrame::Pong { nonce: 3 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_apply_through_the_reconcile_path_and_poke_others() {
    let s = server(|_| {}).await;
    let mut a = connect(&s, "alice", "laptop").await;
    let mut b = connect(&s, "bob", "phone").await;
    let ops = vec![wire_op(&s.app, "laptop", 1, "x"), wire_op(&s.app, "laptop", 2, "y")];
    a.send(&ClientFrame::Push { batch_id: "b1".into(), operations: ops.clone() }).await;
    let r = a.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await;
    let ServerFrame::PushResult { results, current_version, .. } = &r else { unreachable!() };
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.status == sdk_core::protocol::ResultStatus::Applied));
    assert_eq!(*current_version, 2);
    assert_eq!(
        b.recv_until(|f| matches!(f, ServerFrame::Poke { .. })).await,
        ServerFrame::Poke { version: 2 }
    );
    // The same batch again: the identical result, nothing applied twice.
    a.send(&ClientFrame::Push { batch_id: "b1".into(), operations: ops }).await;
    assert_eq!(a.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await, r);
    b.send(&ClientFrame::Pull { since: 0, limit: None, channels: None, held: None }).await;
    let ServerFrame::Delta { entities, has_more, client_seq, version, .. } =
        b.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    assert_eq!((entities.len(), has_more, client_seq, version), (2, false, Some(0), 2));
    // REST sees the same log.
    let events = s.app.get("/api/events/poll", &s.app.token("bob")).await.json();
    assert_eq!(events["events"].as_array().unwrap().len(), 2);
}

/// Found by the browser suite: a change written over REST (a reconcile, a conflict resolution)
/// must poke live sockets too, or they learn of it only on their next pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_writes_poke_live_sockets() {
    let s = server(|_| {}).await;
    let mut b = connect(&s, "bob", "phone").await;
    let body = s.app.reconcile_body(
        "r1",
        "laptop",
        vec![s.app.op("laptop", 1).create("todo", "x", serde_json::json!({"a": 1})).at(0).build()],
    );
    s.app.post("/api/reconciliation/reconcile", &s.app.token("alice"), &body).await.expect(200);
    assert_eq!(
        b.recv_until(|f| matches!(f, ServerFrame::Poke { .. })).await,
        ServerFrame::Poke { version: 1 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_d_is_refused_on_the_socket() {
    let s = server(|_| {}).await;
    let mut a = connect(&s, "alice", "c1").await;
    a.send(&ClientFrame::Message {
        message_id: Some("m1".into()),
        message_type: "payment.create".into(),
        interaction_class: Some(InteractionClass::D),
        recipient_id: Some(UserId::new("bob").unwrap()),
        room_id: None,
        payload: json!({"amount": 1}),
        metadata: None,
    })
    .await;
    let e = a.recv().await;
    assert!(
        matches!(&e, ServerFrame::Error { code: sdk_core::ErrorCode::ClassDRealtimeForbidden, request_id: Some(r), .. } if r == "m1"),
        "{e:?}"
    );
    let mut op = wire_op(&s.app, "c1", 1, "p");
    op.interaction_class = Some("CLASS_D".into());
    a.send(&ClientFrame::Push { batch_id: "b".into(), operations: vec![op] }).await;
    let e = a.recv().await;
    assert!(
        matches!(&e, ServerFrame::Error { code: sdk_core::ErrorCode::ClassDRealtimeForbidden, request_id: Some(r), .. } if r == "b"),
        "{e:?}"
    );
    assert_eq!(s.app.state.store.tenant_seq(&s.app.tenant).await.unwrap().0, 0, "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_gap_free_across_a_disconnect_of_1000_events() {
    let s = server(|_| {}).await;
    let token = s.app.token("writer");
    let mut reader = connect(&s, "reader", "r1").await;
    reader
        .send(&ClientFrame::Subscribe {
            after: Some(0),
            event_types: vec![],
            attributes: Default::default(),
        })
        .await;
    s.app
        .reconcile(
            &token,
            "first",
            "w",
            vec![s.app.op("w", 1).create("todo", "e0", json!({})).build()],
        )
        .await
        .expect(200);
    let ServerFrame::Event { event } =
        reader.recv_until(|f| matches!(f, ServerFrame::Event { .. })).await
    else {
        unreachable!()
    };
    let last = event.sequence;
    drop(reader);
    // 1,000 events while the reader is away.
    for b in 0..2 {
        let ops: Vec<Value> = (1..=500)
            .map(|i| {
                let seq = 1 + b * 500 + i;
                s.app.op("w", seq).create("todo", &format!("e{seq}"), json!({"i": seq})).build()
            })
            .collect();
        s.app.reconcile(&token, &format!("batch-{b}"), "w", ops).await.expect(200);
    }
    let mut reader = connect(&s, "reader", "r1").await;
    reader
        .send(&ClientFrame::Subscribe {
            after: Some(last),
            event_types: vec![],
            attributes: Default::default(),
        })
        .await;
    // More events arrive during the replay: the switch to live must not skip or repeat.
    let writer = {
        let app = s.app.clone();
        let token = token.clone();
        tokio::spawn(async move {
            for i in 0..20u64 {
                let seq = 1002 + i;
                app.reconcile(
                    &token,
                    &format!("live-{i}"),
                    "w",
                    vec![app.op("w", seq).create("todo", &format!("l{i}"), json!({})).build()],
                )
                .await
                .expect(200);
            }
        })
    };
    let mut seqs = Vec::new();
    while seqs.len() < 1020 {
        if let ServerFrame::Event { event } = reader.recv().await {
            seqs.push(event.sequence);
        }
    }
    writer.await.unwrap();
    let expected: Vec<u64> = (last + 1..=last + 1020).collect();
    assert_eq!(seqs, expected, "every event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_direct_messages_and_presence() {
    let s = server(|_| {}).await;
    let mut a = connect(&s, "alice", "alice-laptop").await;
    let mut b = connect(&s, "bob", "bob-phone").await;
    let mut b2 = connect(&s, "bob", "bob-laptop").await;
    for c in [&mut a, &mut b] {
        c.send(&ClientFrame::JoinRoom { room_id: room("lobby") }).await;
        assert_eq!(
            c.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await,
            ServerFrame::RoomJoined { room_id: room("lobby") }
        );
    }
    let msg = |room_id: Option<RoomId>, to: Option<&str>| ClientFrame::Message {
        message_id: Some(format!("m-{}", uuid_like())),
        message_type: "chat.message".into(),
        interaction_class: None,
        recipient_id: to.map(|u| UserId::new(u).unwrap()),
        room_id,
        payload: json!({"text": "hi"}),
        metadata: None,
    };
    a.send(&msg(Some(room("lobby")), None)).await;
    assert!(matches!(
        a.recv_until(|f| matches!(f, ServerFrame::MessageAck { .. })).await,
        ServerFrame::MessageAck { .. }
    ));
    let got = b.recv_until(|f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(
        matches!(&got, ServerFrame::Message { sender_id, room_id: Some(r), .. } if sender_id.as_str() == "alice" && r.as_str() == "lobby")
    );
    // A direct message reaches every connection of the user.
    a.send(&msg(None, Some("bob"))).await;
    for c in [&mut b, &mut b2] {
        let got =
            c.recv_until(|f| matches!(f, ServerFrame::Message { recipient_id: Some(_), .. })).await;
        assert!(matches!(got, ServerFrame::Message { .. }));
    }
    // Presence goes to room members, and offline when the connection dies.
    a.send(&ClientFrame::Presence {
        status: PresenceStatus::Away,
        metadata: Some(json!({"statusMessage": "In a meeting"})),
        room_id: None,
    })
    .await;
    let p = b.recv_until(|f| matches!(f, ServerFrame::Presence { .. })).await;
    assert!(matches!(p, ServerFrame::Presence { status: PresenceStatus::Away, .. }));
    drop(a);
    let p = b.recv_until(|f| matches!(f, ServerFrame::Presence { .. })).await;
    assert!(matches!(p, ServerFrame::Presence { status: PresenceStatus::Offline, .. }), "{p:?}");
    // Membership belongs to the client id: alice reconnects and receives room messages unjoined.
    let mut a = connect(&s, "alice", "alice-laptop").await;
    b.send(&msg(Some(room("lobby")), None)).await;
    let got = a.recv_until(|f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(matches!(got, ServerFrame::Message { room_id: Some(_), .. }));
    // Sending to a room one has not joined is refused.
    b2.send(&msg(Some(room("lobby")), None)).await;
    let e = b2.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(matches!(e, ServerFrame::Error { code: sdk_core::ErrorCode::AuthzFailed, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_do_not_cross_tenants() {
    let s = server(|_| {}).await;
    let mut ours = connect(&s, "alice", "c1").await;
    let other_token = s.app.token_for("another-tenant", "mallory", &[]);
    let mut theirs = connect_with(&s, &other_token, "c2", Codec::Json).await;
    for c in [&mut ours, &mut theirs] {
        c.send(&ClientFrame::JoinRoom { room_id: room("shared-name") }).await;
        c.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    }
    theirs
        .send(&ClientFrame::Message {
            message_id: Some("x".into()),
            message_type: "chat".into(),
            interaction_class: None,
            recipient_id: None,
            room_id: Some(room("shared-name")),
            payload: json!("secret"),
            metadata: None,
        })
        .await;
    theirs.recv_until(|f| matches!(f, ServerFrame::MessageAck { .. })).await;
    // Ours gets nothing from the other tenant; a ping round-trip proves the queue is empty.
    ours.send(&ClientFrame::Ping { nonce: 1 }).await;
    assert_eq!(ours.recv().await, ServerFrame::Pong { nonce: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_socket_unless_refreshed() {
    let s = server(|_| {}).await;
    let now = jsonwebtoken::get_current_timestamp();
    let short = |user: &str| {
        let c = sync_server::auth::Claims::new(&s.app.tenant, user, now, 2);
        s.app.state.jwt.mint(&c).unwrap()
    };
    let mut lapsing = connect_with(&s, &short("u"), "c1", Codec::Json).await;
    let mut refreshed = connect_with(&s, &short("u"), "c2", Codec::Json).await;
    refreshed.send(&ClientFrame::RefreshToken { token: s.app.token("u") }).await;
    // A refresh naming someone else is refused.
    refreshed.send(&ClientFrame::RefreshToken { token: s.app.token("other") }).await;
    assert!(matches!(
        refreshed.recv().await,
        ServerFrame::Error { code: sdk_core::ErrorCode::AuthzFailed, .. }
    ));
    assert_eq!(lapsing.closed().await, (4401, "token expired".to_string()));
    refreshed.send(&ClientFrame::Ping { nonce: 9 }).await;
    assert_eq!(
        refreshed.recv().await,
        ServerFrame::Pong { nonce: 9 },
        "the refreshed socket outlives the old token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let s = server(|_| {}).await;
    let mut c = connect(&s, "u", "c1").await;
    let big = "x".repeat(70 * 1024);
    c.ws.send(Message::Text(format!("{{\"v\":1,\"type\":\"ping\",\"pad\":\"{big}\"}}").into()))
        .await
        .unwrap();
    assert_eq!(c.closed().await, (1009, "frame too large".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_warns_then_disconnects() {
    // The shipped limit (api.md: 100 messages a minute), as the Socket.IO conformance test meets it.
    let s = server(|_| {}).await;
    let mut c = connect(&s, "u", "c1").await;
    for i in 0..100 {
        c.send(&ClientFrame::Ping { nonce: i }).await;
        assert_eq!(c.recv().await, ServerFrame::Pong { nonce: i });
    }
    c.send(&ClientFrame::Ping { nonce: 999 }).await;
    assert!(matches!(
        c.recv().await,
        ServerFrame::Error { code: sdk_core::ErrorCode::RateLimit, .. }
    ));
    for i in 0..20 {
        if c.ws
            .send(Message::Text(format!("{{\"v\":1,\"type\":\"ping\",\"nonce\":{i}}}").into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.closed().await.0, 1008);
    audited(&s, &s.app.tenant, |e| e["action"] == "ws.rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_connections_over_the_cap_are_refused() {
    let s = server(|c| c.ws_max_connections = 1).await;
    let refused = connect_raw(&s, "", None, Some("https://evil.example")).await;
    assert!(matches!(refused, Err(WsError::Http(r)) if r.status() == 403));
    let _first = connect(&s, "u", "c1").await;
    let over = connect_raw(&s, "", None, Some("http://localhost:5173")).await;
    assert!(matches!(over, Err(WsError::Http(r)) if r.status() == 503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_and_memory_stays_bounded() {
    let s = server(|c| c.ws_send_buffer = 8).await;
    // Several senders, each within api.md's 100 messages a minute: filling the kernel's socket
    // buffers before the server queues anything takes a few hundred 40 KB messages.
    let mut senders = Vec::new();
    for i in 0..6 {
        senders.push(connect(&s, "fast", &format!("fast-{i}")).await);
    }
    let mut slow = connect(&s, "slow", "slow-1").await;
    for c in senders.iter_mut().chain([&mut slow]) {
        c.send(&ClientFrame::JoinRoom { room_id: room("firehose") }).await;
        c.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    }
    assert_eq!(s.app.state.hub.connections(), 7);
    // The slow client never reads again; the senders flood the room with 40 KB messages.
    let payload = json!("y".repeat(40 * 1024));
    let mut sent = 0;
    while s.app.state.hub.connections() == 7 {
        let frame = ClientFrame::Message {
            message_id: None,
            message_type: "blob".into(),
            interaction_class: None,
            recipient_id: None,
            room_id: Some(room("firehose")),
            payload: payload.clone(),
            metadata: None,
        };
        let sender = &mut senders[sent % 6];
        sender.send(&frame).await;
        sender.recv_until(|f| matches!(f, ServerFrame::MessageAck { .. })).await;
        sent += 1;
        assert!(sent < 550, "the slow consumer was never dropped within the senders' budget");
    }
    let m = &s.app.state.metrics;
    assert_eq!(m.counter("pf2_ws_disconnects_total", &[("reason", "slow_consumer")]), 1);
    // At most the buffer (8 frames) plus what the kernel held was ever queued for it.
    assert!(sent > 8);
    // The one dropped was the slow client: every sender still answers.
    for (i, sender) in senders.iter_mut().enumerate() {
        sender.send(&ClientFrame::Ping { nonce: i as u64 }).await;
        sender.recv_until(|f| *f == ServerFrame::Pong { nonce: i as u64 }).await;
    }
    let _ = slow;
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Consuming a group needs the service (or admin) role on the socket as over REST: a group is
/// handed every event it matches, whoever may read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_a_group_over_websocket_needs_the_service_role() {
    let s = server(|_| {}).await;
    let mut c = connect(&s, "alice", "alice-1").await;
    c.send(&ClientFrame::Consume { group: "billing".into(), max_in_flight: None }).await;
    let f = c.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(&f, ServerFrame::Error { code, .. } if code.as_str() == "AUTHZ_FAILED"),
        "{f:?}"
    );
}

/// Consumer groups over `/v1/ws`: the server pushes leased deliveries, at most `maxInFlight`
/// unsettled; an ack frees a slot; a nack on the last attempt dead-letters; two sockets of the
/// same group never get the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_is_pushed_over_websocket_with_acks() {
    let s = server(|_| {}).await;
    let svc = s.app.token_for(&s.app.tenant, "svc", &["service"]);
    let r = s
        .app
        .send(
            axum::http::Method::PUT,
            "/api/events/subscriptions/ws-workers",
            Some(&svc),
            &[],
            Some(br#"{"kind":"group","maxDeliveries":1}"#.to_vec()),
        )
        .await;
    r.expect(201);
    let events: Vec<Value> =
        (0..6).map(|i| json!({"eventType": "job.run", "payload": {"i": i}})).collect();
    s.app.post("/api/events", &svc, &json!({ "events": events })).await.expect(201);
    let mut a = connect_with(&s, &svc, "worker-a", Codec::Json).await;
    let mut b = connect_with(&s, &svc, "worker-b", Codec::Json).await;
    a.send(&ClientFrame::Consume { group: "ws-workers".into(), max_in_flight: Some(2) }).await;
    let is_delivery = |f: &ServerFrame| matches!(f, ServerFrame::Delivery { .. });
    let mut got_a = Vec::new();
    for _ in 0..2 {
        got_a.push(a.recv_until(is_delivery).await);
    }
    b.send(&ClientFrame::Consume { group: "ws-workers".into(), max_in_flight: Some(10) }).await;
    let mut got_b = Vec::new();
    for _ in 0..4 {
        got_b.push(b.recv_until(is_delivery).await);
    }
    let seq = |f: &ServerFrame| match f {
        ServerFrame::Delivery { event, .. } => event.sequence,
        _ => unreachable!(),
    };
    let mut all: Vec<u64> = got_a.iter().chain(&got_b).map(seq).collect();
    all.sort();
    assert_eq!(all, [1, 2, 3, 4, 5, 6], "each event to exactly one socket");
    // a acks one (a slot frees up: it would get more if there were any) and nacks the other.
    for (i, f) in got_a.iter().enumerate() {
        let ServerFrame::Delivery { group, event, lease_token, attempt, .. } = f else {
            unreachable!()
        };
        assert_eq!(*attempt, 1);
        let frame = if i == 0 {
            ClientFrame::DeliveryAck {
                group: group.clone(),
                sequence: event.sequence,
                lease_token: lease_token.clone(),
            }
        } else {
            ClientFrame::DeliveryNack {
                group: group.clone(),
                sequence: event.sequence,
                lease_token: lease_token.clone(),
                reason: Some("cannot run".into()),
            }
        };
        a.send(&frame).await;
    }
    for f in &got_b {
        let ServerFrame::Delivery { group, event, lease_token, .. } = f else { unreachable!() };
        b.send(&ClientFrame::DeliveryAck {
            group: group.clone(),
            sequence: event.sequence,
            lease_token: lease_token.clone(),
        })
        .await;
    }
    // A stale ack is refused with a reason.
    let ServerFrame::Delivery { group, event, lease_token, .. } = &got_a[0] else { unreachable!() };
    a.send(&ClientFrame::DeliveryAck {
        group: group.clone(),
        sequence: event.sequence,
        lease_token: lease_token.clone(),
    })
    .await;
    let e = a.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(format!("{e:?}").contains("lease was lost"), "{e:?}");
    // A socket's frames are handled in order: b's pong means its acks are settled.
    b.send(&ClientFrame::Ping { nonce: 9 }).await;
    b.recv_until(|f| matches!(f, ServerFrame::Pong { .. })).await;
    let status = s.app.get("/api/events/subscriptions/ws-workers", &svc).await.json();
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["deadLetters"], 1, "the nacked event (maxDeliveries 1)");
    // A new event reaches a waiting member without polling.
    s.app.post("/api/events", &svc, &json!({"eventType": "job.run"})).await.expect(201);
    let f = tokio::select! {
        f = a.recv_until(is_delivery) => f,
        f = b.recv_until(is_delivery) => f,
    };
    assert_eq!(seq(&f), 7);
}

/// A durable subscription followed over `/v1/ws`: `Ack` moves the server-side position, so a
/// reconnecting consumer resumes after what it acknowledged, with the subscription's filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_followed_over_websocket_resumes_after_its_ack() {
    let s = server(|_| {}).await;
    let svc = s.app.token_for(&s.app.tenant, "svc", &["service"]);
    let body = br#"{"kind":"durable","eventTypes":["order.*"],"startFrom":"earliest"}"#.to_vec();
    s.app
        .send(
            axum::http::Method::PUT,
            "/api/events/subscriptions/orders",
            Some(&svc),
            &[],
            Some(body),
        )
        .await
        .expect(201);
    let events: Vec<Value> = ["order.placed", "user.login", "order.paid", "order.shipped"]
        .iter()
        .map(|t| json!({"eventType": t}))
        .collect();
    s.app.post("/api/events", &svc, &json!({ "events": events })).await.expect(201);
    let mut c = connect_with(&s, &svc, "sink", Codec::Json).await;
    c.send(&ClientFrame::Follow { subscription: "orders".into() }).await;
    let mut types = Vec::new();
    for _ in 0..2 {
        if let ServerFrame::Event { event } =
            c.recv_until(|f| matches!(f, ServerFrame::Event { .. })).await
        {
            types.push(event.event_type);
        }
    }
    assert_eq!(types, ["order.placed", "order.paid"], "the filter applies");
    c.send(&ClientFrame::Ack { sequence: 3 }).await;
    // The ack is stored before the next frame is read: a ping's pong orders it.
    c.send(&ClientFrame::Ping { nonce: 9 }).await;
    c.recv_until(|f| matches!(f, ServerFrame::Pong { nonce: 9 })).await;
    drop(c);
    let status = s.app.get("/api/events/subscriptions/orders", &svc).await.json();
    assert_eq!(status["position"], 3);
    let mut c = connect_with(&s, &svc, "sink", Codec::Json).await;
    c.send(&ClientFrame::Follow { subscription: "orders".into() }).await;
    let ServerFrame::Event { event } =
        c.recv_until(|f| matches!(f, ServerFrame::Event { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(event.event_type, "order.shipped", "resumes after the acknowledged position");
    c.send(&ClientFrame::Follow { subscription: "missing".into() }).await;
    let e = c.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(matches!(e, ServerFrame::Error { code: sdk_core::ErrorCode::NotFound, .. }), "{e:?}");
}

/// One function reconciles for both transports: a batch applied over REST and sent again over
/// `/v1/ws` gets the same per-operation answers (now as duplicates) and the same version, and
/// the socket's batch is counted in the operation metrics too; its retry replays its answer.
#[tokio::test]
async fn the_same_batch_is_answered_identically_over_rest_and_ws() {
    let s = server(|_| {}).await;
    let token = s.app.token("u1");
    let ops = vec![
        s.app.op("c1", 1).create("todo", "a", json!({"x": 1})).build(),
        s.app.op("c1", 2).create("todo", "b", json!({"y": 2})).build(),
    ];
    let rest = s.app.reconcile(&token, "batch-1", "c1", ops.clone()).await;
    let rest = rest.expect(200).json();
    let counted = |outcome: &str| {
        s.app.state.metrics.counter("pf2_operations_total", &[("outcome", outcome)])
    };
    assert_eq!(counted("applied"), 2);
    let mut c = connect(&s, "u1", "c1").await;
    let operations: Vec<WireOperation> = serde_json::from_value(json!(ops)).unwrap();
    let push = ClientFrame::Push { batch_id: "batch-1".into(), operations };
    c.send(&push).await;
    let first = c.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await;
    let ServerFrame::PushResult { results, current_version, .. } = &first else { unreachable!() };
    assert_eq!(current_version.to_string(), rest["currentVersion"].as_str().unwrap());
    let rest_results: Vec<Value> = rest["resolvedOperations"].as_array().unwrap().clone();
    assert_eq!(results.len(), rest_results.len());
    for (ws, rest) in results.iter().zip(rest_results) {
        let mut ws = serde_json::to_value(ws).unwrap();
        assert_eq!(ws["duplicate"], true, "the socket's copy is a replay: {ws}");
        ws["duplicate"] = json!(false);
        assert_eq!(ws, rest, "the same answer on both transports");
    }
    assert_eq!(counted("duplicate"), 2, "the socket's batch is counted as REST's is");
    let replays = s.app.state.metrics.counter("pf2_reconcile_replays_total", &[]);
    c.send(&push).await;
    let again = c.recv_until(|f| matches!(f, ServerFrame::PushResult { .. })).await;
    assert_eq!(again, first, "a retried batch replays its stored answer");
    assert_eq!(s.app.state.metrics.counter("pf2_reconcile_replays_total", &[]), replays + 1);
}

/// The log is not read back for live subscribers: events this process appends reach the
/// subscribers at the tail from memory, whether 1 or 40 follow it — store reads counted, not
/// timed: none — and they are the same events a read of the log returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_appended_events_without_a_store_read_on_sqlite() {
    live_subscribers_get_appended_events_without_a_store_read(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_appended_events_without_a_store_read_on_postgres() {
    live_subscribers_get_appended_events_without_a_store_read(Backend::Postgres).await
}

async fn live_subscribers_get_appended_events_without_a_store_read(backend: Backend) {
    const APPENDS: u64 = 12;
    let Some(s) = server_on(backend, |_| {}).await else { return };
    let svc = s.app.token_for(&s.app.tenant, "feed-service", &["service"]);
    let reads = || s.app.state.store.log_reads();
    let mut n = 0u64;
    let mut received = Vec::new();
    let mut publish = async |subs: &mut Vec<Client>| {
        n += 1;
        let event = json!({
            "eventId": uuid::Uuid::new_v4().to_string(), "eventType": "feed.item", "tenantId": s.app.tenant,
            "timestamp": "2026-01-30T12:00:00Z", "payload": { "n": n, "x": 1.5 }, "metadata": { "traceId": "t" },
            "schemaVersion": "1.0"
        });
        s.app.post("/api/events", &svc, &event).await.expect(201);
        for c in subs.iter_mut() {
            let f = c
                .recv_until(
                    |f| matches!(f, ServerFrame::Event { event } if event.payload["n"] == n),
                )
                .await;
            received.push(f);
        }
    };
    let mut per_append = Vec::new();
    for (round, count) in [1usize, 40].into_iter().enumerate() {
        let mut subs = Vec::new();
        let (at, _) = s.app.state.store.tenant_seq(&s.app.tenant).await.unwrap();
        for i in 0..count {
            let mut c = connect(&s, "reader", &format!("sub-{round}-{i}")).await;
            let subscribe = ClientFrame::Subscribe {
                after: Some(at),
                event_types: vec![],
                attributes: Default::default(),
            };
            c.send(&subscribe).await;
            subs.push(c);
        }
        // Every subscriber has its first event: all of them follow the tail live.
        publish(&mut subs).await;
        let before = reads();
        for _ in 0..APPENDS {
            publish(&mut subs).await;
        }
        per_append.push((reads() - before) as f64 / APPENDS as f64);
    }
    println!("store reads per append, 1 and 40 subscribers: {per_append:?}");
    // From memory, every one: an append that finds readers holding the window is kept for
    // the next one that holds it (sdk-core's `log_window::Appends`), not read back.
    assert_eq!(per_append, [0.0, 0.0], "store reads per append (1 and 40 subscribers)");
    // What came from memory is what the log holds.
    let poll = s.app.get("/api/events/poll?lastEventId=0&limit=100", &svc).await;
    poll.expect(200);
    let logged: Vec<Value> = poll.json()["events"].as_array().unwrap().clone();
    for f in &received {
        let ServerFrame::Event { event } = f else { unreachable!() };
        let stored = logged.iter().find(|e| e["sequence"] == event.sequence).expect("in the log");
        assert_eq!(&serde_json::to_value(event).unwrap(), stored, "as read from the log");
    }
}

/// A live subscriber that stops reading is not cut off as a slow consumer: its socket and then
/// its mailbox fill, it leaves the live set, and it reads the durable log itself once it reads
/// again — every event, in order, once. A subscriber that kept reading (and one with a filter)
/// got every event it wanted meanwhile. The stalled one asked for batches (`batch=1`): what
/// waited in its mailbox came in fewer messages than events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_falls_back_to_the_log_and_misses_nothing() {
    // 24 posts × 40 events × 20 KB ≈ 19 MB: more than the loopback socket buffers and the
    // shipped 256-frame mailbox hold together, so the stalled subscriber must fall behind.
    const POSTS: u64 = 24;
    const PER_POST: u64 = 40;
    let s = server(|_| {}).await;
    let svc = s.app.token_for(&s.app.tenant, "feed-service", &["service"]);
    let (at, _) = s.app.state.store.tenant_seq(&s.app.tenant).await.unwrap();
    let subscribe = |types: Vec<String>| ClientFrame::Subscribe {
        after: Some(at),
        event_types: types,
        attributes: Default::default(),
    };
    let mut stalled = Client::json(net::open(s.addr, "?batch=1", None, None).await.unwrap());
    let auth = ClientFrame::Auth {
        token: s.app.token("reader"),
        client_id: ClientId::new("stalled").unwrap(),
    };
    stalled.send(&auth).await;
    assert!(matches!(stalled.recv().await, ServerFrame::Connected { .. }));
    stalled.send(&subscribe(vec![])).await;
    let mut filtered = connect(&s, "reader", "filtered").await;
    filtered.send(&subscribe(vec!["feed.even".into()])).await;
    let mut reading = connect(&s, "reader", "reading").await;
    reading.send(&subscribe(vec![])).await;
    let blob = "x".repeat(20 * 1024);
    let mut n = 0u64;
    let mut sequences = Vec::new();
    let mut reading_got = Vec::new();
    let mut filtered_got = Vec::new();
    let mut evens = Vec::new();
    for _ in 0..POSTS {
        let events: Vec<Value> = (0..PER_POST)
            .map(|_| {
                n += 1;
                let kind = if n.is_multiple_of(2) { "feed.even" } else { "feed.odd" };
                json!({
                    "eventId": uuid::Uuid::new_v4().to_string(), "eventType": kind,
                    "tenantId": s.app.tenant, "timestamp": "2026-01-30T12:00:00Z",
                    "payload": { "n": n, "blob": blob }, "schemaVersion": "1.0"
                })
            })
            .collect();
        let body = s.app.post("/api/events", &svc, &json!({ "events": events })).await;
        let body = body.expect(201).json();
        for r in body["results"].as_array().unwrap() {
            let q = r["sequence"].as_u64().unwrap();
            if (sequences.len() + 1).is_multiple_of(2) {
                evens.push(q);
            }
            sequences.push(q);
        }
        // The reading subscribers keep up as the events come.
        while reading_got.len() < sequences.len() {
            if let ServerFrame::Event { event } = reading.recv().await {
                reading_got.push(event.sequence);
            }
        }
        while filtered_got.len() < evens.len() {
            if let ServerFrame::Event { event } = filtered.recv().await {
                assert_eq!(event.event_type, "feed.even");
                filtered_got.push(event.sequence);
            }
        }
    }
    let m = &s.app.state.metrics;
    assert!(
        m.counter("pf2_event_stream_fell_behind_total", &[]) >= 1,
        "the stalled subscriber left the live set"
    );
    let mut stalled_got = Vec::new();
    let mut messages = 0;
    while stalled_got.len() < sequences.len() {
        messages += 1;
        let frames = match stalled.recv().await {
            ServerFrame::Batch { frames } => frames,
            f => vec![f],
        };
        for f in frames {
            if let ServerFrame::Event { event } = f {
                stalled_got.push(event.sequence);
            }
        }
    }
    assert_eq!(stalled_got, sequences, "every event, in order, once");
    assert!(messages < sequences.len(), "{messages} messages for {} events", sequences.len());
    assert_eq!(reading_got, sequences);
    assert_eq!(filtered_got, evens);
    // And the stalled one is live again: the next event reaches it from the pump.
    let event = json!({
        "eventId": uuid::Uuid::new_v4().to_string(), "eventType": "feed.odd", "tenantId": s.app.tenant,
        "timestamp": "2026-01-30T12:00:00Z", "payload": { "n": 0 }, "schemaVersion": "1.0"
    });
    s.app.post("/api/events", &svc, &event).await.expect(201);
    stalled
        .recv_until(|f| matches!(f, ServerFrame::Event { event } if event.payload["n"] == 0))
        .await;
    assert_eq!(m.counter("pf2_ws_disconnects_total", &[("reason", "slow_consumer")]), 0);
}

/// Store connections belong to the HTTP side: a SQLite connection's worker thread inherits the
/// priority of the thread that opened it, so one opened by a WebSocket session (nice +10) would
/// serve HTTP requests at the sessions' priority. The pool opens all of its connections when the
/// store is built; 16 reads at once from the sessions' runtime, against the pool of 4, leave
/// every SQLite worker thread of this process at the test's own priority.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_connections_keep_the_http_priority_when_sessions_use_them() {
    let app = TestApp::start_with(Backend::Sqlite, |_| {}).await.unwrap();
    let (store, tenant) = (app.state.store.clone(), app.tenant.clone());
    let reads = app.state.sessions.spawn(async move {
        let all = (0..16).map(|_| {
            let (store, tenant) = (store.clone(), tenant.clone());
            tokio::spawn(async move { store.tenant_seq(&tenant).await.map(|_| ()) })
        });
        for r in futures_util::future::join_all(all).await {
            r.unwrap().unwrap();
        }
    });
    reads.await.unwrap();
    let nice = |stat: &str| -> i64 {
        // Field 19 (nice), counted after the command's closing parenthesis.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(stat);
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    let own = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let mut workers = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "sqlx-sqlite-wor" {
            workers += 1;
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            assert_eq!(nice(&stat), own, "a SQLite worker opened by a session");
        }
    }
    assert!(workers >= 4, "the test saw the pool's worker threads ({workers})");
}

/// The closing handshake (RFC 6455 §5.5.1): a client that closes gets its own code back in the
/// server's Close, not a bare FIN (which its library reports as 1006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_with_its_code() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let s = server(|_| {}).await;
    for code in [1000u16, 4000] {
        let mut c = connect(&s, "u", &format!("closer-{code}")).await;
        let frame = CloseFrame { code: code.into(), reason: "bye".into() };
        c.ws.close(Some(frame)).await.unwrap();
        assert_eq!(c.closed().await.0, code);
    }
    // The server counts a close when its session has ended, just after the echo went out.
    let m = &s.app.state.metrics;
    let deadline = tokio::time::Instant::now() + SAFETY;
    while m.counter("pf2_ws_closed_total", &[("reason", "client closed")]) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both closes counted");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// After a restart nothing has been notified yet: a reader resuming 1,000 events behind still
/// gets every one, in order (the regression: it stopped after the first 500, taking the end of
/// the first read for the end of the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resuming_after_a_restart_gets_every_missed_event() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let svc = app.token_for(&app.tenant, "feed-service", &["service"]);
    for batch in 0..2 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                json!({"eventId": uuid::Uuid::new_v4().to_string(), "eventType": "feed.item",
                       "tenantId": app.tenant, "timestamp": "2026-01-30T12:00:00Z",
                       "payload": {"n": batch * 500 + i}})
            })
            .collect();
        app.post("/api/events", &svc, &json!({ "events": events })).await.expect(201);
    }
    let restarted = app.config.build().await.unwrap();
    let served = net::serve(restarted).await;
    let mut c = Client::connect(served.addr, &app.token("reader"), "r1", Codec::Json).await;
    let subscribe = ClientFrame::Subscribe {
        after: Some(0),
        event_types: vec![],
        attributes: Default::default(),
    };
    c.send(&subscribe).await;
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        if let ServerFrame::Event { event } = c.recv().await {
            seen.push(event.payload["n"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (0..1000).collect::<Vec<u64>>(), "every event once, in order");
}
