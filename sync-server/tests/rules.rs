//! Sync rules on the server (docs/api/sync-rules.md), on a real SQLite file and on the real
//! PostgreSQL: writes are gated by the writer's grants, from their token and from grant rows.

mod common;

use common::net::{self, WsClient};
use common::{Backend, TestApp};
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use serde_json::{Value, json};

on_both_backends!(
    a_write_needs_write_on_every_channel,
    a_grant_row_grants_and_its_deletion_revokes,
    admins_and_services_keep_tenant_wide_access,
    a_tenant_indexed_under_other_rules_is_rebuilt,
    a_pull_shows_only_what_the_reader_may_read,
    a_grant_moves_entities_in_and_a_move_takes_them_out,
    snapshots_and_conflicts_hide_what_is_not_readable,
    reconcile_deltas_are_made_for_their_reader,
    partial_sync_narrows_a_pull,
    event_polls_show_only_readable_entities_events,
    the_socket_filters_pulls_and_event_streams,
    a_grant_pokes_the_users_live_socket_and_its_pull_moves_data_in,
    rooms_need_read_to_join_and_write_to_send,
    documents_need_read_to_open_and_write_to_change,
    a_revoked_grant_ends_the_live_stream_and_the_room,
    a_client_behind_the_pruned_history_starts_over,
    conflicts_are_shown_only_to_readers_and_resolved_only_by_writers,
    published_events_and_transactions_reach_only_their_readers,
);

/// The issue's rule file, as the docs' first example.
const RULES: &str = include_str!("../../sdk-core/tests/data/example-rules.toml");

async fn start(backend: Backend) -> Option<TestApp> {
    TestApp::start_with(backend, |c| c.sync_rules_text = Some(RULES.into())).await
}

/// Each operation's status, and its error code when refused.
fn outcomes(v: &Value) -> Vec<String> {
    v["resolvedOperations"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match r["error"]["code"].as_str() {
            Some(code) => format!("{}:{code}", r["status"].as_str().unwrap()),
            None => r["status"].as_str().unwrap().to_string(),
        })
        .collect()
}

