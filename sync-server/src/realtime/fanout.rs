//! What crosses processes, and the small trait the hub and the services hand it to.
//!
//! [`Envelope`] is the fan-out message between processes (its wire form is the cluster's);
//! [`Remote`] is what this process hands over. [`ClusterFanout`] is the seam: the Redis
//! implementation lives in the `cluster` module, [`LocalOnly`] is the no-op for one process. The
//! hub and the services know only this trait, never Redis.

use futures_util::future::BoxFuture;
use sdk_core::ids::{ClientId, RoomId, TenantId, UserId};
use sdk_core::protocol::{PresenceStatus, ServerFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// What crosses processes (JSON; the cluster adds the envelope version `v`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Envelope {
    Room {
        node: String,
        tenant: TenantId,
        room: RoomId,
        frame: ServerFrame,
    },
    User {
        node: String,
        tenant: TenantId,
        user: UserId,
        frame: ServerFrame,
    },
    Tenant {
        node: String,
        tenant: TenantId,
        frame: ServerFrame,
    },
    /// To the connections of `tenant` that read one of `channels` (sync rules), and those that
    /// read everything.
    Readers {
        node: String,
        tenant: TenantId,
        channels: Vec<String>,
        frame: ServerFrame,
    },
    /// The tenant's log reached `seq`.
    Log {
        node: String,
        tenant: TenantId,
        seq: u64,
    },
    /// Wake the tenant's waiters although the log did not grow (a dead letter reprocessed).
    Kick {
        node: String,
        tenant: TenantId,
    },
    /// A collaborative document changed: processes that have it open re-read its changes.
    Document {
        node: String,
        tenant: TenantId,
        document_id: String,
    },
}

impl Envelope {
    pub fn node(&self) -> &str {
        match self {
            Envelope::Room { node, .. }
            | Envelope::User { node, .. }
            | Envelope::Tenant { node, .. }
            | Envelope::Readers { node, .. }
            | Envelope::Log { node, .. }
            | Envelope::Kick { node, .. }
            | Envelope::Document { node, .. } => node,
        }
    }

    pub fn set_node(&mut self, id: &str) {
        match self {
            Envelope::Room { node, .. }
            | Envelope::User { node, .. }
            | Envelope::Tenant { node, .. }
            | Envelope::Readers { node, .. }
            | Envelope::Log { node, .. }
            | Envelope::Kick { node, .. }
            | Envelope::Document { node, .. } => *node = id.to_string(),
        }
    }
}

/// What this process hands to the cluster (through a bounded outbox, never waiting).
#[derive(Debug, Clone)]
pub enum Remote {
    Fanout(Box<Envelope>),
    Presence {
        tenant: TenantId,
        client: ClientId,
        user: UserId,
        status: PresenceStatus,
        metadata: Option<Value>,
    },
    Joined {
        tenant: TenantId,
        client: ClientId,
        room: RoomId,
    },
    Left {
        tenant: TenantId,
        client: ClientId,
        room: RoomId,
    },
}

/// The other processes, as this one sees them. Nothing here waits on them: a hand-off that
/// cannot be queued is dropped (realtime loss degrades, it never blocks).
pub trait ClusterFanout: Send + Sync + std::fmt::Debug {
    /// Whether there are other processes at all (a lone process builds no hand-offs).
    fn joined(&self) -> bool;
    /// Hand `remote` over without waiting.
    fn forward(&self, remote: Remote);
    /// How long a log waiter may sleep without a wake-up; `None`: wake-ups are all local.
    fn log_recheck(&self) -> Option<Duration>;
    /// A client's rooms as the cluster knows them (empty when it cannot tell).
    fn rooms_of<'a>(
        &'a self,
        tenant: &'a TenantId,
        client: &'a ClientId,
    ) -> BoxFuture<'a, Vec<RoomId>>;
    /// Presence of a room's members across the cluster; `None` when it cannot tell.
    fn presence_in<'a>(
        &'a self,
        tenant: &'a TenantId,
        room: &'a RoomId,
        ttl: Duration,
    ) -> BoxFuture<'a, Option<Vec<ServerFrame>>>;
}

/// One process: nobody to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalOnly;

impl ClusterFanout for LocalOnly {
    fn joined(&self) -> bool {
        false
    }

    fn forward(&self, _: Remote) {}

    fn log_recheck(&self) -> Option<Duration> {
        None
    }

    fn rooms_of<'a>(&'a self, _: &'a TenantId, _: &'a ClientId) -> BoxFuture<'a, Vec<RoomId>> {
        Box::pin(async { Vec::new() })
    }

    fn presence_in<'a>(
        &'a self,
        _: &'a TenantId,
        _: &'a RoomId,
        _: Duration,
    ) -> BoxFuture<'a, Option<Vec<ServerFrame>>> {
        Box::pin(async { None })
    }
}
