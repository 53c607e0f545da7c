use super::*;
use crate::hlc::HlcTimestamp;
use crate::protocol::{ResultStatus, WireError};
use serde_json::json;

fn client() -> SyncClient {
    let config = ClientConfig::new(ClientId::new("c1").unwrap(), TenantId::new("t1").unwrap(), 7);
    SyncClient::new(config, StrategyRegistry::default())
}

fn key(id: &str) -> EntityKey {
    EntityKey::parse("t1", "todo", id).unwrap()
}

fn drain(c: &mut SyncClient) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn sent(outputs: &[Output]) -> Vec<&ClientFrame> {
    outputs.iter().filter_map(|o| if let Output::Send(f) = o { Some(f) } else { None }).collect()
}

fn statuses(outputs: &[Output]) -> Vec<Status> {
    outputs
        .iter()
        .filter_map(|o| if let Output::Event(AppEvent::Status(s)) = o { Some(*s) } else { None })
        .collect()
}

fn mutate(c: &mut SyncClient, now: u64, id: &str, entity: &str, patch: serde_json::Value) {
    let kind = OperationKind::Update(patch.as_object().unwrap().clone());
    c.mutate(now, OperationId::new(id).unwrap(), key(entity), kind).unwrap();
}

/// Bring a client online over a WebSocket and past its first (empty) pull.
fn live(c: &mut SyncClient, now: u64) -> Vec<Output> {
    c.set_online(now, true);
    c.link_opened(now, "tok");
    c.handle_frame(now, connected());
    c.handle_frame(
        now,
        ServerFrame::Delta {
            since: 0,
            version: 0,
            entities: vec![],
            has_more: false,
            client_seq: Some(0),
            removed: vec![],
            scope: None,
            remaining: None,
        },
    );
    drain(c)
}

fn connected() -> ServerFrame {
    ServerFrame::Connected {
        connection_id: "x".into(),
        server_time: String::new(),
        interaction_classes: vec![],
        protocol_version: 1,
        heartbeat_ms: 30_000,
        rate_limit: None,
    }
}

fn applied(op: &str, seq: u64, version: u64) -> WireOpResult {
    WireOpResult {
        operation_id: op.into(),
        client_seq: Some(seq),
        status: ResultStatus::Applied,
        duplicate: false,
        version: Some(version),
        resolution: None,
        fields_from_client: vec![],
        fields_kept_server: vec![],
        conflict_id: None,
        error: None,
    }
}

fn try_push_id(outputs: &[Output]) -> Option<String> {
    sent(outputs).into_iter().find_map(|f| {
        if let ClientFrame::Push { batch_id, .. } = f { Some(batch_id.clone()) } else { None }
    })
}

fn push_id(outputs: &[Output]) -> String {
    try_push_id(outputs).expect("a push was sent")
}

#[test]
fn offline_mutations_are_queued_persisted_and_visible_at_once() {
    let mut c = client();
    mutate(&mut c, 1_000, "op-1", "a", json!({"title": "milk"}));
    mutate(&mut c, 1_001, "op-2", "a", json!({"done": true}));
    assert_eq!(
        c.get(&key("a")).unwrap(),
        json!({"title": "milk", "done": true}).as_object().unwrap().clone()
    );
    assert_eq!(c.status(), Status::Offline);
    let out = drain(&mut c);
    assert!(sent(&out).is_empty(), "nothing is sent offline");
    let stored = out.iter().filter(|o| matches!(o, Output::Store(_))).count();
    assert_eq!(stored, 2, "every mutation is persisted");
    assert_eq!(c.query(&EntityType::new("todo").unwrap()).len(), 1);
}

