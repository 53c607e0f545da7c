//! The apply engine: what the server runs for every batch of operations.
//!
//! It is a pure function of `(entity states, per-client ledgers, stored results, batch)`; the
//! server loads the rows a batch touches into an [`ApplyState`], calls [`ApplyEngine::apply_batch`]
//! and writes back what changed in one transaction. The same engine drives the convergence
//! simulator, so what is property-tested is what runs in production.
//!
//! Per operation, in order:
//! 1. seen before (its operation id has a stored result) → the stored outcome, `duplicate: true`;
//! 2. `clientSeq` not the ledger's next → `SEQ_REUSED` / `SEQ_GAP`, not recorded;
//! 3. invalid shape or wrong tenant → refused, recorded (the sequence number is consumed, so a
//!    bad operation can never wedge its client's queue);
//! 4. otherwise the entity type's strategy decides, the change is recorded with the next version.

use crate::error::{Error, ErrorCode};
use crate::hlc::{HlcTimestamp, Stamp};
use crate::ids::{ClientId, EntityKey, OperationId, TenantId};
use crate::operation::{Object, Operation, OperationKind, OperationLimits, apply_patch};
use crate::strategy::{ConflictStrategy, MergeInput, OnOverlap, StrategyRegistry};
use crate::vclock::VectorClock;
use std::collections::{BTreeMap, BTreeSet};

/// The client id the server writes under when a person resolves a conflict.
pub const SERVER_CLIENT: &str = "_server";

/// Most operations one batch may carry (DESIGN.md limits).
pub const DEFAULT_MAX_BATCH: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub enum EntityBody {
    Object(Object),
    Crdt(Vec<u8>),
}

/// Who wrote something and when: the LWW stamp and the vector-clock dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub stamp: Stamp,
    pub dot: (ClientId, u64),
}

impl Write {
    fn of(op: &Operation) -> Self {
        Self { stamp: op.stamp(), dot: (op.client_id.clone(), op.dot()) }
    }

    /// Whether an operation made against `clock` had not seen this write.
    fn unseen_by(&self, clock: &VectorClock) -> bool {
        clock.get(&self.dot.0) < self.dot.1
    }
}

/// An entity as the server holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    pub key: EntityKey,
    /// The state; kept in a tombstone so a concurrent later write can resurrect it.
    pub body: EntityBody,
    /// Last write per field (also for removed fields), for field-level merge.
    pub fields: BTreeMap<String, Write>,
    pub clock: VectorClock,
    /// The tenant change sequence number of the last change.
    pub version: u64,
    pub deleted: Option<Write>,
    /// The latest stamp of any write (whole-object LWW).
    pub last_write: Stamp,
}

impl EntityRecord {
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    /// The visible object state, `None` when deleted or a CRDT document.
    pub fn object(&self) -> Option<&Object> {
        match (&self.body, &self.deleted) {
            (EntityBody::Object(o), None) => Some(o),
            _ => None,
        }
    }
}

/// Who may change what. The apply engine asks before an operation touches an entity (as it is
/// now, `None` when absent) and before the result is kept; a refusal is `AUTHZ_FAILED`.
/// [`Open`] allows everything (a server without sync rules); `rules::WriteCheck` enforces a
/// rule file.
pub trait WriteGate {
    fn may_change(&self, key: &EntityKey, current: Option<&EntityRecord>) -> Result<(), String>;
    fn may_leave(&self, after: &EntityRecord) -> Result<(), String>;
}

/// The gate that allows every write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl WriteGate for Open {
    fn may_change(&self, _: &EntityKey, _: Option<&EntityRecord>) -> Result<(), String> {
        Ok(())
    }

    fn may_leave(&self, _: &EntityRecord) -> Result<(), String> {
        Ok(())
    }
}

/// What happened to one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied without conflict; the change has this version.
    Applied { version: u64 },
    /// Concurrent with the server's state and resolved by the strategy. `version` is the change it
    /// produced, if any; `conflict_id` names a recorded conflict awaiting a person.
    Conflict { resolution: Resolution, version: Option<u64>, conflict_id: Option<String> },
    /// Refused with a code; nothing changed.
    Refused { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Last-write-wins: the operation was later and won.
    IncomingWon,
    /// The server's state was later (or the strategy keeps it); the operation had no effect.
    ServerKept,
    /// Field-level merge: fields taken from the operation and overlapping fields the server kept.
    FieldsMerged { from_client: Vec<String>, kept_server: Vec<String> },
    /// A named custom merge function produced the state.
    Custom(String),
    /// Recorded for manual resolution; the server kept its version.
    Manual,
}

