//! Deltas and snapshots.
//!
//! - A **delta** is every entity whose version is above a cursor, oldest first, each carried as its
//!   full current state (so applying a delta twice, or out of order, is harmless).
//! - A **snapshot** is canonical JSON (sorted keys, no whitespace) with a SHA-256 checksum
//!   (`sha256:<hex>`). Large snapshots travel in chunks, each with its own checksum plus the
//!   whole's; [`SnapshotAssembler`] refuses a corrupt, missing, duplicated, reordered or truncated
//!   chunk sequence.

use crate::apply::EntityRecord;
use crate::error::Error;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Entities changed since `since`, oldest first, at most `limit`; `has_more` when cut short.
pub fn delta_since<'a>(
    records: impl IntoIterator<Item = &'a EntityRecord>,
    since: u64,
    limit: usize,
) -> (Vec<&'a EntityRecord>, bool) {
    let mut changed: Vec<&EntityRecord> =
        records.into_iter().filter(|r| r.version > since).collect();
    changed.sort_by_key(|r| r.version);
    let has_more = changed.len() > limit;
    changed.truncate(limit);
    (changed, has_more)
}

/// How a client at `since` catches up with a tenant at `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing to do.
    UpToDate,
    /// Send the changes since the cursor.
    Delta,
    /// Too far behind (or behind retention): fetch a snapshot, then resume from its version.
    Snapshot,
}

/// Decide between a delta and a snapshot. `oldest_retained` is the lowest version the change log
/// can still answer from; `max_delta` the largest gap worth sending as a delta.
pub fn plan_catch_up(since: u64, current: u64, oldest_retained: u64, max_delta: u64) -> CatchUp {
    if since >= current {
        CatchUp::UpToDate
    } else if since + 1 < oldest_retained || current - since > max_delta {
        CatchUp::Snapshot
    } else {
        CatchUp::Delta
    }
}

/// Canonical bytes of a JSON value: object keys sorted, no insignificant whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    // serde_json's Map is a BTreeMap (the `preserve_order` feature is off), so keys serialize
    // sorted; `to_vec` writes no whitespace.
    serde_json::to_vec(value).expect("a Value always serializes")
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push(char::from_digit((b >> 4) as u32, 16).unwrap());
        s.push(char::from_digit((b & 0xf) as u32, 16).unwrap());
    }
    s
}

/// Verify `bytes` against a checksum from the wire.
pub fn verify(bytes: &[u8], expected: &str) -> Result<(), Error> {
    if checksum(bytes) == expected {
        Ok(())
    } else {
        Err(Error::Snapshot(format!("checksum mismatch (expected {expected})")))
    }
}

/// One chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub index: u32,
    pub total: u32,
    pub data: Vec<u8>,
    pub checksum: String,
    /// The checksum of the whole snapshot, repeated on every chunk.
    pub total_checksum: String,
}

/// Split snapshot bytes into chunks of at most `chunk_size` bytes (an empty snapshot is one
/// empty chunk).
pub fn chunk(bytes: &[u8], chunk_size: usize) -> Vec<SnapshotChunk> {
    assert!(chunk_size > 0, "chunk size must be positive");
    let total_checksum = checksum(bytes);
    let pieces: Vec<&[u8]> =
        if bytes.is_empty() { vec![&[]] } else { bytes.chunks(chunk_size).collect() };
    let total = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, data)| SnapshotChunk {
            index: i as u32,
            total,
            data: data.to_vec(),
            checksum: checksum(data),
            total_checksum: total_checksum.clone(),
        })
        .collect()
}

/// Reassembles chunks in order, verifying each one and the whole.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    expected: Option<(u32, String)>,
    next: u32,
    bytes: Vec<u8>,
    max_bytes: usize,
}

impl SnapshotAssembler {
    /// Refuse snapshots larger than `max_bytes` in total.
    pub fn new(max_bytes: usize) -> Self {
        Self { expected: None, next: 0, bytes: Vec::new(), max_bytes }
    }

