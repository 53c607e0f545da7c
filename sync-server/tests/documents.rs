//! Automerge documents through the real server (`--strategy doc=automerge`), on SQLite and
//! PostgreSQL: two clients edit one document offline, push their changes as `CRDT` operations,
//! and both end with the server's document — the same text, nothing lost, no conflict.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Backend, TestApp};
use pf2_automerge::DocumentPeer;
use pf2_automerge::automerge::transaction::Transactable;
use pf2_automerge::automerge::{ObjType, ROOT, ReadDoc};
use pf2_automerge::parts::{self, Reassembly};
use serde_json::{Value, json};

on_both_backends!(concurrent_offline_text_edits_converge_through_the_server);

/// One client's push of `changes` (each one `CRDT` operation) from `first_seq` on.
fn crdt_ops(app: &TestApp, client: &str, first_seq: u64, changes: &[Vec<u8>]) -> Vec<Value> {
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let seq = first_seq + i as u64;
            json!({
                "operationId": format!("{client}-{seq}-{}", app.tenant),
                "clientId": client,
                "clientSeq": seq,
                "tenantId": app.tenant,
                "entityType": "doc",
                "entityId": "notes",
                "operationType": "CRDT",
                "payload": B64.encode(c),
                "timestamp": sdk_core::hlc::HlcTimestamp::new(1_800_000_000_000 + seq, 0).to_string(),
                "vectorClock": { client: seq },
            })
        })
        .collect()
}

async fn server_doc(app: &TestApp, token: &str, actor: &[u8]) -> DocumentPeer {
    let r = app.get("/api/reconciliation/snapshot/doc/notes", token).await;
    r.expect(200);
    let bytes = B64.decode(r.json()["data"]["crdt"].as_str().unwrap()).unwrap();
    DocumentPeer::load(&bytes, actor).unwrap()
}

async fn concurrent_offline_text_edits_converge_through_the_server(backend: Backend) {
    let app =
        match TestApp::start_with(backend, |c| c.strategies = vec!["doc=automerge".into()]).await {
            Some(a) => a,
            None => return,
        };
    let token = app.token("writer");
    // Alice creates the document; Bob starts from the server's copy.
    let mut alice = DocumentPeer::new(b"alice");
    let text = alice.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    alice.doc().splice_text(&text, 0, 0, "shared notes").unwrap();
    let created = alice.changes_since(&[]);
    let r = app.reconcile(&token, "a-1", "alice", crdt_ops(&app, "alice", 1, &created)).await;
    r.expect(200);
    assert_eq!(r.json()["resolvedOperations"][0]["status"], "applied");
    let mut bob = server_doc(&app, &token, b"bob").await;
    // Both edit offline: 300 insertions each, at both ends and in the middle.
    let (ha, hb) = (alice.heads(), bob.heads());
    for i in 0..300 {
        alice.doc().splice_text(&text, 0, 0, &format!("A{i} ")).unwrap();
        let len = bob.doc().length(&text);
        bob.doc().splice_text(&text, len, 0, &format!(" B{i}")).unwrap();
        let mid = bob.doc().length(&text) / 2;
        bob.doc().splice_text(&text, mid, 0, "|").unwrap();
        // One change per edit session, as an editor commits them.
        alice.doc().commit();
        bob.doc().commit();
    }
    assert_eq!(alice.changes_since(&ha).len(), 300);
    let (a_changes, b_changes) = (alice.changes_since(&ha), bob.changes_since(&hb));
    // Bob reconnects first, then Alice; each pushes in batches of 100 (the queue's shape).
    for (client, changes, first) in [("bob", &b_changes, 1u64), ("alice", &a_changes, 2)] {
        for (n, chunk) in changes.chunks(100).enumerate() {
            let seq = first + (n * 100) as u64;
            let r = app
                .reconcile(
                    &token,
                    &format!("{client}-{seq}"),
                    client,
                    crdt_ops(&app, client, seq, chunk),
                )
                .await;
            r.expect(200);
            let statuses: Vec<String> = r.json()["resolvedOperations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["status"].as_str().unwrap_or("").to_string())
                .collect();
            assert!(statuses.iter().all(|s| *s == "applied"), "{client}: {statuses:?}");
        }
    }
    // A retried batch (a lost response) changes nothing.
    let replay =
        app.reconcile(&token, "bob-1", "bob", crdt_ops(&app, "bob", 1, &b_changes[..100])).await;
    replay.expect(200);
    let mut server = server_doc(&app, &token, b"reader").await;
    let merged = server.doc().text(&text).unwrap();
    // Each client loads the server's document into its own replica: identical text.
    for mut peer in [alice, bob] {
        let saved = server.save();
        let mut incoming = DocumentPeer::load(&saved, b"x").unwrap();
        pf2_automerge::sync_until_quiet(&mut peer, "server", &mut incoming, "client").unwrap();
        assert_eq!(peer.doc().text(&text).unwrap(), merged);
    }
    // Bob's "|" may land inside any of his words: read the words without them.
    assert_eq!(merged.matches('|').count(), 300, "every one of Bob's middle insertions");
    let words = merged.replace('|', "");
    for i in 0..300 {
        assert!(words.contains(&format!("A{i} ")), "Alice's edit {i} kept");
        assert!(words.contains(&format!(" B{i}")), "Bob's edit {i} kept");
    }
    assert!(words.contains("shared notes"));
}

// ---- over /v1/ws: Automerge's sync protocol in `doc_sync` frames --------------------------------

use common::net::{self, WsClient as Ws};
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};