impl Resolution {
    pub fn name(&self) -> &'static str {
        match self {
            Resolution::IncomingWon => "incoming-won",
            Resolution::ServerKept => "server-kept",
            Resolution::FieldsMerged { .. } => "fields-merged",
            Resolution::Custom(_) => "custom",
            Resolution::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpResult {
    pub operation_id: OperationId,
    pub client_seq: Option<u64>,
    pub outcome: Outcome,
    /// The operation had been applied before; `outcome` is the original one.
    pub duplicate: bool,
}

/// A recorded result, kept so replays answer identically.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub client_id: ClientId,
    pub client_seq: Option<u64>,
    pub outcome: Outcome,
}

/// A conflict kept for a person to resolve (manual strategy, or field merge with manual overlap).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub id: String,
    pub key: EntityKey,
    pub operation_id: OperationId,
    pub client_id: ClientId,
    /// Overlapping fields (empty when the whole object conflicts).
    pub fields: Vec<String>,
    pub server_state: Option<Object>,
    pub client_state: Option<Object>,
    pub server_version: u64,
    pub at: HlcTimestamp,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub version: u64,
    pub record: EntityRecord,
    pub operation_id: Option<OperationId>,
    pub client_id: Option<ClientId>,
}

/// The part of the server's state a batch may read and write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyState {
    pub entities: BTreeMap<EntityKey, EntityRecord>,
    /// Last applied `clientSeq` per client.
    pub ledgers: BTreeMap<ClientId, u64>,
    pub results: BTreeMap<OperationId, StoredResult>,
    /// The tenant's current change sequence number.
    pub version: u64,
}

/// What a batch touches: the entities of its tenant it may write, the clients whose ledgers it
/// reads and the operations whose stored results it may replay. A shell loads exactly these
/// into an [`ApplyState`] before [`ApplyEngine::apply_batch`] — nothing else can matter to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    pub entities: BTreeSet<EntityKey>,
    pub clients: BTreeSet<ClientId>,
    pub operations: BTreeSet<OperationId>,
}

impl Footprint {
    /// The footprint of `batch` for `tenant` (an operation naming another tenant is refused by
    /// the engine, so its entity is not loaded).
    pub fn of(tenant: &TenantId, batch: &[Submitted]) -> Footprint {
        let mut fp = Footprint::default();
        for s in batch {
            match s {
                Submitted::Valid(op) => {
                    if &op.key.tenant == tenant {
                        fp.entities.insert(op.key.clone());
                    }
                    fp.clients.insert(op.client_id.clone());
                    fp.operations.insert(op.id.clone());
                }
                Submitted::Invalid { id, client_id, .. } => {
                    fp.clients.insert(client_id.clone());
                    fp.operations.insert(id.clone());
                }
            }
        }
        fp
    }
}

impl ApplyState {
    /// The part of this state that `fp` touches, as a server loads it from its store.
    pub fn slice(&self, fp: &Footprint) -> ApplyState {
        fn pick<K: Ord + Clone, V: Clone>(
            m: &BTreeMap<K, V>,
            keys: &BTreeSet<K>,
        ) -> BTreeMap<K, V> {
            keys.iter().filter_map(|k| Some((k.clone(), m.get(k)?.clone()))).collect()
        }
        ApplyState {
            entities: pick(&self.entities, &fp.entities),
            ledgers: pick(&self.ledgers, &fp.clients),
            results: pick(&self.results, &fp.operations),
            version: self.version,
        }
    }

    /// Fold a slice back in after a batch ran on it, as a server writes it to its store.
    pub fn absorb(&mut self, slice: ApplyState) {
        self.entities.extend(slice.entities);
        self.ledgers.extend(slice.ledgers);
        self.results.extend(slice.results);
        self.version = slice.version;
    }
}

