//! The sync server's REST surface, on a real SQLite file and on the real PostgreSQL.

mod common;

use axum::http::Method;
use common::{Backend, SECRET, TestApp, WEBHOOK_SECRET, raw_token};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

on_both_backends!(
    api_md_request_is_accepted,
    replay_gives_a_byte_identical_response,
    events_name_what_happened_to_the_entity,
    a_large_gap_answers_a_snapshot_signal_instead_of_a_delta,
    same_request_id_with_another_body_is_refused,
    a_gap_is_refused_and_heals,
    conflicts_follow_each_strategy,
    manual_conflicts_are_listed_resolved_and_audited,
    snapshots_carry_verifiable_checksums,
    collection_snapshots_page_and_verify,
    delta_reports_the_clients_confirmed_sequence,
    a_long_delta_says_how_many_entities_remain,
    poll_paginates_gap_free,
    long_poll_wakes_on_a_new_event,
    poll_below_retention_requires_a_snapshot,
    class_d_one_key_many_requests_one_execution,
    class_d_key_reuse_with_another_body_is_422,
    class_d_webhook_is_signed_and_retried,
    class_d_travels_rest_and_never_realtime,
    jwt_matrix_is_refused_with_auth_failed,
    tenant_mismatch_is_refused_on_every_route,
    super_admin_cross_tenant_access_needs_justification_and_is_audited,
    oversized_body_is_413_and_oversized_batch_is_400,
    rate_limits_answer_429_with_retry_after,
    health_metrics_and_openapi,
);

async fn api_md_request_is_accepted(backend: Backend) {
    let app = app!(backend);
    let token = app.token("user-1");
    // api.md's example, verbatim apart from the tenant: no clientSeq, "v1.0" as lastKnownVersion.
    let body = json!({
        "requestId": "req-123",
        "clientId": "client-789",
        "tenantId": app.tenant,
        "lastKnownVersion": "v1.0",
        "operations": [{
            "operationId": format!("op-001-{}", app.tenant),
            "clientId": "client-789",
            "tenantId": app.tenant,
            "entityType": "document",
            "entityId": "doc-456",
            "operationType": "UPDATE",
            "payload": { "content": "Updated text" },
            "timestamp": "2026-01-30T12:00:00Z",
            "vectorClock": { "client-789": 1 }
        }],
        "requestedAt": "2026-01-30T12:00:00Z"
    });
    let r = app.post("/api/reconciliation/reconcile", &token, &body).await;
    r.expect(200);
    let v = r.json();
    for field in ["requestId", "conflicts", "resolvedOperations", "currentVersion", "completedAt"] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["resolvedOperations"][0]["status"], "applied");
    assert_eq!(v["currentVersion"], "1");
    let snap = app.get("/api/reconciliation/snapshot/document/doc-456", &token).await;
    snap.expect(200);
    assert_eq!(snap.json()["data"], json!({ "content": "Updated text" }));
}

async fn replay_gives_a_byte_identical_response(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops = vec![
        app.op("c1", 1).create("todo", "a", json!({"title": "milk"})).build(),
        app.op("c1", 2).update("todo", "a", json!({"done": true})).build(),
    ];
    let first = app.reconcile(&token, "r-1", "c1", ops.clone()).await;
    first.expect(200);
    let again = app.reconcile(&token, "r-1", "c1", ops.clone()).await;
    again.expect(200);
    assert_eq!(first.body, again.body, "a replayed request answers the identical bytes");
    // The same operations under a new request id are duplicates with their original outcomes.
    let dup = app.reconcile(&token, "r-2", "c1", ops).await;
    let v = dup.json();
    assert_eq!(v["resolvedOperations"][0]["duplicate"], true);
    assert_eq!(
        v["resolvedOperations"][0]["version"],
        first.json()["resolvedOperations"][0]["version"]
    );
    assert_eq!(v["currentVersion"], "2", "nothing was applied twice");
}

async fn events_name_what_happened_to_the_entity(backend: Backend) {
    // Regression: two changes to a new entity in one batch were both logged as `created`.
    let app = app!(backend);
    let token = app.token("u");
    let ops = vec![
        app.op("c1", 1).create("todo", "a", json!({"title": "milk"})).build(),
        app.op("c1", 2).update("todo", "a", json!({"done": true})).build(),
        app.op("c1", 3).delete("todo", "a").build(),
    ];
    app.reconcile(&token, "r", "c1", ops).await.expect(200);
    let events = app.get("/api/events/poll", &token).await.json();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["todo.created", "todo.updated", "todo.deleted"]);
    // The entity row holds the final state of the batch.
    app.get("/api/reconciliation/snapshot/todo/a", &token).await.expect(404);
    let delta = app.get("/api/reconciliation/delta?since=0", &token).await.json();
    assert_eq!(delta["entities"][0]["deleted"], true);
    assert_eq!(delta["entities"][0]["version"], 3);
}

