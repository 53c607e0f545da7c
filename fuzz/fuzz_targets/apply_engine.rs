//! The apply engine on arbitrary operation sequences (decoded from the fuzz input, including
//! gaps, reused sequence numbers, foreign tenants and invalid shapes), under every strategy.
//! Checks: no panic; the tenant version equals the number of changes; replaying every operation
//! that has a recorded outcome changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sdk_core::apply::{ApplyEngine, ApplyState, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
use sdk_core::interaction::InteractionClass;
use sdk_core::operation::{Operation, OperationKind};
use sdk_core::strategy::{ConflictStrategy, CrdtMerger, OnOverlap, StrategyRegistry};
use sdk_core::vclock::VectorClock;
use serde_json::json;

struct Concat;
impl CrdtMerger for Concat {
    fn apply(&self, current: Option<&[u8]>, change: &[u8]) -> Result<Vec<u8>, String> {
        if change.first() == Some(&0xff) {
            return Err("refused".into());
        }
        let mut doc = current.unwrap_or_default().to_vec();
        doc.extend_from_slice(change);
        Ok(doc)
    }
}

fn op_from(chunk: &[u8], seqs: &mut [u64; 4]) -> Submitted {
    let c = (chunk[0] % 4) as usize;
    let client = ClientId::new(format!("c{c}")).unwrap();
    // Mostly the next sequence number; sometimes a gap, a replay or none at all.
    let seq = match chunk[1] % 8 {
        0 => None,
        1 => Some(seqs[c] + 2),
        2 => Some(seqs[c].max(1)),
        _ => {
            seqs[c] += 1;
            Some(seqs[c])
        }
    };
    let tenant = if chunk[2] % 16 == 0 { "t2" } else { "t1" };
    let key = EntityKey::parse(tenant, "todo", &format!("e{}", chunk[3] % 3)).unwrap();
    let field = format!("f{}", chunk[4] % 3);
    let kind = match chunk[5] % 6 {
        0 => OperationKind::Delete,
        1 => OperationKind::Create(json!({ field: chunk[6] }).as_object().unwrap().clone()),
        2 => OperationKind::Crdt(chunk[6..8].to_vec()),
        3 => OperationKind::Update(serde_json::Map::new()),
        _ => OperationKind::Update(json!({ field: chunk[6] }).as_object().unwrap().clone()),
    };
    let mut clock = VectorClock::new();
    for (i, b) in chunk[8..10].iter().enumerate() {
        clock.set(ClientId::new(format!("c{}", (c + i + 1) % 4)).unwrap(), (*b % 4) as u64);
    }
    clock.set(client.clone(), seq.unwrap_or(chunk[7] as u64 % 5 + 1));
    let id =
        OperationId::new(format!("op-{}-{}", c, u16::from_le_bytes([chunk[10], chunk[11]]) % 512))
            .unwrap();
    Submitted::Valid(Operation {
        id,
        client_id: client,
        client_seq: seq,
        key,
        kind,
        timestamp: HlcTimestamp::new(chunk[7] as u64 * 10, 0),
        clock,
        class: InteractionClass::C,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let strategy = match which % 6 {
        0 => ConflictStrategy::LastWriteWins,
        1 => ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins),
        2 => ConflictStrategy::FieldMerge(OnOverlap::Manual),
        3 => ConflictStrategy::Custom("keep".into()),
        4 => ConflictStrategy::Manual,
        _ => ConflictStrategy::Crdt("concat".into()),
    };
    let mut registry = StrategyRegistry::new(strategy);
    registry
        .register_custom("keep", |i: &sdk_core::strategy::MergeInput<'_>| Ok(i.server.cloned()));
    registry.register_crdt("concat", Concat);
    let engine = ApplyEngine::new(registry);
    let tenant = TenantId::new("t1").unwrap();
    let mut state = ApplyState::default();
    let mut seqs = [0u64; 4];
    let mut all = Vec::new();
    let mut changes = 0u64;
    for batch in rest.chunks(12 * 8) {
        let ops: Vec<Submitted> = batch.chunks_exact(12).map(|c| op_from(c, &mut seqs)).collect();
        all.extend(ops.iter().cloned());
        let out = engine.apply_batch(&tenant, ops, &mut state).unwrap();
        changes += out.changes.len() as u64;
    }
    assert_eq!(state.version, changes);
    let before = state.clone();
    // Operations with a recorded outcome replay as duplicates; unrecorded refusals (gaps, reused
    // sequence numbers) may legitimately apply later, so they are not replayed.
    let recorded = |op: &Submitted| match op {
        Submitted::Valid(o) => before
            .results
            .get(&o.id)
            .is_some_and(|r| r.client_id == o.client_id && r.client_seq == o.client_seq),
        Submitted::Invalid { .. } => false,
    };
    for op in all.into_iter().filter(recorded) {
        let out = engine.apply_batch(&tenant, vec![op], &mut state).unwrap();
        assert!(out.changes.is_empty(), "a replay never changes state");
    }
    assert_eq!(state, before);
});
