//! The event bus on REST, on a real SQLite file and on the real PostgreSQL: publishing,
//! broadcast and durable subscriptions, consumer groups, retries, the dead-letter queue and
//! retention.

mod common;

use axum::http::Method;
use common::{Backend, TestApp};
use serde_json::{Value, json};
use std::collections::BTreeSet;

on_both_backends!(
    a_poll_page_holds_up_to_its_limit_and_says_when_there_is_more,
    publish_is_durable_idempotent_by_event_id_and_for_services,
    concurrent_publishes_of_the_same_events_append_them_once_without_gaps,
    bad_events_are_refused_whole_and_change_nothing,
    filters_select_by_type_pattern_and_payload_attribute,
    a_durable_subscription_keeps_its_position,
    a_group_leases_each_event_to_one_member_and_redelivers_when_a_lease_expires,
    a_poison_event_is_dead_lettered_after_exactly_three_deliveries_and_reprocesses,
    the_last_delivery_expiring_unacked_dead_letters_it,
    the_dead_letter_queue_is_searchable_and_deletes_are_audited,
    retention_is_per_type_keeps_critical_events_and_answers_snapshot_required,
    publishing_is_rate_limited_per_tenant,
);

fn service(app: &TestApp) -> String {
    app.token_for(&app.tenant, "billing-service", &["service"])
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn publish(app: &TestApp, token: &str, events: Vec<Value>) -> Vec<Value> {
    let r = app.post("/api/events", token, &json!({ "events": events })).await;
    r.expect(201);
    r.json()["results"].as_array().unwrap().clone()
}

async fn put(app: &TestApp, token: &str, name: &str, body: Value) -> Value {
    let r = app
        .send(
            Method::PUT,
            &format!("/api/events/subscriptions/{name}"),
            Some(token),
            &[],
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
    assert!(r.status.is_success(), "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn claim(
    app: &TestApp,
    token: &str,
    group: &str,
    consumer: &str,
    max: u32,
    wait_ms: u64,
) -> Vec<Value> {
    let r = app
        .post(
            &format!("/api/events/subscriptions/{group}/claim"),
            token,
            &json!({ "consumer": consumer, "max": max, "waitMs": wait_ms }),
        )
        .await;
    r.expect(200);
    r.json()["deliveries"].as_array().unwrap().clone()
}

async fn ack(app: &TestApp, token: &str, group: &str, deliveries: &[Value]) -> Vec<String> {
    let items: Vec<Value> = deliveries
        .iter()
        .map(|d| json!({ "sequence": d["event"]["sequence"], "leaseToken": d["leaseToken"] }))
        .collect();
    let r = app
        .post(
            &format!("/api/events/subscriptions/{group}/ack"),
            token,
            &json!({ "deliveries": items }),
        )
        .await;
    r.expect(200);
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap().to_string())
        .collect()
}

async fn nack(app: &TestApp, token: &str, group: &str, d: &Value, reason: &str) -> Value {
    let r = app
        .post(
            &format!("/api/events/subscriptions/{group}/nack"),
            token,
            &json!({ "sequence": d["event"]["sequence"], "leaseToken": d["leaseToken"], "reason": reason }),
        )
        .await;
    r.expect(200);
    r.json()
}

async fn tenant_seq(app: &TestApp) -> u64 {
    app.state.store.tenant_seq(&app.tenant).await.unwrap().0
}

async fn publish_is_durable_idempotent_by_event_id_and_for_services(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    let id = uuid();
    let event = json!({
        "eventId": id,
        "eventType": "order.placed",
        "tenantId": app.tenant,
        "timestamp": "2026-01-30T12:00:00Z",
        "payload": { "orderId": "order-456", "amount": 1000, "currency": "NGN" },
        "metadata": { "source": "order-service", "correlationId": "corr-123", "traceId": "trace-9" },
        "schemaVersion": "1.0"
    });
    let user = app.token("someone");
    let r = app.post("/api/events", &user, &event).await;
    r.expect(403);
    assert_eq!(r.error_code(), "AUTHZ_FAILED", "publishing needs the service role");

    let first = app.post("/api/events", &svc, &event).await;
    first.expect(201);
    let seq = first.json()["sequence"].as_u64().unwrap();
    assert_eq!(first.json()["duplicate"], false);
    // A retry after a lost acknowledgement: the same event, not a second one.
    let again = app.post("/api/events", &svc, &event).await;
    again.expect(201);
    assert_eq!(again.json()["sequence"], seq);
    assert_eq!(again.json()["duplicate"], true);
    // In one batch: a new event, the old one again, the new one twice.
    let other = uuid();
    let results = publish(
        &app,
        &svc,
        vec![
            json!({"eventId": other, "eventType": "order.paid", "payload": {}}),
            event.clone(),
            json!({"eventId": other, "eventType": "order.paid", "payload": {}}),
        ],
    )
    .await;
    let dups: Vec<bool> = results.iter().map(|r| r["duplicate"].as_bool().unwrap()).collect();
    assert_eq!(dups, [false, true, true]);
    assert_eq!(results[2]["sequence"], results[0]["sequence"]);
    assert_eq!(tenant_seq(&app).await, seq + 1, "two events in the log, not four");

    // Readers see architecture.md §5's fields, with the publisher's timestamp and metadata.
    let poll = app.get("/api/events/poll?lastEventId=0", &user).await;
    poll.expect(200);
    let events = poll.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(e["eventId"], id);
    assert_eq!(e["eventType"], "order.placed");
    assert_eq!(e["tenantId"], app.tenant);
    assert_eq!(e["timestamp"], "2026-01-30T12:00:00.000Z");
    assert_eq!(e["payload"]["orderId"], "order-456");
    assert_eq!(e["metadata"]["correlationId"], "corr-123");
    assert_eq!(e["metadata"]["traceId"], "trace-9");
    assert_eq!(e["schemaVersion"], "1.0");
    assert_eq!(
        events[1]["metadata"]["source"], "billing-service",
        "source defaults to the publisher"
    );
}

/// Eight publishers at once, each with the same two events and one of its own: every event is
/// appended once, the log has no gap, and every publisher is told the same sequence for the
/// same event (on PostgreSQL, publishers that lose the race are decided again under the lock).
async fn concurrent_publishes_of_the_same_events_append_them_once_without_gaps(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    let shared = [uuid(), uuid()];
    let batches: Vec<Vec<Value>> = (0..8)
        .map(|i| {
            vec![
                json!({"eventId": shared[0], "eventType": "order.placed", "payload": {}}),
                json!({"eventId": uuid(), "eventType": "order.note", "payload": {"i": i}}),
                json!({"eventId": shared[1], "eventType": "order.paid", "payload": {}}),
            ]
        })
        .collect();
    let answers =
        futures_util::future::join_all(batches.into_iter().map(|b| publish(&app, &svc, b))).await;
    let seq_of = |r: &Value| r["sequence"].as_u64().unwrap();
    for a in &answers {
        assert_eq!(seq_of(&a[0]), seq_of(&answers[0][0]), "one sequence for the shared event");
        assert_eq!(seq_of(&a[2]), seq_of(&answers[0][2]));
        assert_eq!(a[1]["duplicate"], false, "each publisher's own event is new");
    }
    let fresh: usize = answers.iter().flatten().filter(|r| r["duplicate"] == false).count();
    assert_eq!(fresh, 10, "2 shared + 8 own, each appended once: {answers:?}");
    let poll = app.get("/api/events/poll?lastEventId=0&limit=100", &svc).await;
    poll.expect(200);
    let seqs: Vec<u64> = poll.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "the log holds 10 events, no gap");
    assert_eq!(tenant_seq(&app).await, 10);
}

/// PostgreSQL's one-statement publish reads the known ids from its snapshot, before it waits for
/// the tenant's lock. Here another transaction holds the lock and appends the same event id;
/// the publish, waiting, sees it only after that commit: the unique index refuses its insert
/// and the publish is decided again under the lock — a duplicate, with the other's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_publish_racing_another_append_of_its_event_id_reports_the_duplicate() {
    use sqlx::{Connection, Row};
    let app = app!(Backend::Postgres);
    let svc = service(&app);
    publish(
        &app,
        &svc,
        vec![json!({"eventId": uuid(), "eventType": "order.placed", "payload": {}})],
    )
    .await;
    let racer = uuid();
    let mut other = sqlx::PgConnection::connect(&common::postgres_url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let seq: i64 = sqlx::query("SELECT seq FROM tenants WHERE tenant_id = $1 FOR UPDATE")
        .bind(&app.tenant)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    sqlx::query("INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at) VALUES ($1, $2, $3, 'order.paid', '{}', '{}', '1.0', 0, 0)")
        .bind(&app.tenant)
        .bind(seq + 1)
        .bind(&racer)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET seq = $2 WHERE tenant_id = $1")
        .bind(&app.tenant)
        .bind(seq + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut watch = sqlx::PgConnection::connect(&common::postgres_url()).await.unwrap();
    let (answer, ()) = tokio::join!(
        publish(
            &app,
            &svc,
            vec![json!({"eventId": racer, "eventType": "order.paid", "payload": {}})]
        ),
        async {
            // Commit once the publish is waiting for the lock (a condition, polled).
            loop {
                let waiting: i64 = sqlx::query(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'WITH v (ord,%'",
                )
                .fetch_one(&mut watch)
                .await
                .unwrap()
                .get(0);
                if waiting > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tx.commit().await.unwrap();
        }
    );
    assert_eq!(answer[0]["duplicate"], true, "{answer:?}");
    assert_eq!(answer[0]["sequence"].as_i64(), Some(seq + 1));
    assert_eq!(tenant_seq(&app).await, (seq + 1) as u64, "nothing appended twice");
}

async fn bad_events_are_refused_whole_and_change_nothing(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    let good = json!({"eventType": "order.placed", "payload": {}});
    let cases = [
        (json!({"eventId": "not-a-uuid", "eventType": "a.b"}), 400, "INVALID_REQUEST"),
        (json!({"eventType": "has space"}), 400, "INVALID_REQUEST"),
        (json!({"eventType": ""}), 400, "INVALID_REQUEST"),
        (json!({"eventType": "a.*"}), 400, "INVALID_REQUEST"),
        (json!({"eventType": "a.b", "timestamp": "yesterday"}), 400, "INVALID_REQUEST"),
        (json!({"eventType": "a.b", "unknownField": 1}), 400, "INVALID_REQUEST"),
        (json!({"eventType": "a.b", "tenantId": "someone-else"}), 403, "TENANT_VIOLATION"),
    ];
    for (bad, status, code) in cases {
        let r =
            app.post("/api/events", &svc, &json!({ "events": [good.clone(), bad.clone()] })).await;
        r.expect(status);
        assert_eq!(r.error_code(), code, "{bad}");
    }
    let too_many: Vec<Value> = (0..501).map(|_| good.clone()).collect();
    let r = app.post("/api/events", &svc, &json!({ "events": too_many })).await;
    r.expect(413);
    let r = app.post("/api/events", &svc, &json!([1, 2])).await;
    r.expect(400);
    assert_eq!(tenant_seq(&app).await, 0, "nothing of a refused batch was appended");
}

async fn filters_select_by_type_pattern_and_payload_attribute(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    publish(
        &app,
        &svc,
        vec![
            json!({"eventType": "order.placed", "payload": {"region": "eu", "customer": {"tier": "gold"}}}),
            json!({"eventType": "order.placed", "payload": {"region": "us"}}),
            json!({"eventType": "orders.placed", "payload": {"region": "eu"}}),
            json!({"eventType": "invoice.sent", "payload": {"region": "eu"}}),
        ],
    )
    .await;
    let user = app.token("reader");
    let filter = urlencode(r#"{"region":"eu"}"#);
    let r = app.get(&format!("/api/events/poll?types=order.*&filter={filter}"), &user).await;
    r.expect(200);
    let got: Vec<u64> = r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [1], "order.* does not match orders.placed; region must equal eu");
    assert_eq!(r.json()["nextEventId"], "4", "the position passes what did not match");
    let nested = urlencode(r#"{"customer.tier":"gold"}"#);
    let r = app.get(&format!("/api/events/poll?filter={nested}"), &user).await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);
    let r = app.get(&format!("/api/events/poll?filter={}", urlencode("[1]")), &user).await;
    r.expect(400);
    let r =
        app.get(&format!("/api/events/poll?filter={}", urlencode(r#"{"a":{"b":1}}"#)), &user).await;
    r.expect(400);

    // A group's filter is evaluated by the server: only matching events are delivered.
    put(&app, &svc, "eu-orders", json!({"kind": "group", "eventTypes": ["order.*", "invoice.sent"], "filter": {"region": "eu"}, "startFrom": "earliest"})).await;
    let got: Vec<u64> = claim(&app, &svc, "eu-orders", "w1", 10, 0)
        .await
        .iter()
        .map(|d| d["event"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [1, 4]);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn a_durable_subscription_keeps_its_position(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    publish(&app, &svc, vec![json!({"eventType": "a.one"}), json!({"eventType": "a.two"})]).await;
    let created =
        put(&app, &svc, "audit-sink", json!({"kind": "durable", "startFrom": "earliest"})).await;
    assert_eq!(created["position"], 0);
    let page = app.get("/api/events/subscriptions/audit-sink/poll?limit=1", &svc).await;
    page.expect(200);
    assert_eq!(page.json()["events"][0]["eventType"], "a.one");
    assert_eq!(page.json()["hasMore"], true);
    // Not acknowledged: the same event again (a crashed consumer resumes where it was).
    let again = app.get("/api/events/subscriptions/audit-sink/poll?limit=1", &svc).await;
    assert_eq!(again.json()["events"][0]["eventType"], "a.one");
    let next = page.json()["nextEventId"].as_str().unwrap().parse::<u64>().unwrap();
    let r = app
        .post("/api/events/subscriptions/audit-sink/ack", &svc, &json!({"sequence": next}))
        .await;
    assert_eq!(r.json()["position"], 1);
    let page = app.get("/api/events/subscriptions/audit-sink/poll", &svc).await;
    assert_eq!(page.json()["events"].as_array().unwrap().len(), 1);
    assert_eq!(page.json()["events"][0]["eventType"], "a.two");
    // Never backwards, never past the log's end.
    let r =
        app.post("/api/events/subscriptions/audit-sink/ack", &svc, &json!({"sequence": 0})).await;
    assert_eq!(r.json()["position"], 1);
    let r =
        app.post("/api/events/subscriptions/audit-sink/ack", &svc, &json!({"sequence": 99})).await;
    assert_eq!(r.json()["position"], 1);
    // Settings change without moving it; a new subscription starts at the log's end.
    let changed =
        put(&app, &svc, "audit-sink", json!({"kind": "durable", "eventTypes": ["a.*"]})).await;
    assert_eq!(changed["position"], 1);
    assert_eq!(put(&app, &svc, "late", json!({"kind": "durable"})).await["position"], 2);
    let r = app
        .send(
            Method::PUT,
            "/api/events/subscriptions/audit-sink",
            Some(&svc),
            &[],
            Some(br#"{"kind":"group"}"#.to_vec()),
        )
        .await;
    r.expect(400);
    let list = app.get("/api/events/subscriptions", &svc).await.json();
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 2);
    assert_eq!(list["subscriptions"][0]["lag"], 1, "audit-sink is one event behind");
    let r = app.send(Method::DELETE, "/api/events/subscriptions/late", Some(&svc), &[], None).await;
    r.expect(204);
    let r = app.get("/api/events/subscriptions/late", &svc).await;
    r.expect(404);
}

async fn a_group_leases_each_event_to_one_member_and_redelivers_when_a_lease_expires(
    backend: Backend,
) {
    let app = app!(backend);
    let svc = service(&app);
    put(&app, &svc, "workers", json!({"kind": "group", "visibilityTimeoutMs": 300})).await;
    let events: Vec<Value> =
        (0..10).map(|i| json!({"eventType": "job.created", "payload": {"n": i}})).collect();
    publish(&app, &svc, events).await;
    let a = claim(&app, &svc, "workers", "a", 4, 0).await;
    let b = claim(&app, &svc, "workers", "b", 100, 0).await;
    let seqs = |d: &[Value]| {
        d.iter().map(|d| d["event"]["sequence"].as_u64().unwrap()).collect::<BTreeSet<_>>()
    };
    assert_eq!(seqs(&a).len(), 4);
    assert_eq!(seqs(&b).len(), 6);
    assert!(seqs(&a).is_disjoint(&seqs(&b)), "one member at a time");
    assert!(a.iter().all(|d| d["attempt"] == 1));
    assert_eq!(ack(&app, &svc, "workers", &b).await, vec!["acked"; 6]);
    // `a` stalls: its leases expire and `c` gets those events (the claim waits for that).
    let c = claim(&app, &svc, "workers", "c", 100, 10_000).await;
    assert_eq!(seqs(&c), seqs(&a), "exactly the expired leases are redelivered");
    assert!(c.iter().all(|d| d["attempt"] == 2));
    assert_eq!(ack(&app, &svc, "workers", &a).await, vec!["lease_lost"; 4], "a's leases are gone");
    assert_eq!(ack(&app, &svc, "workers", &c).await, vec!["acked"; 4]);
    assert!(claim(&app, &svc, "workers", "a", 100, 0).await.is_empty(), "every event done once");
    let status = app.get("/api/events/subscriptions/workers", &svc).await.json();
    assert_eq!(status["lag"], 0);
    assert_eq!(status["pending"], 0);
    // A long-polling claim wakes when an event is published.
    let (app2, svc2) = (app.clone(), svc.clone());
    let waiter = tokio::spawn(async move { claim(&app2, &svc2, "workers", "d", 1, 20_000).await });
    while app.state.notifier.waiting(&app.tenant) == 0 {
        tokio::task::yield_now().await;
    }
    publish(&app, &svc, vec![json!({"eventType": "job.created"})]).await;
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"]["sequence"], 11);
}

async fn a_poison_event_is_dead_lettered_after_exactly_three_deliveries_and_reprocesses(
    backend: Backend,
) {
    let app = app!(backend);
    let svc = service(&app);
    put(&app, &svc, "mailer", json!({"kind": "group", "retryBackoffMs": 20})).await;
    let id = uuid();
    publish(
        &app,
        &svc,
        vec![json!({"eventId": id, "eventType": "mail.send", "payload": {"to": "broken@"}})],
    )
    .await;
    let mut deliveries = 0;
    let mut last = Value::Null;
    for attempt in 1..=3 {
        let d = claim(&app, &svc, "mailer", "mailer-1", 1, 10_000).await;
        assert_eq!(d.len(), 1, "attempt {attempt}");
        assert_eq!(d[0]["attempt"], attempt);
        deliveries += 1;
        last = nack(&app, &svc, "mailer", &d[0], "SMTP 550: no such user").await;
        let want = if attempt < 3 { "retry" } else { "dead_lettered" };
        assert_eq!(last["status"], want, "attempt {attempt}: {last}");
    }
    assert_eq!(deliveries, 3);
    assert!(claim(&app, &svc, "mailer", "mailer-1", 1, 200).await.is_empty(), "no fourth delivery");
    let dlq_id = last["dlqId"].as_str().unwrap().to_string();
    let dl = app.get(&format!("/api/events/dlq/{dlq_id}"), &svc).await.json();
    assert_eq!(dl["event"]["eventId"], id);
    assert_eq!(dl["event"]["payload"]["to"], "broken@");
    assert_eq!(dl["failureReason"], "SMTP 550: no such user");
    assert_eq!(dl["deliveryCount"], 3);
    assert_eq!(dl["consumer"], "mailer-1");
    assert_eq!(dl["subscription"], "mailer");
    assert!(
        dl["firstAttemptAt"].is_string()
            && dl["lastAttemptAt"].is_string()
            && dl["deadLetteredAt"].is_string()
    );
    assert_eq!(app.get("/api/events/subscriptions/mailer", &svc).await.json()["deadLetters"], 1);

    // Fix the payload, send it back: the group gets it again, as edited, attempts from one.
    let r = app
        .send(
            Method::PATCH,
            &format!("/api/events/dlq/{dlq_id}"),
            Some(&svc),
            &[],
            Some(br#"{"payload":{"to":"fixed@example.com"}}"#.to_vec()),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["originalPayload"]["to"], "broken@", "the original is kept");
    let r = app.post(&format!("/api/events/dlq/{dlq_id}/reprocess"), &svc, &json!({})).await;
    r.expect(200);
    assert_eq!(r.json()["status"], "reprocessed");
    let again = app.post(&format!("/api/events/dlq/{dlq_id}/reprocess"), &svc, &json!({})).await;
    again.expect(400);
    let d = claim(&app, &svc, "mailer", "mailer-2", 1, 5_000).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["event"]["eventId"], id);
    assert_eq!(d[0]["event"]["payload"]["to"], "fixed@example.com");
    assert_eq!(d[0]["attempt"], 1);
    assert_eq!(ack(&app, &svc, "mailer", &d).await, ["acked"]);
    let admin = app.token_for(&app.tenant, "ops", &["admin"]);
    let audit = app.get("/api/audit", &admin).await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"dlq.edit") && actions.contains(&"dlq.reprocess"), "{actions:?}");
}

async fn the_last_delivery_expiring_unacked_dead_letters_it(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    put(
        &app,
        &svc,
        "fragile",
        json!({"kind": "group", "maxDeliveries": 1, "visibilityTimeoutMs": 100}),
    )
    .await;
    publish(&app, &svc, vec![json!({"eventType": "x.crash"})]).await;
    let d = claim(&app, &svc, "fragile", "dies", 1, 0).await;
    assert_eq!(d.len(), 1);
    // The consumer dies without a word; the next claim (after the lease) dead-letters it.
    assert!(claim(&app, &svc, "fragile", "next", 1, 600).await.is_empty());
    let list = app.get("/api/events/dlq?subscription=fragile", &svc).await.json();
    let items = list["deadLetters"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["deliveryCount"], 1);
    assert!(
        items[0]["failureReason"].as_str().unwrap().contains("no acknowledgement"),
        "{}",
        items[0]
    );
    assert_eq!(ack(&app, &svc, "fragile", &d).await, ["lease_lost"]);
}

async fn the_dead_letter_queue_is_searchable_and_deletes_are_audited(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    for g in ["g1", "g2"] {
        put(&app, &svc, g, json!({"kind": "group", "maxDeliveries": 1, "startFrom": "latest"}))
            .await;
    }
    publish(
        &app,
        &svc,
        vec![json!({"eventType": "order.placed"}), json!({"eventType": "invoice.sent"})],
    )
    .await;
    for g in ["g1", "g2"] {
        for d in claim(&app, &svc, g, "w", 10, 0).await {
            assert_eq!(nack(&app, &svc, g, &d, "boom").await["status"], "dead_lettered");
        }
    }
    let count = |q: &str| {
        let app = app.clone();
        let svc = svc.clone();
        let q = q.to_string();
        async move {
            let r = app.get(&format!("/api/events/dlq{q}"), &svc).await;
            r.expect(200);
            r.json()["deadLetters"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("").await, 4);
    assert_eq!(count("?subscription=g1").await, 2);
    assert_eq!(count("?eventType=order.*").await, 2);
    assert_eq!(count("?subscription=g2&eventType=invoice.sent").await, 1);
    assert_eq!(count("?from=2999-01-01T00:00:00Z").await, 0);
    assert_eq!(count("?to=2999-01-01T00:00:00Z&limit=3").await, 3);
    let r = app.get("/api/events/dlq?status=bogus", &svc).await;
    r.expect(400);
    let user = app.token("not-a-service");
    app.get("/api/events/dlq", &user).await.expect(403);
    let first =
        app.get("/api/events/dlq?subscription=g1", &svc).await.json()["deadLetters"][0]["dlqId"]
            .as_str()
            .unwrap()
            .to_string();
    let r =
        app.send(Method::DELETE, &format!("/api/events/dlq/{first}"), Some(&svc), &[], None).await;
    r.expect(204);
    app.send(Method::DELETE, &format!("/api/events/dlq/{first}"), Some(&svc), &[], None)
        .await
        .expect(404);
    assert_eq!(count("").await, 3);
    let admin = app.token_for(&app.tenant, "ops", &["admin"]);
    let audit = app.get("/api/audit", &admin).await.json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "dlq.delete" && e["target"] == first)
    );
}

async fn retention_is_per_type_keeps_critical_events_and_answers_snapshot_required(
    backend: Backend,
) {
    let app = app!(backend);
    let svc = service(&app);
    put(&app, &svc, "laggard", json!({"kind": "group", "startFrom": "earliest"})).await;
    publish(
        &app,
        &svc,
        vec![
            json!({"eventType": "order.placed"}),
            json!({"eventType": "audit.login"}),
            json!({"eventType": "transaction.settled"}),
            json!({"eventType": "order.paid"}),
        ],
    )
    .await;
    // The laggard holds event 4 (leased, unacknowledged): retention must not take it.
    let held = claim(&app, &svc, "laggard", "w", 1, 0).await;
    assert_eq!(held[0]["event"]["sequence"], 1);
    put(&app, &svc, "laggard", json!({"kind": "group", "startFrom": 3})).await;
    let held = claim(&app, &svc, "laggard", "w", 1, 0).await;
    assert_eq!(held[0]["event"]["sequence"], 4);
    let now = sync_server::clock::now_ms() as i64;
    // Default retention: everything is past it; audit.* has a longer retention.
    let rules = vec![("audit.*".to_string(), now - 86_400_000)];
    let deleted =
        app.state.store.prune_events(now + 1000, &rules, Some(&app.tenant)).await.unwrap();
    assert_eq!(
        deleted, 1,
        "only order.placed: audit.* is younger than its retention, transaction.* is critical, 4 is in flight"
    );
    let user = app.token("reader");
    let r = app.get("/api/events/poll?lastEventId=0", &user).await;
    r.expect(410);
    assert_eq!(r.error_code(), "SNAPSHOT_REQUIRED");
    let r = app.get("/api/events/poll?lastEventId=1", &user).await.json();
    let types: Vec<&str> =
        r["events"].as_array().unwrap().iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, ["audit.login", "transaction.settled", "order.paid"]);
    // A group positioned below retention is told so instead of silently skipping events.
    put(&app, &svc, "fresh", json!({"kind": "group", "startFrom": 3})).await;
    let r = app
        .send(
            Method::PUT,
            "/api/events/subscriptions/fresh",
            Some(&svc),
            &[],
            Some(br#"{"kind":"group","startFrom":0}"#.to_vec()),
        )
        .await;
    r.expect(410);
    assert_eq!(r.error_code(), "SNAPSHOT_REQUIRED");
    assert_eq!(ack(&app, &svc, "laggard", &held).await, ["acked"]);
}

async fn publishing_is_rate_limited_per_tenant(backend: Backend) {
    let app = app!(backend, |c| c.rate_publish = 10);
    let svc = service(&app);
    let events: Vec<Value> = (0..8).map(|_| json!({"eventType": "tick"})).collect();
    publish(&app, &svc, events.clone()).await;
    let r = app.post("/api/events", &svc, &json!({ "events": events })).await;
    r.expect(429);
    assert_eq!(r.error_code(), "RATE_LIMIT");
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(tenant_seq(&app).await, 8, "a refused batch is refused whole");
}

/// Publish bodies from outside: arbitrary bytes and mutations of a valid batch are answered
/// 201 or with an error code, never a 500, and a refused body appends nothing.
#[test]
fn arbitrary_publish_bodies_never_fail_inside_and_append_nothing_when_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::start(Backend::Sqlite)).unwrap();
    let svc = service(&app);
    let valid = serde_json::to_vec(&json!({"events": [
        {"eventId": "7f1c1a9e-8d5b-4a5e-9a51-3f2b8c1d0e11", "eventType": "order.placed", "timestamp": "2026-01-30T12:00:00Z",
         "payload": {"orderId": "o-1"}, "metadata": {"correlationId": "c"}, "schemaVersion": "1.0"},
        {"eventType": "order.paid", "payload": {"n": 1}}
    ]}))
    .unwrap();
    let probe = || tenant_seq(&app);
    common::post_bodies_never_fail_inside(
        &rt,
        &app,
        "/api/events",
        &svc,
        valid,
        201,
        &[400, 403, 413],
        probe,
    );
}

/// A page is as long as its `limit` (up to 1,000) and `hasMore` says whether the log goes on:
/// a client pages to the end by it (the regression: pages stopped at the tail's 500-event
/// reads with `hasMore: false`).
async fn a_poll_page_holds_up_to_its_limit_and_says_when_there_is_more(backend: Backend) {
    let app = app!(backend);
    let svc = service(&app);
    let user = app.token("reader");
    for batch in 0..3 {
        let events = (0..400)
            .map(|i| {
                json!({"eventId": uuid(), "eventType": "feed.item", "tenantId": app.tenant,
                       "timestamp": "2026-01-30T12:00:00Z", "payload": {"n": batch * 400 + i}})
            })
            .collect();
        publish(&app, &svc, events).await;
    }
    let first = app.get("/api/events/poll?lastEventId=0&limit=1000", &user).await;
    first.expect(200);
    let first = first.json();
    assert_eq!(first["events"].as_array().unwrap().len(), 1000);
    assert_eq!(first["hasMore"], true);
    let next = first["nextEventId"].as_str().unwrap().to_string();
    let rest = app.get(&format!("/api/events/poll?lastEventId={next}&limit=1000"), &user).await;
    let rest = rest.json();
    assert_eq!(rest["events"].as_array().unwrap().len(), 200);
    assert_eq!(rest["hasMore"], false);
    assert_eq!(rest["events"][199]["payload"]["n"], 1199);
}