#[test]
fn going_online_authenticates_pulls_and_pushes_the_queue_then_is_live() {
    let mut c = client();
    mutate(&mut c, 1_000, "op-1", "a", json!({"n": 1}));
    drain(&mut c);
    c.set_online(2_000, true);
    let out = drain(&mut c);
    assert_eq!(
        out.iter().filter(|o| matches!(o, Output::Connect(Transport::WebSocket))).count(),
        1
    );
    assert_eq!(statuses(&out), vec![Status::Connecting]);
    c.link_opened(2_010, "tok");
    let out = drain(&mut c);
    let frames = sent(&out);
    assert!(matches!(frames[0], ClientFrame::Auth { token, .. } if token == "tok"));
    assert!(matches!(frames[1], ClientFrame::Pull { since: 0, .. }));
    assert!(matches!(frames[2], ClientFrame::Push { operations, .. } if operations.len() == 1));
    assert_eq!(c.status(), Status::Syncing);
    let batch = push_id(&out);
    c.handle_frame(
        2_020,
        ServerFrame::PushResult {
            batch_id: batch,
            results: vec![applied("op-1", 1, 1)],
            current_version: 1,
            conflicts: vec![],
        },
    );
    assert!(c.queue().is_empty());
    assert!(c.get(&key("a")).is_some(), "acknowledged but unconfirmed writes stay visible");
    let entity = WireEntity {
        entity_type: EntityType::new("todo").unwrap(),
        entity_id: EntityId::new("a").unwrap(),
        version: 1,
        state: json!({"n": 1}),
        crdt: None,
        deleted: false,
        vector_clock: [(ClientId::new("c1").unwrap(), 1)].into_iter().collect(),
        timestamp: HlcTimestamp::new(1_000, 0),
        channels: None,
    };
    c.handle_frame(
        2_030,
        ServerFrame::Delta {
            since: 0,
            version: 1,
            entities: vec![entity],
            has_more: false,
            client_seq: Some(1),
            removed: vec![],
            scope: None,
            remaining: None,
        },
    );
    // The first pull (sent before the push) may have confirmed nothing; the client pulls until it has.
    drain(&mut c);
    c.handle_frame(
        2_040,
        ServerFrame::Delta {
            since: 1,
            version: 1,
            entities: vec![],
            has_more: false,
            client_seq: Some(1),
            removed: vec![],
            scope: None,
            remaining: None,
        },
    );
    assert!(c.is_settled());
    assert_eq!(c.status(), Status::Live);
    assert_eq!(c.get(&key("a")).unwrap()["n"], 1);
}

#[test]
fn reconnect_waits_follow_the_jittered_exponential_backoff() {
    let mut c = client();
    c.set_online(0, true);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        drain(&mut c);
        c.link_closed(now);
        let at = c.poll_timeout().unwrap();
        waits.push(at - now);
        now = at;
        c.handle_timeout(now);
    }
    assert!((500..=3_000).contains(&waits[0]), "{waits:?}");
    assert!((1_000..=6_000).contains(&waits[1]), "{waits:?}");
    assert!(waits.iter().all(|w| *w <= 30_000), "{waits:?}");
}