/// A new connection is a new sync session: the replica keeps only what it shares with the
/// server (`disconnected`), so its first message says what it has.
async fn reconnect(
    addr: std::net::SocketAddr,
    token: &str,
    client: &str,
    peer: &mut DocumentPeer,
) -> Ws {
    peer.disconnected("server");
    connect(addr, token, client).await
}

async fn connect(addr: std::net::SocketAddr, token: &str, client: &str) -> Ws {
    Ws::connect(addr, token, client, Codec::Json).await
}

/// One round: send what `peer` has for the server (if anything) and a ping; apply every
/// `doc_sync` that arrives before the pong. Returns (sent something, received something).
async fn round(ws: &mut Ws, peer: &mut DocumentPeer, doc: &str, nonce: u64) -> (bool, bool) {
    let sent = send_all(ws, peer, doc).await > 0;
    ws.send(&ClientFrame::Ping { nonce }).await;
    let mut received = false;
    let mut joined = Reassembly::new(usize::MAX);
    loop {
        match ws.recv().await {
            ServerFrame::DocSync { document_id, message, more, .. } if document_id == doc => {
                if let Some(m) = joined.push(doc, &B64.decode(message).unwrap(), more).unwrap() {
                    peer.receive("server", &m).unwrap();
                    received = true;
                }
            }
            ServerFrame::Pong { nonce: n } if n == nonce => return (sent, received),
            ServerFrame::Error { code, message, .. } => panic!("{code:?}: {message}"),
            _ => {}
        }
    }
}

/// Lifts api.md's 100 frames a minute per socket, for the tests that sync thousands of edits
/// through one connection in seconds — hundreds of times a person's pace: every round's ping,
/// every message carrying changes and every 32 KiB part is charged (only acknowledgements ride
/// the server's tickets, see `an_observer_answering_every_message_is_not_charged_for_it`).
fn lift_frame_rate(c: &mut sync_server::config::Config) {
    c.ws_rate = 100_000;
}

/// Send everything `peer` has for the server, in parts.
async fn send_all(ws: &mut Ws, peer: &mut DocumentPeer, doc: &str) -> usize {
    let mut frames = 0;
    while let Some(m) = peer.generate("server") {
        for (part, more) in parts::split(&m, parts::PART_BYTES) {
            let message = B64.encode(part);
            ws.send(&ClientFrame::DocSync { document_id: doc.into(), message, more }).await;
            frames += 1;
        }
    }
    frames
}

/// Read until a whole `doc_sync` message of `doc` arrives and apply it (an error panics).
async fn receive_one(ws: &mut Ws, peer: &mut DocumentPeer, doc: &str) {
    let mut joined = Reassembly::new(usize::MAX);
    loop {
        match ws.recv().await {
            ServerFrame::DocSync { document_id, message, more, .. } if document_id == doc => {
                if let Some(m) = joined.push(doc, &B64.decode(message).unwrap(), more).unwrap() {
                    peer.receive("server", &m).unwrap();
                    return;
                }
            }
            ServerFrame::Error { code, message, .. } => panic!("{code:?}: {message}"),
            _ => {}
        }
    }
}

