use super::*;
use crate::ids::{EntityType, TenantId};
use crate::operation::fixtures::{obj, op, update};
use crate::strategy::CrdtMerger;
use proptest::prelude::*;
use serde_json::{Value, json};

fn tenant() -> TenantId {
    TenantId::new("t1").unwrap()
}

fn engine(strategy: ConflictStrategy) -> ApplyEngine {
    let mut r = StrategyRegistry::new(strategy);
    r.register_custom("sum", |i: &MergeInput<'_>| {
        // Counters add: server + client's delta over the server value.
        let server = i.server.cloned().unwrap_or_default();
        let mut merged = server.clone();
        if let OperationKind::Update(p) = i.incoming {
            for (k, v) in p {
                let a = server.get(k).and_then(Value::as_i64).unwrap_or(0);
                let b = v.as_i64().ok_or("counters must be integers")?;
                merged.insert(k.clone(), json!(a + b));
            }
        }
        Ok(Some(merged))
    });
    r.register_crdt("gset", GrowSet);
    ApplyEngine::new(r)
}

/// A test CRDT: the document is a sorted, deduplicated list of change bytes.
struct GrowSet;
impl CrdtMerger for GrowSet {
    fn apply(&self, current: Option<&[u8]>, change: &[u8]) -> Result<Vec<u8>, String> {
        let mut items: Vec<Vec<u8>> = match current {
            Some(c) => serde_json::from_slice(c).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        if !items.iter().any(|i| i == change) {
            items.push(change.to_vec());
            items.sort();
        }
        serde_json::to_vec(&items).map_err(|e| e.to_string())
    }
}

fn apply(e: &ApplyEngine, state: &mut ApplyState, ops: Vec<Operation>) -> BatchOutcome {
    e.apply_batch(&tenant(), ops.into_iter().map(Submitted::Valid).collect(), state).unwrap()
}

fn state_of(state: &ApplyState, entity: &str) -> Value {
    let key = EntityKey::parse("t1", "todo", entity).unwrap();
    state.entities[&key].object().map(|o| Value::Object(o.clone())).unwrap_or(Value::Null)
}

fn clock_of(state: &ApplyState, entity: &str) -> VectorClock {
    state.entities[&EntityKey::parse("t1", "todo", entity).unwrap()].clock.clone()
}

fn create(client: &str, seq: u64, entity: &str, v: Value, millis: u64) -> Operation {
    op(client, seq, entity, OperationKind::Create(obj(v)), millis, &VectorClock::new())
}

fn update_on(
    client: &str,
    seq: u64,
    entity: &str,
    v: Value,
    ms: u64,
    base: &VectorClock,
) -> Operation {
    op(client, seq, entity, OperationKind::Update(obj(v)), ms, base)
}

#[test]
fn create_applies_and_logs_one_change() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let out = apply(&e, &mut s, vec![create("a", 1, "x", json!({"title": "milk"}), 10)]);
    assert_eq!(out.results[0].outcome, Outcome::Applied { version: 1 });
    assert_eq!(out.changes.len(), 1);
    assert_eq!(state_of(&s, "x"), json!({"title": "milk"}));
    assert_eq!(s.ledgers[&ClientId::new("a").unwrap()], 1);
}

#[test]
fn a_replayed_operation_returns_the_identical_outcome_and_changes_nothing() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let first = apply(&e, &mut s, vec![create("a", 1, "x", json!({"n": 1}), 10)]);
    let before = s.clone();
    let again = apply(&e, &mut s, vec![create("a", 1, "x", json!({"n": 1}), 10)]);
    assert_eq!(again.results[0].outcome, first.results[0].outcome);
    assert!(again.results[0].duplicate);
    assert!(again.changes.is_empty());
    assert_eq!(s, before);
}

#[test]
fn a_gap_is_refused_unrecorded_and_heals_when_the_missing_operation_arrives() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let out = apply(&e, &mut s, vec![update("a", 2, "x", json!({"n": 2}), 20)]);
    assert!(matches!(&out.results[0].outcome, Outcome::Refused { code: ErrorCode::SeqGap, .. }));
    assert!(s.results.is_empty() && s.entities.is_empty());
    let out = apply(
        &e,
        &mut s,
        vec![update("a", 1, "x", json!({"n": 1}), 10), update("a", 2, "x", json!({"n": 2}), 20)],
    );
    assert!(out.results.iter().all(|r| matches!(r.outcome, Outcome::Applied { .. })));
    assert_eq!(state_of(&s, "x"), json!({"n": 2}));
}