/// Online, and the WebSocket fails three times in a row (the default before long-polling):
/// returns the time of the last failure's retry.
fn fail_websocket_three_times(c: &mut SyncClient) -> u64 {
    c.set_online(0, true);
    let mut now = 0;
    for _ in 0..3 {
        drain(c);
        c.link_closed(now);
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    now
}

#[test]
fn repeated_websocket_failures_fall_back_to_long_polling_and_retry_the_socket_later() {
    let mut c = client();
    let now = fail_websocket_three_times(&mut c);
    let out = drain(&mut c);
    assert!(out.contains(&Output::Connect(Transport::LongPoll)), "{out:?}");
    c.link_opened(now, "tok");
    let out = drain(&mut c);
    assert!(
        !sent(&out).iter().any(|f| matches!(f, ClientFrame::Auth { .. })),
        "HTTP carries the token itself"
    );
    assert_eq!(c.status(), Status::Degraded);
    // Degraded clients poll on their own: no pokes come over HTTP.
    c.handle_frame(
        now,
        ServerFrame::Delta {
            since: 0,
            version: 0,
            entities: vec![],
            has_more: false,
            client_seq: Some(0),
            removed: vec![],
            scope: None,
            remaining: None,
        },
    );
    drain(&mut c);
    let poll_at = c.poll_timeout().unwrap();
    assert!(poll_at <= now + 5_000);
    c.handle_timeout(now + 5_000);
    assert!(sent(&drain(&mut c)).iter().any(|f| matches!(f, ClientFrame::Pull { .. })));
    // After websocket_retry_ms it tries the socket again.
    c.handle_timeout(now + 60_000);
    let out = drain(&mut c);
    assert!(
        out.contains(&Output::Disconnect) && out.contains(&Output::Connect(Transport::WebSocket)),
        "{out:?}"
    );
}

#[test]
fn a_silent_link_is_declared_dead_and_heartbeats_are_sent() {
    let mut c = client();
    live(&mut c, 0);
    c.handle_timeout(30_000);
    assert!(sent(&drain(&mut c)).iter().any(|f| matches!(f, ClientFrame::Ping { .. })));
    c.handle_timeout(90_000);
    let out = drain(&mut c);
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(c.status(), Status::Connecting);
}

#[test]
fn going_offline_closes_the_link_and_keeps_the_queue() {
    let mut c = client();
    live(&mut c, 0);
    mutate(&mut c, 10, "op-1", "a", json!({"n": 1}));
    c.set_online(20, false);
    let out = drain(&mut c);
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(c.status(), Status::Offline);
    assert_eq!(c.queue().len(), 1);
    assert_eq!(c.poll_timeout(), None, "no timers while offline");
}

#[test]
fn events_resume_after_the_last_sequence_without_duplicates() {
    let mut c = client();
    c.subscribe(0, vec!["order.*".into()]);
    live(&mut c, 0);
    let event = |seq: u64| ServerFrame::Event {
        event: crate::protocol::WireEvent {
            sequence: seq,
            event_id: format!("evt-{seq}"),
            event_type: "order.placed".into(),
            tenant_id: TenantId::new("t1").unwrap(),
            timestamp: String::new(),
            payload: Value::Null,
            metadata: Value::Null,
            schema_version: "1.0".into(),
        },
    };
    c.handle_frame(5, event(1));
    // A batch is its frames, in order; one nested in it is not a frame the server sends.
    let nested = ServerFrame::Batch { frames: vec![event(9)] };
    c.handle_frame(5, ServerFrame::Batch { frames: vec![event(2), nested, event(2), event(1)] });
    c.handle_frame(5, event(3));
    let delivered: Vec<u64> = drain(&mut c)
        .into_iter()
        .filter_map(
            |o| if let Output::Event(AppEvent::Event(e)) = o { Some(e.sequence) } else { None },
        )
        .collect();
    assert_eq!(delivered, vec![1, 2, 3]);
    c.link_closed(10);
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    c.link_opened(at, "tok");
    let out = drain(&mut c);
    assert!(sent(&out).iter().any(|f| matches!(f, ClientFrame::Subscribe { after: Some(3), .. })));
    // Rewinding replays from the chosen position, and remembers it durably.
    c.subscribe_from(at, vec!["order.*".into()], 1);
    let out = drain(&mut c);
    assert!(sent(&out).iter().any(|f| matches!(f, ClientFrame::Subscribe { after: Some(1), .. })));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Store(w) if w.contains(&StoreWrite::SetLastEvent(1))))
    );
    c.handle_frame(at + 1, event(2));
    assert!(
        drain(&mut c)
            .iter()
            .any(|o| matches!(o, Output::Event(AppEvent::Event(e)) if e.sequence == 2))
    );
}

#[test]
fn a_permanent_refusal_quarantines_the_operation_and_reports_it() {
    let mut c = client();
    live(&mut c, 0);
    mutate(&mut c, 10, "op-1", "a", json!({"n": 1}));
    mutate(&mut c, 11, "op-2", "a", json!({"n": 2}));
    let out = drain(&mut c);
    let batch = push_id(&out);
    let mut refused = applied("op-1", 1, 0);
    refused.status = ResultStatus::Refused;
    refused.version = None;
    refused.error = Some(WireError { code: ErrorCode::InvalidOperation, message: "no".into() });
    c.handle_frame(
        20,
        ServerFrame::PushResult {
            batch_id: batch,
            results: vec![refused, applied("op-2", 2, 1)],
            current_version: 1,
            conflicts: vec![],
        },
    );
    let out = drain(&mut c);
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Event(AppEvent::Rejected(q)) if q.op.id.as_str() == "op-1")
        )
    );
    assert!(c.queue().is_empty());
    assert_eq!(c.queue().quarantined().len(), 1);
}