/// At the shipped limit of 100 frames a minute: two writers make 150 edits between them (each
/// its own message, within each writer's budget, each after bob has the one before, as at a
/// person's pace), and bob, who only watches, answers every message the server sends him with
/// Automerge's acknowledgement — well over 100 frames in seconds. None is charged (each rides a
/// ticket the server's message gave), so bob is never warned; a client sending acknowledgements
/// nobody asked for is warned as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_answering_every_message_is_not_charged_for_it() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut seed = DocumentPeer::new(b"seed");
    let text = seed.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    seed.doc().commit();
    let mut s = connect(addr, &token, "seed").await;
    sync_doc(&mut s, &mut seed, "notes").await;
    drop(s);

    let mut bob = DocumentPeer::new(b"bob");
    let mut b = connect(addr, &token, "bob").await;
    sync_doc(&mut b, &mut bob, "notes").await;
    const EDITS: usize = 150;
    let watched = text.clone();
    let (seen, mut bob_has) = tokio::sync::watch::channel(0);
    let watcher = tokio::spawn(async move {
        let mut sent = 0;
        while bob.doc().length(&watched) < EDITS {
            receive_one(&mut b, &mut bob, "notes").await;
            sent += send_all(&mut b, &mut bob, "notes").await;
            seen.send_replace(bob.doc().length(&watched));
        }
        // Anything the server had to say about those frames arrives before this pong.
        b.send(&ClientFrame::Ping { nonce: 7 }).await;
        loop {
            match b.recv().await {
                ServerFrame::Pong { nonce: 7 } => return sent,
                ServerFrame::Error { code, message, .. } => panic!("bob: {code:?}: {message}"),
                _ => {}
            }
        }
    });
    for (name, actor) in [("alice", b"alice"), ("carol", b"carol")] {
        let mut w = DocumentPeer::load(&seed.save(), actor).unwrap();
        let mut ws = connect(addr, &token, name).await;
        sync_doc(&mut ws, &mut w, "notes").await;
        for _ in 0..EDITS / 2 {
            let len = w.doc().length(&text);
            bob_has.wait_for(|n| *n >= len).await.unwrap();
            w.doc().splice_text(&text, len, 0, "x").unwrap();
            w.doc().commit();
            send_all(&mut ws, &mut w, "notes").await;
            receive_one(&mut ws, &mut w, "notes").await;
            // The writer's answer to the server's acknowledgement (if any) rides its ticket.
            send_all(&mut ws, &mut w, "notes").await;
        }
    }
    let sent = watcher.await.unwrap();
    assert!(
        sent > 100,
        "bob answered {sent} messages: more than the limit, or this proves nothing"
    );

    // The same acknowledgement sent unprompted, 120 times: charged, so warned past 100.
    let mut m = connect(addr, &token, "mallory").await;
    let ack = B64.encode([0x42, 0, 0, 0, 0]);
    for _ in 0..120 {
        let f =
            ClientFrame::DocSync { document_id: "notes".into(), message: ack.clone(), more: false };
        m.send(&f).await;
    }
    let warned = m
        .recv_until(|f| {
            matches!(f, ServerFrame::Error { code: sdk_core::ErrorCode::RateLimit, .. })
        })
        .await;
    assert!(matches!(warned, ServerFrame::Error { .. }));
    served.stop().await.unwrap();
}

/// Rounds until neither side has anything to say.
async fn sync_doc(ws: &mut Ws, peer: &mut DocumentPeer, doc: &str) {
    for nonce in 1..500 {
        if round(ws, peer, doc, nonce).await == (false, false) {
            return;
        }
    }
    panic!("document sync did not settle");
}

/// Two clients edit one text offline, 1,000 edits each; they connect and sync over `/v1/ws`;
/// the server restarts in the middle; all three end with the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sync_a_document_over_websocket_through_a_server_restart() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let token = app.token("writer");
    let mut alice = DocumentPeer::new(b"alice");
    let text = alice.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    alice.doc().splice_text(&text, 0, 0, "draft").unwrap();
    alice.doc().commit();
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut a = connect(addr, &token, "alice").await;
    sync_doc(&mut a, &mut alice, "notes").await;
    let mut bob = DocumentPeer::new(b"bob");
    let mut b = connect(addr, &token, "bob").await;
    sync_doc(&mut b, &mut bob, "notes").await;
    assert_eq!(bob.doc().text(&text).unwrap(), "draft");
    drop((a, b));
    // Offline: 1,000 edits each, each its own change.
    for i in 0..1000 {
        alice.doc().splice_text(&text, 0, 0, &format!("a{i},")).unwrap();
        alice.doc().commit();
        let len = bob.doc().length(&text);
        bob.doc().splice_text(&text, len, 0, &format!(",b{i}")).unwrap();
        bob.doc().commit();
    }
    // Alice syncs; the server goes away; a new server process on the same database.
    let mut a = reconnect(addr, &token, "alice", &mut alice).await;
    sync_doc(&mut a, &mut alice, "notes").await;
    drop(a);
    served.stop().await.unwrap();
    let restarted = app.config.build().await.unwrap();
    let served = net::serve(restarted).await;
    let addr = served.addr;
    let mut b = reconnect(addr, &token, "bob", &mut bob).await;
    sync_doc(&mut b, &mut bob, "notes").await;
    let mut a = reconnect(addr, &token, "alice", &mut alice).await;
    sync_doc(&mut a, &mut alice, "notes").await;
    sync_doc(&mut b, &mut bob, "notes").await;
    let (ta, tb) = (alice.doc().text(&text).unwrap(), bob.doc().text(&text).unwrap());
    assert_eq!(ta, tb, "both clients hold the same text");
    for i in [0, 500, 999] {
        assert!(ta.contains(&format!("a{i},")) && ta.contains(&format!(",b{i}")), "edit {i}");
    }
    // And so does the server's stored document (its REST snapshot).
    let snap = app.get("/api/documents/notes/snapshot", &token).await;
    snap.expect(200);
    let save = B64.decode(snap.json()["save"].as_str().unwrap()).unwrap();
    let mut server = DocumentPeer::load(&save, b"reader").unwrap();
    assert_eq!(server.doc().text(&text).unwrap(), ta);
    assert!(snap.json()["checksum"].as_str().unwrap().starts_with("sha256:"));
    app.get("/api/documents/missing/snapshot", &token).await.expect(404);
}