async fn a_large_gap_answers_a_snapshot_signal_instead_of_a_delta(backend: Backend) {
    let app = app!(backend, |c| c.max_delta = 3);
    let token = app.token("u");
    let ops: Vec<Value> = (1..=5)
        .map(|i| app.op("c1", i).create("todo", &format!("e{i}"), json!({"i": i})).build())
        .collect();
    app.reconcile(&token, "r1", "c1", ops).await.expect(200);
    let mut body = app.reconcile_body("r2", "c1", vec![]);
    body["lastKnownVersion"] = json!("1");
    let v = app.post("/api/reconciliation/reconcile", &token, &body).await.json();
    assert_eq!(v["snapshot"]["required"], true, "{v}");
    assert!(v.get("deltaUpdates").is_none());
    body["requestId"] = json!("r3");
    body["lastKnownVersion"] = json!("3");
    let v = app.post("/api/reconciliation/reconcile", &token, &body).await.json();
    assert!(v.get("snapshot").is_none());
    assert_eq!(v["deltaUpdates"].as_array().unwrap().len(), 2);
}

async fn same_request_id_with_another_body_is_refused(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![app.op("c1", 1).create("todo", "a", json!({"x": 1})).build()],
    )
    .await
    .expect(200);
    let r = app
        .reconcile(
            &token,
            "r",
            "c1",
            vec![app.op("c1", 1).create("todo", "a", json!({"x": 2})).build()],
        )
        .await;
    r.expect(422);
    assert_eq!(r.error_code(), "IDEMPOTENCY_MISMATCH");
}