#[test]
fn a_reused_sequence_number_with_a_new_id_is_refused() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    apply(&e, &mut s, vec![update("a", 1, "x", json!({"n": 1}), 10)]);
    let mut o = update("a", 1, "x", json!({"n": 9}), 10);
    o.id = OperationId::new("other").unwrap();
    let out = apply(&e, &mut s, vec![o]);
    assert!(matches!(&out.results[0].outcome, Outcome::Refused { code: ErrorCode::SeqReused, .. }));
    assert_eq!(state_of(&s, "x"), json!({"n": 1}));
}

#[test]
fn an_invalid_operation_is_refused_but_consumes_its_sequence_number() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let bad = update("a", 1, "x", json!({}), 10);
    let good = update("a", 2, "x", json!({"n": 2}), 20);
    let out = apply(&e, &mut s, vec![bad, good]);
    assert!(matches!(
        &out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::InvalidOperation, .. }
    ));
    assert_eq!(out.results[1].outcome, Outcome::Applied { version: 1 });
    let submitted = Submitted::Invalid {
        id: OperationId::new("garbled").unwrap(),
        client_id: ClientId::new("a").unwrap(),
        client_seq: Some(3),
        error: Error::Decode("payload is not an object".into()),
    };
    let out = e.apply_batch(&tenant(), vec![submitted], &mut s).unwrap();
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::InvalidRequest, .. }
    ));
    assert_eq!(s.ledgers[&ClientId::new("a").unwrap()], 3);
}

#[test]
fn another_tenants_entity_is_refused() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let mut o = update("a", 1, "x", json!({"n": 1}), 10);
    o.key.tenant = TenantId::new("t2").unwrap();
    let out = apply(&e, &mut s, vec![o]);
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::TenantViolation, .. }
    ));
    assert!(s.entities.is_empty());
}

#[test]
fn an_oversized_batch_is_refused_whole_and_changes_nothing() {
    let e = engine(ConflictStrategy::LastWriteWins).with_limits(OperationLimits::default(), 2);
    let mut s = ApplyState::default();
    let batch =
        (1..=3).map(|i| Submitted::Valid(update("a", i, "x", json!({"n": i}), i))).collect();
    assert!(matches!(e.apply_batch(&tenant(), batch, &mut s), Err(Error::BatchLimit(_))));
    assert_eq!(s, ApplyState::default());
}

/// Two clients edit `x` concurrently from the same base; returns the state after both.
fn concurrent_pair(
    strategy: ConflictStrategy,
    first: (Value, u64),
    second: (Value, u64),
) -> (ApplyState, BatchOutcome) {
    let e = engine(strategy);
    let mut s = ApplyState::default();
    apply(&e, &mut s, vec![create("z", 1, "x", json!({"title": "t", "n": 1}), 1)]);
    let base = clock_of(&s, "x");
    apply(&e, &mut s, vec![update_on("a", 1, "x", first.0, first.1, &base)]);
    let out = apply(&e, &mut s, vec![update_on("b", 1, "x", second.0, second.1, &base)]);
    (s, out)
}

#[test]
fn last_write_wins_takes_the_later_stamp_whatever_the_arrival_order() {
    let (s, out) = concurrent_pair(
        ConflictStrategy::LastWriteWins,
        (json!({"title": "A"}), 50),
        (json!({"title": "B"}), 40),
    );
    assert_eq!(state_of(&s, "x")["title"], "A");
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Conflict { resolution: Resolution::ServerKept, version: None, .. }
    ));
    let (s, out) = concurrent_pair(
        ConflictStrategy::LastWriteWins,
        (json!({"title": "A"}), 40),
        (json!({"title": "B"}), 50),
    );
    assert_eq!(state_of(&s, "x")["title"], "B");
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Conflict { resolution: Resolution::IncomingWon, .. }
    ));
}

#[test]
fn field_merge_keeps_both_sides_disjoint_fields_without_a_conflict() {
    let (s, out) = concurrent_pair(
        ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins),
        (json!({"title": "A"}), 40),
        (json!({"n": 2}), 30),
    );
    assert_eq!(state_of(&s, "x"), json!({"title": "A", "n": 2}));
    assert!(matches!(out.results[0].outcome, Outcome::Applied { .. }));
}

