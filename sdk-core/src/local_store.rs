//! The client's local database layout, shared by every shell that persists a [`SyncClient`]'s
//! state in a key-value store (IndexedDB in the browser SDK; a test's maps natively).
//!
//! The state machine emits [`StoreWrite`]s; [`records`] turns a batch of them into key-value
//! writes over four stores, which the shell applies in **one** transaction; at start the shell
//! reads the four stores back and [`load`] rebuilds the [`StoredState`] to recover from. Values
//! are JSON (IndexedDB stores them as structured clones; nothing here is a JS `Map`), each with a
//! `format` number so that a later SDK can read what an earlier one wrote.
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `ops` | operation id | a queued operation (wire form) and its refusal count |
//! | `quarantined` | operation id | an operation the server will never apply, and why |
//! | `entities` | `["tenant","type","id"]` as a JSON string | the confirmed (server) state |
//! | `meta` | `nextSeq`, `cursor`, `lastEvent`, `clock` | counters and cursors |
//!
//! [`SyncClient`]: crate::client::SyncClient

use crate::error::{Error, ErrorCode};
use crate::hlc::HlcTimestamp;
use crate::ids::EntityKey;
use crate::operation::Object;
use crate::protocol::WireOperation;
use crate::storage::{ConfirmedEntity, QuarantinedOp, QueuedOp, StoreWrite, StoredState};
use crate::vclock::VectorClock;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The object stores, in the order a shell should create them.
pub const STORES: [&str; 4] = [OPS, QUARANTINED, ENTITIES, META];
pub const OPS: &str = "ops";
pub const QUARANTINED: &str = "quarantined";
pub const ENTITIES: &str = "entities";
pub const META: &str = "meta";

const FORMAT: u32 = 1;

/// One key-value write.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordWrite {
    Put { store: &'static str, key: String, value: Value },
    Delete { store: &'static str, key: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpRecord {
    format: u32,
    op: WireOperation,
    attempts: u32,
}

/// A quarantined operation: its queue record, and why the server will never apply it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuarantinedRecord {
    #[serde(flatten)]
    queued: OpRecord,
    code: ErrorCode,
    message: String,
}

impl OpRecord {
    fn new(op: &crate::operation::Operation, attempts: u32) -> Self {
        Self { format: FORMAT, op: WireOperation::from_operation(op), attempts }
    }