async fn a_gap_is_refused_and_heals(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let r = app
        .reconcile(
            &token,
            "r1",
            "c1",
            vec![app.op("c1", 2).create("todo", "a", json!({"x": 2})).build()],
        )
        .await;
    let v = r.json();
    assert_eq!(v["resolvedOperations"][0]["status"], "refused");
    assert_eq!(v["resolvedOperations"][0]["error"]["code"], "SEQ_GAP");
    assert_eq!(v["currentVersion"], "0");
    let r = app
        .reconcile(
            &token,
            "r2",
            "c1",
            vec![
                app.op("c1", 1).create("todo", "a", json!({"x": 1})).build(),
                app.op("c1", 2).update("todo", "a", json!({"x": 2})).build(),
            ],
        )
        .await;
    let v = r.json();
    let statuses: Vec<&str> = v["resolvedOperations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["applied", "applied"]);
    assert_eq!(v["currentVersion"], "2");
}

/// Two clients edit `x` of a fresh entity from the same base; returns the second response and
/// the entity's final data.
async fn concurrent_edit(
    app: &TestApp,
    entity_type: &str,
    first: Value,
    second: Value,
) -> (Value, Value) {
    let token = app.token("u");
    // Fresh clients and request ids per entity type: each call is its own little story.
    let (c0, ca, cb) =
        (format!("{entity_type}-0"), format!("{entity_type}-a"), format!("{entity_type}-b"));
    let created = app
        .reconcile(
            &token,
            &c0,
            &c0,
            vec![app.op(&c0, 1).create(entity_type, "x", json!({"title": "t", "n": 1})).build()],
        )
        .await;
    created.expect(200);
    let base = json!({ c0.clone(): 1 });
    app.reconcile(
        &token,
        &ca,
        &ca,
        vec![app.op(&ca, 1).update(entity_type, "x", first).at(50).after(&base).build()],
    )
    .await
    .expect(200);
    let r = app
        .reconcile(
            &token,
            &cb,
            &cb,
            vec![app.op(&cb, 1).update(entity_type, "x", second).at(40).after(&base).build()],
        )
        .await;
    r.expect(200);
    let snap = app.get(&format!("/api/reconciliation/snapshot/{entity_type}/x"), &token).await;
    (r.json(), snap.json()["data"].clone())
}

async fn conflicts_follow_each_strategy(backend: Backend) {
    let app = app!(backend, |c| c.strategies = vec![
        "lwwdoc=lww".into(),
        "note=field-merge".into(),
        "form=field-merge-manual".into(),
        "contract=manual".into(),
    ]);
    // Last-write-wins: the later stamp (first writer, 50 > 40) keeps the whole object.
    let (r, data) =
        concurrent_edit(&app, "lwwdoc", json!({"title": "A"}), json!({"title": "B", "n": 9})).await;
    assert_eq!(r["resolvedOperations"][0]["resolution"], "server-kept");
    assert_eq!(data, json!({"title": "A", "n": 1}));
    // Field merge: disjoint fields merge, overlapping ones go to the later stamp.
    let (r, data) =
        concurrent_edit(&app, "note", json!({"title": "A"}), json!({"title": "B", "n": 9})).await;
    assert_eq!(r["resolvedOperations"][0]["resolution"], "fields-merged");
    assert_eq!(data, json!({"title": "A", "n": 9}));
    // Field merge with manual overlap: the rest merges, the overlap becomes a recorded conflict.
    let (r, data) =
        concurrent_edit(&app, "form", json!({"title": "A"}), json!({"title": "B", "n": 9})).await;
    assert_eq!(r["resolvedOperations"][0]["resolution"], "manual");
    assert_eq!(r["conflicts"][0]["fields"], json!(["title"]));
    assert_eq!(data, json!({"title": "A", "n": 9}));
    // Manual: the server keeps its version and records both.
    let (r, data) =
        concurrent_edit(&app, "contract", json!({"title": "A"}), json!({"title": "B"})).await;
    assert_eq!(r["resolvedOperations"][0]["resolution"], "manual");
    assert_eq!(r["conflicts"][0]["serverState"]["title"], "A");
    assert_eq!(r["conflicts"][0]["clientState"]["title"], "B");
    assert_eq!(data["title"], "A");
}

async fn manual_conflicts_are_listed_resolved_and_audited(backend: Backend) {
    let app = app!(backend, |c| c.strategies = vec!["contract=manual".into()]);
    let (r, _) =
        concurrent_edit(&app, "contract", json!({"title": "A"}), json!({"title": "B"})).await;
    let id = r["conflicts"][0]["conflictId"].as_str().unwrap().to_string();
    let token = app.token("reviewer");
    let list = app.get("/api/reconciliation/conflicts", &token).await;
    list.expect(200);
    assert_eq!(list.json()["conflicts"].as_array().unwrap().len(), 1);
    let resolved = app
        .post(
            &format!("/api/reconciliation/conflicts/{id}/resolve"),
            &token,
            &json!({"choice": "client"}),
        )
        .await;
    resolved.expect(200);
    assert_eq!(resolved.json()["status"], "resolved");
    let snap = app.get("/api/reconciliation/snapshot/contract/x", &token).await;
    assert_eq!(snap.json()["data"]["title"], "B", "the client's version now stands");
    let again = app
        .post(
            &format!("/api/reconciliation/conflicts/{id}/resolve"),
            &token,
            &json!({"choice": "server"}),
        )
        .await;
    again.expect(400);
    assert!(
        app.get("/api/reconciliation/conflicts", &token).await.json()["conflicts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let admin = app.token_for(&app.tenant, "admin-1", &["admin"]);
    let audit = app.get("/api/audit", &admin).await;
    audit.expect(200);
    let entries = audit.json()["entries"].clone();
    assert!(
        entries.as_array().unwrap().iter().any(|e| e["action"] == "conflict.resolve"
            && e["actor"] == "reviewer"
            && e["target"] == id.as_str()
            && e["outcome"] == "client"),
        "{entries}"
    );
    app.get("/api/audit", &token).await.expect(403);
}

async fn snapshots_carry_verifiable_checksums(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![
            app.op("c1", 1)
                .create("todo", "a", json!({"b": 2, "a": {"z": 1, "y": [1, 2]}}))
                .build(),
        ],
    )
    .await
    .expect(200);
    let snap = app.get("/api/reconciliation/snapshot/todo/a", &token).await;
    snap.expect(200);
    let v = snap.json();
    for field in
        ["snapshotId", "tenantId", "entityType", "version", "data", "createdAt", "checksum"]
    {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    let data = sdk_core::snapshot::canonical_json(&v["data"]);
    sdk_core::snapshot::verify(&data, v["checksum"].as_str().unwrap()).unwrap();
    let mut tampered = v["data"].clone();
    tampered["b"] = json!(3);
    assert!(
        sdk_core::snapshot::verify(
            &sdk_core::snapshot::canonical_json(&tampered),
            v["checksum"].as_str().unwrap()
        )
        .is_err()
    );
    app.get("/api/reconciliation/snapshot/todo/missing", &token).await.expect(404);
    app.get("/api/reconciliation/snapshot/1bad/a", &token).await.expect(400);
}

async fn collection_snapshots_page_and_verify(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops: Vec<Value> = (1..=25)
        .map(|i| app.op("c1", i).create("todo", &format!("e{i:02}"), json!({"i": i})).build())
        .collect();
    app.reconcile(&token, "r", "c1", ops).await.expect(200);
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/reconciliation/snapshot/todo?limit=10&cursor={c}"),
            None => "/api/reconciliation/snapshot/todo?limit=10".into(),
        };
        let page = app.get(&path, &token).await;
        page.expect(200);
        let v = page.json();
        sdk_core::snapshot::verify(
            &sdk_core::snapshot::canonical_json(&v["items"]),
            v["checksum"].as_str().unwrap(),
        )
        .unwrap();
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["entityId"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ordered, no repeats");
}

async fn delta_reports_the_clients_confirmed_sequence(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops: Vec<Value> = (1..=5)
        .map(|i| app.op("c1", i).create("todo", &format!("e{i}"), json!({"i": i})).build())
        .collect();
    app.reconcile(&token, "r", "c1", ops).await.expect(200);
    let page =
        app.get("/api/reconciliation/delta?since=0&limit=3&clientId=c1", &token).await.json();
    assert_eq!(page["type"], "delta");
    assert_eq!(page["hasMore"], true);
    assert_eq!(page["version"], 3);
    assert!(page["clientSeq"].is_null(), "only the last page confirms");
    let last =
        app.get("/api/reconciliation/delta?since=3&limit=3&clientId=c1", &token).await.json();
    assert_eq!(last["hasMore"], false);
    assert_eq!(last["entities"].as_array().unwrap().len(), 2);
    assert_eq!(last["clientSeq"], 5);
}

async fn poll_paginates_gap_free(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops: Vec<Value> = (1..=7)
        .map(|i| app.op("c1", i).create("todo", &format!("e{i}"), json!({"i": i})).build())
        .collect();
    app.reconcile(&token, "r", "c1", ops).await.expect(200);
    let mut last = "0".to_string();
    let mut seqs = Vec::new();
    loop {
        let r = app.get(&format!("/api/events/poll?lastEventId={last}&limit=3"), &token).await;
        r.expect(200);
        let v = r.json();
        for e in v["events"].as_array().unwrap() {
            assert_eq!(e["tenantId"], app.tenant.as_str());
            assert_eq!(e["eventType"], "todo.created");
            seqs.push(e["sequence"].as_u64().unwrap());
        }
        last = v["nextEventId"].as_str().unwrap().to_string();
        if v["hasMore"] == false {
            break;
        }
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    // An event id works as a cursor too.
    let first = app.get("/api/events/poll?limit=1", &token).await.json();
    let id = first["events"][0]["eventId"].as_str().unwrap().to_string();
    let after = app.get(&format!("/api/events/poll?lastEventId={id}&limit=1"), &token).await.json();
    assert_eq!(after["events"][0]["sequence"], 2);
    // Filters skip without leaving a gap in the cursor.
    let filtered = app.get("/api/events/poll?types=order.*", &token).await.json();
    assert!(filtered["events"].as_array().unwrap().is_empty());
    assert_eq!(filtered["nextEventId"], "7");
    app.get("/api/events/poll?lastEventId=nope", &token).await.expect(400);
}

async fn long_poll_wakes_on_a_new_event(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let started = Instant::now();
    let poller = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { app.get("/api/events/poll?lastEventId=0&wait=25", &token).await })
    };
    // Wait until the long-poll is parked on the notifier (a condition, not a fixed sleep).
    while app.state.notifier.waiting(&app.tenant) == 0 {
        tokio::task::yield_now().await;
        assert!(started.elapsed() < Duration::from_secs(20), "the poll never parked");
    }
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![app.op("c1", 1).create("todo", "a", json!({"x": 1})).build()],
    )
    .await
    .expect(200);
    let r = poller.await.unwrap();
    r.expect(200);
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken by the event, not by the 25 s timeout"
    );
}

