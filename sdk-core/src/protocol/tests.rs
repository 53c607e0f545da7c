use super::*;
use proptest::prelude::*;
use serde_json::json;

/// api.md's reconcile example operation, verbatim.
const API_MD_OPERATION: &str = r#"{
    "operationId": "op-001",
    "clientId": "client-789",
    "tenantId": "tenant-456",
    "entityType": "document",
    "entityId": "doc-456",
    "operationType": "UPDATE",
    "payload": { "content": "Updated text" },
    "timestamp": "2026-01-30T12:00:00Z",
    "vectorClock": { "client-789": 1 }
}"#;

fn sample_client_frames() -> Vec<ClientFrame> {
    let op: WireOperation = serde_json::from_str(API_MD_OPERATION).unwrap();
    vec![
        ClientFrame::Auth { token: "tok".into(), client_id: ClientId::new("c1").unwrap() },
        ClientFrame::RefreshToken { token: "tok2".into() },
        ClientFrame::Push { batch_id: "b1".into(), operations: vec![op] },
        ClientFrame::Pull { since: 42, limit: Some(100), channels: None, held: None },
        ClientFrame::Subscribe {
            after: Some(7),
            event_types: vec!["order.*".into()],
            attributes: Default::default(),
        },
        ClientFrame::Subscribe {
            after: None,
            event_types: vec![],
            attributes: [("customer.tier".to_string(), json!("gold"))].into_iter().collect(),
        },
        ClientFrame::Follow { subscription: "audit-sink".into() },
        ClientFrame::Unsubscribe {},
        ClientFrame::Consume { group: "billing".into(), max_in_flight: Some(5) },
        ClientFrame::DeliveryAck { group: "billing".into(), sequence: 4, lease_token: "t".into() },
        ClientFrame::DeliveryNack {
            group: "billing".into(),
            sequence: 4,
            lease_token: "t".into(),
            reason: Some("timeout".into()),
        },
        ClientFrame::Presence {
            status: PresenceStatus::Away,
            metadata: Some(json!({"statusMessage": "In a meeting"})),
            room_id: None,
        },
        ClientFrame::JoinRoom { room_id: RoomId::new("room-789").unwrap() },
        ClientFrame::LeaveRoom { room_id: RoomId::new("room-789").unwrap() },
        ClientFrame::Message {
            message_id: None,
            message_type: "chat.message".into(),
            interaction_class: Some(InteractionClass::C),
            recipient_id: Some(UserId::new("user-456").unwrap()),
            room_id: None,
            payload: json!({"text": "Hello, World!"}),
            metadata: None,
        },
        ClientFrame::Ack { sequence: 9 },
        ClientFrame::DocSync { document_id: "notes".into(), message: "QkM=".into(), more: false },
        ClientFrame::DocSync { document_id: "notes".into(), message: "QkM=".into(), more: true },
        ClientFrame::DocClose { document_id: "notes".into() },
        ClientFrame::Ping { nonce: 3 },
        ClientFrame::SnapshotRequest {
            request_id: "r1".into(),
            entity_type: EntityType::new("todo").unwrap(),
            entity_id: None,
            cursor: Some("c".into()),
        },
    ]
}