/// An operation as submitted: valid, or invalid with enough of a header to record the refusal.
#[derive(Debug, Clone)]
pub enum Submitted {
    Valid(Operation),
    Invalid { id: OperationId, client_id: ClientId, client_seq: Option<u64>, error: Error },
}

impl Submitted {
    fn header(&self) -> (&OperationId, &ClientId, Option<u64>) {
        match self {
            Submitted::Valid(op) => (&op.id, &op.client_id, op.client_seq),
            Submitted::Invalid { id, client_id, client_seq, .. } => (id, client_id, *client_seq),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    pub results: Vec<OpResult>,
    pub changes: Vec<Change>,
    pub conflicts: Vec<Conflict>,
}

/// How a person resolves a recorded conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum ConflictChoice {
    KeepServer,
    TakeClient,
    Replace(Object),
    Delete,
}

#[derive(Debug, Clone)]
pub struct ApplyEngine {
    strategies: StrategyRegistry,
    limits: OperationLimits,
    max_batch: usize,
}

impl ApplyEngine {
    pub fn new(strategies: StrategyRegistry) -> Self {
        Self { strategies, limits: OperationLimits::default(), max_batch: DEFAULT_MAX_BATCH }
    }

    pub fn with_limits(mut self, limits: OperationLimits, max_batch: usize) -> Self {
        self.limits = limits;
        self.max_batch = max_batch;
        self
    }

    pub fn strategies(&self) -> &StrategyRegistry {
        &self.strategies
    }

    pub fn limits(&self) -> &OperationLimits {
        &self.limits
    }

    /// Apply a batch for `tenant`. `Err` only for a batch over its count limit, and then nothing
    /// changed. Deterministic: the same state and batch give the same outcome and new state.
    pub fn apply_batch(
        &self,
        tenant: &TenantId,
        batch: Vec<Submitted>,
        state: &mut ApplyState,
    ) -> Result<BatchOutcome, Error> {
        self.apply_batch_gated(tenant, batch, state, &Open)
    }

    /// [`ApplyEngine::apply_batch`] for a writer `gate` judges: an operation the gate refuses is
    /// `Refused` with `AUTHZ_FAILED`, consumes its `clientSeq` (the writer's queue never wedges)
    /// and changes nothing — no entity, no conflict, no version.
    pub fn apply_batch_gated(
        &self,
        tenant: &TenantId,
        batch: Vec<Submitted>,
        state: &mut ApplyState,
        gate: &dyn WriteGate,
    ) -> Result<BatchOutcome, Error> {
        if batch.len() > self.max_batch {
            return Err(Error::BatchLimit(format!(
                "{} operations in one batch (limit {})",
                batch.len(),
                self.max_batch
            )));
        }
        let mut out = BatchOutcome::default();
        for sub in batch {
            let r = self.apply_one(tenant, sub, state, &mut out, gate);
            out.results.push(r);
        }
        Ok(out)
    }

    fn apply_one(
        &self,
        tenant: &TenantId,
        sub: Submitted,
        state: &mut ApplyState,
        out: &mut BatchOutcome,
        gate: &dyn WriteGate,
    ) -> OpResult {
        let (id, client, seq) = sub.header();
        let (id, client) = (id.clone(), client.clone());
        let refuse = |code, message: String| OpResult {
            operation_id: id.clone(),
            client_seq: seq,
            outcome: Outcome::Refused { code, message },
            duplicate: false,
        };
        if let Some(prev) = state.results.get(&id) {
            if prev.client_id == client && prev.client_seq == seq {
                return OpResult {
                    operation_id: id,
                    client_seq: seq,
                    outcome: prev.outcome.clone(),
                    duplicate: true,
                };
            }
            return refuse(
                ErrorCode::SeqReused,
                format!("operation id {id} was already used by another operation"),
            );
        }
        if let Some(s) = seq {
            let last = state.ledgers.get(&client).copied().unwrap_or(0);
            if s <= last {
                return refuse(
                    ErrorCode::SeqReused,
                    format!("clientSeq {s} was already used (last applied {last})"),
                );
            }
            if s > last + 1 {
                return refuse(
                    ErrorCode::SeqGap,
                    format!("clientSeq {s} skips ahead: expected {}", last + 1),
                );
            }
        }
        let outcome = match sub {
            Submitted::Invalid { error, .. } => {
                Outcome::Refused { code: error.code(), message: error.to_string() }
            }
            Submitted::Valid(op) => match op.validate(&self.limits) {
                Err(e) => Outcome::Refused { code: e.code(), message: e.to_string() },
                Ok(()) if &op.key.tenant != tenant => Outcome::Refused {
                    code: ErrorCode::TenantViolation,
                    message: "the operation names another tenant".into(),
                },
                Ok(()) => self.resolve_gated(&op, state, out, gate),
            },
        };
        if let Some(s) = seq {
            state.ledgers.insert(client.clone(), s);
        }
        state.results.insert(
            id.clone(),
            StoredResult { client_id: client, client_seq: seq, outcome: outcome.clone() },
        );
        OpResult { operation_id: id, client_seq: seq, outcome, duplicate: false }
    }

