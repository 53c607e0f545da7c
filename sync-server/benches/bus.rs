//! Event bus throughput on SQLite and PostgreSQL, each beside its floor in the same run.
//!
//! - **publish**: `EventBus::publish` of N events in batches of 500 (tenant lock, id check,
//!   sequence, durable commit) vs the floor: multi-row inserts of the same rows into a bare
//!   queue, same batch size.
//! - **consume**: one consumer-group member draining them, `claim` 100 then `ack` 100 (fill from
//!   the log, filter, lease, delete) vs the floor: the textbook SQL queue, select 100 oldest
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and delete them in one transaction.
//!
//! Three alternating rounds, medians. `make bench-bus`; results go to docs/benchmarks.md.
//! Env: `PF2_BENCH_EVENTS` (default 10,000), `PF2_TEST_POSTGRES_URL`.

use sdk_core::ids::TenantId;
use serde_json::json;
use std::time::{Duration, Instant};
use sync_server::bus::{EventBus, SubscriptionSpec};
use sync_server::config::Config;

const ROUNDS: usize = 3;
const PUBLISH_BATCH: usize = 500;
const CLAIM: u32 = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn payload(i: usize) -> serde_json::Value {
    json!({"orderId": format!("order-{i}"), "amount": i, "currency": "NGN"})
}

/// (publish events/s, consume events/s) through the bus for a fresh tenant.
async fn bus_round(bus: &EventBus, n: usize) -> (f64, f64) {
    let tenant = TenantId::new(format!("bench-{}", uuid::Uuid::new_v4().simple())).unwrap();
    bus.put_subscription(&tenant, SubscriptionSpec::group("bench")).await.unwrap();
    let start = Instant::now();
    for b in 0..n.div_ceil(PUBLISH_BATCH) {
        let events = (b * PUBLISH_BATCH..((b + 1) * PUBLISH_BATCH).min(n))
            .map(|i| sync_server::bus::event("order.placed", payload(i)))
            .collect();
        bus.publish(&tenant, events).await.unwrap();
    }
    let publish = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let got = bus.claim(&tenant, "bench", "bench-1", CLAIM, Duration::ZERO).await.unwrap();
        assert!(!got.is_empty(), "the group drains");
        let items: Vec<(u64, String)> =
            got.into_iter().map(|c| (c.event.sequence, c.lease_token)).collect();
        done += items.len();
        bus.ack(&tenant, "bench", &items).await.unwrap();
    }
    (publish, n as f64 / start.elapsed().as_secs_f64())
}

/// The same work on a bare SQL queue.
async fn floor_round(store: &sync_server::store::Store, n: usize) -> (f64, f64) {
    let tenant = format!("floor-{}", uuid::Uuid::new_v4().simple());
    let start = Instant::now();
    for b in 0..n.div_ceil(PUBLISH_BATCH) {
        let rows: Vec<String> = (b * PUBLISH_BATCH..((b + 1) * PUBLISH_BATCH).min(n))
            .map(|i| payload(i).to_string())
            .collect();
        store.floor_queue_push(&tenant, (b * PUBLISH_BATCH) as i64 + 1, &rows).await.unwrap();
    }
    let publish = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        done += store.floor_queue_take(&tenant, CLAIM as i64).await.unwrap();
    }
    (publish, n as f64 / start.elapsed().as_secs_f64())
}

async fn run(label: &str, url: &str, n: usize) {
    let mut config = Config::for_tests(url);
    config.sqlite_synchronous = sync_server::store::SqliteSync::Full;
    let state = match config.build().await {
        Ok(s) => s,
        Err(e) => return eprintln!("{label} skipped: {e}"),
    };
    let bus = state.bus.clone();
    let (mut bp, mut bc, mut fp, mut fc) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (p, c) = bus_round(&bus, n).await;
        bp.push(p);
        bc.push(c);
        let (p, c) = floor_round(&state.store, n).await;
        fp.push(p);
        fc.push(c);
    }
    let (bp, bc, fp, fc) = (median(bp), median(bc), median(fp), median(fc));
    println!(
        "| {label} | publish (batches of {PUBLISH_BATCH}) | {n} × {ROUNDS} | {bp:.0} | {fp:.0} | {:.2} |",
        bp / fp
    );
    println!(
        "| {label} | consume (claim + ack {CLAIM}) | {n} × {ROUNDS} | {bc:.0} | {fc:.0} | {:.2} |",
        bc / fc
    );
    let (e2e, floor) = (1.0 / (1.0 / bp + 1.0 / bc), 1.0 / (1.0 / fp + 1.0 / fc));
    println!(
        "| {label} | publish → consume | {n} × {ROUNDS} | {e2e:.0} | {floor:.0} | {:.2} |",
        e2e / floor
    );
}

#[tokio::main]
async fn main() {
    let n: usize =
        std::env::var("PF2_BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    println!("| backend | path | events | PF-2 events/s | floor events/s | PF-2 / floor |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let dir = std::env::temp_dir().join(format!("pf2-bench-bus-{}", uuid::Uuid::new_v4()));
    run("SQLite (synchronous=FULL)", &format!("sqlite://{}/bus.db", dir.display()), n).await;
    let pg = std::env::var("PF2_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    run("PostgreSQL", &pg, n).await;
    let _ = std::fs::remove_dir_all(dir);
}
