//! Batched apply throughput on SQLite and PostgreSQL, each beside its raw floor (plain upserts of
//! the same number of entity rows, same transaction sizes, no ledger, clocks, results or log).
//! `make bench-server`; results go to docs/benchmarks.md.
//!
//! Env: `PF2_BENCH_OPS` (operations per configuration, default 2000), `PF2_TEST_POSTGRES_URL`.

use sdk_core::apply::{ApplyEngine, Submitted};
use sdk_core::hlc::HlcTimestamp;
use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
use sdk_core::interaction::InteractionClass;
use sdk_core::operation::{Operation, OperationKind};
use sdk_core::strategy::StrategyRegistry;
use sdk_core::vclock::VectorClock;
use serde_json::json;
use std::time::Instant;
use sync_server::store::{SqliteSync, Store};

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

async fn run(store: &Store, label: &str, total: u64) {
    let engine = ApplyEngine::new(StrategyRegistry::default());
    for batch in [1u64, 10, 100, 500] {
        let n = if batch == 1 { total.min(500) } else { total };
        let tenant = TenantId::new(format!("bench-{}", uuid::Uuid::new_v4().simple())).unwrap();
        let client = ClientId::new("bench-client").unwrap();
        let entities = 200;
        let start = Instant::now();
        let mut seq = 0;
        let mut req = 0;
        while seq < n {
            let ops: Vec<Submitted> = (0..batch.min(n - seq))
                .map(|i| Submitted::Valid(op(&tenant, &client, seq + i + 1, entities)))
                .collect();
            seq += ops.len() as u64;
            req += 1;
            store
                .reconcile(&engine, &tenant, &format!("req-{req}"), "h", ops, None, 1000, |_| {
                    "{}".into()
                })
                .await
                .unwrap();
        }
        let applied = n as f64 / start.elapsed().as_secs_f64();
        // The floor: the same number of rows, same transaction sizes, plain upserts.
        let record =
            serde_json::to_vec(&json!({"title": "buy milk", "done": false, "n": 1})).unwrap();
        let floor_tenant = format!("floor-{}", uuid::Uuid::new_v4().simple());
        let start = Instant::now();
        let mut written = 0;
        while written < n {
            let rows: Vec<(String, Vec<u8>)> = (0..batch.min(n - written))
                .map(|i| (format!("e{}", (written + i) % entities), record.clone()))
                .collect();
            store.floor_insert(&floor_tenant, &rows, written as i64).await.unwrap();
            written += rows.len() as u64;
        }
        let floor = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "| {label} | {batch} | {n} | {applied:.0} | {floor:.0} | {:.2} |",
            applied / floor
        );
    }
}

#[tokio::main]
async fn main() {
    let total: u64 =
        std::env::var("PF2_BENCH_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
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