    /// [`ApplyEngine::resolve`] when `gate` allows it: asked before (may this writer touch the
    /// entity as it is?) and after (may the result stand?); a refusal after undoes the change.
    fn resolve_gated(
        &self,
        op: &Operation,
        state: &mut ApplyState,
        out: &mut BatchOutcome,
        gate: &dyn WriteGate,
    ) -> Outcome {
        let refused = |message| Outcome::Refused { code: ErrorCode::AuthzFailed, message };
        let before = state.entities.get(&op.key);
        if let Err(m) = gate.may_change(&op.key, before) {
            return refused(m);
        }
        let (before, version) = (before.cloned(), state.version);
        let (changes, conflicts) = (out.changes.len(), out.conflicts.len());
        let outcome = self.resolve(op, state, out);
        if out.changes.len() == changes {
            return outcome;
        }
        let after = state.entities.get(&op.key).expect("a change keeps its record");
        match gate.may_leave(after) {
            Ok(()) => outcome,
            Err(m) => {
                match before {
                    Some(rec) => state.entities.insert(op.key.clone(), rec),
                    None => state.entities.remove(&op.key),
                };
                state.version = version;
                out.changes.truncate(changes);
                out.conflicts.truncate(conflicts);
                refused(m)
            }
        }
    }

    fn resolve(&self, op: &Operation, state: &mut ApplyState, out: &mut BatchOutcome) -> Outcome {
        let strategy = self.strategies.strategy_for(&op.key.entity_type).clone();
        if let ConflictStrategy::Crdt(name) = &strategy {
            return self.resolve_crdt(name, op, state, out);
        }
        if matches!(op.kind, OperationKind::Crdt(_)) {
            return refused_invalid(format!(
                "entity type {} uses {}, not crdt",
                op.key.entity_type,
                strategy.name()
            ));
        }
        let Some(rec) = state.entities.get(&op.key) else {
            let mut rec = EntityRecord {
                key: op.key.clone(),
                body: EntityBody::Object(Object::new()),
                fields: BTreeMap::new(),
                clock: VectorClock::new(),
                version: 0,
                deleted: None,
                last_write: op.stamp(),
            };
            fast_forward(&mut rec, op);
            let version = commit(rec, op, state, out);
            return Outcome::Applied { version };
        };
        let mut rec = rec.clone();
        if op.clock.dominates(&rec.clock) {
            fast_forward(&mut rec, op);
            let version = commit(rec, op, state, out);
            return Outcome::Applied { version };
        }
        match strategy {
            ConflictStrategy::LastWriteWins => {
                if op.stamp() > rec.last_write {
                    fast_forward(&mut rec, op);
                    let version = commit(rec, op, state, out);
                    conflict(Resolution::IncomingWon, Some(version), None)
                } else {
                    conflict(Resolution::ServerKept, None, None)
                }
            }
            ConflictStrategy::FieldMerge(on_overlap) => {
                field_merge(rec, op, on_overlap, state, out)
            }
            ConflictStrategy::Custom(name) => {
                let Some(f) = self.strategies.custom(&name) else {
                    return Outcome::Refused {
                        code: ErrorCode::MergeFailed,
                        message: format!("no merge function is registered as {name:?}"),
                    };
                };
                let client = intended(&rec, op);
                let input = MergeInput {
                    server: rec.object(),
                    incoming: &op.kind,
                    client: client.as_ref(),
                };
                match f.merge(&input) {
                    Err(reason) => Outcome::Refused {
                        code: ErrorCode::MergeFailed,
                        message: format!("merge function {name:?} failed: {reason}"),
                    },
                    Ok(merged) => {
                        set_whole(&mut rec, op, merged);
                        let version = commit(rec, op, state, out);
                        conflict(Resolution::Custom(name), Some(version), None)
                    }
                }
            }
            ConflictStrategy::Manual => {
                let id = record_conflict(&rec, op, Vec::new(), out);
                conflict(Resolution::Manual, None, Some(id))
            }
            ConflictStrategy::Crdt(_) => unreachable!("handled above"),
        }
    }

