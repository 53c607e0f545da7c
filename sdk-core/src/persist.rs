//! The storage form of server-side state (entity records), versioned and explicit so that a
//! record written by one server version is read by the next. Shells store [`encode_record`]'s
//! bytes and read them back with [`decode_record`]; nothing else about the layout leaks out.

use crate::apply::{EntityBody, EntityRecord, Write};
use crate::error::Error;
use crate::hlc::{HlcTimestamp, Stamp};
use crate::ids::{ClientId, EntityKey};
use crate::operation::Object;
use crate::vclock::VectorClock;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const RECORD_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredWrite {
    t: HlcTimestamp,
    c: ClientId,
    n: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crdt: Option<String>,
    fields: BTreeMap<String, StoredWrite>,
    clock: VectorClock,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted: Option<StoredWrite>,
    last: StoredWrite,
}

fn to_stored(w: &Write) -> StoredWrite {
    StoredWrite { t: w.stamp.time, c: w.stamp.client.clone(), n: w.dot.1 }
}

fn from_stored(w: StoredWrite) -> Write {
    Write { stamp: Stamp { time: w.t, client: w.c.clone() }, dot: (w.c, w.n) }
}

/// Bytes to store for a record (its key is stored in columns beside them).
pub fn encode_record(r: &EntityRecord) -> Vec<u8> {
    let (object, crdt) = match &r.body {
        EntityBody::Object(o) => (Some(o.clone()), None),
        EntityBody::Crdt(b) => (None, Some(BASE64.encode(b))),
    };
    let stored = StoredRecord {
        format: RECORD_FORMAT,
        object,
        crdt,
        fields: r.fields.iter().map(|(k, w)| (k.clone(), to_stored(w))).collect(),
        clock: r.clock.clone(),
        version: r.version,
        deleted: r.deleted.as_ref().map(to_stored),
        last: StoredWrite { t: r.last_write.time, c: r.last_write.client.clone(), n: 0 },
    };
    serde_json::to_vec(&stored).expect("records serialize")
}

/// Read a record written by [`encode_record`].
pub fn decode_record(key: EntityKey, bytes: &[u8]) -> Result<EntityRecord, Error> {
    let s: StoredRecord =
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(format!("stored record: {e}")))?;
    if s.format != RECORD_FORMAT {
        return Err(Error::Decode(format!("stored record format {} is unknown", s.format)));
    }
    let body = match (s.object, s.crdt) {
        (_, Some(b)) => EntityBody::Crdt(
            BASE64.decode(b).map_err(|e| Error::Decode(format!("stored crdt bytes: {e}")))?,
        ),
        (o, None) => EntityBody::Object(o.unwrap_or_default()),
    };
    Ok(EntityRecord {
        key,
        body,
        fields: s.fields.into_iter().map(|(k, w)| (k, from_stored(w))).collect(),
        clock: s.clock,
        version: s.version,
        deleted: s.deleted.map(from_stored),
        last_write: Stamp { time: s.last.t, client: s.last.c },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{ApplyEngine, ApplyState, Submitted};
    use crate::ids::TenantId;
    use crate::operation::fixtures::update;
    use crate::strategy::StrategyRegistry;
    use serde_json::json;

    #[test]
    fn records_round_trip_through_their_stored_form() {
        let engine = ApplyEngine::new(StrategyRegistry::default());
        let mut s = ApplyState::default();
        let ops = vec![
            Submitted::Valid(update("a", 1, "x", json!({"t": "v", "n": 1}), 5)),
            Submitted::Valid(update("b", 1, "x", json!({"n": 2}), 6)),
        ];
        engine.apply_batch(&TenantId::new("t1").unwrap(), ops, &mut s).unwrap();
        for (key, rec) in &s.entities {
            let back = decode_record(key.clone(), &encode_record(rec)).unwrap();
            assert_eq!(&back, rec);
        }
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors() {
        let key = EntityKey::parse("t", "todo", "x").unwrap();
        assert!(decode_record(key.clone(), b"{").is_err());
        let future = br#"{"format":2,"fields":{},"clock":{},"version":1,"last":{"t":"2026-01-01T00:00:00Z","c":"a","n":0}}"#;
        assert!(decode_record(key, future).is_err());
    }
}