    /// Add the next chunk. On error the assembler is unchanged.
    pub fn push(&mut self, c: &SnapshotChunk) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Snapshot(why));
        match &self.expected {
            None if c.total == 0 => return bad("a snapshot has at least one chunk".into()),
            Some((total, sum)) if *total != c.total || *sum != c.total_checksum => {
                return bad(format!("chunk {} belongs to another snapshot", c.index));
            }
            _ => {}
        }
        if c.index != self.next {
            return bad(format!("expected chunk {}, got {}", self.next, c.index));
        }
        if c.index >= c.total {
            return bad(format!("chunk {} of {}", c.index, c.total));
        }
        if self.bytes.len() + c.data.len() > self.max_bytes {
            return bad(format!("snapshot exceeds {} bytes", self.max_bytes));
        }
        verify(&c.data, &c.checksum)
            .map_err(|_| Error::Snapshot(format!("chunk {} is corrupt", c.index)))?;
        self.expected.get_or_insert_with(|| (c.total, c.total_checksum.clone()));
        self.bytes.extend_from_slice(&c.data);
        self.next += 1;
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.expected.as_ref().is_some_and(|(total, _)| self.next == *total)
    }

    /// The verified snapshot bytes; refuses a truncated sequence or a whole-checksum mismatch.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let Some((total, sum)) = &self.expected else {
            return Err(Error::Snapshot("no chunks received".into()));
        };
        if self.next != *total {
            return Err(Error::Snapshot(format!("truncated: {} of {total} chunks", self.next)));
        }
        verify(&self.bytes, sum)?;
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check_refused(chunks: &[SnapshotChunk], needle: &str) {
        let mut a = SnapshotAssembler::new(1 << 20);
        let r = chunks.iter().try_for_each(|c| a.push(c)).and_then(|()| a.finish().map(|_| ()));
        match r {
            Err(Error::Snapshot(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_checksums_are_stable() {
        let a = json!({"b": 1, "a": {"d": [1, 2], "c": null}});
        let b: Value = serde_json::from_str(r#"{ "a": {"c": null, "d": [1,2]}, "b": 1 }"#).unwrap();
        assert_eq!(canonical_json(&a), br#"{"a":{"c":null,"d":[1,2]},"b":1}"#);
        assert_eq!(checksum(&canonical_json(&a)), checksum(&canonical_json(&b)));
        assert_eq!(
            checksum(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chunks_reassemble_to_the_original() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = chunk(&bytes, 4096);
        assert_eq!(chunks.len(), 3);
        let mut a = SnapshotAssembler::new(1 << 20);
        for c in &chunks {
            a.push(c).unwrap();
        }
        assert!(a.is_complete());
        assert_eq!(a.finish().unwrap(), bytes);
    }

    #[test]
    fn corrupt_missing_reordered_and_truncated_chunks_are_refused() {
        let bytes = vec![7u8; 10_000];
        let chunks = chunk(&bytes, 4096);
        let mut corrupt = chunks.clone();
        corrupt[1].data[0] ^= 1;
        check_refused(&corrupt, "corrupt");
        check_refused(&[chunks[0].clone(), chunks[2].clone()], "expected chunk 1");
        check_refused(&[chunks[1].clone()], "expected chunk 0");
        check_refused(&chunks[..2], "truncated");
        let mut other = chunk(&[1u8; 10_000], 4096);
        other[0] = chunks[0].clone();
        check_refused(&other, "another snapshot");
        // Consistent per-chunk checksums but a forged whole.
        let mut forged = chunks.clone();
        forged[2].data = vec![8u8; forged[2].data.len()];
        forged[2].checksum = checksum(&forged[2].data);
        check_refused(&forged, "checksum mismatch");
        let mut small = SnapshotAssembler::new(5000);
        small.push(&chunks[0]).unwrap();
        assert!(small.push(&chunks[1]).is_err(), "size cap");
    }

    #[test]
    fn catch_up_plan() {
        assert_eq!(plan_catch_up(10, 10, 0, 100), CatchUp::UpToDate);
        assert_eq!(plan_catch_up(5, 10, 0, 100), CatchUp::Delta);
        assert_eq!(plan_catch_up(5, 1000, 0, 100), CatchUp::Snapshot);
        assert_eq!(plan_catch_up(5, 10, 8, 100), CatchUp::Snapshot, "below retention");
        assert_eq!(plan_catch_up(7, 10, 8, 100), CatchUp::Delta, "exactly at retention");
    }

    proptest! {
        #[test]
        fn any_size_and_chunking_round_trips(len in 0usize..5000, size in 1usize..700) {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut a = SnapshotAssembler::new(1 << 20);
            for c in chunk(&bytes, size) { a.push(&c).unwrap(); }
            prop_assert_eq!(a.finish().unwrap(), bytes);
        }
    }
}