    fn resolve_crdt(
        &self,
        name: &str,
        op: &Operation,
        state: &mut ApplyState,
        out: &mut BatchOutcome,
    ) -> Outcome {
        let Some(merger) = self.strategies.crdt(name) else {
            return Outcome::Refused {
                code: ErrorCode::MergeFailed,
                message: format!("no CRDT merger is registered as {name:?}"),
            };
        };
        let mut rec = state.entities.get(&op.key).cloned().unwrap_or_else(|| EntityRecord {
            key: op.key.clone(),
            body: EntityBody::Crdt(Vec::new()),
            fields: BTreeMap::new(),
            clock: VectorClock::new(),
            version: 0,
            deleted: None,
            last_write: op.stamp(),
        });
        match &op.kind {
            OperationKind::Crdt(change) => {
                let current = match &rec.body {
                    EntityBody::Crdt(b) if !b.is_empty() => Some(b.as_slice()),
                    _ => None,
                };
                match merger.apply(current, change) {
                    Ok(doc) => {
                        rec.body = EntityBody::Crdt(doc);
                        rec.deleted = None;
                    }
                    Err(reason) => {
                        return Outcome::Refused {
                            code: ErrorCode::MergeFailed,
                            message: format!("CRDT merger {name:?} refused the change: {reason}"),
                        };
                    }
                }
            }
            OperationKind::Delete => rec.deleted = Some(Write::of(op)),
            other => {
                return refused_invalid(format!(
                    "entity type {} is a CRDT document; {} is not allowed",
                    op.key.entity_type,
                    other.name()
                ));
            }
        }
        let version = commit(rec, op, state, out);
        Outcome::Applied { version }
    }

    /// A write by the server itself (a person's conflict resolution): `new_state` `None` deletes.
    pub fn server_write(
        &self,
        state: &mut ApplyState,
        key: &EntityKey,
        new_state: Option<Object>,
        at: HlcTimestamp,
    ) -> Change {
        let server = ClientId::new(SERVER_CLIENT).expect("valid id");
        let mut rec = state.entities.get(key).cloned().unwrap_or_else(|| EntityRecord {
            key: key.clone(),
            body: EntityBody::Object(Object::new()),
            fields: BTreeMap::new(),
            clock: VectorClock::new(),
            version: 0,
            deleted: None,
            last_write: Stamp { time: at, client: server.clone() },
        });
        let mut clock = rec.clock.clone();
        let dot = clock.increment(&server);
        let time = at.max(rec.last_write.time);
        let write = Write { stamp: Stamp { time, client: server.clone() }, dot: (server, dot) };
        let op_like = Operation {
            id: OperationId::new(format!("{SERVER_CLIENT}-{dot}")).expect("valid id"),
            client_id: write.dot.0.clone(),
            client_seq: None,
            key: key.clone(),
            kind: match &new_state {
                Some(o) => OperationKind::Create(o.clone()),
                None => OperationKind::Delete,
            },
            timestamp: time,
            clock,
            class: crate::interaction::InteractionClass::C,
        };
        fast_forward(&mut rec, &op_like);
        let mut out = BatchOutcome::default();
        commit(rec, &op_like, state, &mut out);
        let mut change = out.changes.pop().expect("commit records a change");
        change.operation_id = None;
        change
    }