async fn poll_below_retention_requires_a_snapshot(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops: Vec<Value> = (1..=3)
        .map(|i| app.op("c1", i).create("todo", &format!("e{i}"), json!({"i": i})).build())
        .collect();
    app.reconcile(&token, "r", "c1", ops).await.expect(200);
    // Everything of this tenant older than a second from now is past retention (scoped to the
    // tenant: other tests share the PostgreSQL database).
    let pruned = app
        .state
        .store
        .prune_events(sync_server::clock::now_ms() as i64 + 1000, &[], Some(&app.tenant))
        .await
        .unwrap();
    assert!(pruned >= 3);
    let r = app.get("/api/events/poll?lastEventId=1", &token).await;
    r.expect(410);
    assert_eq!(r.error_code(), "SNAPSHOT_REQUIRED");
    let ok = app.get("/api/events/poll?lastEventId=3", &token).await;
    ok.expect(200);
}

async fn class_d_one_key_many_requests_one_execution(backend: Backend) {
    let app = app!(backend);
    let token = app.token("payer");
    let body = serde_json::to_vec(
        &json!({"type": "payment.create", "payload": {"amount": 1000, "currency": "NGN"}}),
    )
    .unwrap();
    let key = format!("pay-{}", app.tenant);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (app, token, body, key) = (app.clone(), token.clone(), body.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            app.send(
                Method::POST,
                "/api/transactions",
                Some(&token),
                &[("idempotency-key", &key)],
                Some(body),
            )
            .await
        }));
    }
    let mut bodies = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        r.expect(202);
        bodies.insert(r.body);
    }
    assert_eq!(bodies.len(), 1, "100 identical responses");
    let id = serde_json::from_slice::<Value>(bodies.first().unwrap()).unwrap()["transactionId"]
        .as_str()
        .unwrap()
        .to_string();
    // A processor that counts its executions.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl sync_server::workers::TransactionProcessor for Counting {
        fn process(&self, kind: &str, payload: &Value) -> Result<Value, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sync_server::workers::AcceptObjects.process(kind, payload)
        }
    }
    let counting = Counting(Default::default());
    for _ in 0..3 {
        sync_server::workers::process_pending_in(&app.state, &counting, Some(&app.tenant))
            .await
            .unwrap();
    }
    assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1, "executed exactly once");
    let status = app.get(&format!("/api/transactions/{id}"), &token).await;
    status.expect(200);
    assert_eq!(status.json()["status"], "confirmed");
    // Exactly one execution: one confirmation event in the tenant's log.
    let events = app.get("/api/events/poll?types=transaction.*", &token).await.json();
    let confirmations: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["transactionId"] == id.as_str())
        .collect();
    assert_eq!(confirmations.len(), 1);
    assert_eq!(confirmations[0]["eventType"], "transaction.confirmed");
}