#[test]
fn a_whole_batch_refused_is_retried_and_never_wedges_the_queue() {
    let mut c = client();
    live(&mut c, 0);
    for i in 1..=3 {
        mutate(&mut c, 10 + i, &format!("op-{i}"), "a", json!({"n": i}));
    }
    let mut out = drain(&mut c);
    for _ in 0..10 {
        let Some(batch) = try_push_id(&out) else { break };
        c.handle_frame(20, ServerFrame::error(ErrorCode::InvalidRequest, "bad batch", Some(batch)));
        out = drain(&mut c);
        if !c.queue().quarantined().is_empty() {
            break;
        }
    }
    assert_eq!(c.queue().quarantined().len(), 1);
    assert_eq!(c.queue().len(), 2, "the rest stays queued, renumbered from 1");
    assert_eq!(c.queue().pending().next().unwrap().op.client_seq, Some(1));
}

#[test]
fn token_refresh_goes_over_the_live_socket_and_auth_failure_is_reported() {
    let mut c = client();
    live(&mut c, 0);
    c.refresh_token(0, "fresh");
    assert!(
        sent(&drain(&mut c))
            .iter()
            .any(|f| matches!(f, ClientFrame::RefreshToken { token } if token == "fresh"))
    );
    c.handle_frame(1, ServerFrame::error(ErrorCode::AuthFailed, "expired", None));
    assert!(drain(&mut c).contains(&Output::Event(AppEvent::AuthRequired)));
}

#[test]
fn recovery_from_the_store_restores_queue_cache_and_cursors() {
    use crate::queue::{MemoryQueueStore, QueueStore};
    let mut c = client();
    let mut store = MemoryQueueStore::default();
    mutate(&mut c, 1_000, "op-1", "a", json!({"n": 1}));
    mutate(&mut c, 1_001, "op-2", "b", json!({"n": 2}));
    for o in drain(&mut c) {
        if let Output::Store(w) = o {
            store.apply(&w).unwrap();
        }
    }
    let config = ClientConfig::new(ClientId::new("c1").unwrap(), TenantId::new("t1").unwrap(), 8);
    let mut back = SyncClient::recover(config, StrategyRegistry::default(), store.load().unwrap());
    assert_eq!(back.queue().len(), 2);
    assert_eq!(back.get(&key("b")).unwrap()["n"], 2);
    mutate(&mut back, 900, "op-3", "a", json!({"n": 3}));
    let third = back.queue().pending().last().unwrap();
    assert_eq!(third.op.client_seq, Some(3));
    assert!(
        third.op.timestamp > HlcTimestamp::new(1_001, 0),
        "the HLC resumes past what it issued"
    );
}

#[test]
fn a_mutation_for_another_tenant_or_of_bad_shape_is_refused_and_changes_nothing() {
    let mut c = client();
    let other = EntityKey::parse("t2", "todo", "a").unwrap();
    let kind = OperationKind::Update(json!({"n": 1}).as_object().unwrap().clone());
    assert!(c.mutate(0, OperationId::new("x").unwrap(), other, kind).is_err());
    let empty = OperationKind::Update(Object::new());
    assert!(c.mutate(0, OperationId::new("y").unwrap(), key("a"), empty).is_err());
    assert!(c.queue().is_empty());
    assert_eq!(c.queue().next_seq(), 1);
}

/// A server that meters frames exactly as sync-server does (sdk-core's bucket, api.md's 100 a
/// minute) and acknowledges pushes: the client must stay within it whatever the app does.
struct Metered {
    bucket: crate::pacing::Bucket,
    refused: usize,
    pushed: usize,
    presence: usize,
}

impl Metered {
    fn exchange(&mut self, c: &mut SyncClient, now: u64) {
        use crate::pacing::WS_RATE;
        for o in drain(c) {
            if !matches!(o, Output::Send(_) | Output::Grant(_)) {
                continue;
            }
            if self.bucket.take(WS_RATE, now).is_err() {
                self.refused += 1;
            }
            if matches!(o, Output::Grant(crate::pacing::Slot::Presence(_))) {
                self.presence += 1;
            }
            if let Output::Send(ClientFrame::Push { batch_id, operations }) = o {
                self.pushed += operations.len();
                let last = operations.last().unwrap();
                let seq = last.client_seq.unwrap();
                let results = vec![applied(&last.operation_id, seq, seq)];
                c.handle_frame(
                    now,
                    ServerFrame::PushResult {
                        batch_id,
                        results,
                        current_version: seq,
                        conflicts: vec![],
                    },
                );
                self.exchange(c, now);
            }
        }
    }
}