/// A synthetic editing trace of 100,000 single-character operations (70 % inserts, 30 %
/// deletes, at random places), replayed by two clients taking turns in runs of 1,000 and
/// syncing through the server after each run: both clients and the server end with exactly the
/// text a plain string gets from the same trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_operation_editing_trace_through_the_server_with_two_clients() {
    let app = TestApp::start_with(Backend::Sqlite, lift_frame_rate).await.unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut peers = [DocumentPeer::new(b"alice"), DocumentPeer::new(b"bob")];
    let text = peers[0].doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    peers[0].doc().commit();
    let mut sockets = [connect(addr, &token, "alice").await, connect(addr, &token, "bob").await];
    sync_doc(&mut sockets[0], &mut peers[0], "trace").await;
    sync_doc(&mut sockets[1], &mut peers[1], "trace").await;
    let mut expected: Vec<char> = Vec::new();
    let mut rng = sdk_core::rng::SplitMix64::new(7);
    const OPS: usize = 100_000;
    const RUN: usize = 1_000;
    for run in 0..OPS / RUN {
        let who = run % 2;
        let peer = &mut peers[who];
        for op in 0..RUN {
            let len = expected.len();
            if len > 0 && rng.range(0, 9) < 3 {
                let at = rng.range(0, len as u64 - 1) as usize;
                expected.remove(at);
                peer.doc().splice_text(&text, at, 1, "").unwrap();
            } else {
                let at = rng.range(0, len as u64) as usize;
                let ch = char::from(b'a' + rng.range(0, 25) as u8);
                expected.insert(at, ch);
                peer.doc().splice_text(&text, at, 0, &ch.to_string()).unwrap();
            }
            if op % 10 == 9 {
                peer.doc().commit();
            }
        }
        peer.doc().commit();
        // The author pushes its run; the other replica pulls it before taking its turn.
        sync_doc(&mut sockets[who], &mut peers[who], "trace").await;
        sync_doc(&mut sockets[1 - who], &mut peers[1 - who], "trace").await;
    }
    let expected: String = expected.into_iter().collect();
    for p in &mut peers {
        assert_eq!(p.doc().text(&text).unwrap(), expected);
    }
    let snap = app.get("/api/documents/trace/snapshot", &token).await;
    let save = B64.decode(snap.json()["save"].as_str().unwrap()).unwrap();
    let mut server = DocumentPeer::load(&save, b"reader").unwrap();
    assert_eq!(server.doc().text(&text).unwrap(), expected);
}

/// Text that does not compress, `n` bytes of it.
fn noise(n: u32, seed: u64) -> String {
    let mut rng = sdk_core::rng::SplitMix64::new(seed);
    (0..n).map(|_| char::from(b' ' + rng.range(0, 94) as u8)).collect()
}

/// A sync message larger than a 64 KiB frame (an offline backlog of 300 KB of text) travels as
/// parts both ways: up from its author, down to a client that opens the document fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_frame_syncs_in_parts() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut alice = DocumentPeer::new(b"alice");
    let text = alice.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    for i in 0..30 {
        alice.doc().splice_text(&text, 0, 0, &noise(10_000, i)).unwrap();
        alice.doc().commit();
    }
    // What the first sync carries (asked of a copy, so Alice's own session is untouched).
    let mut copy = DocumentPeer::load(&alice.save(), b"copy").unwrap();
    let mut probe = DocumentPeer::new(b"probe");
    let hello = probe.generate("copy").unwrap();
    copy.receive("probe", &hello).unwrap();
    let backlog = copy.generate("probe").unwrap().len();
    assert!(backlog > 64 * 1024, "the first message is {backlog} bytes: more than a frame");
    let mut a = connect(addr, &token, "alice").await;
    sync_doc(&mut a, &mut alice, "big").await;
    let mut bob = DocumentPeer::new(b"bob");
    let mut b = connect(addr, &token, "bob").await;
    sync_doc(&mut b, &mut bob, "big").await;
    assert_eq!(bob.doc().text(&text).unwrap().len(), 300_000);
    assert_eq!(bob.heads(), alice.heads());
}

/// Sync over REST until neither side has anything to say (the long-polling transport).
async fn sync_over_http(app: &TestApp, token: &str, peer: &mut DocumentPeer, doc: &str) {
    // The client keeps its session; the server starts one per exchange. The first exchange
    // asks even with nothing to send (a poll); after that, done when we have nothing to say.
    for round in 0..50 {
        let out = peer.generate("server");
        if out.is_none() && round > 0 {
            return;
        }
        let body = json!({ "clientId": "poller", "message": out.as_ref().map(|m| B64.encode(m)) });
        let r = app.post(&format!("/api/documents/{doc}/sync"), token, &body).await;
        r.expect(200);
        let answers = r.json()["messages"].as_array().unwrap().clone();
        for m in &answers {
            peer.receive("server", &B64.decode(m.as_str().unwrap()).unwrap()).unwrap();
        }
    }
    panic!("REST document sync did not settle");
}