fn sample_server_frames() -> Vec<ServerFrame> {
    let entity = WireEntity {
        entity_type: EntityType::new("todo").unwrap(),
        entity_id: EntityId::new("1").unwrap(),
        version: 3,
        state: json!({"done": true}),
        crdt: None,
        deleted: false,
        vector_clock: [(ClientId::new("c1").unwrap(), 2)].into_iter().collect(),
        timestamp: HlcTimestamp::new(1_769_774_400_000, 1),
        channels: None,
    };
    vec![
        ServerFrame::Connected {
            connection_id: "abc123".into(),
            server_time: "2026-01-30T12:00:00.000Z".into(),
            interaction_classes: InteractionClass::ALL.to_vec(),
            protocol_version: 1,
            heartbeat_ms: 30_000,
            rate_limit: Some(crate::pacing::WS_RATE),
        },
        ServerFrame::PushResult {
            batch_id: "b1".into(),
            results: vec![WireOpResult {
                operation_id: "op-1".into(),
                client_seq: Some(1),
                status: ResultStatus::Conflict,
                duplicate: false,
                version: Some(3),
                resolution: Some("fields-merged".into()),
                fields_from_client: vec!["a".into()],
                fields_kept_server: vec!["b".into()],
                conflict_id: None,
                error: None,
            }],
            current_version: 3,
            conflicts: vec![],
        },
        ServerFrame::Delta {
            since: 1,
            version: 3,
            entities: vec![entity],
            has_more: false,
            client_seq: Some(2),
            removed: vec![],
            scope: None,
            remaining: None,
        },
        ServerFrame::Poke { version: 3 },
        ServerFrame::SnapshotChunk {
            request_id: "r1".into(),
            snapshot_id: "s1".into(),
            version: 3,
            index: 0,
            total: 1,
            data: "e30=".into(),
            checksum: "sha256:x".into(),
            total_checksum: "sha256:x".into(),
            next_cursor: None,
        },
        ServerFrame::error(ErrorCode::ClassDRealtimeForbidden, "use REST", Some("b1".into())),
    ]
    .into_iter()
    .chain(sample_realtime_frames())
    .collect()
}

/// The server frames of event streams, documents and rooms.
fn sample_realtime_frames() -> Vec<ServerFrame> {
    vec![
        ServerFrame::Event {
            event: WireEvent {
                sequence: 124,
                event_id: "evt-124".into(),
                event_type: "order.placed".into(),
                tenant_id: TenantId::new("tenant-456").unwrap(),
                timestamp: "2026-01-30T12:00:00Z".into(),
                payload: json!({"orderId": "order-789"}),
                metadata: json!({"source": "order-service"}),
                schema_version: "1.0".into(),
            },
        },
        ServerFrame::DocSync {
            document_id: "notes".into(),
            message: "QkM=".into(),
            more: true,
            ticket: false,
        },
        ServerFrame::DocSync {
            document_id: "notes".into(),
            message: "QkM=".into(),
            more: false,
            ticket: true,
        },
        ServerFrame::Delivery {
            group: "billing".into(),
            event: WireEvent {
                sequence: 125,
                event_id: "evt-125".into(),
                event_type: "order.paid".into(),
                tenant_id: TenantId::new("tenant-456").unwrap(),
                timestamp: "2026-01-30T12:00:01Z".into(),
                payload: json!({}),
                metadata: json!({}),
                schema_version: "1.0".into(),
            },
            attempt: 2,
            lease_token: "lease-1".into(),
            lease_expires_at: 1_769_774_430_000,
        },
        ServerFrame::Presence {
            user_id: UserId::new("u1").unwrap(),
            client_id: ClientId::new("c1").unwrap(),
            status: PresenceStatus::Online,
            metadata: None,
            room_id: Some(RoomId::new("r").unwrap()),
            ttl_ms: Some(90_000),
        },
        ServerFrame::RoomJoined { room_id: RoomId::new("r").unwrap() },
        ServerFrame::RoomLeft { room_id: RoomId::new("r").unwrap() },
        ServerFrame::Message {
            message_id: "m1".into(),
            message_type: "chat.message".into(),
            interaction_class: InteractionClass::C,
            tenant_id: TenantId::new("t").unwrap(),
            sender_id: UserId::new("u1").unwrap(),
            recipient_id: None,
            room_id: Some(RoomId::new("r").unwrap()),
            payload: json!({"text": "hi"}),
            timestamp: "2026-01-30T12:00:00.000Z".into(),
            metadata: None,
        },
        ServerFrame::MessageAck { message_id: "m1".into() },
        ServerFrame::Pong { nonce: 3 },
    ]
}