async fn class_d_key_reuse_with_another_body_is_422(backend: Backend) {
    let app = app!(backend);
    let token = app.token("payer");
    let send = |amount: i64| {
        let body =
            serde_json::to_vec(&json!({"type": "payment.create", "payload": {"amount": amount}}))
                .unwrap();
        let token = token.clone();
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/transactions",
                Some(&token),
                &[("idempotency-key", "k1")],
                Some(body),
            )
            .await
        }
    };
    send(1).await.expect(202);
    let r = send(2).await;
    r.expect(422);
    assert_eq!(r.error_code(), "IDEMPOTENCY_MISMATCH");
    let r = app
        .send(
            Method::POST,
            "/api/transactions",
            Some(&token),
            &[],
            Some(b"{\"type\":\"x\"}".to_vec()),
        )
        .await;
    r.expect(400);
    // A non-object payload fails (the default processor), with its event.
    let r = app
        .send(
            Method::POST,
            "/api/transactions",
            Some(&token),
            &[("idempotency-key", "k2")],
            Some(b"{\"type\":\"x\",\"payload\":[1]}".to_vec()),
        )
        .await;
    let id = r.json()["transactionId"].as_str().unwrap().to_string();
    sync_server::workers::process_pending_in(
        &app.state,
        &sync_server::workers::AcceptObjects,
        Some(&app.tenant),
    )
    .await
    .unwrap();
    assert_eq!(
        app.get(&format!("/api/transactions/{id}"), &token).await.json()["status"],
        "failed"
    );
}

