//! A consumer-group member over REST, as a service would write one: claim a batch (long-poll),
//! apply each event's effect idempotently in its own database (a handler ledger keyed by event
//! id, in the same transaction as the effect), then acknowledge the batch.
//!
//! The effect is `total += payload.n`, applied only when the ledger row is new; every delivery
//! is logged too, so a test can tell redeliveries from effects. `--stall-after N` stops after
//! N effects were committed but before their acknowledgement (holding the leases) and prints
//! `STALLED`: the moment a test kills it mid-batch. The tables are
//! [`pf2_e2e::cluster::LEDGER_SCHEMA`], created by whoever runs the workers.

use clap::Parser;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Parser)]
struct Args {
    /// The node, `http://host:port`.
    #[arg(long)]
    url: String,
    #[arg(long)]
    token: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    consumer: String,
    /// PostgreSQL holding the handler's ledger.
    #[arg(long)]
    ledger: String,
    /// The test run's key in the ledger tables.
    #[arg(long)]
    run: String,
    #[arg(long, default_value_t = 50)]
    batch: u32,
    #[arg(long)]
    stall_after: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&a.ledger).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build()?;
    let auth = format!("Bearer {}", a.token);
    let mut applied_here: u64 = 0;
    loop {
        let r = http
            .post(format!("{}/api/events/subscriptions/{}/claim", a.url, a.group))
            .header("authorization", &auth)
            .json(&json!({ "consumer": a.consumer, "max": a.batch, "waitMs": 2000 }))
            .send()
            .await;
        let body: Value = match r {
            Ok(r) if r.status().is_success() => r.json().await?,
            // The node is restarting or overloaded: try again (the leases protect the events).
            Ok(r) => {
                eprintln!("claim: {}", r.status());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                eprintln!("claim: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let deliveries = body["deliveries"].as_array().cloned().unwrap_or_default();
        if deliveries.is_empty() {
            continue;
        }
        let mut tx = db.begin().await?;
        for d in &deliveries {
            let e = &d["event"];
            let id = e["eventId"].as_str().unwrap_or_default();
            sqlx::query("INSERT INTO bus_deliveries (run, event_id, worker, attempt) VALUES ($1, $2, $3, $4)")
                .bind(&a.run)
                .bind(id)
                .bind(&a.consumer)
                .bind(d["attempt"].as_i64().unwrap_or(0))
                .execute(&mut *tx)
                .await?;
            let fresh = sqlx::query(
                "INSERT INTO bus_ledger (run, event_id, seq, worker) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&a.run)
            .bind(id)
            .bind(e["sequence"].as_i64().unwrap_or(0))
            .bind(&a.consumer)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                sqlx::query("UPDATE bus_effects SET total = total + $2, applied = applied + 1 WHERE run = $1")
                    .bind(&a.run)
                    .bind(e["payload"]["n"].as_i64().unwrap_or(0))
                    .execute(&mut *tx)
                    .await?;
                applied_here += 1;
            }
        }
        tx.commit().await?;
        if a.stall_after.is_some_and(|n| applied_here >= n) {
            // Effects committed, acknowledgements not sent: wait here to be killed.
            println!("STALLED {applied_here}");
            std::io::stdout().flush()?;
            std::future::pending::<()>().await;
        }
        let items: Vec<Value> = deliveries
            .iter()
            .map(|d| json!({ "sequence": d["event"]["sequence"], "leaseToken": d["leaseToken"] }))
            .collect();
        let r = http
            .post(format!("{}/api/events/subscriptions/{}/ack", a.url, a.group))
            .header("authorization", &auth)
            .json(&json!({ "deliveries": items }))
            .send()
            .await;
        if let Err(e) = r {
            eprintln!("ack: {e} (the events will be redelivered; the ledger makes that harmless)");
        }
    }
}