/// One `POST /api/documents/sync` round for `client` with every document of `docs`, each with
/// its message if it has one (`first`: ask even with none). Returns the answers (applied to the
/// peers), or `None` when no document had anything to say.
async fn batch_round(
    app: &TestApp,
    token: &str,
    client: &str,
    docs: &mut [(&str, &mut DocumentPeer)],
    first: bool,
) -> Option<Vec<Value>> {
    let messages: Vec<Option<String>> =
        docs.iter_mut().map(|(_, p)| p.generate("server").map(|m| B64.encode(m))).collect();
    if !first && messages.iter().all(Option::is_none) {
        return None;
    }
    let documents: Vec<Value> = docs
        .iter()
        .zip(&messages)
        .map(|((id, _), m)| json!({ "documentId": id, "message": m }))
        .collect();
    let body = json!({ "clientId": client, "documents": documents });
    let r = app.post("/api/documents/sync", token, &body).await;
    r.expect(200);
    let answers = r.json()["documents"].as_array().unwrap().clone();
    for (a, (id, p)) in answers.iter().zip(docs.iter_mut()) {
        assert_eq!(a["documentId"], *id);
        for m in a["messages"].as_array().unwrap() {
            p.receive("server", &B64.decode(m.as_str().unwrap()).unwrap()).unwrap();
        }
    }
    Some(answers)
}

/// Rounds until no document has anything to say; the versions reached, by position.
async fn batch_sync(
    app: &TestApp,
    token: &str,
    client: &str,
    docs: &mut [(&str, &mut DocumentPeer)],
) -> Vec<u64> {
    let mut versions = Vec::new();
    for round in 0..20 {
        match batch_round(app, token, client, docs, round == 0).await {
            Some(answers) => {
                versions = answers.iter().map(|a| a["version"].as_u64().unwrap()).collect()
            }
            None => return versions,
        }
    }
    panic!("batch sync did not settle");
}

fn text_doc(actor: &[u8], text: &str) -> (DocumentPeer, pf2_automerge::automerge::ObjId) {
    let mut p = DocumentPeer::new(actor);
    let t = p.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    p.doc().splice_text(&t, 0, 0, text).unwrap();
    p.doc().commit();
    (p, t)
}

/// The long-polling transport at the shipped limits: several documents sync in one request, and
/// a client waiting on the event poll for its documents is woken by a change to one of them —
/// told which, at which version — instead of polling each on a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_documents_ride_the_event_poll_and_sync_in_one_request() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let (ta, tb) = (app.token("alice"), app.token("bob"));
    let (mut notes, text) = text_doc(b"alice", "notes");
    let (mut todo, _) = text_doc(b"alice-todo", "todo");
    batch_sync(&app, &ta, "alice", &mut [("notes", &mut notes), ("todo", &mut todo)]).await;
    let (mut bob_notes, mut bob_todo) = (DocumentPeer::new(b"bob"), DocumentPeer::new(b"bob-todo"));
    let v = batch_sync(&app, &tb, "bob", &mut [("notes", &mut bob_notes), ("todo", &mut bob_todo)])
        .await;
    assert!(v[0] > 0 && v[1] > 0, "stored documents have versions: {v:?}");
    assert_eq!(bob_notes.doc().text(&text).unwrap(), "notes");

    // Nothing new at those versions: the poll parks on both documents.
    let tenant = sdk_core::ids::TenantId::new(app.tenant.clone()).unwrap();
    let started = std::time::Instant::now();
    let poll = {
        let (app, tb) = (app.clone(), tb.clone());
        let path = format!("/api/events/poll?documents=notes@{},todo@{}&wait=25", v[0], v[1]);
        tokio::spawn(async move { app.get(&path, &tb).await })
    };
    while app.state.feed.document_waiting(&tenant, "notes") == 0 {
        tokio::task::yield_now().await;
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the poll never parked");
    }
    notes.doc().splice_text(&text, 5, 0, " by alice").unwrap();
    notes.doc().commit();
    batch_sync(&app, &ta, "alice", &mut [("notes", &mut notes)]).await;
    let answer = poll.await.unwrap();
    answer.expect(200);
    let changed = answer.json()["documents"].as_array().unwrap().clone();
    assert_eq!(changed.len(), 1, "only the changed document: {changed:?}");
    assert_eq!(changed[0]["documentId"], "notes");
    assert!(changed[0]["version"].as_u64().unwrap() > v[0]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "woken by the change, not the wait"
    );
    let v2 =
        batch_sync(&app, &tb, "bob", &mut [("notes", &mut bob_notes), ("todo", &mut bob_todo)])
            .await;
    assert_eq!(bob_notes.doc().text(&text).unwrap(), "notes by alice");
    assert_eq!(v2[1], v[1], "todo did not change");
    // At the versions bob now has, a poll without waiting names no document; an old version
    // answers at once.
    let path = format!("/api/events/poll?documents=notes@{},todo@{}", v2[0], v2[1]);
    let r = app.get(&path, &tb).await;
    r.expect(200);
    assert!(r.json().get("documents").is_none(), "{}", r.json());
    let r = app.get("/api/events/poll?documents=notes@0&wait=25", &tb).await;
    assert_eq!(r.json()["documents"][0]["version"], v2[0]);

    // A poll naming its client does not end for the client's own change: alice waits, writes
    // herself, then bob writes — the poll names the document, and her sync brings bob's edit.
    let va = batch_sync(&app, &ta, "alice", &mut [("notes", &mut notes)]).await;
    let poll = {
        let (app, ta) = (app.clone(), ta.clone());
        let path = format!("/api/events/poll?documents=notes@{}&clientId=alice&wait=25", va[0]);
        tokio::spawn(async move { app.get(&path, &ta).await })
    };
    while app.state.feed.document_waiting(&tenant, "notes") == 0 {
        tokio::task::yield_now().await;
    }
    notes.doc().splice_text(&text, 0, 0, "A: ").unwrap();
    notes.doc().commit();
    let own = batch_sync(&app, &ta, "alice", &mut [("notes", &mut notes)]).await;
    while app.state.feed.document_waiting(&tenant, "notes") == 0 {
        tokio::task::yield_now().await;
    }
    assert!(!poll.is_finished(), "alice's own change did not end her poll");
    let len = bob_notes.doc().length(&text);
    bob_notes.doc().splice_text(&text, len, 0, " +bob").unwrap();
    bob_notes.doc().commit();
    batch_sync(&app, &tb, "bob", &mut [("notes", &mut bob_notes)]).await;
    let answer = poll.await.unwrap();
    answer.expect(200);
    assert!(answer.json()["documents"][0]["version"].as_u64().unwrap() > own[0]);
    batch_sync(&app, &ta, "alice", &mut [("notes", &mut notes)]).await;
    assert_eq!(notes.doc().text(&text).unwrap(), "A: notes by alice +bob");

    // One refused document does not hold up the others; bad requests change nothing.
    let body = json!({ "clientId": "bob", "documents": [
        { "documentId": "todo", "message": "not base64!" },
        { "documentId": "notes" },
    ]});
    let r = app.post("/api/documents/sync", &tb, &body).await;
    r.expect(200);
    assert_eq!(r.json()["documents"][0]["error"]["code"], "INVALID_REQUEST");
    assert!(r.json()["documents"][1].get("error").is_none());
    let many: Vec<Value> = (0..17).map(|i| json!({ "documentId": format!("d{i}") })).collect();
    let r = app
        .post("/api/documents/sync", &tb, &json!({ "clientId": "bob", "documents": many }))
        .await;
    r.expect(400);
    app.get("/api/events/poll?documents=bad%20id@1", &tb).await.expect(400);
}

