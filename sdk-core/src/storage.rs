//! The client's storage contract: what a client persists ([`StoreWrite`]s out, a
//! [`StoredState`] back in at start) and the [`QueueStore`] a shell implements for it
//! (IndexedDB in the browser, [`MemoryQueueStore`] in tests). Both the sync state machine
//! (`client`) and the outbound queue (`queue`) write through it; neither knows the other's
//! storage.

use crate::error::ErrorCode;
use crate::hlc::HlcTimestamp;
use crate::ids::{EntityKey, OperationId};
use crate::operation::{Object, Operation};
use crate::protocol::WireScope;
use crate::vclock::VectorClock;
use std::collections::BTreeMap;

/// The server's state of an entity as this client last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmedEntity {
    pub key: EntityKey,
    pub version: u64,
    pub state: Option<Object>,
    pub crdt: Option<Vec<u8>>,
    pub deleted: bool,
    pub clock: VectorClock,
    pub timestamp: HlcTimestamp,
    /// Under sync rules: the channels it belongs to, as the server said (it is forgotten when
    /// the client holds none of them any more).
    pub channels: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuedOp {
    pub op: Operation,
    /// Times a batch holding this operation at its head was refused.
    pub attempts: u32,
}

impl QueuedOp {
    pub fn seq(&self) -> u64 {
        self.op.client_seq.expect("queued operations always carry a clientSeq")
    }
}

/// An operation taken out of the queue because the server will never apply it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedOp {
    pub op: Operation,
    pub code: ErrorCode,
    pub message: String,
    pub attempts: u32,
}

/// A write the shell must make durable (IndexedDB, memory, a test's map).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreWrite {
    /// Insert or replace the queued operation with this id.
    PutOp(QueuedOp),
    DeleteOp(OperationId),
    PutQuarantined(QuarantinedOp),
    SetNextSeq(u64),
    /// The confirmed (server) state of an entity in the local cache.
    PutEntity(ConfirmedEntity),
    /// Forget an entity (sync rules: the client may no longer read it).
    DeleteEntity(EntityKey),
    /// What the cached state was synced for (sync rules), `None`: the whole tenant, no rules.
    SetScope(Option<WireScope>),
    /// The delta cursor and the last own `clientSeq` the cached state includes, written together.
    SetCursor {
        version: u64,
        confirmed_seq: u64,
    },
    SetLastEvent(u64),
    SetClock(HlcTimestamp),
}

/// Everything a client persists, as loaded at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    pub ops: Vec<QueuedOp>,
    pub quarantined: Vec<QuarantinedOp>,
    pub next_seq: u64,
    pub entities: Vec<ConfirmedEntity>,
    pub cursor: u64,
    pub confirmed_seq: u64,
    pub last_event: Option<u64>,
    pub clock: HlcTimestamp,
    pub scope: Option<WireScope>,
}

/// Durable storage for the queue and the client's cache. Implementations apply a slice of writes
/// atomically (IndexedDB: one transaction).
pub trait QueueStore {
    type Error;
    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), Self::Error>;
    fn load(&self) -> Result<StoredState, Self::Error>;
}

/// The in-memory [`QueueStore`], for tests and native clients without persistence.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueueStore {
    ops: BTreeMap<OperationId, QueuedOp>,
    quarantined: Vec<QuarantinedOp>,
    next_seq: u64,
    entities: BTreeMap<EntityKey, ConfirmedEntity>,
    cursor: u64,
    confirmed_seq: u64,
    last_event: Option<u64>,
    clock: HlcTimestamp,
    scope: Option<WireScope>,
}

impl QueueStore for MemoryQueueStore {
    type Error = std::convert::Infallible;

    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), Self::Error> {
        for w in writes {
            match w {
                StoreWrite::PutOp(q) => {
                    self.ops.insert(q.op.id.clone(), q.clone());
                }
                StoreWrite::DeleteOp(id) => {
                    self.ops.remove(id);
                }
                StoreWrite::PutQuarantined(q) => self.quarantined.push(q.clone()),
                StoreWrite::SetNextSeq(n) => self.next_seq = *n,
                StoreWrite::PutEntity(e) => {
                    self.entities.insert(e.key.clone(), e.clone());
                }
                StoreWrite::DeleteEntity(key) => {
                    self.entities.remove(key);
                }
                StoreWrite::SetScope(scope) => self.scope = scope.clone(),
                StoreWrite::SetCursor { version, confirmed_seq } => {
                    self.cursor = *version;
                    self.confirmed_seq = *confirmed_seq;
                }
                StoreWrite::SetLastEvent(s) => self.last_event = Some(*s),
                StoreWrite::SetClock(t) => self.clock = *t,
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<StoredState, Self::Error> {
        Ok(StoredState {
            ops: self.ops.values().cloned().collect(),
            quarantined: self.quarantined.clone(),
            next_seq: self.next_seq,
            entities: self.entities.values().cloned().collect(),
            cursor: self.cursor,
            confirmed_seq: self.confirmed_seq,
            last_event: self.last_event,
            clock: self.clock,
            scope: self.scope.clone(),
        })
    }
}