#[test]
fn a_burst_of_presence_and_edits_stays_within_the_budget_and_everything_arrives() {
    use crate::pacing::{Bucket, Slot, WS_RATE};
    let mut c = client();
    live(&mut c, 0);
    let mut server =
        Metered { bucket: Bucket::full(WS_RATE, 0), refused: 0, pushed: 0, presence: 0 };
    let mut now = 0;
    // Typing at 7 keys a second for two minutes: an edit and a presence update per key.
    for k in 0..840u64 {
        now = k * 1_000 / 7;
        c.handle_timeout(now);
        mutate(&mut c, now, &format!("op-{k}"), "note", json!({ "text": k }));
        c.want_send(now, Slot::Presence("notes".into()));
        server.exchange(&mut c, now);
    }
    // Then let the pacer's own timer run until the queue is empty.
    while !c.queue().is_empty() {
        let at = c.poll_timeout().expect("a timer while something waits");
        assert!(at < now + 120_000, "drained within two minutes");
        now = at.max(now);
        c.handle_timeout(now);
        server.exchange(&mut c, now);
    }
    assert_eq!(server.refused, 0, "the server never had to refuse a frame");
    assert_eq!(server.pushed, 840, "every edit was pushed, coalesced into fewer pushes");
    // Presence went out as its latest value whenever the budget allowed: often, not per key.
    assert!(server.presence > 10 && server.presence < 200, "{} presence frames", server.presence);
}

#[test]
fn no_ping_while_traffic_proves_the_link_and_one_after_a_silence() {
    let mut c = client();
    live(&mut c, 0);
    let pings =
        |out: &[Output]| sent(out).iter().filter(|f| matches!(f, ClientFrame::Ping { .. })).count();
    // Traffic both ways just before the heartbeat is due.
    mutate(&mut c, 29_000, "op-1", "a", json!({"n": 1}));
    let id = push_id(&drain(&mut c));
    c.handle_frame(
        29_500,
        ServerFrame::PushResult {
            batch_id: id,
            results: vec![applied("op-1", 1, 1)],
            current_version: 1,
            conflicts: vec![],
        },
    );
    drain(&mut c);
    c.handle_timeout(30_000);
    assert_eq!(pings(&drain(&mut c)), 0, "a push and its answer prove the link");
    c.handle_timeout(60_000);
    assert_eq!(pings(&drain(&mut c)), 1, "a silent half minute: ping");
}

/// A client whose WebSocket is up and whose server announced 4 frames a minute (the first pull
/// already spent one).
fn linked_at_four_a_minute() -> SyncClient {
    let mut c = client();
    c.set_online(0, true);
    c.link_opened(0, "tok");
    drain(&mut c);
    let mut connected = connected();
    if let ServerFrame::Connected { rate_limit, .. } = &mut connected {
        *rate_limit = Some(crate::pacing::Rate::per_minute(4));
    }
    c.handle_frame(0, connected);
    drain(&mut c);
    c
}

#[test]
fn the_announced_limit_is_adopted_keeping_what_was_spent() {
    let mut c = linked_at_four_a_minute();
    // A pull is already spent of 4, one is the reserve: two more frames now, then one per 15 s.
    for (i, room) in ["a", "b", "c", "d"].iter().enumerate() {
        c.want_send(1, crate::pacing::Slot::Presence(room.to_string()));
        let granted = drain(&mut c).iter().filter(|o| matches!(o, Output::Grant(_))).count();
        assert_eq!(granted, usize::from(i < 2), "frame {i}");
    }
    assert_eq!(c.poll_timeout(), Some(15_000));
}