/// A client on the long-polling transport syncs its document over REST with one on `/v1/ws`:
/// edits travel both ways; bad requests are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_sync_over_rest_for_long_polling_clients() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut ws_peer = DocumentPeer::new(b"ws");
    let text = ws_peer.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    ws_peer.doc().splice_text(&text, 0, 0, "over ws").unwrap();
    let mut ws = connect(addr, &token, "ws-client").await;
    sync_doc(&mut ws, &mut ws_peer, "mixed").await;
    let mut poller = DocumentPeer::new(b"poller");
    sync_over_http(&app, &token, &mut poller, "mixed").await;
    assert_eq!(poller.doc().text(&text).unwrap(), "over ws");
    for i in 0..200 {
        poller.doc().splice_text(&text, 0, 0, &format!("{i} ")).unwrap();
        poller.doc().commit();
    }
    sync_over_http(&app, &token, &mut poller, "mixed").await;
    // The socket that has the document open was pushed the poller's edits.
    sync_doc(&mut ws, &mut ws_peer, "mixed").await;
    assert_eq!(ws_peer.heads(), poller.heads());
    assert!(ws_peer.doc().text(&text).unwrap().starts_with("199 198 "));
    let before = app.get("/api/documents/mixed/snapshot", &token).await.json()["heads"].clone();
    for (body, why) in [
        (json!({ "clientId": "poller", "message": "%%%" }), "not base64"),
        (json!({ "clientId": "poller", "message": B64.encode(b"not automerge") }), "doc_sync"),
        (json!({ "message": null }), "clientId"),
        (json!({ "clientId": "poller", "extra": 1 }), "unknown field"),
    ] {
        let r = app.post("/api/documents/mixed/sync", &token, &body).await;
        r.expect(400);
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(why), "{why}: {message}");
    }
    let r = app.post("/api/documents/bad%20id/sync", &token, &json!({ "clientId": "p" })).await;
    r.expect(400);
    let after = app.get("/api/documents/mixed/snapshot", &token).await.json()["heads"].clone();
    assert_eq!(before, after, "refused requests changed nothing");
}