    /// The operation back, checked as any operation from outside is.
    fn into_operation(self, store: &str) -> Result<(crate::operation::Operation, u32), Error> {
        let op = self.op.into_operation().map_err(|e| bad(store, e))?;
        Ok((op, self.attempts))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntityRecord {
    format: u32,
    tenant_id: String,
    entity_type: String,
    entity_id: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Object>,
    /// Base64 of the CRDT document bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crdt: Option<String>,
    deleted: bool,
    clock: VectorClock,
    timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CursorRecord {
    version: u64,
    confirmed_seq: u64,
}

/// The `entities` key of an entity: unambiguous whatever its ids contain.
pub fn entity_key(key: &EntityKey) -> String {
    serde_json::to_string(&[key.tenant.as_str(), key.entity_type.as_str(), key.entity_id.as_str()])
        .expect("strings serialize")
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("local records serialize")
}

fn put(store: &'static str, key: impl Into<String>, value: Value) -> RecordWrite {
    RecordWrite::Put { store, key: key.into(), value }
}

/// The key-value writes for a batch of [`StoreWrite`]s, in order. Apply them atomically.
pub fn records(writes: &[StoreWrite]) -> Vec<RecordWrite> {
    writes
        .iter()
        .map(|w| match w {
            StoreWrite::PutOp(q) => {
                put(OPS, q.op.id.as_str(), json(&OpRecord::new(&q.op, q.attempts)))
            }
            StoreWrite::DeleteOp(id) => RecordWrite::Delete { store: OPS, key: id.to_string() },
            StoreWrite::PutQuarantined(q) => put(
                QUARANTINED,
                q.op.id.as_str(),
                json(&QuarantinedRecord {
                    queued: OpRecord::new(&q.op, q.attempts),
                    code: q.code,
                    message: q.message.clone(),
                }),
            ),
            StoreWrite::SetNextSeq(n) => put(META, "nextSeq", Value::from(*n)),
            StoreWrite::PutEntity(e) => put(
                ENTITIES,
                entity_key(&e.key),
                json(&EntityRecord {
                    format: FORMAT,
                    tenant_id: e.key.tenant.to_string(),
                    entity_type: e.key.entity_type.to_string(),
                    entity_id: e.key.entity_id.to_string(),
                    version: e.version,
                    state: e.state.clone(),
                    crdt: e.crdt.as_ref().map(|b| BASE64.encode(b)),
                    deleted: e.deleted,
                    clock: e.clock.clone(),
                    timestamp: e.timestamp.to_string(),
                    channels: e.channels.clone(),
                }),
            ),
            StoreWrite::DeleteEntity(key) => {
                RecordWrite::Delete { store: ENTITIES, key: entity_key(key) }
            }
            StoreWrite::SetScope(scope) => put(META, "scope", json(scope)),
            StoreWrite::SetCursor { version, confirmed_seq } => put(
                META,
                "cursor",
                json(&CursorRecord { version: *version, confirmed_seq: *confirmed_seq }),
            ),
            StoreWrite::SetLastEvent(s) => put(META, "lastEvent", Value::from(*s)),
            StoreWrite::SetClock(t) => put(META, "clock", Value::String(t.to_string())),
        })
        .collect()
}

/// Writes applied in one transaction need only the last write of each key: a group commit of
/// many mutations rewrites `meta/nextSeq` and `meta/clock` once per mutation. Keeps the order of
/// each key's last write.
pub fn compact(writes: Vec<RecordWrite>) -> Vec<RecordWrite> {
    let key = |w: &RecordWrite| match w {
        RecordWrite::Put { store, key, .. } | RecordWrite::Delete { store, key } => {
            (*store, key.clone())
        }
    };
    let mut last = std::collections::HashMap::with_capacity(writes.len());
    for (i, w) in writes.iter().enumerate() {
        last.insert(key(w), i);
    }
    writes.into_iter().enumerate().filter(|(i, w)| last[&key(w)] == *i).map(|(_, w)| w).collect()
}

fn bad(store: &str, e: impl std::fmt::Display) -> Error {
    Error::Decode(format!("local store `{store}`: {e}"))
}

fn record<T: for<'de> Deserialize<'de>>(store: &str, v: Value) -> Result<T, Error> {
    let format = v.get("format").and_then(Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(bad(store, format!("unknown record format {format:?}")));
    }
    serde_json::from_value(v).map_err(|e| bad(store, e))
}

/// What the four stores held, as read back at start.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub ops: Vec<Value>,
    pub quarantined: Vec<Value>,
    pub entities: Vec<Value>,
    pub meta: Vec<(String, Value)>,
}

/// Rebuild the state to recover from. A record this SDK cannot read is an error (never silently
/// dropped: it may be an unsent operation).
pub fn load(contents: Contents) -> Result<StoredState, Error> {
    let mut state = StoredState::default();
    for v in contents.ops {
        let (op, attempts) = record::<OpRecord>(OPS, v)?.into_operation(OPS)?;
        if op.client_seq.is_none() {
            return Err(bad(OPS, "a queued operation without clientSeq"));
        }
        state.ops.push(QueuedOp { op, attempts });
    }
    state.ops.sort_by_key(QueuedOp::seq);
    for v in contents.quarantined {
        let r: QuarantinedRecord = record(QUARANTINED, v)?;
        let (op, attempts) = r.queued.into_operation(QUARANTINED)?;
        state.quarantined.push(QuarantinedOp { op, code: r.code, message: r.message, attempts });
    }
    state.quarantined.sort_by_key(|q| q.op.client_seq);
    for v in contents.entities {
        let r: EntityRecord = record(ENTITIES, v)?;
        let crdt = match r.crdt {
            Some(s) => Some(BASE64.decode(s).map_err(|e| bad(ENTITIES, e))?),
            None => None,
        };
        state.entities.push(ConfirmedEntity {
            key: EntityKey::parse(&r.tenant_id, &r.entity_type, &r.entity_id)?,
            version: r.version,
            state: r.state,
            crdt,
            deleted: r.deleted,
            clock: r.clock,
            timestamp: HlcTimestamp::parse(&r.timestamp)?,
            channels: r.channels,
        });
    }
    state.entities.sort_by(|a, b| a.key.cmp(&b.key));
    let number = |k: &str, v: &Value| v.as_u64().ok_or_else(|| bad(META, format!("{k}: {v}")));
    for (k, v) in contents.meta {
        match k.as_str() {
            "nextSeq" => state.next_seq = number(&k, &v)?,
            "lastEvent" => state.last_event = Some(number(&k, &v)?),
            "clock" => {
                state.clock = HlcTimestamp::parse(v.as_str().ok_or_else(|| bad(META, "clock"))?)?
            }
            "scope" => state.scope = serde_json::from_value(v).map_err(|e| bad(META, e))?,
            "cursor" => {
                let c: CursorRecord = serde_json::from_value(v).map_err(|e| bad(META, e))?;
                state.cursor = c.version;
                state.confirmed_seq = c.confirmed_seq;
            }
            // Keys a later SDK added: not ours to judge.
            _ => {}
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientConfig, Output, SyncClient};
    use crate::ids::{ClientId, TenantId};
    use crate::operation::OperationKind;
    use crate::protocol::{ServerFrame, WireOpResult};
    use crate::queue::{MemoryQueueStore, QueueStore};
    use serde_json::json;
    use std::collections::BTreeMap;

    /// A key-value store applying [`RecordWrite`]s, as IndexedDB would.
    #[derive(Default)]
    struct Kv(BTreeMap<(&'static str, String), Value>);

    impl Kv {
        fn apply(&mut self, writes: Vec<RecordWrite>) {
            for w in writes {
                match w {
                    RecordWrite::Put { store, key, value } => {
                        // Values cross a structured clone / JSON boundary in real stores.
                        let value = serde_json::from_str(&value.to_string()).unwrap();
                        self.0.insert((store, key), value);
                    }
                    RecordWrite::Delete { store, key } => {
                        self.0.remove(&(store, key));
                    }
                }
            }
        }

        fn contents(&self) -> Contents {
            let mut c = Contents::default();
            for ((store, key), v) in &self.0 {
                match *store {
                    OPS => c.ops.push(v.clone()),
                    QUARANTINED => c.quarantined.push(v.clone()),
                    ENTITIES => c.entities.push(v.clone()),
                    _ => c.meta.push((key.clone(), v.clone())),
                }
            }
            c
        }
    }

    fn patch(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    /// Drive a client through offline edits, a partial ack and a delta, mirroring every
    /// `Store` output into both a memory store and the key-value layout: both load the same.
    #[test]
    fn the_key_value_layout_recovers_exactly_what_the_memory_store_does() {
        let tenant = TenantId::new("acme").unwrap();
        let config = ClientConfig::new(ClientId::new("tab-1").unwrap(), tenant, 7);
        let mut client = SyncClient::new(config.clone(), Default::default());
        let (mut mem, mut kv) = (MemoryQueueStore::default(), Kv::default());
        let drain = |client: &mut SyncClient, mem: &mut MemoryQueueStore, kv: &mut Kv| {
            let mut sent = Vec::new();
            while let Some(o) = client.poll_output() {
                match o {
                    Output::Store(w) => {
                        mem.apply(&w).unwrap();
                        kv.apply(records(&w));
                    }
                    Output::Send(f) => sent.push(f),
                    _ => {}
                }
            }
            sent
        };
        for i in 0..5 {
            let key = EntityKey::parse("acme", "todo", &format!("t{i}")).unwrap();
            let id = crate::ids::OperationId::new(format!("op-{i}")).unwrap();
            let kind = OperationKind::Create(patch(json!({"title": format!("item {i}"), "n": i})));
            client.mutate(1_000 + i, id, key, kind).unwrap();
        }
        drain(&mut client, &mut mem, &mut kv);
        client.set_online(2_000, true);
        client.link_opened(2_000, "token");
        let sent = drain(&mut client, &mut mem, &mut kv);
        let (batch_id, ops) = sent
            .iter()
            .find_map(|f| match f {
                crate::protocol::ClientFrame::Push { batch_id, operations } => {
                    Some((batch_id.clone(), operations.clone()))
                }
                _ => None,
            })
            .expect("a push goes out once the link is up");
        {
            // The server applied the first two.
            let results = ops
                .iter()
                .take(2)
                .enumerate()
                .map(|(i, o)| {
                    serde_json::from_value::<WireOpResult>(json!({
                        "operationId": o.operation_id, "clientSeq": o.client_seq,
                        "status": "applied", "version": i + 1,
                    }))
                    .unwrap()
                })
                .collect();
            client.handle_frame(
                2_100,
                ServerFrame::PushResult {
                    batch_id,
                    results,
                    current_version: 2,
                    conflicts: vec![],
                },
            );
            drain(&mut client, &mut mem, &mut kv);
        }
        // Acknowledged but not yet in a delta: still stored (a reader must never see the write
        // vanish between the ack and the delta).
        assert_eq!(load(kv.contents()).unwrap().ops.len(), 5);
        client.handle_frame(
            2_200,
            ServerFrame::Delta {
                since: 0,
                version: 2,
                entities: vec![],
                has_more: false,
                client_seq: Some(2),
                removed: vec![],
                scope: None,
                remaining: None,
            },
        );
        drain(&mut client, &mut mem, &mut kv);
        let from_mem = mem.load().unwrap();
        let from_kv = load(kv.contents()).unwrap();
        assert_eq!(from_kv, from_mem);
        assert_eq!(from_kv.ops.len(), 3, "two of five acknowledged and confirmed");
        assert_eq!(from_kv.next_seq, 6);
        // And a client recovered from it carries on with the same queue.
        let recovered = SyncClient::recover(config, Default::default(), from_kv);
        assert_eq!(recovered.queue().len(), client.queue().len());
    }

    #[test]
    fn compacting_keeps_each_keys_last_write_and_the_same_outcome() {
        let p =
            |store, key: &str, v: u64| RecordWrite::Put { store, key: key.into(), value: json!(v) };
        let d = |store, key: &str| RecordWrite::Delete { store, key: key.into() };
        let writes = vec![
            p(META, "nextSeq", 1),
            p(OPS, "a", 1),
            p(META, "nextSeq", 2),
            p(OPS, "b", 2),
            d(OPS, "a"),
            p(META, "nextSeq", 3),
        ];
        let compacted = compact(writes.clone());
        assert_eq!(compacted, vec![p(OPS, "b", 2), d(OPS, "a"), p(META, "nextSeq", 3)]);
        let (mut full, mut short) = (Kv::default(), Kv::default());
        full.apply(writes);
        short.apply(compacted);
        assert_eq!(full.0, short.0);
    }

    #[test]
    fn a_quarantined_operation_round_trips_as_one_flat_record() {
        let op = crate::operation::fixtures::update("c1", 4, "e", json!({"a": 1}), 9);
        let q = QuarantinedOp {
            op,
            code: ErrorCode::InvalidOperation,
            message: "never".into(),
            attempts: 3,
        };
        let writes = records(&[StoreWrite::PutQuarantined(q.clone())]);
        let RecordWrite::Put { value, .. } = &writes[0] else { panic!("a put") };
        for field in ["format", "op", "attempts", "code", "message"] {
            assert!(value.get(field).is_some(), "{field} at the top level: {value}");
        }
        let mut kv = Kv::default();
        kv.apply(writes);
        assert_eq!(load(kv.contents()).unwrap().quarantined, vec![q]);
    }

    #[test]
    fn an_unknown_format_is_an_error_not_a_lost_operation() {
        let contents = Contents { ops: vec![json!({"format": 99})], ..Default::default() };
        let e = load(contents).unwrap_err();
        assert!(e.to_string().contains("unknown record format"), "{e}");
    }

    #[test]
    fn entity_keys_are_unambiguous() {
        let a = EntityKey::parse("t", "a-b", "c").unwrap();
        let b = EntityKey::parse("t", "a", "b-c").unwrap();
        assert_ne!(entity_key(&a), entity_key(&b));
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "[a-zA-Z0-9:~.-]{0,12}".prop_map(Value::from),
            Just(Value::from(FORMAT)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("format".to_string()),
                        Just("op".to_string()),
                        Just("attempts".to_string()),
                        Just("version".to_string()),
                        Just("clock".to_string()),
                        "[a-z]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a corrupted or foreign database holds, loading answers Ok or an error.
        #[test]
        fn loading_arbitrary_records_never_panics(
            ops in proptest::collection::vec(any_json(), 0..3),
            entities in proptest::collection::vec(any_json(), 0..3),
            meta in proptest::collection::vec(("(nextSeq|cursor|lastEvent|clock|x)", any_json()), 0..4),
        ) {
            let _ = load(Contents { ops: ops.clone(), quarantined: ops, entities, meta });
        }
    }
}
