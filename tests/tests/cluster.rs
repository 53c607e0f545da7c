//! Several real `sync-server` processes on the real PostgreSQL and Redis: what crosses
//! processes, what survives `kill -9`, and what a Redis outage costs (nothing but latency).
//!
//! Needs PostgreSQL and Redis (CI requires them: `PF2_REQUIRE_POSTGRES=1`, `PF2_REQUIRE_REDIS=1`)
//! and `redis-server` on PATH for the outage test. Waits are for frames, health states or
//! database counts; the only timeouts are safety limits that turn a hang into a failure.

use pf2_e2e::cluster::{
    LEDGER_SCHEMA, Node, NodeConfig, OwnRedis, SAFETY, WsClient, postgres_url, services_available,
    tenant, token, token_with, workspace_binary,
};
use sdk_core::ids::{RoomId, UserId};
use sdk_core::protocol::{ClientFrame, PresenceStatus, ServerFrame};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

fn join(r: &RoomId) -> ClientFrame {
    ClientFrame::JoinRoom { room_id: r.clone() }
}

fn to_room(id: &str, room: &RoomId, payload: Value) -> ClientFrame {
    ClientFrame::Message {
        message_id: Some(id.into()),
        message_type: "chat.message".into(),
        interaction_class: None,
        recipient_id: None,
        room_id: Some(room.clone()),
        payload,
        metadata: None,
    }
}

fn direct(id: &str, user: &str, payload: Value) -> ClientFrame {
    ClientFrame::Message {
        message_id: Some(id.into()),
        message_type: "chat.direct".into(),
        interaction_class: None,
        recipient_id: Some(UserId::new(user).unwrap()),
        room_id: None,
        payload,
        metadata: None,
    }
}

async fn get_json(http: &reqwest::Client, url: String, token: &str) -> Value {
    http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

fn is_presence(client: &str, status: PresenceStatus) -> impl FnMut(&ServerFrame) -> bool + '_ {
    move |f| {
        matches!(f, ServerFrame::Presence { client_id, status: s, .. }
            if client_id.as_str() == client && *s == status)
    }
}

async fn publish(http: &reqwest::Client, node: &Node, token: &str, events: Vec<Value>) -> Vec<u64> {
    let r = http
        .post(node.http("/api/events"))
        .bearer_auth(token)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let v: Value = r.json().await.unwrap();
    v["results"].as_array().unwrap().iter().map(|r| r["sequence"].as_u64().unwrap()).collect()
}