#[test]
fn presence_waits_by_room_and_other_frames_each_on_their_own() {
    let presence: ClientFrame = serde_json::from_value(serde_json::json!({
        "v": 1, "type": "presence", "status": "online", "roomId": "r1"
    }))
    .unwrap();
    let join: ClientFrame =
        serde_json::from_value(serde_json::json!({"v": 1, "type": "join_room", "roomId": "r1"}))
            .unwrap();
    assert_eq!(SyncClient::realtime_slot(&presence, 1), crate::pacing::Slot::Presence("r1".into()));
    assert_eq!(SyncClient::realtime_slot(&presence, 2), SyncClient::realtime_slot(&presence, 3));
    assert_eq!(SyncClient::realtime_slot(&join, 4), crate::pacing::Slot::Frame(4));
}

#[test]
fn acknowledging_what_others_changed_costs_the_client_nothing() {
    use crate::pacing::Slot;
    use base64::Engine as _;
    let mut c = linked_at_four_a_minute();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let ack = ClientFrame::DocSync {
        document_id: "notes".into(),
        message: b64(&[0x42, 0, 0, 0, 0]),
        more: false,
    };
    // Of 4 (one spent on the pull, one the reserve), two frames are there. Ten messages of
    // others' edits, each acknowledged at once: all ride their tickets, the budget stays.
    for _ in 0..10 {
        let theirs = b64(&[0x42, 0, 0, 0, 1, 1, 9]);
        c.handle_frame(
            1,
            ServerFrame::DocSync {
                document_id: "notes".into(),
                message: theirs,
                more: false,
                ticket: true,
            },
        );
        drain(&mut c);
        assert!(c.want_send(1, Slot::Doc("notes".into())));
        assert!(drain(&mut c).iter().any(|o| matches!(o, Output::Grant(Slot::Doc(_)))));
        c.sent_granted(1, std::slice::from_ref(&ack));
    }
    // A message answering the client's own (no ticket) is not free to answer.
    let reply = b64(&[0x42, 0, 0, 0, 0]);
    c.handle_frame(
        1,
        ServerFrame::DocSync {
            document_id: "notes".into(),
            message: reply,
            more: false,
            ticket: false,
        },
    );
    for n in 0..3 {
        c.want_send(1, Slot::Doc("notes".into()));
        let granted = drain(&mut c).iter().filter(|o| matches!(o, Output::Grant(_))).count();
        assert_eq!(granted, usize::from(n < 2), "answer {n}");
        c.sent_granted(1, std::slice::from_ref(&ack));
    }
}

#[test]
fn degraded_pulls_that_bring_nothing_back_off() {
    let mut c = client();
    let now = fail_websocket_three_times(&mut c);
    c.link_opened(now, "tok");
    drain(&mut c);
    let empty = |since| ServerFrame::Delta {
        since,
        version: since,
        entities: vec![],
        has_more: false,
        client_seq: Some(0),
        removed: vec![],
        scope: None,
        remaining: None,
    };
    c.handle_frame(now, empty(0));
    drain(&mut c);
    // Each empty pull doubles the wait before the next, up to four times the interval (5 s).
    let mut gaps = vec![];
    let mut last = now;
    for _ in 0..4 {
        let next = (last + 1..last + 30_000)
            .step_by(250)
            .find(|t| {
                c.handle_timeout(*t);
                sent(&drain(&mut c)).iter().any(|f| matches!(f, ClientFrame::Pull { .. }))
            })
            .expect("a pull");
        gaps.push((next - last).div_ceil(1_000) * 1_000);
        c.handle_frame(next, empty(0));
        drain(&mut c);
        last = next;
    }
    assert_eq!(gaps, [6_000, 11_000, 21_000, 21_000], "{gaps:?}");
}

// ---- sync rules: removals, move-out by scope, starting over when the rules change

fn scoped(channels: &[&str]) -> Option<crate::protocol::WireScope> {
    Some(crate::protocol::WireScope {
        rules: "r1".into(),
        channels: Some(channels.iter().map(|c| c.to_string()).collect()),
        reset: false,
    })
}

fn entity_in(id: &str, version: u64, channels: &[&str]) -> WireEntity {
    WireEntity {
        entity_type: EntityType::new("todo").unwrap(),
        entity_id: EntityId::new(id).unwrap(),
        version,
        state: json!({"title": id}),
        crdt: None,
        deleted: false,
        vector_clock: Default::default(),
        timestamp: HlcTimestamp::new(1, 0),
        channels: Some(channels.iter().map(|c| c.to_string()).collect()),
    }
}

