//! Batched apply throughput on SQLite and PostgreSQL, each beside its raw floor (plain upserts of
//! the same number of entity rows, same transaction sizes, no ledger, clocks, results or log).
//! `make bench-server`; results go to docs/benchmarks.md.
//!
//! Each configuration alternates apply and floor runs, three rounds each, and reports medians.
//! Env: `PF2_BENCH_OPS` (operations per run, default 1000), `PF2_TEST_POSTGRES_URL`.

use sdk_core::apply::{ApplyEngine, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
use sdk_core::interaction::InteractionClass;
use sdk_core::operation::{Operation, OperationKind};
use sdk_core::strategy::StrategyRegistry;
use sdk_core::vclock::VectorClock;
use serde_json::json;
use std::time::Instant;
use sync_server::store::{SqliteSync, Store, Writer};

fn op(tenant: &TenantId, client: &ClientId, seq: u64, entities: u64) -> Operation {
    let mut clock = VectorClock::new();
    clock.set(client.clone(), seq);
    let entity = format!("e{}", seq % entities);
    let kind = if seq <= entities {
        OperationKind::Create(
            json!({"title": "buy milk", "done": false, "n": seq}).as_object().unwrap().clone(),
        )
    } else {
        OperationKind::Update(
            json!({"done": seq.is_multiple_of(2), "n": seq}).as_object().unwrap().clone(),
        )
    };
    Operation {
        id: OperationId::new(format!("op-{seq}")).unwrap(),
        client_id: client.clone(),
        client_seq: Some(seq),
        key: EntityKey::new(tenant.clone(), "todo".parse().unwrap(), entity.parse().unwrap()),
        kind,
        timestamp: HlcTimestamp::new(1_800_000_000_000 + seq, 0),
        clock,
        class: InteractionClass::C,
    }
}

/// Apply `n` operations in batches of `batch` for a fresh tenant; ops/s.
async fn apply_rate(store: &Store, engine: &ApplyEngine, n: u64, batch: u64) -> f64 {
    let tenant = TenantId::new(format!("bench-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let client = ClientId::new("bench-client").unwrap();
    let start = Instant::now();
    let (mut seq, mut req) = (0, 0);
    while seq < n {
        let ops: Vec<Submitted> = (0..batch.min(n - seq))
            .map(|i| Submitted::Valid(op(&tenant, &client, seq + i + 1, ENTITIES)))
            .collect();
        seq += ops.len() as u64;
        req += 1;
        let claims = serde_json::Map::new();
        let writer = Writer { user: "bench", claims: &claims, roles: &[] };
        let id = format!("req-{req}");
        store
            .reconcile(engine, &tenant, &id, "h", ops, None, 1000, writer, |_| "{}".into())
            .await
            .unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The floor: the same number of entity rows with plain single-row upserts, same transaction sizes.
async fn floor_rate(store: &Store, n: u64, batch: u64) -> f64 {
    let record = serde_json::to_vec(&json!({"title": "buy milk", "done": false, "n": 1})).unwrap();
    let tenant = format!("floor-{}", uuid::Uuid::new_v4().simple());
    let start = Instant::now();
    let mut written = 0;
    while written < n {
        let rows: Vec<(String, Vec<u8>)> = (0..batch.min(n - written))
            .map(|i| (format!("e{}", (written + i) % ENTITIES), record.clone()))
            .collect();
        store.floor_insert(&tenant, &rows, written as i64).await.unwrap();
        written += rows.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

const ENTITIES: u64 = 200;
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Apply and floor alternate, `ROUNDS` times each; medians and their ratio.
async fn run(store: &Store, label: &str, total: u64) {
    let engine = ApplyEngine::new(StrategyRegistry::default());
    for batch in [1u64, 10, 100, 500] {
        let n = if batch == 1 { total.min(300) } else { total };
        let (mut applied, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            applied.push(apply_rate(store, &engine, n, batch).await);
            floor.push(floor_rate(store, n, batch).await);
        }
        let (a, f) = (median(applied), median(floor));
        println!("| {label} | {batch} | {n} × {ROUNDS} | {a:.0} | {f:.0} | {:.2} |", a / f);
    }
}

#[tokio::main]
async fn main() {
    let total: u64 =
        std::env::var("PF2_BENCH_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    println!(
        "| backend | batch size | operations | apply ops/s | raw floor ops/s | apply / floor |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let dir = std::env::temp_dir().join(format!("pf2-bench-{}", uuid::Uuid::new_v4()));
    for (sync, label) in [
        (SqliteSync::Full, "SQLite (synchronous=FULL)"),
        (SqliteSync::Normal, "SQLite (synchronous=NORMAL)"),
    ] {
        let url = format!("sqlite://{}/{}.db", dir.display(), label.len());
        let store = Store::connect(&url, sync).await.unwrap();
        run(&store, label, total).await;
    }
    let pg = std::env::var("PF2_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match Store::connect(&pg, SqliteSync::Full).await {
        Ok(store) => run(&store, "PostgreSQL", total).await,
        Err(e) => eprintln!("PostgreSQL skipped: {e}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}