async fn start_cluster(n: usize, config: &NodeConfig) -> (Vec<Node>, reqwest::Client) {
    let http = reqwest::Client::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Node::start(&format!("node-{i}"), config).await);
    }
    for node in &nodes {
        node.wait_health(&http, "healthy").await;
    }
    (nodes, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_presence_and_direct_messages_cross_processes() {
    if !services_available().await {
        return;
    }
    let (nodes, _http) = start_cluster(2, &NodeConfig::cluster()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let t = tenant();
    let r = room("standup");
    let mut y = WsClient::connect(b, &token(&t, "yara", &[]), "y-1").await;
    y.send(&join(&r)).await;
    y.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    let mut x = WsClient::connect(a, &token(&t, "xavier", &[]), "x-1").await;
    x.send(&join(&r)).await;
    x.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    x.send(&ClientFrame::Presence {
        status: PresenceStatus::Online,
        metadata: Some(json!({"typing": true})),
        room_id: None,
    })
    .await;
    // Fan-out across processes: y (on b) hears x (on a) come online.
    y.recv_until(is_presence("x-1", PresenceStatus::Online)).await;
    // Presence lives in Redis: z, joining on b, is told who is online on a.
    let mut z = WsClient::connect(b, &token(&t, "zoe", &[]), "z-1").await;
    z.send(&join(&r)).await;
    z.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    let p = z.recv_until(is_presence("x-1", PresenceStatus::Online)).await;
    assert!(matches!(p, ServerFrame::Presence { metadata: Some(m), .. } if m["typing"] == true));
    // A room message from a reaches the members on b.
    x.send(&to_room("m-1", &r, json!({"text": "hello from a"}))).await;
    for c in [&mut y, &mut z] {
        let m = c.recv_until(|f| matches!(f, ServerFrame::Message { .. })).await;
        assert!(
            matches!(&m, ServerFrame::Message { message_id, payload, .. }
            if message_id == "m-1" && payload["text"] == "hello from a"),
            "{m:?}"
        );
    }
    // A direct message from b reaches the user on a.
    y.send(&direct("dm-1", "xavier", json!({"text": "psst"}))).await;
    // (The sender's own socket is skipped for room messages, so x's next message is this one.)
    let m = x.recv_until(|f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(
        matches!(&m, ServerFrame::Message { message_id, sender_id, .. }
        if message_id == "dm-1" && sender_id.as_str() == "yara"),
        "{m:?}"
    );
    // A client reconnecting to the other process is still in its rooms.
    drop(x);
    let mut x = WsClient::connect(b, &token(&t, "xavier", &[]), "x-1").await;
    y.send(&to_room("m-2", &r, json!({"text": "welcome back"}))).await;
    let m = x.recv_until(|f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(matches!(&m, ServerFrame::Message { message_id, .. } if message_id == "m-2"), "{m:?}");
}

/// Read events on `c` until one has sequence `last`, pinging every second (the heartbeat that
/// keeps presence alive). Returns the sequences seen.
async fn events_through(c: &mut WsClient, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            f = c.recv() => {
                if let ServerFrame::Event { event } = f.expect("the socket stays open") {
                    seen.push(event.sequence);
                    if event.sequence >= last {
                        return seen;
                    }
                }
            }
            _ = heartbeat.tick() => c.send(&ClientFrame::Ping { nonce: 1 }).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_users_go_offline_and_its_clients_resume_elsewhere_gap_free() {
    if !services_available().await {
        return;
    }
    let config = NodeConfig::cluster().with("PF2_PRESENCE_TTL_SECS", "3");
    let (mut nodes, http) = start_cluster(2, &config).await;
    let t = tenant();
    let svc = token(&t, "svc", &["service"]);
    let r = room("ops");
    let mut y = WsClient::connect(&nodes[1], &token(&t, "yara", &[]), "y-1").await;
    y.send(&join(&r)).await;
    y.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    let mut x = WsClient::connect(&nodes[0], &token(&t, "xavier", &[]), "x-1").await;
    x.send(&join(&r)).await;
    x.send(&ClientFrame::Subscribe {
        after: Some(0),
        event_types: vec![],
        attributes: Default::default(),
    })
    .await;
    x.send(&ClientFrame::Presence {
        status: PresenceStatus::Online,
        metadata: None,
        room_id: None,
    })
    .await;
    y.recv_until(is_presence("x-1", PresenceStatus::Online)).await;

    let events = |from: u64, n: u64| {
        (from..from + n)
            .map(|i| json!({"eventType": "feed.item", "payload": {"i": i}}))
            .collect::<Vec<_>>()
    };
    let mut published = Vec::new();
    for batch in 0..20 {
        published.extend(publish(&http, &nodes[1], &svc, events(batch * 10, 10)).await);
    }
    let mut seen = events_through(&mut x, 200).await;
    // kill -9 the process x is connected to.
    nodes[0].kill().await;
    // x reads what was already on its way, then its socket dies with the process.
    while let Some(f) = x.recv().await {
        if let ServerFrame::Event { event } = f {
            seen.push(event.sequence);
        }
    }
    // Its user goes offline by itself: the Redis entry expires, a live process announces it.
    y.recv_until(is_presence("x-1", PresenceStatus::Offline)).await;
    let mut z = WsClient::connect(&nodes[1], &token(&t, "zoe", &[]), "z-1").await;
    z.send(&join(&r)).await;
    z.send(&ClientFrame::Ping { nonce: 77 }).await;
    loop {
        match z.recv().await.expect("open") {
            ServerFrame::Presence { client_id, .. } if client_id.as_str() == "x-1" => {
                panic!("x's presence outlived its process")
            }
            ServerFrame::Pong { nonce: 77 } => break,
            _ => {}
        }
    }
    // Events keep coming while x is away; x reconnects to the other process and resumes.
    for batch in 20..40 {
        published.extend(publish(&http, &nodes[1], &svc, events(batch * 10, 10)).await);
    }
    let last_seen = *seen.last().unwrap();
    let mut x = WsClient::connect(&nodes[1], &token(&t, "xavier", &[]), "x-1").await;
    x.send(&ClientFrame::Subscribe {
        after: Some(last_seen),
        event_types: vec![],
        attributes: Default::default(),
    })
    .await;
    let resumed = tokio::spawn(async move {
        let got = events_through(&mut x, 500).await;
        (x, got)
    });
    for batch in 40..50 {
        published.extend(publish(&http, &nodes[1], &svc, events(batch * 10, 10)).await);
    }
    let (_x, got) = resumed.await.unwrap();
    seen.extend(got);
    let want: Vec<u64> = published.clone();
    assert_eq!(want, (1..=500).collect::<Vec<_>>());
    let first_bad = seen.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        seen == want,
        "every event exactly once, in order, across the kill: {} seen, first difference at {first_bad:?}, around {:?}",
        seen.len(),
        first_bad.map(|i| &seen[i.saturating_sub(3)..(i + 3).min(seen.len())])
    );
}

/// Spawn a `bus-worker`; its stdout lines come back on the channel.
fn spawn_worker(
    node: &Node,
    token: &str,
    group: &str,
    consumer: &str,
    run: &str,
    stall_after: Option<u64>,
    stalled: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(workspace_binary("bus-worker"));
    cmd.args(["--url", &node.http(""), "--token", token, "--group", group])
        .args(["--consumer", consumer, "--ledger", &postgres_url(), "--run", run])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(n) = stall_after {
        cmd.args(["--stall-after", &n.to_string()]);
    }
    let mut child = cmd.spawn().expect("spawn bus-worker");
    let out = child.stdout.take().unwrap();
    let name = consumer.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("STALLED") {
                let _ = stalled.send(name.clone());
            }
        }
    });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_workers_applies_10000_events_exactly_once_through_kill_9() {
    if !services_available().await {
        return;
    }
    let (nodes, http) = start_cluster(2, &NodeConfig::cluster()).await;
    let t = tenant();
    let svc = token(&t, "svc", &["service"]);
    let group = "ledger";
    let r = http
        .put(nodes[0].http(&format!("/api/events/subscriptions/{group}")))
        .bearer_auth(&svc)
        .json(&json!({"kind": "group", "visibilityTimeoutMs": 1500, "maxDeliveries": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&postgres_url())
        .await
        .unwrap();
    for ddl in LEDGER_SCHEMA {
        // Concurrent runs may race on CREATE TABLE IF NOT EXISTS; the loser's error is harmless.
        let _ = sqlx::query(ddl).execute(&db).await;
    }
    let run = t.clone();
    sqlx::query("INSERT INTO bus_effects (run, total, applied) VALUES ($1, 0, 0)")
        .bind(&run)
        .execute(&db)
        .await
        .unwrap();

    // 10,000 events, published through both processes while the workers run.
    let publisher = {
        let (http, svc) = (http.clone(), svc.clone());
        let targets: Vec<String> = nodes.iter().map(|n| n.http("/api/events")).collect();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for batch in 0..20u64 {
                let events: Vec<Value> = (0..500u64)
                    .map(|i| {
                        let id = uuid::Uuid::new_v4().to_string();
                        ids.push(id.clone());
                        json!({"eventId": id, "eventType": "ledger.entry", "payload": {"n": batch * 500 + i}})
                    })
                    .collect();
                let r = http
                    .post(&targets[batch as usize % 2])
                    .bearer_auth(&svc)
                    .json(&json!({ "events": events }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
            ids
        })
    };
    let (stalled_tx, mut stalled) = tokio::sync::mpsc::unbounded_channel();
    // Three members, each of which stops mid-batch (effects committed, acks not sent) and is
    // killed with SIGKILL, then replaced by a member on the other process.
    let mut workers = vec![
        spawn_worker(&nodes[0], &svc, group, "w1", &run, Some(500), stalled_tx.clone()),
        spawn_worker(&nodes[1], &svc, group, "w2", &run, Some(700), stalled_tx.clone()),
        spawn_worker(&nodes[0], &svc, group, "w3", &run, Some(900), stalled_tx.clone()),
    ];
    for kill in 1..=3 {
        let who = tokio::time::timeout(SAFETY * 2, stalled.recv())
            .await
            .expect("a worker stalls")
            .unwrap();
        let idx: usize = match who.as_str() {
            "w1" => 0,
            "w2" => 1,
            "w3" => 2,
            other => panic!("unexpected stall of {other}"),
        };
        let _ = workers[idx].start_kill();
        let _ = workers[idx].wait().await;
        let name = format!("{who}-replacement");
        let node = &nodes[(idx + 1) % 2];
        workers.push(spawn_worker(node, &svc, group, &name, &run, None, stalled_tx.clone()));
        eprintln!("kill {kill}: {who} killed mid-batch, {name} started");
    }
    let ids: BTreeSet<String> = publisher.await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), 10_000);
    // Wait until the group has nothing left: every event acknowledged.
    let deadline = tokio::time::Instant::now() + SAFETY * 3;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let s = get_json(&http, nodes[1].http(&format!("/api/events/subscriptions/{group}")), &svc)
            .await;
        if s["lag"] == 0 && s["pending"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the group never drained: {s}");
    }
    for w in &mut workers {
        let _ = w.start_kill();
    }
    let ledger: Vec<String> = sqlx::query_scalar("SELECT event_id FROM bus_ledger WHERE run = $1")
        .bind(&run)
        .fetch_all(&db)
        .await
        .unwrap();
    let ledger_set: BTreeSet<String> = ledger.iter().cloned().collect();
    assert_eq!(ledger.len(), 10_000, "one effect per event");
    assert_eq!(ledger_set, ids, "every published event, and nothing else");
    let (total, applied): (i64, i64) =
        sqlx::query_as("SELECT total, applied FROM bus_effects WHERE run = $1")
            .bind(&run)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(applied, 10_000);
    assert_eq!(total, (0..10_000i64).sum::<i64>(), "each effect applied exactly once");
    let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bus_deliveries WHERE run = $1")
        .bind(&run)
        .fetch_one(&db)
        .await
        .unwrap();
    let redelivered: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT event_id FROM bus_deliveries WHERE run = $1 GROUP BY event_id HAVING COUNT(*) > 1) d",
    )
    .bind(&run)
    .fetch_one(&db)
    .await
    .unwrap();
    eprintln!(
        "10,000 events: {deliveries} deliveries, {redelivered} events redelivered after 3 kills"
    );
    assert!(
        redelivered > 0 && deliveries > 10_000,
        "the kills left leased, unacknowledged events to redeliver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_no_write_degrades_health_and_fan_out_returns() {
    if !services_available().await {
        return;
    }
    let mut redis = OwnRedis::start().await;
    let config = NodeConfig { redis_url: Some(redis.url()), ..NodeConfig::cluster() };
    let (nodes, http) = start_cluster(2, &config).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let t = tenant();
    let svc = token(&t, "svc", &["service"]);
    let r = room("lobby");
    let mut x = WsClient::connect(a, &token(&t, "xavier", &[]), "x-1").await;
    let mut y = WsClient::connect(b, &token(&t, "yara", &[]), "y-1").await;
    for c in [&mut x, &mut y] {
        c.send(&join(&r)).await;
        c.recv_until(|f| matches!(f, ServerFrame::RoomJoined { .. })).await;
    }
    let say = |id: &str| to_room(id, &r, json!({}));
    let heard = |id: &'static str| move |f: &ServerFrame| matches!(f, ServerFrame::Message { message_id, .. } if message_id == id);
    x.send(&say("before")).await;
    y.recv_until(heard("before")).await;

    redis.stop().await;
    let health = a.wait_health(&http, "degraded").await;
    assert_eq!(health["services"]["redis"]["status"], "unhealthy", "{health}");
    assert_eq!(health["services"]["database"]["status"], "healthy");
    b.wait_health(&http, "degraded").await;
    // Every write path keeps working: bus publishes on a, reconcile and Class D on b.
    let mut seqs = publish(
        &http,
        a,
        &svc,
        (0..20).map(|i| json!({"eventType": "outage.event", "payload": {"i": i}})).collect(),
    )
    .await;
    let user = token(&t, "writer", &[]);
    let ops: Vec<Value> = (1..=10u64)
        .map(|i| {
            json!({
                "operationId": format!("op-{i}-{t}"), "clientId": "laptop", "clientSeq": i, "tenantId": t,
                "entityType": "todo", "entityId": format!("t{i}"), "operationType": "CREATE",
                "payload": {"title": format!("todo {i}")}, "timestamp": "2026-11-23T10:00:00Z",
                "vectorClock": {"laptop": i}
            })
        })
        .collect();
    let rec = http
        .post(b.http("/api/reconciliation/reconcile"))
        .bearer_auth(&user)
        .json(&json!({"requestId": "outage-1", "clientId": "laptop", "tenantId": t, "operations": ops, "requestedAt": "2026-11-23T10:00:06Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rec.status(), 200);
    let tx = http
        .post(b.http("/api/transactions"))
        .bearer_auth(&user)
        .header("idempotency-key", format!("order-{t}"))
        .json(&json!({"type": "order.create", "payload": {"sku": "milk"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(tx.status(), 202);
    let status_url = tx.json::<Value>().await.unwrap()["statusUrl"].as_str().unwrap().to_string();
    // Long-polling on a sees what b wrote, though no wake-up can cross (a re-reads the log).
    let mut after = 0u64;
    let mut types = Vec::new();
    let deadline = tokio::time::Instant::now() + SAFETY;
    while !types.iter().any(|t: &String| t.starts_with("transaction.")) {
        let page =
            get_json(&http, a.http(&format!("/api/events/poll?lastEventId={after}&wait=5")), &user)
                .await;
        for e in page["events"].as_array().unwrap() {
            types.push(e["eventType"].as_str().unwrap().to_string());
        }
        after = page["nextEventId"].as_str().unwrap().parse().unwrap();
        assert!(tokio::time::Instant::now() < deadline, "a never saw b's writes: {types:?}");
    }
    assert_eq!(types.iter().filter(|t| *t == "outage.event").count(), 20);
    assert_eq!(types.iter().filter(|t| *t == "todo.created").count(), 10);
    let settled = get_json(&http, b.http(&status_url), &user).await;
    assert_eq!(settled["status"], "confirmed");

    redis.restart().await;
    a.wait_health(&http, "healthy").await;
    b.wait_health(&http, "healthy").await;
    x.send(&say("after")).await;
    y.recv_until(heard("after")).await;
    seqs.extend(publish(&http, b, &svc, vec![json!({"eventType": "outage.over"})]).await);
    let all = get_json(&http, a.http("/api/events/poll?lastEventId=0&limit=1000"), &user).await;
    let stored: BTreeSet<u64> =
        all["events"].as_array().unwrap().iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert!(seqs.iter().all(|s| stored.contains(s)), "no write lost");
    assert_eq!(stored.len() as u64, *stored.iter().max().unwrap(), "the log has no gap");
}

/// A poison event in a group whose members sit on different processes: exactly three
/// deliveries in all (the count is the database's, not a process's), then the dead-letter
/// queue; fixed and reprocessed through another process, a member gets it once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_three_deliveries_across_processes() {
    if !services_available().await {
        return;
    }
    let (nodes, http) = start_cluster(2, &NodeConfig::cluster()).await;
    let t = tenant();
    let svc = token(&t, "svc", &["service"]);
    let post = |node: &Node, path: &str, body: Value| {
        let req = http.post(node.http(path)).bearer_auth(&svc).json(&body);
        let path = path.to_string();
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let r = http
        .put(nodes[0].http("/api/events/subscriptions/mailer"))
        .bearer_auth(&svc)
        .json(&json!({"kind": "group", "retryBackoffMs": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    publish(
        &http,
        &nodes[1],
        &svc,
        vec![json!({"eventType": "mail.send", "payload": {"to": "broken@"}})],
    )
    .await;
    let claim = json!({"consumer": "m", "max": 1, "waitMs": 10_000});
    let mut outcomes = Vec::new();
    for attempt in 0..3 {
        let node = &nodes[attempt % 2];
        let got = post(node, "/api/events/subscriptions/mailer/claim", claim.clone()).await;
        let d = &got["deliveries"][0];
        assert_eq!(d["attempt"], attempt as u64 + 1, "{got}");
        let nack = json!({"sequence": d["event"]["sequence"], "leaseToken": d["leaseToken"], "reason": "bounced"});
        outcomes.push(post(node, "/api/events/subscriptions/mailer/nack", nack).await);
    }
    let statuses: Vec<&str> = outcomes.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["retry", "retry", "dead_lettered"]);
    let dlq_id = outcomes[2]["dlqId"].as_str().unwrap().to_string();
    let dl = get_json(&http, nodes[1].http(&format!("/api/events/dlq/{dlq_id}")), &svc).await;
    assert_eq!(dl["deliveryCount"], 3);
    let fixed = http
        .patch(nodes[1].http(&format!("/api/events/dlq/{dlq_id}")))
        .bearer_auth(&svc)
        .json(&json!({"payload": {"to": "ok@example.com"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(fixed.status(), 200);
    // A member long-polling on one process is woken by a reprocess on the other.
    let waiting = {
        let req = http
            .post(nodes[0].http("/api/events/subscriptions/mailer/claim"))
            .bearer_auth(&svc)
            .json(&claim);
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    post(&nodes[1], &format!("/api/events/dlq/{dlq_id}/reprocess"), json!({})).await;
    let got = waiting.await.unwrap();
    let d = &got["deliveries"][0];
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["event"]["payload"]["to"], "ok@example.com");
    let ack = json!({"deliveries": [{"sequence": d["event"]["sequence"], "leaseToken": d["leaseToken"]}]});
    let acked = post(&nodes[0], "/api/events/subscriptions/mailer/ack", ack).await;
    assert_eq!(acked["results"][0]["status"], "acked");
}

/// A collaborative document open on two processes: an edit synced on one reaches the client on
/// the other without it asking (the hub there re-reads the stored changes on the cluster's
/// `document` envelope and pushes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_edit_on_one_process_reaches_a_client_on_the_other() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use pf2_automerge::DocumentPeer;
    use pf2_automerge::automerge::transaction::Transactable;
    use pf2_automerge::automerge::{ObjType, ROOT, ReadDoc};
    if !services_available().await {
        return;
    }
    let (nodes, _http) = start_cluster(2, &NodeConfig::cluster()).await;
    let t = tenant();
    let tok = token(&t, "writer", &[]);
    let sync_frame = |p: &mut DocumentPeer| {
        p.generate("server").map(|m| ClientFrame::DocSync {
            document_id: "notes".into(),
            message: B64.encode(m),
            more: false,
        })
    };
    // Exchange with the server until it has nothing more for us (a ping orders the replies).
    async fn settle(
        ws: &mut WsClient,
        p: &mut DocumentPeer,
        frame: impl Fn(&mut DocumentPeer) -> Option<ClientFrame>,
    ) {
        for nonce in 1..100u64 {
            let sent = frame(p);
            if let Some(f) = &sent {
                ws.send(f).await;
            }
            ws.send(&ClientFrame::Ping { nonce }).await;
            let mut got = false;
            loop {
                match ws.recv().await.expect("open") {
                    ServerFrame::DocSync { message, more, .. } => {
                        assert!(!more, "a small document's messages fit one frame");
                        p.receive("server", &B64.decode(message).unwrap()).unwrap();
                        got = true;
                    }
                    ServerFrame::Pong { nonce: n } if n == nonce => break,
                    ServerFrame::Error { message, .. } => panic!("{message}"),
                    _ => {}
                }
            }
            if sent.is_none() && !got {
                return;
            }
        }
        panic!("no settle");
    }
    let mut alice = DocumentPeer::new(b"alice");
    let text = alice.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    alice.doc().splice_text(&text, 0, 0, "v1").unwrap();
    let mut a = WsClient::connect(&nodes[0], &tok, "alice").await;
    settle(&mut a, &mut alice, sync_frame).await;
    let mut bob = DocumentPeer::new(b"bob");
    let mut b = WsClient::connect(&nodes[1], &tok, "bob").await;
    settle(&mut b, &mut bob, sync_frame).await;
    assert_eq!(bob.doc().text(&text).unwrap(), "v1");
    // Alice edits on process 0; Bob, on process 1, only listens.
    alice.doc().splice_text(&text, 2, 0, " and v2").unwrap();
    settle(&mut a, &mut alice, sync_frame).await;
    while bob.doc().text(&text).unwrap() != "v1 and v2" {
        if let ServerFrame::DocSync { message, .. } = b.recv().await.expect("open") {
            bob.receive("server", &B64.decode(message).unwrap()).unwrap();
            // Answer, so the server knows what Bob has and sends the rest.
            if let Some(f) = sync_frame(&mut bob) {
                b.send(&f).await;
            }
        }
    }
}

/// Sync rules across processes: a grant made through one process moves data in for a client
/// connected to the other — its socket is poked through Redis, and its pull brings the tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_made_on_one_process_moves_data_in_for_a_client_on_another() {
    if !services_available().await {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pf2-rules-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[grants]
read  = ["user:{sub}", "project:{projects[]}"]
write = ["user:{sub}", "project:{projects[]}"]
[entities.task]
channels = ["project:{projectId}"]
[entities.member]
channels = ["project:{projectId}"]
grants = { user = "{userId}", read = ["project:{projectId}"], write = ["project:{projectId}"] }
"#,
    )
    .unwrap();
    let config = NodeConfig::cluster().with("PF2_SYNC_RULES", rules.to_str().unwrap());
    let (nodes, http) = start_cluster(2, &config).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let t = tenant();
    let alice = token_with(&t, "alice", &[], &[("projects", r#"["p1"]"#)]);
    let op = |seq: u64, entity_type: &str, id: &str, payload: Value| {
        json!({
            "operationId": format!("alice-{seq}"), "clientId": "alice-web", "clientSeq": seq,
            "tenantId": t, "entityType": entity_type, "entityId": id, "operationType": "CREATE",
            "payload": payload, "timestamp": "2026-12-04T00:00:00Z", "vectorClock": {"alice-web": seq},
        })
    };
    let reconcile = |id: &str, ops: Vec<Value>| {
        let body =
            json!({"requestId": id, "clientId": "alice-web", "tenantId": t, "operations": ops});
        http.post(a.http("/api/reconciliation/reconcile")).bearer_auth(&alice).json(&body).send()
    };
    let r = reconcile("r1", vec![op(1, "task", "k1", json!({"projectId": "p1", "title": "one"}))])
        .await
        .unwrap();
    assert!(r.status().is_success());

    let mut bob = WsClient::connect(b, &token(&t, "bob", &[]), "bob-1").await;
    bob.send(&ClientFrame::Pull { since: 0, limit: None, channels: None, held: None }).await;
    let ServerFrame::Delta { version, entities, scope, .. } =
        bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    assert!(entities.is_empty(), "bob reads nothing of p1 yet");
    let held = scope.unwrap().channels;

    let member = op(2, "member", "m-bob", json!({"userId": "bob", "projectId": "p1"}));
    let r = reconcile("r2", vec![member]).await.unwrap();
    assert!(r.status().is_success());
    let poke = bob.recv_until(|f| matches!(f, ServerFrame::Poke { .. })).await;
    assert!(matches!(poke, ServerFrame::Poke { version: v } if v > version), "{poke:?}");
    bob.send(&ClientFrame::Pull { since: version, limit: None, channels: None, held }).await;
    let ServerFrame::Delta { entities, .. } =
        bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    let mut ids: Vec<&str> = entities.iter().map(|e| e.entity_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["k1", "m-bob"], "the task moved in whole, through the other process");
    let _ = std::fs::remove_dir_all(dir);
}
