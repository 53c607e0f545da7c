//! sdk-core micro-benchmarks: `make bench` (figures in docs/benchmarks.md).

use divan::{Bencher, black_box};
use sdk_core::apply::{ApplyEngine, ApplyState, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
use sdk_core::interaction::InteractionClass;
use sdk_core::operation::{Operation, OperationKind};
use sdk_core::protocol::{ClientFrame, Codec, WireOperation};
use sdk_core::strategy::StrategyRegistry;
use sdk_core::vclock::VectorClock;
use serde_json::json;

fn main() {
    divan::main();
}

fn clock(entries: usize, offset: u64) -> VectorClock {
    (0..entries)
        .map(|i| (ClientId::new(format!("client-{i:04}")).unwrap(), i as u64 + offset))
        .collect()
}

#[divan::bench(args = [4, 32, 256])]
fn vclock_compare(b: Bencher, entries: usize) {
    let (x, y) = (clock(entries, 1), clock(entries, 2));
    b.bench(|| black_box(&x).compare(black_box(&y)));
}

#[divan::bench(args = [4, 32, 256])]
fn vclock_merge(b: Bencher, entries: usize) {
    let (x, y) = (clock(entries, 1), clock(entries, 2));
    b.bench(|| black_box(&x).merged(black_box(&y)));
}

/// `n` operations from 10 clients over 50 entities: creates first, then concurrent updates
/// (about half the updates conflict and go through field merge).
fn batch(n: usize) -> Vec<Operation> {
    let mut seqs = [0u64; 10];
    (0..n)
        .map(|i| {
            let c = i % 10;
            seqs[c] += 1;
            let client = ClientId::new(format!("client-{c}")).unwrap();
            let mut clock = VectorClock::new();
            clock.set(client.clone(), seqs[c]);
            let entity = format!("todo-{}", i % 50);
            let kind = if i < 50 {
                OperationKind::Create(
                    json!({"title": "t", "done": false}).as_object().unwrap().clone(),
                )
            } else {
                let field = if i % 2 == 0 { "title" } else { "done" };
                OperationKind::Update(json!({ field: i }).as_object().unwrap().clone())
            };
            Operation {
                id: OperationId::new(format!("op-{i}")).unwrap(),
                client_id: client,
                client_seq: Some(seqs[c]),
                key: EntityKey::parse("t1", "todo", &entity).unwrap(),
                kind,
                timestamp: HlcTimestamp::new(1_800_000_000_000 + i as u64, 0),
                clock,
                class: InteractionClass::C,
            }
        })
        .collect()
}

#[divan::bench(args = [100, 1000])]
fn apply_batch(b: Bencher, n: usize) {
    let engine =
        ApplyEngine::new(StrategyRegistry::default()).with_limits(Default::default(), 1000);
    let tenant = TenantId::new("t1").unwrap();
    let ops = batch(n);
    b.counter(divan::counter::ItemsCount::new(n))
        .with_inputs(|| {
            (ApplyState::default(), ops.iter().cloned().map(Submitted::Valid).collect::<Vec<_>>())
        })
        .bench_local_values(|(mut state, ops)| {
            engine.apply_batch(&tenant, ops, &mut state).unwrap();
            state
        });
}

fn push_frame(n: usize) -> ClientFrame {
    ClientFrame::Push {
        batch_id: "batch-1".into(),
        operations: batch(n).iter().map(WireOperation::from_operation).collect(),
    }
}

#[divan::bench(args = [Codec::Json, Codec::MessagePack])]
fn encode_push_100(b: Bencher, codec: Codec) {
    let frame = push_frame(100);
    b.bench(|| codec.encode(black_box(&frame)));
}

#[divan::bench(args = [Codec::Json, Codec::MessagePack])]
fn decode_push_100(b: Bencher, codec: Codec) {
    let bytes = codec.encode(&push_frame(100));
    b.counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| codec.decode::<ClientFrame>(black_box(&bytes), usize::MAX).unwrap());
}

/// Floor for `decode_push_100`: the same JSON bytes parsed into an untyped `serde_json::Value`
/// (no validation, no typed frame).
#[divan::bench]
fn floor_json_value_parse_push_100(b: Bencher) {
    let bytes = Codec::Json.encode(&push_frame(100));
    b.counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).unwrap());
}

/// Floor for `apply_batch`: the same operations' payloads written into a map keyed by entity
/// (no ledger, clocks, strategies, results or change log).
#[divan::bench(args = [100, 1000])]
fn floor_map_insert(b: Bencher, n: usize) {
    let ops = batch(n);
    b.counter(divan::counter::ItemsCount::new(n)).with_inputs(|| ops.clone()).bench_local_values(
        |ops| {
            let mut m = std::collections::BTreeMap::new();
            for op in ops {
                if let OperationKind::Create(o) | OperationKind::Update(o) = op.kind {
                    m.entry(op.key).or_insert_with(serde_json::Map::new).extend(o);
                }
            }
            m
        },
    );
}
