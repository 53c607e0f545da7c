//! Operations: the unit of change a client makes and the server applies exactly once.
//!
//! An UPDATE is a field patch with JSON-merge-patch semantics at the top level (RFC 7396): each
//! named field is set to the given value, and a `null` removes the field. A CREATE carries the
//! whole object. CRDT operations carry opaque change bytes for the entity type's merger.

use crate::error::Error;
use crate::hlc::{HlcTimestamp, Stamp};
use crate::ids::{ClientId, EntityKey, OperationId};
use crate::interaction::InteractionClass;
use crate::vclock::VectorClock;
use serde_json::{Map, Value};

/// A JSON object: the state of a non-CRDT entity.
pub type Object = Map<String, Value>;

#[derive(Debug, Clone, PartialEq)]
pub enum OperationKind {
    Create(Object),
    Update(Object),
    Delete,
    Crdt(Vec<u8>),
}

impl OperationKind {
    /// The api.md name (`CREATE`, `UPDATE`, `DELETE`, `CRDT`).
    pub fn name(&self) -> &'static str {
        match self {
            OperationKind::Create(_) => "CREATE",
            OperationKind::Update(_) => "UPDATE",
            OperationKind::Delete => "DELETE",
            OperationKind::Crdt(_) => "CRDT",
        }
    }
}

/// Size and shape limits an operation must respect (shared by client and server so that a
/// client-validated operation is never refused for its shape).
#[derive(Debug, Clone)]
pub struct OperationLimits {
    /// Encoded payload size (JSON bytes, or raw CRDT bytes).
    pub max_payload_bytes: usize,
    pub max_fields: usize,
    pub max_field_name_bytes: usize,
    pub max_clock_entries: usize,
}

impl Default for OperationLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 32 * 1024,
            max_fields: 256,
            max_field_name_bytes: 128,
            max_clock_entries: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: OperationId,
    pub client_id: ClientId,
    /// Contiguous per client from 1. `None` for api.md-shaped requests, which are then
    /// deduplicated by operation id alone (no gap detection).
    pub client_seq: Option<u64>,
    pub key: EntityKey,
    pub kind: OperationKind,
    pub timestamp: HlcTimestamp,
    /// The clock of the state this operation was made against, with the author's entry set to
    /// the operation's own counter (its `clientSeq` when present).
    pub clock: VectorClock,
    pub class: InteractionClass,
}

impl Operation {
    /// The LWW position of this write.
    pub fn stamp(&self) -> Stamp {
        Stamp { time: self.timestamp, client: self.client_id.clone() }
    }

    /// The author's counter for this write (the "dot" that names it in vector clocks).
    pub fn dot(&self) -> u64 {
        self.clock.get(&self.client_id)
    }

    /// Check the operation's shape against `limits`. Says nothing about server state.
    pub fn validate(&self, limits: &OperationLimits) -> Result<(), Error> {
        if self.class == InteractionClass::A {
            return Err(Error::invalid_op("presence (class A) is not an operation"));
        }
        if let Some(seq) = self.client_seq {
            if seq == 0 {
                return Err(Error::invalid_op("clientSeq starts at 1"));
            }
            if self.dot() != seq {
                return Err(Error::invalid_op(format!(
                    "vectorClock[{}] is {} but clientSeq is {seq}; they must be equal",
                    self.client_id,
                    self.dot()
                )));
            }
        } else if self.dot() == 0 {
            return Err(Error::invalid_op("vectorClock must have an entry for the author"));
        }
        if self.clock.len() > limits.max_clock_entries {
            return Err(Error::invalid_op(format!(
                "vectorClock has {} entries (limit {})",
                self.clock.len(),
                limits.max_clock_entries
            )));
        }
        match &self.kind {
            OperationKind::Create(obj) | OperationKind::Update(obj) => {
                if matches!(self.kind, OperationKind::Update(_)) && obj.is_empty() {
                    return Err(Error::invalid_op("an UPDATE must change at least one field"));
                }
                check_object(obj, limits)?;
            }
            OperationKind::Delete => {}
            OperationKind::Crdt(bytes) => {
                if bytes.is_empty() {
                    return Err(Error::invalid_op("a CRDT operation needs change bytes"));
                }
                if bytes.len() > limits.max_payload_bytes {
                    return Err(too_large(bytes.len(), limits));
                }
            }
        }
        Ok(())
    }
}

