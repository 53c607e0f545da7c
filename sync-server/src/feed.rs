//! The change feed: how every writer says "the log grew" or "entities changed" — to the log
//! waiters of this process, to every live socket of the tenant (a poke to pull), and through
//! the cluster fan-out to every other process. One place, so no writer forgets a reader.

use crate::notifier::Notifier;
use crate::realtime::fanout::{ClusterFanout, Envelope, Remote};
use crate::realtime::hub::Hub;
use crate::store::Followed;
use sdk_core::ids::TenantId;
use sdk_core::protocol::ServerFrame;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct ChangeFeed {
    notifier: Arc<Notifier>,
    /// Long-polls waiting for documents to change, by `tenant/document`.
    documents: Arc<Notifier>,
    hub: Arc<Hub>,
    cluster: Arc<dyn ClusterFanout>,
}

/// How a log waiter's sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A wake-up: the log grew (here, or on another process that told us).
    Notified,
    /// The deadline or the re-check interval passed without one.
    Timer,
    /// The notifier is gone (the server is shutting down).
    Gone,
}

fn document_key(tenant: &TenantId, id: &str) -> String {
    // Document ids hold no '/' (`DocumentId`), so the key is unambiguous.
    format!("{tenant}/{id}")
}

impl ChangeFeed {
    pub fn new(notifier: Arc<Notifier>, hub: Arc<Hub>, cluster: Arc<dyn ClusterFanout>) -> Self {
        Self { notifier, documents: Arc::default(), hub, cluster }
    }

    /// Entities of `tenant` changed, up to `version`, whoever wrote them (REST reconcile, a push
    /// over `/v1/ws`, a conflict resolution): wake the log waiters and poke the live sockets
    /// of the tenant to pull — every one without sync rules; under them (`followed`) only the
    /// readers of a channel the changes touched, and every socket of a user whose grants changed.
    pub fn entities_changed(&self, tenant: &TenantId, version: u64, followed: Option<&Followed>) {
        let _span = tracing::info_span!("fanout", version).entered();
        self.events_appended(tenant, version);
        let poke = ServerFrame::Poke { version };
        let Some(f) = followed else {
            self.hub.to_tenant(tenant, &poke);
            return;
        };
        self.hub.to_readers(tenant, &f.touched, &poke);
        for user in &f.grants_changed {
            if let Ok(user) = sdk_core::ids::UserId::new(user.clone()) {
                self.hub.to_user(tenant, &user, &poke);
            }
        }
    }

    /// The tenant's log grew to `seq` (any writer, any event): wake long-polls, followers and
    /// consumer groups here and, through the cluster, in every other process.
    pub fn events_appended(&self, tenant: &TenantId, seq: u64) {
        self.notifier.notify(tenant.as_str(), seq);
        self.forward(|| Envelope::Log { node: String::new(), tenant: tenant.clone(), seq });
    }

    /// Wake the tenant's log waiters here and everywhere although the log did not grow (a dead
    /// letter went back to its group).
    pub fn kick_waiters(&self, tenant: &TenantId) {
        self.notifier.kick(tenant.as_str());
        self.forward(|| Envelope::Kick { node: String::new(), tenant: tenant.clone() });
    }

    /// A wake-up for a long-poll waiting on document `id` of `tenant`.
    pub fn watch_document(&self, tenant: &TenantId, id: &str) -> watch::Receiver<u64> {
        self.documents.subscribe(&document_key(tenant, id))
    }

    /// Long-polls waiting on document `id` of `tenant` (tests wait for this, not a sleep).
    pub fn document_waiting(&self, tenant: &TenantId, id: &str) -> usize {
        self.documents.waiting(&document_key(tenant, id))
    }

    /// Another process changed document `id`: wake this process's long-polls waiting on it.
    pub fn document_changed_elsewhere(&self, tenant: &TenantId, id: &str) {
        self.documents.wake_or_forget(&document_key(tenant, id));
    }

    /// Document `id` of `tenant` changed here: the long-polls waiting on it wake, and the
    /// processes that have it open re-read it.
    pub fn document_changed(&self, tenant: &TenantId, id: &str) {
        self.document_changed_elsewhere(tenant, id);
        self.forward(|| Envelope::Document {
            node: String::new(),
            tenant: tenant.clone(),
            document_id: id.to_string(),
        });
    }

    /// A wake-up for waiters on `tenant`'s log.
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<u64> {
        self.notifier.subscribe(tenant)
    }

    /// How long a log waiter may sleep without a wake-up (see [`ClusterFanout::log_recheck`]).
    pub fn log_recheck(&self) -> Option<Duration> {
        self.cluster.log_recheck()
    }

    /// Sleep until `tenant`'s log may have grown: a wake-up, `until` (none: no deadline), or
    /// the re-check interval; says which.
    pub async fn wait(
        &self,
        wake: &mut watch::Receiver<u64>,
        until: Option<tokio::time::Instant>,
    ) -> Woke {
        let recheck = self.log_recheck().map(|r| tokio::time::Instant::now() + r);
        let until = match (until, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let changed = match until {
            Some(at) => match tokio::time::timeout_at(at, wake.changed()).await {
                Ok(c) => c,
                Err(_) => return Woke::Timer,
            },
            None => wake.changed().await,
        };
        if changed.is_ok() { Woke::Notified } else { Woke::Gone }
    }

    fn forward(&self, envelope: impl FnOnce() -> Envelope) {
        if self.cluster.joined() {
            self.cluster.forward(Remote::Fanout(Box::new(envelope())));
        }
    }
}
