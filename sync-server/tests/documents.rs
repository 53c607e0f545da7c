//! Automerge documents through the real server (`--strategy doc=automerge`), on SQLite and
//! PostgreSQL: two clients edit one document offline, push their changes as `CRDT` operations,
//! and both end with the server's document — the same text, nothing lost, no conflict.

mod common;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Backend, TestApp};
use pf2_automerge::DocumentPeer;
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