fn scoped_delta(
    since: u64,
    version: u64,
    entities: Vec<WireEntity>,
    removed: Vec<&str>,
    scope: Option<crate::protocol::WireScope>,
) -> ServerFrame {
    ServerFrame::Delta {
        since,
        version,
        entities,
        has_more: false,
        client_seq: Some(0),
        removed: removed
            .into_iter()
            .map(|id| crate::protocol::WireRemoval {
                entity_type: EntityType::new("todo").unwrap(),
                entity_id: EntityId::new(id).unwrap(),
                version,
            })
            .collect(),
        scope,
        remaining: None,
    }
}

/// What the client stored and said about entities in one step.
fn forgotten(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| if let Output::Store(w) = o { Some(w) } else { None })
        .flatten()
        .filter_map(|w| match w {
            StoreWrite::DeleteEntity(k) => Some(k.entity_id.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_removal_forgets_the_entity_and_says_so() {
    let mut c = client();
    live(&mut c, 1);
    c.handle_frame(
        2,
        scoped_delta(
            0,
            2,
            vec![entity_in("a", 1, &["p:1"]), entity_in("b", 2, &["p:1"])],
            vec![],
            scoped(&["p:1"]),
        ),
    );
    drain(&mut c);
    c.handle_frame(3, scoped_delta(2, 5, vec![], vec!["a", "zz"], scoped(&["p:1"])));
    let out = drain(&mut c);
    assert_eq!(forgotten(&out), ["a"], "an entity never held is not 'forgotten'");
    assert!(c.get(&key("a")).is_none() && c.get(&key("b")).is_some());
    assert!(
        out.iter().any(|o| matches!(o, Output::Event(AppEvent::Changed(k)) if k == &[key("a")]))
    );
}

#[test]
fn a_removal_older_than_what_is_held_is_ignored() {
    let mut c = client();
    live(&mut c, 1);
    // Removed at 3, put back at 4, both in one page: the later put stands.
    c.handle_frame(
        2,
        scoped_delta(0, 4, vec![entity_in("a", 4, &["p:1"])], vec![], scoped(&["p:1"])),
    );
    drain(&mut c);
    let mut d = scoped_delta(4, 6, vec![], vec!["a"], scoped(&["p:1"]));
    if let ServerFrame::Delta { removed, .. } = &mut d {
        removed[0].version = 3;
    }
    c.handle_frame(3, d);
    assert!(forgotten(&drain(&mut c)).is_empty());
    assert!(c.get(&key("a")).is_some());
}

#[test]
fn losing_a_channel_forgets_what_only_it_gave_and_the_next_pull_says_what_is_held() {
    let mut c = client();
    live(&mut c, 1);
    let both = vec![
        entity_in("a", 1, &["p:1"]),
        entity_in("b", 2, &["p:1", "p:2"]),
        entity_in("c", 3, &["p:2"]),
    ];
    c.handle_frame(2, scoped_delta(0, 3, both, vec![], scoped(&["p:1", "p:2"])));
    drain(&mut c);
    c.handle_frame(3, ServerFrame::Poke { version: 4 });
    let out = drain(&mut c);
    let pull = sent(&out).into_iter().find(|f| matches!(f, ClientFrame::Pull { .. })).cloned();
    let Some(ClientFrame::Pull { held, channels, .. }) = pull else { panic!("a pull: {out:?}") };
    assert_eq!(held, Some(vec!["p:1".to_string(), "p:2".to_string()]));
    assert_eq!(channels, None, "no partial sync asked for");
    c.handle_frame(4, scoped_delta(3, 4, vec![], vec![], scoped(&["p:1"])));
    let mut gone = forgotten(&drain(&mut c));
    gone.sort();
    assert_eq!(gone, ["c"], "b is still readable through p:1");
    assert_eq!(c.scope(), scoped(&["p:1"]).as_ref());
}

#[test]
fn new_rules_start_over_from_zero() {
    let mut c = client();
    live(&mut c, 1);
    c.handle_frame(
        2,
        scoped_delta(0, 2, vec![entity_in("a", 2, &["p:1"])], vec![], scoped(&["p:1"])),
    );
    drain(&mut c);
    let mut other = scoped(&["p:1"]);
    other.as_mut().unwrap().rules = "r2".into();
    c.handle_frame(3, scoped_delta(2, 3, vec![entity_in("b", 3, &["p:1"])], vec![], other));
    let out = drain(&mut c);
    assert_eq!(forgotten(&out), ["a"]);
    assert!(c.get(&key("b")).is_none(), "the delta made for the old rules is not applied");
    assert_eq!(c.cursor(), 0);
    assert!(sent(&out).iter().any(|f| matches!(f, ClientFrame::Pull { since: 0, held: None, .. })));
}

#[test]
fn partial_sync_asks_for_its_channels() {
    let mut c = client();
    live(&mut c, 1);
    c.set_channels(2, Some(vec!["p:1".into()]));
    let out = drain(&mut c);
    assert!(
        sent(&out).iter().any(|f| matches!(f, ClientFrame::Pull { channels: Some(ch), .. } if ch == &["p:1".to_string()])),
        "{out:?}"
    );
}

#[test]
fn channels_changed_while_a_pull_is_out_are_pulled_for_once_it_is_answered() {
    let mut c = client();
    live(&mut c, 1);
    c.handle_frame(2, ServerFrame::Poke { version: 3 });
    assert!(
        sent(&drain(&mut c)).iter().any(|f| matches!(f, ClientFrame::Pull { channels: None, .. }))
    );
    c.set_channels(3, Some(vec!["p:2".into()]));
    assert!(sent(&drain(&mut c)).is_empty(), "one pull at a time");
    c.handle_frame(4, scoped_delta(0, 3, vec![], vec![], scoped(&["p:1"])));
    let out = drain(&mut c);
    assert!(
        sent(&out).iter().any(|f| matches!(f, ClientFrame::Pull { channels: Some(ch), .. } if ch == &["p:2".to_string()])),
        "{out:?}"
    );
}

#[test]
fn a_reset_scope_starts_over_without_applying_the_delta() {
    let mut c = client();
    live(&mut c, 1);
    c.handle_frame(
        2,
        scoped_delta(0, 2, vec![entity_in("a", 2, &["p:1"])], vec![], scoped(&["p:1"])),
    );
    drain(&mut c);
    let mut reset = scoped(&["p:1"]);
    reset.as_mut().unwrap().reset = true;
    c.handle_frame(3, scoped_delta(2, 9, vec![entity_in("b", 9, &["p:1"])], vec![], reset));
    let out = drain(&mut c);
    assert_eq!(forgotten(&out), ["a"]);
    assert!(c.get(&key("b")).is_none());
    assert!(sent(&out).iter().any(|f| matches!(f, ClientFrame::Pull { since: 0, .. })));
}

#[test]
fn a_sync_of_several_pages_reports_its_progress() {
    let mut c = client();
    c.set_online(1, true);
    c.link_opened(1, "tok");
    c.handle_frame(1, connected());
    drain(&mut c);
    let page = |since, version, n: u64, has_more, remaining| ServerFrame::Delta {
        since,
        version,
        entities: (0..n).map(|i| entity_in(&format!("e{since}-{i}"), since + i + 1, &[])).collect(),
        has_more,
        client_seq: Some(0),
        removed: vec![],
        scope: None,
        remaining,
    };
    let progress = |out: &[Output]| -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(AppEvent::Progress { received, total }) => Some((*received, *total)),
                _ => None,
            })
            .collect()
    };
    c.handle_frame(2, page(0, 3, 3, true, Some(5)));
    assert_eq!(progress(&drain(&mut c)), [(3, 8)]);
    c.handle_frame(3, page(3, 6, 3, true, Some(2)));
    assert_eq!(progress(&drain(&mut c)), [(6, 8)]);
    c.handle_frame(4, page(6, 8, 2, false, None));
    assert_eq!(progress(&drain(&mut c)), [(8, 8)], "the last page completes it");
    c.handle_frame(5, page(8, 9, 1, false, None));
    assert!(progress(&drain(&mut c)).is_empty(), "a one-page delta is no long sync");
}