/// A document past its size limit is refused, and nothing of it is kept; changes are folded
/// into the save once they pass the compaction threshold, and the stored form reloads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_size_limited_and_compacted() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.max_document_bytes = 16 * 1024;
        c.document_compact_bytes = 2 * 1024;
    })
    .await
    .unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut p = DocumentPeer::new(b"writer");
    let text = p.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    let mut ws = connect(addr, &token, "writer").await;
    for i in 0..200 {
        p.doc().splice_text(&text, 0, 0, &format!("line {i}\n")).unwrap();
        p.doc().commit();
        if i % 20 == 19 {
            sync_doc(&mut ws, &mut p, "small").await;
        }
    }
    let t = tenant_of(&app);
    let stored = app.state.store.document(&t, "small").await.unwrap().unwrap();
    assert!(!stored.save.is_empty(), "compacted into the save");
    assert!(stored.changes.len() < 10, "{} changes left after compaction", stored.changes.len());
    let fresh = app.config.build().await.unwrap();
    let snap = fresh
        .documents
        .snapshot(&sync_server::access::Access::Unruled, &app.state_tenant(), "small")
        .await
        .unwrap()
        .unwrap();
    let appended: usize = stored.changes.iter().map(Vec::len).sum();
    assert_eq!(snap.stored_bytes, stored.save.len() + appended, "storedBytes is the stored form");
    let mut reloaded = DocumentPeer::load(&snap.save, b"r").unwrap();
    assert_eq!(reloaded.doc().text(&text).unwrap(), p.doc().text(&text).unwrap());
    // Text that does not compress, past 16 KiB: refused, and the stored document is as before.
    let before = app.get("/api/documents/small/snapshot", &token).await.json()["heads"].clone();
    let noise = noise(40_000, 1);
    for chunk in noise.as_bytes().chunks(4_000) {
        p.doc().splice_text(&text, 0, 0, std::str::from_utf8(chunk).unwrap()).unwrap();
        p.doc().commit();
    }
    ws.send(&ClientFrame::DocSync {
        document_id: "small".into(),
        message: B64.encode(p.generate("server").unwrap()),
        more: false,
    })
    .await;
    let refused = match ws.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await {
        ServerFrame::Error { code, message, request_id, .. } => (code, message, request_id),
        _ => unreachable!(),
    };
    assert_eq!(refused.0, sdk_core::ErrorCode::PayloadTooLarge, "{}", refused.1);
    assert_eq!(refused.2.as_deref(), Some("small"));
    let after = app.get("/api/documents/small/snapshot", &token).await.json()["heads"].clone();
    assert_eq!(before, after, "nothing of the refused change was kept");
}

fn tenant_of(app: &TestApp) -> String {
    app.tenant.clone()
}

trait StateTenant {
    fn state_tenant(&self) -> sdk_core::ids::TenantId;
}

impl StateTenant for TestApp {
    fn state_tenant(&self) -> sdk_core::ids::TenantId {
        sdk_core::ids::TenantId::new(self.tenant.clone()).unwrap()
    }
}

/// A stock `@automerge/automerge` 3.5 (npm, tests/automerge) loads the server's document bytes —
/// an `automerge` entity's and a document hub's — and makes a change the server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_automerge_from_npm_reads_the_servers_bytes_and_its_changes_are_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/automerge");
    assert!(
        dir.join("node_modules/@automerge/automerge").exists(),
        "run `npm ci --prefix sync-server/tests/automerge` (make test does) to install stock Automerge"
    );
    let app = TestApp::start_with(Backend::Sqlite, |c| c.strategies = vec!["doc=automerge".into()])
        .await
        .unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    // An entity document, written as a CRDT operation by a Rust client.
    let mut rust = DocumentPeer::new(b"rust");
    let text = rust.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    rust.doc().splice_text(&text, 0, 0, "from rust").unwrap();
    let changes = rust.changes_since(&[]);
    app.reconcile(&token, "r-1", "rust", crdt_ops(&app, "rust", 1, &changes)).await.expect(200);
    // A hub document, over /v1/ws.
    let mut hub = DocumentPeer::new(b"editor");
    let hub_text = hub.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    hub.doc().splice_text(&hub_text, 0, 0, "hub text").unwrap();
    let mut ws = connect(addr, &token, "editor").await;
    sync_doc(&mut ws, &mut hub, "hub").await;
    let out = std::process::Command::new("node")
        .arg("--experimental-websocket") // Node 20; a no-op warning on 22+
        .arg(dir.join("interop.mjs"))
        .args([format!("http://{addr}"), token.clone(), app.tenant.clone()])
        .output()
        .expect("node (20+) runs the interop script");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entityText"], "from rust", "stock Automerge reads the entity's bytes");
    assert_eq!(v["hubText"], "hub text", "and the document hub's");
    assert_eq!(v["status"], "applied", "the server accepts its change");
    let mut merged = server_doc(&app, &token, b"reader").await;
    assert_eq!(merged.doc().text(&text).unwrap(), "js+from rust");
    // Over doc_sync, stock sync messages: it joined the hub document and its edit came back.
    assert_eq!(v["joinedText"], "hub text");
    sync_doc(&mut ws, &mut hub, "hub").await;
    assert_eq!(hub.doc().text(&hub_text).unwrap(), "hub text + stock js");
}

