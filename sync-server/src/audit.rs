//! The audit log's writer for what happens around connections and requests (sign-ins refused,
//! sockets opened and closed, rate-limit disconnects). Writes that must share a transaction
//! with what they record (conflict resolutions, dead-letter edits) are the store's own.

use crate::store::{AuditEntry, Store};
use serde_json::Value;
use std::sync::Arc;

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

#[derive(Debug, Clone)]
pub struct Audit {
    store: Arc<Store>,
}

impl Audit {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Write `record` now; a failure is logged (the action it records goes on).
    pub async fn write(&self, record: &AuditRecord) {
        let entry = AuditEntry {
            tenant: &record.tenant,
            actor: &record.actor,
            action: record.action,
            target: record.target,
            outcome: &record.outcome,
            details: record.details.clone(),
        };
        if let Err(e) = self.store.audit(&entry).await {
            tracing::warn!(error = %e, action = record.action, "audit write failed");
        }
    }

    /// Write `record` without holding up the caller (lifecycle events are frequent: a
    /// reconnect storm must not queue behind the audit table).
    pub fn spawn(&self, record: AuditRecord) {
        let audit = self.clone();
        tokio::spawn(async move { audit.write(&record).await });
    }
}