fn too_large(size: usize, limits: &OperationLimits) -> Error {
    Error::invalid_op(format!("payload is {size} bytes (limit {} bytes)", limits.max_payload_bytes))
}

fn check_object(obj: &Object, limits: &OperationLimits) -> Result<(), Error> {
    if obj.len() > limits.max_fields {
        return Err(Error::invalid_op(format!(
            "{} fields (limit {})",
            obj.len(),
            limits.max_fields
        )));
    }
    for name in obj.keys() {
        if name.is_empty() || name.len() > limits.max_field_name_bytes {
            return Err(Error::invalid_op(format!("field name {name:?} is empty or too long")));
        }
    }
    let size = serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > limits.max_payload_bytes {
        return Err(too_large(size, limits));
    }
    Ok(())
}

/// Apply a field patch to an object (RFC 7396 at the top level: `null` removes the field).
pub fn apply_patch(target: &mut Object, patch: &Object) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::ids::{EntityKey, OperationId};

    pub fn obj(v: Value) -> Object {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// An UPDATE by `client` at `seq`, made against `base`.
    pub fn update(client: &str, seq: u64, entity: &str, patch: Value, millis: u64) -> Operation {
        op(client, seq, entity, OperationKind::Update(obj(patch)), millis, &VectorClock::new())
    }

    pub fn op(
        client: &str,
        seq: u64,
        entity: &str,
        kind: OperationKind,
        millis: u64,
        base: &VectorClock,
    ) -> Operation {
        let client_id = ClientId::new(client).unwrap();
        let mut clock = base.clone();
        clock.set(client_id.clone(), seq);
        Operation {
            id: OperationId::new(format!("{client}-op-{seq}")).unwrap(),
            client_id,
            client_seq: Some(seq),
            key: EntityKey::parse("t1", "todo", entity).unwrap(),
            kind,
            timestamp: HlcTimestamp::new(millis, 0),
            clock,
            class: InteractionClass::C,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::json;

    fn check_invalid(op: &Operation, needle: &str) {
        match op.validate(&OperationLimits::default()) {
            Err(Error::InvalidOperation(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected InvalidOperation containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_update_is_valid() {
        update("c1", 1, "e1", json!({"done": true}), 5).validate(&Default::default()).unwrap();
    }

    #[test]
    fn shape_errors_are_refused() {
        check_invalid(&update("c1", 1, "e1", json!({}), 5), "at least one field");
        let mut o = update("c1", 2, "e1", json!({"a": 1}), 5);
        o.clock.set(o.client_id.clone(), 1);
        check_invalid(&o, "must be equal");
        let mut o = update("c1", 1, "e1", json!({"a": 1}), 5);
        o.client_seq = Some(0);
        check_invalid(&o, "starts at 1");
        let big = "x".repeat(40_000);
        check_invalid(&update("c1", 1, "e1", json!({ "a": big }), 5), "limit");
        check_invalid(&update("c1", 1, "e1", json!({ "": 1 }), 5), "field name");
        let mut o = update("c1", 1, "e1", json!({"a": 1}), 5);
        o.kind = OperationKind::Crdt(vec![]);
        check_invalid(&o, "change bytes");
        o.class = InteractionClass::A;
        check_invalid(&o, "presence");
    }

    #[test]
    fn without_client_seq_the_author_still_needs_a_clock_entry() {
        let mut o = update("c1", 1, "e1", json!({"a": 1}), 5);
        o.client_seq = None;
        o.validate(&Default::default()).unwrap();
        o.clock = VectorClock::new();
        check_invalid(&o, "entry for the author");
    }

    #[test]
    fn patch_sets_and_removes_fields() {
        let mut s = obj(json!({"a": 1, "b": 2}));
        apply_patch(&mut s, &obj(json!({"b": null, "c": 3})));
        assert_eq!(Value::Object(s), json!({"a": 1, "c": 3}));
    }
}