#[test]
fn every_frame_round_trips_in_both_codecs() {
    for codec in [Codec::Json, Codec::MessagePack] {
        for f in sample_client_frames() {
            let bytes = codec.encode(&f);
            assert_eq!(
                codec.decode::<ClientFrame>(&bytes, DEFAULT_MAX_FRAME).unwrap(),
                f,
                "{codec:?}"
            );
        }
        for f in sample_server_frames() {
            let bytes = codec.encode(&f);
            assert_eq!(
                codec.decode::<ServerFrame>(&bytes, DEFAULT_MAX_FRAME).unwrap(),
                f,
                "{codec:?}"
            );
        }
    }
}

#[test]
fn json_frames_look_like_the_protocol_document() {
    let bytes = Codec::Json.encode(&ClientFrame::Pull {
        since: 4,
        limit: None,
        channels: None,
        held: None,
    });
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        r#"{"v":1,"type":"pull","since":4,"limit":null}"#
    );
    let f: ClientFrame =
        Codec::Json.decode(br#"{"v":1,"type":"join_room","roomId":"room-1"}"#, 1024).unwrap();
    assert_eq!(f, ClientFrame::JoinRoom { room_id: RoomId::new("room-1").unwrap() });
}

#[test]
fn the_api_md_operation_decodes_and_round_trips() {
    let w: WireOperation = serde_json::from_str(API_MD_OPERATION).unwrap();
    let op = w.clone().into_operation().unwrap();
    assert_eq!(op.client_seq, None);
    assert_eq!(
        op.kind,
        OperationKind::Update(serde_json::from_str(r#"{"content":"Updated text"}"#).unwrap())
    );
    assert_eq!(op.class, InteractionClass::C);
    op.validate(&Default::default()).unwrap();
    let back = WireOperation::from_operation(&op).into_operation().unwrap();
    assert_eq!(back, op);
}

#[test]
fn a_bad_operation_body_is_refused_alone_but_a_bad_header_refuses_the_request() {
    let mut w: WireOperation = serde_json::from_str(API_MD_OPERATION).unwrap();
    w.payload = json!([1, 2]);
    match w.clone().into_submitted().unwrap() {
        Submitted::Invalid { error, .. } => assert!(error.to_string().contains("object")),
        other => panic!("expected Invalid, got {other:?}"),
    }
    w.operation_id = "bad id".into();
    assert!(w.into_submitted().is_err());
}

#[test]
fn bad_bytes_are_errors_with_useful_codes() {
    let check = |bytes: &[u8], code: ErrorCode| {
        let e = Codec::Json.decode::<ClientFrame>(bytes, 1024).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    };
    check(b"", ErrorCode::InvalidRequest);
    check(b"{", ErrorCode::InvalidRequest);
    check(br#"{"v":1,"type":"nope"}"#, ErrorCode::InvalidRequest);
    check(br#"{"type":"ping"}"#, ErrorCode::InvalidRequest);
    check(br#"{"v":2,"type":"ping"}"#, ErrorCode::UnsupportedVersion);
    check(br#"{"v":2,"type":"brand_new_frame","x":1}"#, ErrorCode::UnsupportedVersion);
    check(br#"{"v":1,"type":"join_room","roomId":"a b"}"#, ErrorCode::InvalidRequest);
    check(&[b' '; 2000], ErrorCode::PayloadTooLarge);
    assert!(Codec::MessagePack.decode::<ClientFrame>(&[0xc1, 0xff], 1024).is_err());
}

#[test]
fn subprotocols_select_the_codec() {
    assert_eq!(Codec::from_subprotocol("pf2.v1.msgpack"), Some(Codec::MessagePack));
    assert_eq!(Codec::from_subprotocol("pf2.v1.json"), Some(Codec::Json));
    assert_eq!(Codec::from_subprotocol("graphql-ws"), None);
}

fn batch_round_trips(frames: Vec<ServerFrame>) {
    for codec in [Codec::Json, Codec::MessagePack] {
        let parts: Vec<Vec<u8>> = frames.iter().map(|f| codec.encode(f)).collect();
        let bytes = codec.encode_batch(&parts);
        let decoded = codec.decode::<ServerFrame>(&bytes, usize::MAX).unwrap();
        assert_eq!(decoded, ServerFrame::Batch { frames: frames.clone() }, "{codec:?}");
    }
}

#[test]
fn a_batch_past_65535_frames_keeps_them_all() {
    // MessagePack's array header takes its 32-bit form.
    batch_round_trips((0..70_000u64).map(|version| ServerFrame::Poke { version }).collect());
}

proptest! {
    /// Any sequence of frames, each encoded on its own, batched by concatenation, decodes to
    /// the same frames in the same order (including the array-length forms of MessagePack).
    #[test]
    fn a_batch_of_encoded_frames_decodes_to_those_frames(
        picks in proptest::collection::vec(any::<usize>(), 0..40)
    ) {
        let samples = sample_server_frames();
        let frames: Vec<ServerFrame> = picks.iter().map(|i| samples[i % samples.len()].clone()).collect();
        batch_round_trips(frames);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for codec in [Codec::Json, Codec::MessagePack] {
            let _ = codec.decode::<ClientFrame>(&bytes, DEFAULT_MAX_FRAME);
            let _ = codec.decode::<ServerFrame>(&bytes, DEFAULT_MAX_FRAME);
        }
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_frames(
        which in 0usize..13, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        for codec in [Codec::Json, Codec::MessagePack] {
            let frames = sample_client_frames();
            let mut bytes = codec.encode(&frames[which % frames.len()]);
            for (at, b) in &flips { let i = at % bytes.len(); bytes[i] = *b; }
            if let Ok(f) = codec.decode::<ClientFrame>(&bytes, DEFAULT_MAX_FRAME) {
                // Whatever decodes re-encodes and decodes to itself.
                prop_assert_eq!(codec.decode::<ClientFrame>(&codec.encode(&f), DEFAULT_MAX_FRAME).unwrap(), f);
            }
        }
    }
}

#[test]
fn every_outcome_survives_its_wire_form() {
    use crate::apply::{OpResult, Outcome, Resolution};
    let outcomes = vec![
        Outcome::Applied { version: 3 },
        Outcome::Refused { code: ErrorCode::SeqGap, message: "gap".into() },
        Outcome::Conflict {
            resolution: Resolution::IncomingWon,
            version: Some(4),
            conflict_id: None,
        },
        Outcome::Conflict { resolution: Resolution::ServerKept, version: None, conflict_id: None },
        Outcome::Conflict {
            resolution: Resolution::FieldsMerged {
                from_client: vec!["a".into()],
                kept_server: vec!["b".into()],
            },
            version: Some(5),
            conflict_id: None,
        },
        Outcome::Conflict {
            resolution: Resolution::Custom("sum".into()),
            version: Some(6),
            conflict_id: None,
        },
        Outcome::Conflict {
            resolution: Resolution::Manual,
            version: None,
            conflict_id: Some("conflict-x".into()),
        },
    ];
    for outcome in outcomes {
        let r = OpResult {
            operation_id: OperationId::new("op").unwrap(),
            client_seq: Some(1),
            outcome: outcome.clone(),
            duplicate: false,
        };
        assert_eq!(WireOpResult::from_result(&r).to_outcome(), outcome);
    }
}

#[test]
fn event_type_patterns_match_exactly_or_by_prefix() {
    let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(event_type_matches(&[], "anything"));
    assert!(event_type_matches(&p(&["order.*"]), "order.placed"));
    assert!(!event_type_matches(&p(&["order.*"]), "orders.placed"));
    assert!(event_type_matches(&p(&["todo.created", "x.*"]), "todo.created"));
    assert!(!event_type_matches(&p(&["todo.created"]), "todo.created.more"));
}

#[test]
fn filters_match_type_patterns_and_nested_payload_attributes() {
    let f = EventFilter {
        event_types: vec!["order.*".into()],
        attributes: [("region".to_string(), json!("eu")), ("customer.tier".to_string(), json!(2))]
            .into_iter()
            .collect(),
    };
    let payload = json!({"region": "eu", "customer": {"tier": 2}});
    assert!(f.matches("order.placed", &payload));
    assert!(!f.matches("invoice.sent", &payload), "type pattern");
    assert!(!f.matches("order.placed", &json!({"region": "us", "customer": {"tier": 2}})));
    assert!(!f.matches("order.placed", &json!({"region": "eu"})), "a missing path never matches");
    assert!(
        !f.matches("order.placed", &json!({"region": "eu", "customer": {"tier": "2"}})),
        "types differ"
    );
    assert!(EventFilter::default().matches("anything", &json!(null)));
}

#[test]
fn malformed_filters_are_refused() {
    let bad = |types: &[&str], attrs: Value| EventFilter {
        event_types: types.iter().map(|s| s.to_string()).collect(),
        attributes: serde_json::from_value(attrs).unwrap(),
    };
    assert!(bad(&["order.*"], json!({"a.b": 1})).validate().is_ok());
    for f in [
        bad(&[""], json!({})),
        bad(&["a*b"], json!({})),
        bad(&[], json!({"": 1})),
        bad(&[], json!({"a..b": 1})),
        bad(&[], json!({"a": {"nested": true}})),
        bad(&[], json!({"a": [1]})),
    ] {
        let e = f.validate().unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{f:?}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(bad(&refs, json!({})).validate().is_err());
}

proptest! {
    /// Filter evaluation never panics on arbitrary payloads and paths.
    #[test]
    fn filter_matching_is_total(path in "[a-z.]{0,12}", payload in proptest::arbitrary::any::<u8>()) {
        let f = EventFilter { event_types: vec![], attributes: [(path, json!(payload))].into_iter().collect() };
        let _ = f.validate();
        let _ = f.matches("t", &json!({"a": {"b": payload}}));
    }
}

#[test]
fn any_frame_may_carry_a_traceparent_in_both_codecs() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for frame in sample_client_frames() {
        let mut v = serde_json::to_value(&frame).unwrap();
        v["v"] = json!(PROTOCOL_VERSION);
        v["traceparent"] = json!(tp);
        let json_bytes = serde_json::to_vec(&v).unwrap();
        let (back, traced) =
            Codec::Json.decode_traced::<ClientFrame>(&json_bytes, usize::MAX).unwrap();
        assert_eq!((back, traced.as_deref()), (frame.clone(), Some(tp)));
        let packed = rmp_serde::to_vec_named(&v).unwrap();
        let (back, traced) =
            Codec::MessagePack.decode_traced::<ClientFrame>(&packed, usize::MAX).unwrap();
        assert_eq!((back, traced.as_deref()), (frame.clone(), Some(tp)));
        // Without one: none, and the plain decode ignores it either way.
        let plain = Codec::Json.encode(&frame);
        assert_eq!(Codec::Json.decode_traced::<ClientFrame>(&plain, usize::MAX).unwrap().1, None);
        assert_eq!(Codec::Json.decode::<ClientFrame>(&json_bytes, usize::MAX).unwrap(), frame);
    }
}

#[test]
fn numbers_without_a_fraction_read_as_integers() {
    let mut v = json!({"a": 1441.0, "b": [2.5, -3.0, 1e3], "c": {"d": 7}, "e": 1e300, "f": -0.0});
    integral_numbers(&mut v);
    assert_eq!(v, json!({"a": 1441, "b": [2.5, -3, 1000], "c": {"d": 7}, "e": 1e300, "f": 0}));
    assert!(v["a"].is_u64() && v["b"][1].is_i64());
}