#[test]
fn field_merge_overlap_falls_back_to_last_write_wins_per_field() {
    let (s, out) = concurrent_pair(
        ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins),
        (json!({"title": "A", "n": 5}), 40),
        (json!({"title": "B", "done": true}), 30),
    );
    assert_eq!(state_of(&s, "x"), json!({"title": "A", "n": 5, "done": true}));
    assert_eq!(
        out.results[0].outcome,
        Outcome::Conflict {
            resolution: Resolution::FieldsMerged {
                from_client: vec!["done".into()],
                kept_server: vec!["title".into()]
            },
            version: Some(3),
            conflict_id: None
        }
    );
}

#[test]
fn field_merge_with_manual_overlap_records_a_conflict_and_merges_the_rest() {
    let (s, out) = concurrent_pair(
        ConflictStrategy::FieldMerge(OnOverlap::Manual),
        (json!({"title": "A"}), 40),
        (json!({"title": "B", "done": true}), 50),
    );
    assert_eq!(state_of(&s, "x"), json!({"title": "A", "n": 1, "done": true}));
    assert_eq!(out.conflicts.len(), 1);
    let c = &out.conflicts[0];
    assert_eq!(c.fields, vec!["title".to_string()]);
    assert_eq!(c.server_state.as_ref().unwrap()["title"], "A");
    assert_eq!(c.client_state.as_ref().unwrap()["title"], "B");
}

#[test]
fn custom_merge_runs_the_named_function_on_conflict() {
    let (s, out) = concurrent_pair(
        ConflictStrategy::Custom("sum".into()),
        (json!({"n": 10}), 40),
        (json!({"n": 5}), 50),
    );
    assert_eq!(
        state_of(&s, "x")["n"],
        15,
        "the function adds the concurrent write to the server's"
    );
    assert!(matches!(
        &out.results[0].outcome,
        Outcome::Conflict { resolution: Resolution::Custom(n), .. } if n == "sum"
    ));
    let (_, out) = concurrent_pair(
        ConflictStrategy::Custom("missing".into()),
        (json!({"n": 1}), 40),
        (json!({"n": 2}), 50),
    );
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::MergeFailed, .. }
    ));
    let (_, out) = concurrent_pair(
        ConflictStrategy::Custom("sum".into()),
        (json!({"n": 1}), 40),
        (json!({"n": "x"}), 50),
    );
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::MergeFailed, .. }
    ));
}

#[test]
fn manual_keeps_the_server_version_and_a_person_resolves_it() {
    let (mut s, out) = concurrent_pair(
        ConflictStrategy::Manual,
        (json!({"title": "A"}), 40),
        (json!({"title": "B"}), 50),
    );
    assert_eq!(state_of(&s, "x")["title"], "A");
    let c = out.conflicts[0].clone();
    assert_eq!(
        out.results[0].outcome,
        Outcome::Conflict {
            resolution: Resolution::Manual,
            version: None,
            conflict_id: Some(c.id.clone())
        }
    );
    let e = engine(ConflictStrategy::Manual);
    assert_eq!(
        e.resolve_conflict(&mut s, &c, ConflictChoice::KeepServer, HlcTimestamp::new(60, 0)),
        None
    );
    let change = e
        .resolve_conflict(&mut s, &c, ConflictChoice::TakeClient, HlcTimestamp::new(60, 0))
        .unwrap();
    assert_eq!(state_of(&s, "x")["title"], "B");
    assert_eq!(change.version, s.version);
    // A client that still works from the pre-resolution clock now conflicts again, as it should.
    let base = VectorClock::new();
    let out = apply(&e, &mut s, vec![update_on("a", 2, "x", json!({"title": "C"}), 70, &base)]);
    assert!(!out.conflicts.is_empty());
}

#[test]
fn a_later_concurrent_update_resurrects_a_deleted_entity_and_an_earlier_one_does_not() {
    for (update_ms, alive) in [(50, true), (30, false)] {
        let e = engine(ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins));
        let mut s = ApplyState::default();
        apply(&e, &mut s, vec![create("z", 1, "x", json!({"title": "t"}), 1)]);
        let base = clock_of(&s, "x");
        apply(&e, &mut s, vec![op("a", 1, "x", OperationKind::Delete, 40, &base)]);
        apply(&e, &mut s, vec![update_on("b", 1, "x", json!({"done": true}), update_ms, &base)]);
        let rec = &s.entities[&EntityKey::parse("t1", "todo", "x").unwrap()];
        assert_eq!(!rec.is_deleted(), alive, "update at {update_ms}");
        if alive {
            assert_eq!(state_of(&s, "x"), json!({"title": "t", "done": true}));
        }
    }
}