/// REST sync bodies from outside: arbitrary bytes and mutations of a valid body (whose message
/// adds a change) are answered 200 or with an error code, never a 500, and a refused body
/// changes nothing.
#[test]
fn arbitrary_document_sync_bodies_never_fail_inside_and_change_nothing_when_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt
        .block_on(TestApp::start_with(Backend::Sqlite, |c| c.rate_reconcile = 1_000_000))
        .unwrap();
    let token = app.token("writer");
    let mut p = DocumentPeer::new(b"fuzz");
    let text = p.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    p.doc().splice_text(&text, 0, 0, "seed").unwrap();
    let valid = serde_json::to_vec(
        &json!({ "clientId": "p", "message": B64.encode(p.generate("x").unwrap()) }),
    )
    .unwrap();
    let heads = || async {
        let t = app.state_tenant();
        app.state
            .documents
            .snapshot(&sync_server::access::Access::Unruled, &t, "fz")
            .await
            .unwrap()
            .map(|s| s.heads)
    };
    let path = "/api/documents/fz/sync";
    common::post_bodies_never_fail_inside(&rt, &app, path, &token, valid, 200, &[400, 413], heads);
}

/// Two processes (two server states on one database, no Redis: neither hears of the other's
/// changes) compact the same document while both append to it: every change of both writers is
/// in the stored document. Regression: a process compacted with a save that lacked the other
/// process's appended changes, and deleted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_compacting_one_document_lose_nothing() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        lift_frame_rate(c);
        c.document_compact_bytes = 2 * 1024;
    })
    .await
    .unwrap();
    let token = app.token("writer");
    let second = app.config.build().await.unwrap();
    let served1 = net::serve(app.state.clone()).await;
    let addr1 = served1.addr;
    let served2 = net::serve(second.clone()).await;
    let addr2 = served2.addr;
    let mut alice = DocumentPeer::new(b"alice");
    let text = alice.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    let mut a = connect(addr1, &token, "alice").await;
    sync_doc(&mut a, &mut alice, "shared").await;
    let mut bob = DocumentPeer::new(b"bob");
    let mut b = connect(addr2, &token, "bob").await;
    sync_doc(&mut b, &mut bob, "shared").await;
    for i in 0..30u64 {
        for (peer, ws, who) in [(&mut alice, &mut a, "a"), (&mut bob, &mut b, "b")] {
            peer.doc().splice_text(&text, 0, 0, &format!("<{who}{i}>{}", noise(300, i))).unwrap();
            peer.doc().commit();
            sync_doc(ws, peer, "shared").await;
        }
    }
    let stored = app.state.store.document(&tenant_of(&app), "shared").await.unwrap().unwrap();
    assert!(stored.save_version >= 2, "both processes compacted: version {}", stored.save_version);
    let third = app.config.build().await.unwrap();
    let snap = third
        .documents
        .snapshot(&sync_server::access::Access::Unruled, &app.state_tenant(), "shared")
        .await
        .unwrap();
    let mut reloaded = DocumentPeer::load(&snap.unwrap().save, b"reader").unwrap();
    let t = reloaded.doc().text(&text).unwrap();
    for i in 0..30 {
        assert!(t.contains(&format!("<a{i}>")), "alice's edit {i} is stored");
        assert!(t.contains(&format!("<b{i}>")), "bob's edit {i} is stored");
    }
}

/// The workers' idle compaction folds appended changes into the save, changing nothing a
/// reader sees; a compaction naming a save version that is no longer current changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_are_compacted_and_stale_compactions_refused() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let token = app.token("writer");
    let served = net::serve(app.state.clone()).await;
    let addr = served.addr;
    let mut p = DocumentPeer::new(b"writer");
    let text = p.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    let mut ws = connect(addr, &token, "writer").await;
    for i in 0..10 {
        p.doc().splice_text(&text, 0, 0, &format!("{i} ")).unwrap();
        p.doc().commit();
        sync_doc(&mut ws, &mut p, "idle").await;
    }
    let t = tenant_of(&app);
    let before = app.state.store.document(&t, "idle").await.unwrap().unwrap();
    assert_eq!(before.changes.len(), 10);
    // Not idle long enough: nothing happens.
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(app.state.documents.compact_idle(hour).await.unwrap(), 0);
    // A stale version: refused, nothing changed.
    let stale = app.state.store.compact_document(&t, "idle", b"junk", before.seq, 41).await;
    assert_eq!(stale.unwrap(), None);
    let n = app.state.documents.compact_idle(std::time::Duration::ZERO).await;
    assert_eq!(n.unwrap(), 1);
    let after = app.state.store.document(&t, "idle").await.unwrap().unwrap();
    assert!(after.changes.is_empty() && after.save_version == before.save_version + 1);
    let mut stored = DocumentPeer::load(&after.save, b"r").unwrap();
    assert_eq!(stored.heads(), p.heads());
    // The live replica keeps working on top of the compacted store.
    p.doc().splice_text(&text, 0, 0, "more ").unwrap();
    sync_doc(&mut ws, &mut p, "idle").await;
    let fresh = app.config.build().await.unwrap();
    let snap = fresh
        .documents
        .snapshot(&sync_server::access::Access::Unruled, &app.state_tenant(), "idle")
        .await
        .unwrap();
    let mut again = DocumentPeer::load(&snap.unwrap().save, b"r2").unwrap();
    assert_eq!(again.doc().text(&text).unwrap(), p.doc().text(&text).unwrap());
}
