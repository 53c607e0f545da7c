//! A replica's local storage, decided here and carried out by the shell (IndexedDB in the
//! browser): a compacted save, then the increments appended since, each one record.
//!
//! After edits or received changes, [`DocumentLog::flush`] hands back one write: an
//! [`LogWrite::Append`] of the bytes added since the last write, or, once the appended bytes
//! pass the compaction threshold, a [`LogWrite::Compact`] that replaces everything with one save.
//! A shell whose write failed calls [`DocumentLog::failed`], and the next flush compacts, so
//! nothing is lost.

use crate::{DocumentPeer, Error};
use automerge::{ChangeHash, TextEncoding};

/// Appended bytes past which the next flush compacts by default.
pub const DEFAULT_COMPACT_BYTES: usize = 128 * 1024;

/// One write to the local store, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Store `bytes` (an incremental save) as record `seq` (≥ 1).
    Append { seq: u64, bytes: Vec<u8> },
    /// Store `save` as record 0 and delete records `1..below`.
    Compact { save: Vec<u8>, below: u64 },
}

/// What of one document the local store holds.
#[derive(Debug, Clone)]
pub struct DocumentLog {
    persisted: Vec<ChangeHash>,
    next_seq: u64,
    appended: usize,
    compact_bytes: usize,
    must_compact: bool,
}

impl DocumentLog {
    /// The document from its stored records (`(seq, bytes)`, any order; none: a new document),
    /// authored locally by `actor`, with indices in `encoding`.
    pub fn restore(
        mut records: Vec<(u64, Vec<u8>)>,
        actor: &[u8],
        encoding: TextEncoding,
        compact_bytes: usize,
    ) -> Result<(DocumentPeer, DocumentLog), Error> {
        records.sort_by_key(|(seq, _)| *seq);
        let mut peer = DocumentPeer::with_encoding(actor, encoding);
        let mut appended = 0;
        for (seq, bytes) in &records {
            peer.doc().load_incremental(bytes).map_err(|e| Error::Decode(e.to_string()))?;
            if *seq > 0 {
                appended += bytes.len();
            }
        }
        let next_seq = records.last().map_or(1, |(s, _)| s + 1).max(1);
        let log = DocumentLog {
            persisted: peer.heads(),
            next_seq,
            appended,
            compact_bytes,
            must_compact: false,
        };
        Ok((peer, log))
    }

    /// The write that stores what `peer` has beyond what is stored, or `None` when nothing is
    /// new. It counts as written: call [`Self::failed`] if it was not.
    pub fn flush(&mut self, peer: &mut DocumentPeer) -> Option<LogWrite> {
        let heads = peer.heads();
        if heads == self.persisted && !self.must_compact {
            return None;
        }
        let increment = peer.save_after(&self.persisted);
        self.persisted = heads;
        if self.must_compact || self.appended + increment.len() > self.compact_bytes {
            self.must_compact = false;
            self.appended = 0;
            let below = self.next_seq;
            self.next_seq = 1;
            return Some(LogWrite::Compact { save: peer.save(), below });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.appended += increment.len();
        Some(LogWrite::Append { seq, bytes: increment })
    }

    /// The last write did not reach the store: the next flush writes a full save.
    pub fn failed(&mut self) {
        self.must_compact = true;
    }

    /// Bytes appended since the last compaction.
    pub fn appended_bytes(&self) -> usize {
        self.appended
    }
}