#[test]
fn a_causally_later_update_revives_a_deleted_entity_from_empty() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    apply(&e, &mut s, vec![create("a", 1, "x", json!({"title": "t"}), 1)]);
    let base = clock_of(&s, "x");
    apply(&e, &mut s, vec![op("a", 2, "x", OperationKind::Delete, 2, &base)]);
    let base = clock_of(&s, "x");
    apply(&e, &mut s, vec![update_on("a", 3, "x", json!({"n": 1}), 3, &base)]);
    assert_eq!(state_of(&s, "x"), json!({"n": 1}));
}

#[test]
fn crdt_changes_always_merge_and_never_conflict() {
    let e = engine(ConflictStrategy::Crdt("gset".into()));
    let mut s = ApplyState::default();
    let base = VectorClock::new();
    let a = op("a", 1, "x", OperationKind::Crdt(b"from-a".to_vec()), 5, &base);
    let b = op("b", 1, "x", OperationKind::Crdt(b"from-b".to_vec()), 4, &base);
    let out = apply(&e, &mut s, vec![a, b]);
    assert!(out.results.iter().all(|r| matches!(r.outcome, Outcome::Applied { .. })));
    let rec = &s.entities[&EntityKey::parse("t1", "todo", "x").unwrap()];
    let EntityBody::Crdt(doc) = &rec.body else { panic!("not a CRDT body") };
    let items: Vec<Vec<u8>> = serde_json::from_slice(doc).unwrap();
    assert_eq!(items, vec![b"from-a".to_vec(), b"from-b".to_vec()]);
    let mut not_crdt = update("c", 1, "y", json!({"a": 1}), 5);
    not_crdt.key.entity_type = EntityType::new("todo").unwrap();
    let out = apply(&e, &mut s, vec![not_crdt]);
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Refused { code: ErrorCode::InvalidOperation, .. }
    ));
}

#[test]
fn an_operation_without_client_seq_is_deduplicated_by_id_alone() {
    let e = engine(ConflictStrategy::LastWriteWins);
    let mut s = ApplyState::default();
    let mut o = update("a", 1, "x", json!({"content": "Updated text"}), 10);
    o.client_seq = None;
    let first = apply(&e, &mut s, vec![o.clone()]);
    let again = apply(&e, &mut s, vec![o]);
    assert!(again.results[0].duplicate);
    assert_eq!(again.results[0].outcome, first.results[0].outcome);
    assert!(s.ledgers.is_empty(), "no clientSeq, no ledger");
}

proptest! {
    /// With field merge and LWW overlap, the server state does not depend on the order in which
    /// concurrent operations arrive (per-field LWW is a CRDT).
    #[test]
    fn field_merge_is_order_independent_for_concurrent_updates(
        writes in proptest::collection::vec((0u8..4, 0u8..3, 0i64..5, 0u64..20), 1..12),
        seed in any::<u64>(),
    ) {
        let e = engine(ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins));
        let mut seqs = [0u64; 4];
        let mut clocks = [0u64; 4];
        let ops: Vec<Operation> = writes.iter().map(|(c, f, v, ms)| {
            let c = *c as usize;
            seqs[c] += 1;
            // An HLC never goes backwards for one writer: a causally later write has a larger stamp.
            clocks[c] += ms + 1;
            let base = VectorClock::new();
            update_on(&format!("c{c}"), seqs[c], "x", json!({ format!("f{f}"): v }), clocks[c], &base)
        }).collect();
        let mut shuffled = ops.clone();
        // Reorder across clients, keeping each client's own order (the ledger requires it).
        let mut rng = crate::rng::SplitMix64::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.range(0, i as u64) as usize);
        }
        let mut per_client: BTreeMap<ClientId, Vec<Operation>> = BTreeMap::new();
        for o in &ops { per_client.entry(o.client_id.clone()).or_default().push(o.clone()); }
        let mut interleaved = Vec::new();
        let mut cursors: BTreeMap<ClientId, usize> = BTreeMap::new();
        for o in &shuffled {
            let i = cursors.entry(o.client_id.clone()).or_default();
            interleaved.push(per_client[&o.client_id][*i].clone());
            *i += 1;
        }
        let mut s1 = ApplyState::default();
        let mut s2 = ApplyState::default();
        apply(&e, &mut s1, ops);
        apply(&e, &mut s2, interleaved);
        // The state is the same; the clocks may differ only by writes that lost on every field
        // (a write that changes nothing is not merged into the entity's clock).
        prop_assert_eq!(state_of(&s1, "x"), state_of(&s2, "x"));
    }
}
