//! The audit log's writer for what happens around connections and requests (sign-ins refused,
//! sockets opened and closed, rate-limit disconnects). Writes that must share a transaction
//! with what they record (conflict resolutions, dead-letter edits) are the store's own.

use crate::store::{AuditEntry, Store};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// An audit entry that owns its text (it outlives the request that made it).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub tenant: String,
    pub actor: String,
    pub action: &'static str,
    pub target: &'static str,
    pub outcome: String,
    pub details: Value,
}

/// Lifecycle entries written per transaction at most.
const BATCH: usize = 256;

#[derive(Debug)]
pub struct Audit {
    store: Arc<Store>,
    /// The lifecycle writer's queue (see [`Audit::spawn`]); its task starts on first use.
    queue: mpsc::UnboundedSender<AuditRecord>,
    writer: Mutex<Option<(mpsc::UnboundedReceiver<AuditRecord>, Option<Handle>)>>,
}

impl Audit {
    /// The writer task will run on the runtime that builds the state (HTTP's), whoever queues.
    pub fn new(store: Arc<Store>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let runtime = Handle::try_current().ok();
        Self { store, queue, writer: Mutex::new(Some((rx, runtime))) }
    }

    /// Write `record` now; a failure is logged (the action it records goes on).
    pub async fn write(&self, record: &AuditRecord) {
        write_all(&self.store, std::slice::from_ref(record)).await
    }

    /// Write `record` without holding up the caller. Lifecycle events are frequent — 10,000
    /// sockets opening are 10,000 entries — so one task writes them, many per transaction,
    /// holding one store connection at most: a reconnect storm neither waits on the audit
    /// table nor takes the pool from REST and the event streams.
    pub fn spawn(&self, record: AuditRecord) {
        if let Some((rx, runtime)) = self.writer.lock().expect("audit lock").take() {
            let store = self.store.clone();
            let task = drain(store, rx);
            match runtime {
                Some(h) => drop(h.spawn(task)),
                None => drop(tokio::spawn(task)),
            }
        }
        let _ = self.queue.send(record);
    }
}

async fn drain(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<AuditRecord>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write_all(&store, &batch).await;
        batch.clear();
    }
}

async fn write_all(store: &Store, records: &[AuditRecord]) {
    let entries: Vec<AuditEntry> = records
        .iter()
        .map(|r| AuditEntry {
            tenant: &r.tenant,
            actor: &r.actor,
            action: r.action,
            target: r.target,
            outcome: &r.outcome,
            details: r.details.clone(),
        })
        .collect();
    if let Err(e) = store.audit_all(&entries).await {
        let action = records.first().map(|r| r.action).unwrap_or_default();
        tracing::warn!(error = %e, action, entries = records.len(), "audit write failed");
    }
}
