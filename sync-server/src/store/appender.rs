//! SQLite's event appender: a thread of its own that holds one connection outside the pool.
//!
//! A publish hands it one job and waits for one answer: two thread wake-ups per append. Through
//! sqlx, every statement wakes the connection's thread and then the request's task, and every
//! row and statement result comes back as its own message on a channel both sides lock; with
//! 10,000 subscribers being served, each of those wake-ups waits for a core
//! (docs/benchmarks.md, "SQLite's append on a thread of its own").
//!
//! The append is the general path's ([`Store::publish_events`](super::Store::publish_events)),
//! in SQLite's dialect: under `BEGIN IMMEDIATE` (SQLite's write lock, so nothing moves in
//! between) the log's end and the ids already in it are read, the tenant's sequence moves past
//! the new events, they are inserted, and the transaction commits — or, on any error, rolls
//! back whole.
//!
//! The thread is started by whoever opens the store; it inherits that thread's scheduling
//! priority, so the store is opened on the HTTP runtime (see `Store::connect_pooled`). It ends
//! when the store is dropped.

use super::StoreError;
use super::bus::{Appended, NewEvent, allocate, classify};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// One publish: the events (their metadata already stamped with the caller's trace context,
/// which lives on the caller's thread) and where to answer.
struct Job {
    tenant: String,
    events: Vec<NewEvent>,
    now: i64,
    answer: oneshot::Sender<Result<Appended, StoreError>>,
}

#[derive(Debug)]
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Open `path` (an existing SQLite database in WAL) and start the thread.
    pub(super) fn start(path: &str, synchronous: &str) -> Result<Appender, StoreError> {
        let conn = rusqlite::Connection::open(path)
            .and_then(|c| {
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.pragma_update(None, "synchronous", synchronous)?;
                Ok(c)
            })
            .map_err(|e| StoreError::internal(format!("opening the event appender: {e}")))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pf2-appender".into())
            .spawn(move || serve(conn, queue))
            .map_err(|e| StoreError::internal(format!("starting the event appender: {e}")))?;
        Ok(Appender { jobs })
    }

    /// Append `events` (metadata as it is to be stored) to `tenant`'s log. Abandoning the wait does not abandon the append: the thread finishes (or rolls back)
    /// the transaction whole.
    pub(super) async fn append(
        &self,
        tenant: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job = Job { tenant: tenant.to_string(), events, now, answer };
        let stopped = || StoreError::internal("the event appender stopped");
        self.jobs.send(job).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn serve(mut conn: rusqlite::Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        // A panic unwinds through the transaction, which rolls it back; the thread goes on.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            append(&mut conn, &job.tenant, &job.events, job.now)
        }));
        let answer = match done {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(e)) => Err(StoreError::internal(format!("database: {e}"))),
            Err(_) => Err(StoreError::internal("the event appender panicked")),
        };
        // The publisher may have stopped waiting; the append stands either way.
        let _ = job.answer.send(answer);
    }
}

fn append(
    conn: &mut rusqlite::Connection,
    tenant: &str,
    events: &[NewEvent],
    now: i64,
) -> rusqlite::Result<Appended> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let prev: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ?1")?
        .query_row([tenant], |r| r.get(0))?;
    let mut known = HashMap::new();
    {
        let mut lookup =
            tx.prepare_cached("SELECT seq FROM events WHERE tenant_id = ?1 AND event_id = ?2")?;
        for e in events {
            let seq: Option<i64> =
                lookup.query_row(params![tenant, e.event_id], |r| r.get(0)).optional()?;
            if let Some(seq) = seq {
                known.insert(e.event_id.clone(), seq as u64);
            }
        }
    }
    let (slots, fresh) = classify(events, &known);
    let end: i64 = tx
        .prepare_cached(
            "INSERT INTO tenants (tenant_id, seq, pruned_through) VALUES (?1, ?2, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = tenants.seq + ?2 RETURNING seq",
        )?
        .query_row(params![tenant, fresh as i64], |r| r.get(0))?;
    let (outcomes, rows) = allocate(events, &slots, end as u64 - fresh);
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, \
             schema_version, critical, created_at, occurred_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (seq, e) in rows {
            insert.execute(params![
                tenant,
                seq as i64,
                e.event_id,
                e.event_type,
                e.payload.to_string(),
                e.metadata.to_string(),
                e.schema_version,
                e.critical as i64,
                now,
                e.occurred_at,
            ])?;
        }
    }
    tx.commit()?;
    Ok(Appended { outcomes, prev_event: Some(prev as u64), at: now })
}