    /// Apply a person's decision on a recorded conflict. `KeepServer` changes nothing.
    pub fn resolve_conflict(
        &self,
        state: &mut ApplyState,
        conflict: &Conflict,
        choice: ConflictChoice,
        at: HlcTimestamp,
    ) -> Option<Change> {
        let new_state = match choice {
            ConflictChoice::KeepServer => return None,
            ConflictChoice::TakeClient => conflict.client_state.clone(),
            ConflictChoice::Replace(o) => Some(o),
            ConflictChoice::Delete => None,
        };
        Some(self.server_write(state, &conflict.key, new_state, at))
    }
}

fn conflict(resolution: Resolution, version: Option<u64>, conflict_id: Option<String>) -> Outcome {
    Outcome::Conflict { resolution, version, conflict_id }
}

fn refused_invalid(message: String) -> Outcome {
    Outcome::Refused { code: ErrorCode::InvalidOperation, message }
}

fn without_nulls(obj: &Object) -> Object {
    obj.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn object_mut(rec: &mut EntityRecord) -> &mut Object {
    if !matches!(rec.body, EntityBody::Object(_)) {
        rec.body = EntityBody::Object(Object::new());
    }
    match &mut rec.body {
        EntityBody::Object(o) => o,
        EntityBody::Crdt(_) => unreachable!(),
    }
}

/// What the client meant the state to become: the server's state with the operation applied.
fn intended(rec: &EntityRecord, op: &Operation) -> Option<Object> {
    let base = rec.object().cloned().unwrap_or_default();
    match &op.kind {
        OperationKind::Create(o) => Some(without_nulls(o)),
        OperationKind::Update(p) => {
            let mut s = base;
            apply_patch(&mut s, p);
            Some(s)
        }
        OperationKind::Delete => None,
        OperationKind::Crdt(_) => None,
    }
}

/// Replace the whole state (custom merge, resurrection): every field that changes is stamped.
fn set_whole(rec: &mut EntityRecord, op: &Operation, new_state: Option<Object>) {
    let w = Write::of(op);
    match new_state {
        None => rec.deleted = Some(w),
        Some(new) => {
            let old = std::mem::take(object_mut(rec));
            for k in old.keys().chain(new.keys()) {
                if old.get(k) != new.get(k) {
                    rec.fields.insert(k.clone(), w.clone());
                }
            }
            *object_mut(rec) = new;
            rec.deleted = None;
        }
    }
}

/// Apply an operation that has seen everything the record holds (or that won).
fn fast_forward(rec: &mut EntityRecord, op: &Operation) {
    let w = Write::of(op);
    match &op.kind {
        OperationKind::Create(o) => set_whole(rec, op, Some(without_nulls(o))),
        OperationKind::Update(patch) => {
            if rec.deleted.take().is_some() {
                object_mut(rec).clear();
            }
            apply_patch(object_mut(rec), patch);
            for k in patch.keys() {
                rec.fields.insert(k.clone(), w.clone());
            }
        }
        OperationKind::Delete => rec.deleted = Some(w),
        OperationKind::Crdt(_) => unreachable!("CRDT operations take the CRDT path"),
    }
}

/// [`field_merge`] when the other side deleted the entity concurrently (`del`).
fn against_delete(
    mut rec: EntityRecord,
    del: &Write,
    op: &Operation,
    on_overlap: OnOverlap,
    state: &mut ApplyState,
    out: &mut BatchOutcome,
) -> Outcome {
    let patch = match &op.kind {
        // Both deleted: the tombstone stays; record the later delete.
        OperationKind::Delete => {
            fast_forward(&mut rec, op);
            let version = commit(rec, op, state, out);
            return Outcome::Applied { version };
        }
        OperationKind::Create(o) | OperationKind::Update(o) => o,
        OperationKind::Crdt(_) => unreachable!(),
    };
    if on_overlap == OnOverlap::Manual {
        let id = record_conflict(&rec, op, Vec::new(), out);
        return conflict(Resolution::Manual, None, Some(id));
    }
    if op.stamp() < del.stamp {
        return conflict(Resolution::ServerKept, None, None);
    }
    // The write is later than the delete: resurrect on top of the pre-delete state.
    rec.deleted = None;
    apply_patch(object_mut(&mut rec), patch);
    for k in patch.keys() {
        rec.fields.insert(k.clone(), Write::of(op));
    }
    let version = commit(rec, op, state, out);
    conflict(Resolution::IncomingWon, Some(version), None)
}

fn field_merge(
    mut rec: EntityRecord,
    op: &Operation,
    on_overlap: OnOverlap,
    state: &mut ApplyState,
    out: &mut BatchOutcome,
) -> Outcome {
    let stamp = op.stamp();
    if let Some(del) = rec.deleted.clone().filter(|d| d.unseen_by(&op.clock)) {
        return against_delete(rec, &del, op, on_overlap, state, out);
    }
    let concurrent: BTreeMap<&String, &Write> =
        rec.fields.iter().filter(|(_, w)| w.unseen_by(&op.clock)).collect();
    let fields = match &op.kind {
        OperationKind::Create(o) | OperationKind::Update(o) => o,
        OperationKind::Delete => {
            // A delete loses to any later concurrent write of a field.
            let newest = concurrent.values().map(|w| &w.stamp).max();
            if on_overlap == OnOverlap::Manual && !concurrent.is_empty() {
                let names = concurrent.keys().map(|k| k.to_string()).collect();
                let id = record_conflict(&rec, op, names, out);
                return conflict(Resolution::Manual, None, Some(id));
            }
            if newest.is_some_and(|n| n > &stamp) {
                return conflict(Resolution::ServerKept, None, None);
            }
            fast_forward(&mut rec, op);
            let version = commit(rec, op, state, out);
            return Outcome::Applied { version };
        }
        OperationKind::Crdt(_) => unreachable!(),
    };
    let mut taken = Object::new();
    let mut kept = Vec::new();
    let mut overlapped = false;
    for (k, v) in fields {
        match concurrent.get(k) {
            None => {
                taken.insert(k.clone(), v.clone());
            }
            Some(w) => {
                overlapped = true;
                if on_overlap == OnOverlap::LastWriteWins && stamp > w.stamp {
                    taken.insert(k.clone(), v.clone());
                } else {
                    kept.push(k.clone());
                }
            }
        }
    }
    let conflict_id = if on_overlap == OnOverlap::Manual && !kept.is_empty() {
        Some(record_conflict(&rec, op, kept.clone(), out))
    } else {
        None
    };
    let version = if taken.is_empty() {
        None
    } else {
        apply_patch(object_mut(&mut rec), &taken);
        for k in taken.keys() {
            rec.fields.insert(k.clone(), Write::of(op));
        }
        Some(commit(rec, op, state, out))
    };
    if !overlapped {
        return match version {
            Some(version) => Outcome::Applied { version },
            None => conflict(Resolution::ServerKept, None, None),
        };
    }
    let from_client = taken.keys().cloned().collect();
    let resolution = if conflict_id.is_some() {
        Resolution::Manual
    } else {
        Resolution::FieldsMerged { from_client, kept_server: kept }
    };
    conflict(resolution, version, conflict_id)
}

fn record_conflict(
    rec: &EntityRecord,
    op: &Operation,
    fields: Vec<String>,
    out: &mut BatchOutcome,
) -> String {
    let id = format!("conflict-{}", op.id);
    out.conflicts.push(Conflict {
        id: id.clone(),
        key: rec.key.clone(),
        operation_id: op.id.clone(),
        client_id: op.client_id.clone(),
        fields,
        server_state: rec.object().cloned(),
        client_state: intended(rec, op),
        server_version: rec.version,
        at: op.timestamp,
    });
    id
}

/// Record a change: merge the clock, bump the tenant version, log the new record.
fn commit(
    mut rec: EntityRecord,
    op: &Operation,
    state: &mut ApplyState,
    out: &mut BatchOutcome,
) -> u64 {
    rec.clock.merge(&op.clock);
    let stamp = op.stamp();
    if stamp > rec.last_write {
        rec.last_write = stamp;
    }
    state.version += 1;
    rec.version = state.version;
    out.changes.push(Change {
        version: rec.version,
        record: rec.clone(),
        operation_id: Some(op.id.clone()),
        client_id: Some(op.client_id.clone()),
    });
    state.entities.insert(rec.key.clone(), rec);
    state.version
}

#[cfg(test)]
mod tests;