async fn a_write_needs_write_on_every_channel(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let r = app
        .reconcile(
            &alice,
            "a1",
            "ca",
            vec![
                app.op("ca", 1)
                    .create("todo", "t1", json!({"owner": "alice", "title": "milk"}))
                    .build(),
            ],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let r = app
        .reconcile(
            &bob,
            "b1",
            "cb",
            vec![
                app.op("cb", 1)
                    .create("todo", "t2", json!({"owner": "alice", "title": "spam"}))
                    .build(),
                app.op("cb", 2).update("todo", "t1", json!({"title": "mine now"})).build(),
                app.op("cb", 3).delete("todo", "t1").build(),
                app.op("cb", 4).create("secret", "s1", json!({"owner": "bob"})).build(),
                app.op("cb", 5).create("todo", "t3", json!({"title": "nobody's"})).build(),
                app.op("cb", 6)
                    .create("todo", "t4", json!({"owner": "bob", "title": "mine"}))
                    .build(),
            ],
        )
        .await;
    let v = r.json();
    assert_eq!(
        outcomes(&v),
        [
            "refused:AUTHZ_FAILED",
            "refused:AUTHZ_FAILED",
            "refused:AUTHZ_FAILED",
            "refused:AUTHZ_FAILED",
            "refused:AUTHZ_FAILED",
            "applied"
        ],
        "into alice's channel, her todo changed or deleted, a type without a rule, a todo in no channel: refused; bob's own: applied"
    );
    assert_eq!(v["currentVersion"], "2", "the refusals changed nothing: {v}");
    // Every refusal consumed its clientSeq: the queue goes on from 7.
    let r = app
        .reconcile(
            &bob,
            "b2",
            "cb",
            vec![app.op("cb", 7).update("todo", "t4", json!({"title": "still mine"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    // Alice's todo is as she left it.
    let r = app.get("/api/reconciliation/snapshot/todo/t1", &alice).await;
    assert_eq!(r.json()["data"]["title"], "milk");
}

async fn a_grant_row_grants_and_its_deletion_revokes(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let alice = app.token_with("alice", json!({"projects": ["p1"]}));
    let bob = app.token("bob");
    let task = |c: &str, seq: u64, id: &str| {
        app.op(c, seq).create("task", id, json!({"projectId": "p1", "title": id})).build()
    };
    let r = app.reconcile(&alice, "a1", "ca", vec![task("ca", 1, "k1")]).await;
    assert_eq!(outcomes(&r.json()), ["applied"], "alice's token grants p1");
    let r = app.reconcile(&bob, "b1", "cb", vec![task("cb", 1, "k2")]).await;
    assert_eq!(outcomes(&r.json()), ["refused:AUTHZ_FAILED"], "bob holds nothing in p1 yet");

    let member = json!({"userId": "bob", "projectId": "p1"});
    let r = app
        .reconcile(
            &bob,
            "b2",
            "cb",
            vec![app.op("cb", 2).create("member", "m1", member.clone()).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["refused:AUTHZ_FAILED"], "nobody adds themselves");
    let r = app
        .reconcile(&alice, "a2", "ca", vec![app.op("ca", 2).create("member", "m1", member).build()])
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"], "a writer of p1 adds bob");
    let r = app.reconcile(&bob, "b3", "cb", vec![task("cb", 3, "k2")]).await;
    assert_eq!(outcomes(&r.json()), ["applied"], "the grant row grants bob write on p1");

    let r = app
        .reconcile(&alice, "a3", "ca", vec![app.op("ca", 3).delete("member", "m1").build()])
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let r = app.reconcile(&bob, "b4", "cb", vec![task("cb", 4, "k3")]).await;
    assert_eq!(outcomes(&r.json()), ["refused:AUTHZ_FAILED"], "deleting the row revoked it");
}

async fn admins_and_services_keep_tenant_wide_access(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    for (n, role) in ["admin", "service"].into_iter().enumerate() {
        let token = app.token_for(&app.tenant, "ops", &[role]);
        let client = format!("c-{role}");
        let r = app
            .reconcile(
                &token,
                &format!("r-{role}"),
                &client,
                vec![
                    app.op(&client, 1)
                        .create("todo", &format!("t{n}"), json!({"owner": "alice"}))
                        .build(),
                    app.op(&client, 2).create("anything", &format!("x{n}"), json!({})).build(),
                ],
            )
            .await;
        assert_eq!(outcomes(&r.json()), ["applied", "applied"], "{role}");
    }
}

/// A tenant written under one rule file and then served under another is re-indexed from its
/// entities before its first use: the grant row written before counts under the new file.
async fn a_tenant_indexed_under_other_rules_is_rebuilt(backend: Backend) {
    let Some(first) = TestApp::start_with(backend, |c| {
        c.sync_rules_text = Some(RULES.replace("[entities.member]", "[entities.membership]"))
    })
    .await
    else {
        return;
    };
    let admin = first.token_for(&first.tenant, "ops", &["admin"]);
    let member = json!({"userId": "bob", "projectId": "p1"});
    let r = first
        .reconcile(
            &admin,
            "r1",
            "c1",
            vec![first.op("c1", 1).create("member", "m1", member).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);

    // The same database and tenant, now under RULES (where member rows grant).
    let second = TestApp::reopen(&first, |c| c.sync_rules_text = Some(RULES.into())).await;
    let bob = second.token("bob");
    let r = second
        .reconcile(
            &bob,
            "b1",
            "cb",
            vec![second.op("cb", 1).create("task", "k1", json!({"projectId": "p1"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"], "the member row grants bob p1 under RULES");
}

/// `GET /api/reconciliation/delta` as `token`'s client: since, and the channels held.
async fn pull(app: &TestApp, token: &str, since: u64, held: Option<&Value>) -> Value {
    let mut path = format!("/api/reconciliation/delta?since={since}&clientId=reader");
    if let Some(h) = held {
        path.push_str(&format!("&held={}", urlencode(&h.to_string())));
    }
    let r = app.get(&path, token).await;
    r.expect(200);
    r.json()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    let mut ids: Vec<String> = v[field]
        .as_array()
        .map(|a| a.iter().map(|e| e["entityId"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Alice's private todos, a project with tasks, and bob with nothing yet.
async fn seed(app: &TestApp) {
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let r = app
        .reconcile(
            &alice,
            "seed",
            "ca",
            vec![
                app.op("ca", 1)
                    .create(
                        "todo",
                        "secret-todo",
                        json!({"owner": "alice", "title": "alice's diary"}),
                    )
                    .build(),
                app.op("ca", 2)
                    .create("task", "k1", json!({"projectId": "p1", "title": "one"}))
                    .build(),
                app.op("ca", 3)
                    .create("task", "k2", json!({"projectId": "p1", "title": "two"}))
                    .build(),
                app.op("ca", 4)
                    .create("task", "k9", json!({"projectId": "p2", "title": "other project"}))
                    .build(),
            ],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"; 4]);
    let bob = app.token("bob");
    let r = app
        .reconcile(
            &bob,
            "seed-bob",
            "cb",
            vec![
                app.op("cb", 1)
                    .create("todo", "bob-todo", json!({"owner": "bob", "title": "bob's"}))
                    .build(),
            ],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
}

async fn a_pull_shows_only_what_the_reader_may_read(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let d = pull(&app, &app.token("bob"), 0, None).await;
    assert_eq!(ids(&d, "entities"), ["bob-todo"]);
    assert_eq!(d["scope"]["channels"], json!(["user:bob"]));
    assert_eq!(d["entities"][0]["channels"], json!(["user:bob"]));
    let body = d.to_string();
    for hidden in ["secret-todo", "diary", "k1", "k9", "alice"] {
        assert!(!body.contains(hidden), "{hidden} leaked: {body}");
    }
    let d = pull(&app, &app.token_for(&app.tenant, "ops", &["admin"]), 0, None).await;
    assert_eq!(ids(&d, "entities").len(), 5, "an admin syncs the whole tenant");
    assert_eq!(d["scope"].get("channels"), None);
}

async fn a_grant_moves_entities_in_and_a_move_takes_them_out(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let bob = app.token("bob");
    let first = pull(&app, &bob, 0, None).await;
    let (since, held) = (first["version"].as_u64().unwrap(), first["scope"]["channels"].clone());

    // Alice adds bob to p1: its tasks — unchanged since bob's cursor — move in whole.
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let member = json!({"userId": "bob", "projectId": "p1"});
    let r = app
        .reconcile(
            &alice,
            "add",
            "ca",
            vec![app.op("ca", 5).create("member", "m1", member).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let d = pull(&app, &bob, since, Some(&held)).await;
    assert_eq!(ids(&d, "entities"), ["k1", "k2", "m1"], "{d}");
    assert_eq!(d["scope"]["channels"], json!(["project:p1", "user:bob"]));
    let (since, held) = (d["version"].as_u64().unwrap(), d["scope"]["channels"].clone());
    assert!(!d.to_string().contains("k9"));

    // A task moves from p1 to p2: bob gets a removal for it (and nothing of its new state).
    let r = app
        .reconcile(
            &alice,
            "move",
            "ca",
            vec![app.op("ca", 6).update("task", "k2", json!({"projectId": "p2"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let d = pull(&app, &bob, since, Some(&held)).await;
    assert_eq!(ids(&d, "entities"), Vec::<String>::new());
    assert_eq!(ids(&d, "removed"), ["k2"]);
    assert!(!d.to_string().contains("p2"), "{d}");
    let (since, held) = (d["version"].as_u64().unwrap(), d["scope"]["channels"].clone());

    // The membership ends: the scope no longer holds p1 (the client forgets what only p1 gave).
    let r = app
        .reconcile(&alice, "remove", "ca", vec![app.op("ca", 7).delete("member", "m1").build()])
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let d = pull(&app, &bob, since, Some(&held)).await;
    assert_eq!(d["scope"]["channels"], json!(["user:bob"]));
    assert!(!d.to_string().contains("k1"), "{d}");
}

async fn snapshots_and_conflicts_hide_what_is_not_readable(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let bob = app.token("bob");
    let hidden = app.get("/api/reconciliation/snapshot/todo/secret-todo", &bob).await;
    let absent = app.get("/api/reconciliation/snapshot/todo/no-such-todo", &bob).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.error_code(), "NOT_FOUND");
    assert_eq!(
        String::from_utf8_lossy(&hidden.body).replace("secret-todo", "X"),
        String::from_utf8_lossy(&absent.body).replace("no-such-todo", "X"),
        "a hidden entity answers exactly as a missing one"
    );
    assert_eq!(app.get("/api/reconciliation/snapshot/todo/bob-todo", &bob).await.status, 200);
    let c = app.get("/api/reconciliation/snapshot/task?limit=1", &bob).await.json();
    assert_eq!(c["items"], json!([]), "{c}");
    let c = app.get("/api/reconciliation/snapshot/todo?limit=1", &bob).await.json();
    assert_eq!(c["items"].as_array().unwrap().len(), 1);
    assert_eq!(c["items"][0]["entityId"], "bob-todo");
    assert!(c["nextCursor"].is_null(), "{c}");
}

/// Conflicts on an entity are listed only to its readers, and resolving one needs write; to
/// anyone else it does not exist.
async fn conflicts_are_shown_only_to_readers_and_resolved_only_by_writers(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |c| {
        c.sync_rules_text = Some(RULES.into());
        c.strategies = vec!["todo=manual".into()];
    })
    .await
    else {
        return;
    };
    let alice = app.token("alice");
    let todo = |c: &str, seq, v: &str| {
        app.op(c, seq).update("todo", "diary", json!({"owner": "alice", "title": v}))
    };
    let r = app
        .reconcile(
            &alice,
            "c0",
            "a0",
            vec![
                app.op("a0", 1)
                    .create("todo", "diary", json!({"owner": "alice", "title": "t"}))
                    .build(),
            ],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let base = json!({"a0": 1});
    let r = app
        .reconcile(&alice, "c1", "a1", vec![todo("a1", 1, "A").at(50).after(&base).build()])
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let r = app
        .reconcile(&alice, "c2", "a2", vec![todo("a2", 1, "B").at(40).after(&base).build()])
        .await;
    let id =
        r.json()["conflicts"][0]["conflictId"].as_str().expect("a manual conflict").to_string();

    let bob = app.token("bob");
    let list = app.get("/api/reconciliation/conflicts", &bob).await;
    list.expect(200);
    assert_eq!(list.json()["conflicts"], json!([]), "bob may not read the diary");
    let path = format!("/api/reconciliation/conflicts/{id}/resolve");
    let r = app.post(&path, &bob, &json!({"choice": "client"})).await;
    let unknown = app
        .post("/api/reconciliation/conflicts/no-such/resolve", &bob, &json!({"choice": "client"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        String::from_utf8_lossy(&r.body).replace(&id, "X"),
        String::from_utf8_lossy(&unknown.body).replace("no-such", "X"),
        "a hidden conflict answers as an unknown one"
    );
    let list = app.get("/api/reconciliation/conflicts", &alice).await.json();
    assert_eq!(list["conflicts"].as_array().unwrap().len(), 1);
    app.post(&path, &alice, &json!({"choice": "client"})).await.expect(200);
}

async fn reconcile_deltas_are_made_for_their_reader(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let bob = app.token("bob");
    let mut body = app.reconcile_body(
        "r",
        "cb",
        vec![app.op("cb", 2).update("todo", "bob-todo", json!({"title": "again"})).build()],
    );
    body["lastKnownVersion"] = json!(0);
    let v = app.post("/api/reconciliation/reconcile", &bob, &body).await.json();
    assert_eq!(ids(&v, "deltaUpdates"), ["bob-todo"], "{v}");
    assert_eq!(v["scope"]["channels"], json!(["user:bob"]));
    // The replay computes it again, for the same reader.
    let again = app.post("/api/reconciliation/reconcile", &bob, &body).await.json();
    assert_eq!(ids(&again, "deltaUpdates"), ["bob-todo"]);
    assert!(!again.to_string().contains("secret-todo"));
}

async fn partial_sync_narrows_a_pull(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let path = format!(
        "/api/reconciliation/delta?since=0&channels={}",
        urlencode(&json!(["project:p2", "project:p7"]).to_string())
    );
    let d = app.get(&path, &alice).await.json();
    assert_eq!(ids(&d, "entities"), ["k9"]);
    assert_eq!(d["scope"]["channels"], json!(["project:p2"]), "p7 is not granted: not synced");
    let bad = app.get("/api/reconciliation/delta?since=0&channels=p2", &alice).await;
    assert_eq!(bad.status, 400);
    // A long scoped sync says how much remains: alice reads 4 (her todo and p1's and p2's tasks).
    let first = app.get("/api/reconciliation/delta?since=0&limit=3", &alice).await.json();
    assert_eq!(
        (first["hasMore"].as_bool(), first["remaining"].as_u64()),
        (Some(true), Some(1)),
        "{first}"
    );
}

async fn event_polls_show_only_readable_entities_events(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let page = app.get("/api/events/poll?lastEventId=0&limit=100", &app.token("bob")).await.json();
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["payload"]["entity"]["entityId"], "bob-todo");
    assert_eq!(events[0]["metadata"]["channels"], json!(["user:bob"]));
    assert!(!page.to_string().contains("secret-todo"));
    let all = app
        .get(
            "/api/events/poll?lastEventId=0&limit=100",
            &app.token_for(&app.tenant, "ops", &["admin"]),
        )
        .await
        .json();
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
}

/// Over `/v1/ws`: a pull and an event stream show bob only what he may read. The stream is
/// read up to an event of bob's own, written after alice's: everything before it has arrived.
async fn the_socket_filters_pulls_and_event_streams(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let served = net::serve(app.state.clone()).await;
    seed(&app).await;
    let mut bob = WsClient::connect(served.addr, &app.token("bob"), "cb-ws", Codec::Json).await;
    bob.send(&ClientFrame::Pull { since: 0, limit: None, channels: None, held: None }).await;
    let delta = bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await;
    let ServerFrame::Delta { entities, scope, .. } = &delta else { unreachable!() };
    let got: Vec<&str> = entities.iter().map(|e| e.entity_id.as_str()).collect();
    assert_eq!(got, ["bob-todo"]);
    assert_eq!(scope.as_ref().unwrap().channels, Some(vec!["user:bob".to_string()]));

    bob.send(&ClientFrame::Subscribe {
        after: Some(0),
        event_types: vec![],
        attributes: Default::default(),
    })
    .await;
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let r = app
        .reconcile(
            &alice,
            "later",
            "ca",
            vec![
                app.op("ca", 5)
                    .update("todo", "secret-todo", json!({"title": "more secrets"}))
                    .build(),
            ],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let r = app
        .reconcile(
            &app.token("bob"),
            "mine",
            "cb",
            vec![app.op("cb", 2).update("todo", "bob-todo", json!({"title": "last"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let mut seen = Vec::new();
    loop {
        let f = bob.recv().await;
        let text = serde_json::to_string(&f).unwrap();
        assert!(!text.contains("secret"), "leaked over the socket: {text}");
        if let ServerFrame::Event { event } = &f {
            seen.push(event.payload["entity"]["entityId"].as_str().unwrap_or("").to_string());
            if event.payload["entity"]["state"]["title"] == "last" {
                break;
            }
        }
    }
    assert_eq!(seen, ["bob-todo", "bob-todo"]);
}

/// A live socket that is merely connected hears of a grant made for its user (a poke), and the
/// pull that poke causes carries the newly readable entities whole.
async fn a_grant_pokes_the_users_live_socket_and_its_pull_moves_data_in(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let served = net::serve(app.state.clone()).await;
    seed(&app).await;
    let mut bob = WsClient::connect(served.addr, &app.token("bob"), "cb-ws", Codec::Json).await;
    bob.send(&ClientFrame::Pull { since: 0, limit: None, channels: None, held: None }).await;
    let ServerFrame::Delta { version, scope, .. } =
        bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    let held = scope.unwrap().channels;
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let member = json!({"userId": "bob", "projectId": "p1"});
    let r = app
        .reconcile(
            &alice,
            "add",
            "ca",
            vec![app.op("ca", 5).create("member", "m1", member).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let poke = bob.recv_until(|f| matches!(f, ServerFrame::Poke { .. })).await;
    let ServerFrame::Poke { version: now } = poke else { unreachable!() };
    assert!(now > version);
    bob.send(&ClientFrame::Pull { since: version, limit: None, channels: None, held }).await;
    let ServerFrame::Delta { entities, .. } =
        bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    let mut got: Vec<&str> = entities.iter().map(|e| e.entity_id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["k1", "k2", "m1"]);
}

/// Rooms, direct messages and documents as channels.
const SOCIAL: &str = r#"
[grants]
read  = ["lobby", "{rooms[]}", "doc:{docs[]}", "doc:{editable[]}"]
write = ["{rooms[]}", "dm:{dms[]}", "doc:{editable[]}"]
[direct]
channels = ["dm:{recipient}"]
[documents]
channels = ["doc:{id}"]
"#;

fn refused_code(f: &ServerFrame) -> Option<&str> {
    match f {
        ServerFrame::Error { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

async fn next_answer(ws: &mut WsClient) -> ServerFrame {
    ws.recv_until(|f| {
        matches!(
            f,
            ServerFrame::Error { .. }
                | ServerFrame::RoomJoined { .. }
                | ServerFrame::MessageAck { .. }
        )
    })
    .await
}

async fn rooms_need_read_to_join_and_write_to_send(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |c| c.sync_rules_text = Some(SOCIAL.into())).await
    else {
        return;
    };
    let served = net::serve(app.state.clone()).await;
    let room = |r: &str| sdk_core::ids::RoomId::new(r).unwrap();
    let send = |to_room: Option<&str>, to_user: Option<&str>| ClientFrame::Message {
        message_id: None,
        message_type: "chat".into(),
        interaction_class: Some(sdk_core::interaction::InteractionClass::B),
        recipient_id: to_user.map(|u| sdk_core::ids::UserId::new(u).unwrap()),
        room_id: to_room.map(room),
        payload: json!({"text": "hi"}),
        metadata: None,
    };
    let mut carol = WsClient::connect(served.addr, &app.token("carol"), "carol", Codec::Json).await;
    carol.send(&ClientFrame::JoinRoom { room_id: room("secret") }).await;
    assert_eq!(refused_code(&next_answer(&mut carol).await), Some("AUTHZ_FAILED"));
    carol.send(&ClientFrame::JoinRoom { room_id: room("lobby") }).await;
    assert!(matches!(next_answer(&mut carol).await, ServerFrame::RoomJoined { .. }));
    carol.send(&send(Some("lobby"), None)).await;
    assert_eq!(refused_code(&next_answer(&mut carol).await), Some("AUTHZ_FAILED"), "read only");
    carol.send(&send(None, Some("dave"))).await;
    assert_eq!(refused_code(&next_answer(&mut carol).await), Some("AUTHZ_FAILED"), "no dm write");

    let dave_token = app.token_with("dave", json!({"rooms": ["team"], "dms": ["carol"]}));
    let mut dave = WsClient::connect(served.addr, &dave_token, "dave", Codec::Json).await;
    dave.send(&ClientFrame::JoinRoom { room_id: room("team") }).await;
    assert!(matches!(next_answer(&mut dave).await, ServerFrame::RoomJoined { .. }));
    dave.send(&send(Some("team"), None)).await;
    assert!(matches!(next_answer(&mut dave).await, ServerFrame::MessageAck { .. }));
    dave.send(&send(None, Some("carol"))).await;
    assert!(
        matches!(next_answer(&mut dave).await, ServerFrame::MessageAck { .. }),
        "dave may dm carol"
    );
    // The Class B message went to the log for the room's readers only.
    let page = app.get("/api/events/poll?lastEventId=0", &app.token("carol")).await.json();
    assert_eq!(page["events"], json!([]), "carol may not read team: {page}");
    let page = app.get("/api/events/poll?lastEventId=0", &dave_token).await.json();
    assert_eq!(page["events"][0]["metadata"]["channels"], json!(["team"]));
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "dave does not read dm:carol: {page}");
}

async fn documents_need_read_to_open_and_write_to_change(backend: Backend) {
    use pf2_automerge::DocumentPeer;
    use pf2_automerge::automerge::transaction::Transactable;
    use pf2_automerge::automerge::{ObjType, ROOT};
    let Some(app) = TestApp::start_with(backend, |c| c.sync_rules_text = Some(SOCIAL.into())).await
    else {
        return;
    };
    /// Automerge sync rounds over REST until neither side has more to say; the last status.
    async fn sync(
        app: &TestApp,
        token: &str,
        doc: &str,
        client: &str,
        peer: &mut DocumentPeer,
    ) -> (u16, String) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        for _ in 0..10 {
            let message = peer.generate("server").map(|m| b64.encode(m));
            let body = json!({"clientId": client, "message": message});
            let r = app.post(&format!("/api/documents/{doc}/sync"), token, &body).await;
            if r.status != 200 {
                return (r.status.as_u16(), r.error_code());
            }
            let answers = r.json()["messages"].as_array().cloned().unwrap_or_default();
            if message.is_none() && answers.is_empty() {
                return (200, String::new());
            }
            for a in answers {
                peer.receive("server", &b64.decode(a.as_str().unwrap()).unwrap()).unwrap();
            }
        }
        (200, String::new())
    }
    let editor = app.token_with("ed", json!({"editable": ["notes"]}));
    let mut ed = DocumentPeer::new(b"ed");
    let text = ed.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    ed.doc().splice_text(&text, 0, 0, "plans").unwrap();
    assert_eq!(
        sync(&app, &editor, "notes", "ed", &mut ed).await.0,
        200,
        "an editor's change is kept"
    );

    let reader = app.token_with("rita", json!({"docs": ["notes"]}));
    let mut rita = DocumentPeer::new(b"rita");
    assert_eq!(sync(&app, &reader, "notes", "rita", &mut rita).await.0, 200, "a reader syncs");
    let snap = app.get("/api/documents/notes/snapshot", &reader).await;
    assert_eq!(snap.status, 200);
    let before = snap.json()["heads"].clone();
    let text = rita.doc().put_object(ROOT, "mine", ObjType::Text).unwrap();
    rita.doc().splice_text(&text, 0, 0, "not allowed").unwrap();
    let refused = sync(&app, &reader, "notes", "rita", &mut rita).await;
    assert_eq!(refused, (403, "AUTHZ_FAILED".to_string()));
    let after = app.get("/api/documents/notes/snapshot", &reader).await.json()["heads"].clone();
    assert_eq!(before, after, "nothing of the reader's change was kept");

    let outsider = app.token("olga");
    let r = app.get("/api/documents/notes/snapshot", &outsider).await;
    assert_eq!(r.error_code(), "AUTHZ_FAILED");
    let r = app.get("/api/documents/no-such-doc/snapshot", &outsider).await;
    assert_eq!(r.error_code(), "AUTHZ_FAILED", "the same answer whether it exists or not");
}

/// A live event stream and a room membership end with the grant: after the revocation's poke
/// and the pull it causes, the stream carries no more of the project's events and the socket
/// is out of the project's room.
async fn a_revoked_grant_ends_the_live_stream_and_the_room(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let served = net::serve(app.state.clone()).await;
    seed(&app).await;
    let alice = app.token_with("alice", json!({"projects": ["p1", "p2"]}));
    let member = json!({"userId": "bob", "projectId": "p1"});
    let r = app
        .reconcile(
            &alice,
            "add",
            "ca",
            vec![app.op("ca", 5).create("member", "m1", member).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);

    let mut bob = WsClient::connect(served.addr, &app.token("bob"), "cb-ws", Codec::Json).await;
    let pull = |since, held| ClientFrame::Pull { since, limit: None, channels: None, held };
    bob.send(&pull(0, None)).await;
    let ServerFrame::Delta { version, scope, .. } =
        bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await
    else {
        unreachable!()
    };
    let room = sdk_core::ids::RoomId::new("project:p1").unwrap();
    bob.send(&ClientFrame::JoinRoom { room_id: room.clone() }).await;
    assert!(matches!(next_answer(&mut bob).await, ServerFrame::RoomJoined { .. }));
    bob.send(&ClientFrame::Subscribe {
        after: Some(version),
        event_types: vec![],
        attributes: Default::default(),
    })
    .await;

    let task = |seq, id: &str| {
        app.op("ca", seq).create("task", id, json!({"projectId": "p1", "title": id})).build()
    };
    let r = app.reconcile(&alice, "k5", "ca", vec![task(6, "k5")]).await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let seen = |f: &ServerFrame| match f {
        ServerFrame::Event { event } => {
            event.payload["entity"]["entityId"].as_str().map(str::to_string)
        }
        _ => None,
    };
    let f = bob.recv_until(|f| seen(f).is_some()).await;
    assert_eq!(seen(&f).as_deref(), Some("k5"), "a member hears the project's events");

    let r = app
        .reconcile(&alice, "remove", "ca", vec![app.op("ca", 7).delete("member", "m1").build()])
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let ServerFrame::Poke { version: now } =
        bob.recv_until(|f| matches!(f, ServerFrame::Poke { .. })).await
    else {
        unreachable!()
    };
    bob.send(&pull(version, scope.unwrap().channels)).await;
    bob.recv_until(|f| matches!(f, ServerFrame::Delta { .. })).await;
    assert!(now > version);
    let tenant = sdk_core::ids::TenantId::new(app.tenant.clone()).unwrap();
    let client = sdk_core::ids::ClientId::new("cb-ws").unwrap();
    assert!(!app.state.hub.is_member(&tenant, &client, &room), "out of the room");

    let r = app.reconcile(&alice, "k6", "ca", vec![task(8, "k6")]).await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let r = app
        .reconcile(
            &app.token("bob"),
            "mine",
            "cb",
            vec![app.op("cb", 2).update("todo", "bob-todo", json!({"title": "after"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    let mut after = Vec::new();
    loop {
        let f = bob.recv_until(|f| seen(f).is_some()).await;
        let id = seen(&f).unwrap();
        after.push(id.clone());
        if id == "bob-todo" {
            break;
        }
    }
    // (The revoking event itself, m1's deletion, may come before or after the poke.)
    after.retain(|id| id != "m1");
    assert_eq!(after, ["bob-todo"], "nothing of p1 after the revocation: no k6");
}

/// Removals are kept as long as the log: a client whose cursor is older than what was pruned is
/// told to start over (its delta would miss removals), and from zero it is whole again.
async fn a_client_behind_the_pruned_history_starts_over(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    seed(&app).await;
    let bob = app.token("bob");
    let first = pull(&app, &bob, 0, None).await;
    let since = first["version"].as_u64().unwrap();
    let r = app
        .reconcile(
            &bob,
            "more",
            "cb",
            vec![app.op("cb", 2).update("todo", "bob-todo", json!({"title": "later"})).build()],
        )
        .await;
    assert_eq!(outcomes(&r.json()), ["applied"]);
    app.state.store.prune_events(i64::MAX, &[], Some(&app.tenant)).await.unwrap();
    let d = pull(&app, &bob, since, Some(&first["scope"]["channels"])).await;
    assert_eq!(d["scope"]["reset"], true, "{d}");
    assert_eq!(d["entities"], json!([]));
    let again = pull(&app, &bob, 0, None).await;
    assert_eq!(again["scope"].get("reset"), None);
    assert_eq!(ids(&again, "entities"), ["bob-todo"]);
}

/// An event a service publishes with `channels` reaches only their readers (without, everyone);
/// a Class D transaction is its creator's.
async fn published_events_and_transactions_reach_only_their_readers(backend: Backend) {
    let Some(app) = start(backend).await else { return };
    let service = app.token_for(&app.tenant, "billing", &["service"]);
    let events = json!({"events": [
        {"eventType": "invoice.ready", "payload": {"n": 1}, "channels": ["project:p1"]},
        {"eventType": "news.posted", "payload": {"n": 2}},
    ]});
    app.post("/api/events", &service, &events).await.expect(201);
    let types = |v: Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventType"].as_str().unwrap().to_string())
            .collect()
    };
    let alice = app.token_with("alice", json!({"projects": ["p1"]}));
    let bob = app.token("bob");
    let poll = "/api/events/poll?lastEventId=0";
    assert_eq!(types(app.get(poll, &alice).await.json()), ["invoice.ready", "news.posted"]);
    assert_eq!(types(app.get(poll, &bob).await.json()), ["news.posted"], "p1's event is not bob's");
    let bad = json!({"eventType": "x.y", "channels": [""]});
    assert_eq!(app.post("/api/events", &service, &bad).await.status, 400);

    let r = app
        .send(
            axum::http::Method::POST,
            "/api/transactions",
            Some(&alice),
            &[("idempotency-key", "order-1")],
            Some(
                serde_json::to_vec(&json!({"type": "order.create", "payload": {"sku": "milk"}}))
                    .unwrap(),
            ),
        )
        .await;
    assert_eq!(r.status, 202);
    let id = r.json()["transactionId"].as_str().unwrap().to_string();
    let path = format!("/api/transactions/{id}");
    assert_eq!(app.get(&path, &alice).await.status, 200);
    let hidden = app.get(&path, &bob).await;
    let absent = app.get("/api/transactions/no-such", &bob).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(
        String::from_utf8_lossy(&hidden.body).replace(&id, "X"),
        String::from_utf8_lossy(&absent.body).replace("no-such", "X"),
    );
    // Settled, its event is alice's alone.
    let accept = sync_server::workers::AcceptObjects;
    sync_server::workers::process_pending_in(&app.state, &accept, Some(&app.tenant)).await.unwrap();
    let done = |v: Value| types(v).into_iter().filter(|t| t.starts_with("transaction.")).count();
    assert_eq!(done(app.get(poll, &alice).await.json()), 1);
    assert_eq!(done(app.get(poll, &bob).await.json()), 0, "alice's order is not bob's");
}