async fn class_d_webhook_is_signed_and_retried(backend: Backend) {
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    let app = app!(backend);
    let mut state = app.state.clone();
    let mut limits = (*state.limits).clone();
    limits.webhook_base_delay = Duration::ZERO;
    state.limits = Arc::new(limits);
    // A receiver that fails the first delivery and accepts the second.
    type Deliveries = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;
    let received: Deliveries = Arc::default();
    let r2 = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let r2 = r2.clone();
            async move {
                let mut v = r2.lock().unwrap();
                v.push((headers, body.to_vec()));
                if v.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let token = app.token("payer");
    let body = serde_json::to_vec(
        &json!({"type": "order.create", "payload": {"sku": "x"}, "callbackUrl": url}),
    )
    .unwrap();
    let r = app
        .send(
            Method::POST,
            "/api/transactions",
            Some(&token),
            &[("idempotency-key", "hook-1")],
            Some(body),
        )
        .await;
    r.expect(202);
    let id = r.json()["transactionId"].as_str().unwrap().to_string();
    sync_server::workers::process_pending_in(
        &state,
        &sync_server::workers::AcceptObjects,
        Some(&app.tenant),
    )
    .await
    .unwrap();
    assert_eq!(
        sync_server::workers::deliver_callbacks_in(&state, Some(&app.tenant)).await.unwrap(),
        0,
        "first attempt fails"
    );
    assert_eq!(
        sync_server::workers::deliver_callbacks_in(&state, Some(&app.tenant)).await.unwrap(),
        1,
        "the retry succeeds"
    );
    assert_eq!(
        sync_server::workers::deliver_callbacks_in(&state, Some(&app.tenant)).await.unwrap(),
        0,
        "nothing more is owed"
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for (headers, body) in &got {
        let ts = headers["x-pf2-timestamp"].to_str().unwrap();
        let expected = sync_server::workers::sign(WEBHOOK_SECRET.as_bytes(), ts, body);
        assert_eq!(headers["x-pf2-signature"].to_str().unwrap(), expected);
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["transactionId"], id.as_str());
        assert_eq!(v["status"], "confirmed");
    }
    let status = app.get(&format!("/api/transactions/{id}"), &token).await.json();
    assert_eq!(status["callback"], json!({"state": "delivered", "attempts": 2}));
}

async fn class_d_travels_rest_and_never_realtime(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let mut op = app.op("c1", 1).create("payment", "p1", json!({"amount": 1})).build();
    op["interactionClass"] = json!("CLASS_D");
    // Class D over REST is allowed; the same operation on a realtime transport is refused by the
    // one policy gate every shell calls.
    app.reconcile(&token, "r", "c1", vec![op]).await.expect(200);
    let policy = sdk_core::interaction::InteractionClass::D
        .check_transport(sdk_core::interaction::Transport::WebSocket);
    assert_eq!(policy.unwrap_err().code(), sdk_core::ErrorCode::ClassDRealtimeForbidden);
}

async fn jwt_matrix_is_refused_with_auth_failed(backend: Backend) {
    let app = app!(backend);
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |extra: Value| common::claims(&app.tenant, extra);
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let rsa_public = std::fs::read("tests/data/rsa-public.pem").unwrap();
    let mut cases = common::bad_tokens(&app.tenant);
    cases.push(("no token", String::new()));
    for (name, token) in cases {
        let headers: Vec<(&str, &str)> = vec![];
        let r = app
            .send(
                Method::GET,
                "/api/events/poll",
                if token.is_empty() { None } else { Some(&token) },
                &headers,
                None,
            )
            .await;
        assert_eq!(r.status.as_u16(), 401, "{name}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), "AUTH_FAILED", "{name}");
    }
    // The control: a good token passes.
    app.get("/api/events/poll", &raw_token(&hs, &claims(json!({})), SECRET.as_bytes()))
        .await
        .expect(200);
    // Auth failures are audited (under tenant "-": the caller's tenant is unknown).
    let failures = app.state.store.audit_entries("-", 1000).await.unwrap();
    assert!(failures.iter().any(|e| e["action"] == "auth.failed"));

    // Issuer and audience, when configured.
    let strict = TestApp::start_with(backend, |c| {
        c.jwt_issuer = Some("https://issuer.example".into());
        c.jwt_audience = Some("pf2".into());
    })
    .await
    .unwrap();
    let iss_aud = |iss: &str, aud: &str| {
        raw_token(&hs, &claims(json!({"iss": iss, "aud": aud})), SECRET.as_bytes())
    };
    strict.get("/api/events/poll", &iss_aud("https://issuer.example", "pf2")).await.expect(200);
    assert_eq!(
        strict.get("/api/events/poll", &iss_aud("https://evil.example", "pf2")).await.error_code(),
        "AUTH_FAILED"
    );
    assert_eq!(
        strict
            .get("/api/events/poll", &iss_aud("https://issuer.example", "other"))
            .await
            .error_code(),
        "AUTH_FAILED"
    );

    // An RS256 server refuses an HS256 token made with its public key (algorithm confusion).
    let rs = TestApp::start_with(backend, |c| {
        c.jwt_algorithm = sync_server::config::JwtAlgorithm::Rs256;
        c.jwt_public_key = Some("tests/data/rsa-public.pem".into());
        c.jwt_private_key = Some("tests/data/rsa-private.pem".into());
    })
    .await
    .unwrap();
    let good = rs.token("u");
    let rs_claims = json!({"sub": "u", "tenantId": rs.tenant, "exp": now + 600});
    rs.get("/api/events/poll", &good).await.expect(200);
    let confused = raw_token(&hs, &rs_claims, &rsa_public);
    assert_eq!(rs.get("/api/events/poll", &confused).await.error_code(), "AUTH_FAILED");
    // EdDSA works with its key pair.
    let ed = TestApp::start_with(backend, |c| {
        c.jwt_algorithm = sync_server::config::JwtAlgorithm::Eddsa;
        c.jwt_public_key = Some("tests/data/ed25519-public.pem".into());
        c.jwt_private_key = Some("tests/data/ed25519-private.pem".into());
    })
    .await
    .unwrap();
    ed.get("/api/events/poll", &ed.token("u")).await.expect(200);
    assert_eq!(ed.get("/api/events/poll", &good).await.error_code(), "AUTH_FAILED");
}

async fn tenant_mismatch_is_refused_on_every_route(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    // Data exists in our tenant; another tenant's token or header must never reach it.
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![app.op("c1", 1).create("todo", "a", json!({"secret": "s3cr3t"})).build()],
    )
    .await
    .expect(200);
    let routes: Vec<(Method, String, Option<Vec<u8>>)> = vec![
        (
            Method::POST,
            "/api/reconciliation/reconcile".into(),
            Some(serde_json::to_vec(&app.reconcile_body("r2", "c1", vec![])).unwrap()),
        ),
        (Method::GET, "/api/reconciliation/delta?since=0".into(), None),
        (Method::GET, "/api/reconciliation/snapshot/todo/a".into(), None),
        (Method::GET, "/api/reconciliation/snapshot/todo".into(), None),
        (Method::GET, "/api/reconciliation/conflicts".into(), None),
        (
            Method::POST,
            "/api/reconciliation/conflicts/x/resolve".into(),
            Some(b"{\"choice\":\"server\"}".to_vec()),
        ),
        (Method::GET, "/api/events/poll".into(), None),
        (
            Method::POST,
            "/api/transactions".into(),
            Some(b"{\"type\":\"x\",\"payload\":{}}".to_vec()),
        ),
        (Method::GET, "/api/transactions/x".into(), None),
        (Method::GET, "/api/audit".into(), None),
    ];
    for (method, path, body) in routes {
        let r = app
            .send(
                method.clone(),
                &path,
                Some(&token),
                &[("x-tenant-id", "someone-else"), ("idempotency-key", "k")],
                body,
            )
            .await;
        assert_eq!(r.status.as_u16(), 403, "{method} {path}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), "TENANT_VIOLATION", "{method} {path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("s3cr3t"));
    }
    // A tenant in the body that differs from the token is refused too.
    let mut body = app.reconcile_body("r3", "c1", vec![]);
    body["tenantId"] = json!("someone-else");
    let r = app.post("/api/reconciliation/reconcile", &token, &body).await;
    r.expect(403);
    // Another tenant's token sees nothing of ours.
    let other = app.token_for("other-tenant", "u", &[]);
    app.get("/api/reconciliation/snapshot/todo/a", &other).await.expect(404);
    let poll = app.get("/api/events/poll", &other).await.json();
    assert!(!poll.to_string().contains("s3cr3t"));
}

async fn super_admin_cross_tenant_access_needs_justification_and_is_audited(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![app.op("c1", 1).create("todo", "a", json!({"x": 1})).build()],
    )
    .await
    .expect(200);
    let operator = app.token_for("platform", "operator-1", &["super_admin"]);
    let path = "/api/reconciliation/snapshot/todo/a";
    let denied =
        app.send(Method::GET, path, Some(&operator), &[("x-tenant-id", &app.tenant)], None).await;
    denied.expect(403);
    let allowed = app
        .send(
            Method::GET,
            path,
            Some(&operator),
            &[("x-tenant-id", &app.tenant), ("x-justification", "ticket 4711")],
            None,
        )
        .await;
    allowed.expect(200);
    assert_eq!(allowed.json()["data"]["x"], 1);
    let entries = app.state.store.audit_entries(&app.tenant, 100).await.unwrap();
    let cross: Vec<&Value> =
        entries.iter().filter(|e| e["action"] == "tenant.cross_access").collect();
    assert_eq!(cross.len(), 2, "{entries:?}");
    assert!(cross.iter().any(|e| e["outcome"] == "allowed"
        && e["details"]["justification"] == "ticket 4711"
        && e["actor"] == "operator-1"));
    assert!(cross.iter().any(|e| e["outcome"] == "denied"));
}

async fn oversized_body_is_413_and_oversized_batch_is_400(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let huge = vec![b' '; 1024 * 1024 + 1];
    let r = app
        .send(Method::POST, "/api/reconciliation/reconcile", Some(&token), &[], Some(huge))
        .await;
    r.expect(413);
    assert_eq!(r.error_code(), "PAYLOAD_TOO_LARGE");
    let ops: Vec<Value> =
        (1..=501).map(|i| app.op("c1", i).update("todo", "a", json!({"i": i})).build()).collect();
    let r = app.reconcile(&token, "big", "c1", ops).await;
    r.expect(400);
    assert_eq!(r.error_code(), "INVALID_REQUEST");
    let r = app
        .send(
            Method::POST,
            "/api/reconciliation/reconcile",
            Some(&token),
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    r.expect(400);
    assert_eq!(r.error_code(), "INVALID_REQUEST");
    // Nothing was applied by any of them.
    assert_eq!(app.get("/api/events/poll", &token).await.json()["events"], json!([]));
}

async fn rate_limits_answer_429_with_retry_after(backend: Backend) {
    let app = app!(backend, |c| c.rate_reconcile = 2);
    let token = app.token("u");
    let header = |r: &common::Response, name: &str| r.headers[name].to_str().unwrap().to_string();
    for i in 0..2 {
        let r = app.reconcile(&token, &format!("r{i}"), "c1", vec![]).await;
        r.expect(200);
        // Every answer says where the caller stands, so a client paces itself before a 429.
        assert_eq!(header(&r, "ratelimit-limit"), "2");
        assert_eq!(header(&r, "ratelimit-remaining"), (1 - i).to_string());
        assert_eq!(header(&r, "ratelimit-policy"), "2;w=60");
        let reset: u64 = header(&r, "ratelimit-reset").parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let r = app.reconcile(&token, "r3", "c1", vec![]).await;
    r.expect(429);
    assert_eq!(r.error_code(), "RATE_LIMIT");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(header(&r, "ratelimit-remaining"), "0");
    // Another user has their own budget.
    app.reconcile(&app.token("v"), "r4", "c2", vec![]).await.expect(200);
}

async fn health_metrics_and_openapi(backend: Backend) {
    let app = app!(backend);
    let r = app.send(Method::GET, "/health", None, &[], None).await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v["status"], "healthy");
    for s in ["websocket", "eventbus", "reconciliation", "redis", "database"] {
        assert!(v["services"][s]["status"].is_string(), "{s}");
    }
    let token = app.token("u");
    app.reconcile(
        &token,
        "r",
        "c1",
        vec![app.op("c1", 1).create("todo", "a", json!({"x": 1})).build()],
    )
    .await
    .expect(200);
    let m = app.send(Method::GET, "/metrics", None, &[], None).await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains("pf2_operations_total{outcome=\"applied\"}"), "{text}");
    assert!(text.contains(
        "pf2_http_requests_total{route=\"/api/reconciliation/reconcile\",status=\"200\"}"
    ));
    let doc = app.send(Method::GET, "/openapi.json", None, &[], None).await.json();
    for path in [
        "/api/reconciliation/reconcile",
        "/api/reconciliation/delta",
        "/api/reconciliation/snapshot/{entityType}/{entityId}",
        "/api/reconciliation/snapshot/{entityType}",
        "/api/reconciliation/conflicts",
        "/api/reconciliation/conflicts/{conflictId}/resolve",
        "/api/events/poll",
        "/api/documents/{documentId}/snapshot",
        "/api/documents/{documentId}/sync",
        "/api/transactions",
        "/api/transactions/{transactionId}",
        "/api/audit",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let r = app.send(Method::GET, "/nope", None, &[], None).await;
    r.expect(404);
    assert_eq!(r.error_code(), "NOT_FOUND");
}

/// `--static-dir` serves the demo's files at `/`, while API paths keep their JSON errors.
#[tokio::test]
async fn static_files_are_served_beside_the_api() {
    let dir = common::TempDir::new();
    std::fs::write(dir.0.join("index.html"), "<h1>demo</h1>").unwrap();
    let static_dir = dir.0.clone();
    let app = app!(Backend::Sqlite, move |c| c.static_dir = Some(static_dir));
    let page = app.send(Method::GET, "/", None, &[], None).await;
    page.expect(200);
    assert_eq!(page.body, b"<h1>demo</h1>");
    assert_eq!(app.send(Method::GET, "/missing.js", None, &[], None).await.status.as_u16(), 404);
    let api = app.send(Method::GET, "/api/nope", None, &[], None).await;
    assert_eq!(api.expect(404).error_code(), "NOT_FOUND");
    let token = app.token("u");
    app.get("/api/reconciliation/delta?since=0", &token).await.expect(200);
}

/// The router and `/openapi.json` come from one route table: every route is documented under
/// its method, and every documented route is served (none answers the "no such route" 404).
#[tokio::test]
async fn every_route_in_the_table_is_served_and_documented() {
    let app = app!(Backend::Sqlite);
    let doc = app.send(Method::GET, "/openapi.json", None, &[], None).await.json();
    let token = app.token("u");
    let table = sync_server::routes::table();
    assert!(table.len() >= 30, "{} routes", table.len());
    for route in table {
        let documented = sync_server::routes::openapi_path(route.path);
        assert!(
            doc["paths"][&documented][route.method].is_object(),
            "{} {documented} is not documented",
            route.method
        );
        let path = route.path.replace(['{', '}'], "");
        let method = Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
        let body = (method != Method::GET).then(|| b"{}".to_vec());
        let r = app.send(method, &path, Some(&token), &[], body).await;
        let unrouted = r.status.as_u16() == 404
            && serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|v| v["error"]["message"] == "no such route");
        assert!(!unrouted, "{} {} is documented but not served", route.method, route.path);
    }
}

/// A delta of several pages says, on each page but the last, how many entities the pages after
/// it hold: what a client shows as the progress of its first sync.
async fn a_long_delta_says_how_many_entities_remain(backend: Backend) {
    let app = app!(backend);
    let token = app.token("u");
    let ops = (1..=5)
        .map(|i| app.op("c1", i).create("todo", &format!("t{i}"), json!({"n": i})).build())
        .collect();
    app.reconcile(&token, "r1", "c1", ops).await.expect(200);
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let d = app
            .get(&format!("/api/reconciliation/delta?since={since}&limit=2"), &token)
            .await
            .json();
        seen.push((d["entities"].as_array().unwrap().len(), d["remaining"].as_u64()));
        since = d["version"].as_u64().unwrap();
        if d["hasMore"] != true {
            break;
        }
    }
    assert_eq!(seen, [(2, Some(3)), (2, Some(1)), (1, None)]);
}
