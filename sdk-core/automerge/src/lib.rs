//! # pf2-automerge — Automerge documents for PF-2 Sync
//!
//! sdk-core leaves the `crdt` strategy pluggable; this crate plugs in Automerge (0.12). It is a
//! separate crate because Automerge draws on `getrandom` and `rand`, which sdk-core's sans-io
//! guard forbids (docs/architecture/documents.md). Like sdk-core it does no I/O: bytes in,
//! bytes out.
//!
//! - [`AutomergeMerger`] is the merger behind `ConflictStrategy::Crdt("automerge")`: a stored
//!   document is an Automerge save, and applying change bytes to it is commutative, associative
//!   and idempotent (changes whose dependencies have not arrived are kept, as orphans, until
//!   they do).
//! - [`DocumentPeer`] is one replica of a document with a sync state per peer (Automerge's sync
//!   protocol): [`DocumentPeer::generate`] the next message for a peer, [`DocumentPeer::receive`]
//!   one from it, until neither side has anything to say. A peer that reconnects keeps only what
//!   both sides are known to share, so it sends and receives only what the other lacks.
//! - [`json`] reads a document as JSON and edits it by JSON paths (the browser API's verbs);
//!   [`log`] decides what a replica writes to its local store (increments, then a compacting
//!   save); [`parts`] cuts sync messages larger than a frame into parts and joins them again.
//!
//! ```
//! use pf2_automerge::DocumentPeer;
//! use automerge::{ObjType, ROOT, ReadDoc, transaction::Transactable};
//!
//! let mut laptop = DocumentPeer::new(b"laptop");
//! let text = laptop.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
//! laptop.doc().splice_text(&text, 0, 0, "hello").unwrap();
//! let mut server = DocumentPeer::new(b"server");
//! pf2_automerge::sync_until_quiet(&mut laptop, "server", &mut server, "laptop").unwrap();
//! assert_eq!(server.doc().text(&text).unwrap(), "hello");
//! ```

/// The Automerge crate this one is built on, for the callers' own reads and edits.
pub use automerge;

pub mod json;
pub mod log;
pub mod parts;

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, AutoCommit, ChangeHash, TextEncoding};
use sdk_core::strategy::CrdtMerger;
use std::collections::BTreeMap;

/// The name the server registers [`AutomergeMerger`] under (`--strategy doc=automerge`).
pub const MERGER_NAME: &str = "automerge";

/// Largest document a merge may produce by default (a clear error beyond).
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Largest sync message accepted by default: as large as a document may be (a message larger
/// than a frame arrives in [`parts`] and is joined before it is applied).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = DEFAULT_MAX_DOCUMENT_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bytes that are not an Automerge document, change or sync message.
    #[error("not Automerge data: {0}")]
    Decode(String),
    /// A document or message over its size limit; nothing was changed.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    /// An edit that does not fit the document (a path to nothing, a splice past the end).
    #[error("{0}")]
    Edit(String),
}

impl From<Error> for sdk_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::TooLarge { size, limit, .. } => sdk_core::Error::FrameTooLarge { size, limit },
            Error::Decode(reason) | Error::Edit(reason) => {
                sdk_core::Error::Merge { name: MERGER_NAME.into(), reason }
            }
        }
    }
}

fn decode(e: impl std::fmt::Display) -> Error {
    Error::Decode(e.to_string())
}

/// Load a stored document (`None` or empty: a new one).
fn load(current: Option<&[u8]>) -> Result<AutoCommit, Error> {
    match current {
        Some(bytes) if !bytes.is_empty() => AutoCommit::load(bytes).map_err(decode),
        _ => Ok(AutoCommit::new()),
    }
}

/// `current` with `change` (one encoded Automerge change, as [`DocumentPeer::changes_since`]
/// gives them) applied, saved. A change already present changes nothing; one whose
/// dependencies are missing is kept until they arrive. Refused, with nothing changed: bytes that
/// are not exactly one change, and a result over `max_bytes`.
pub fn merge(current: Option<&[u8]>, change: &[u8], max_bytes: usize) -> Result<Vec<u8>, Error> {
    // Parsed strictly first: Automerge's own incremental loader skips what it cannot read.
    let change = automerge::Change::from_bytes(change.to_vec()).map_err(decode)?;
    let mut doc = load(current)?;
    doc.apply_changes([change]).map_err(decode)?;
    let saved = doc.save();
    if saved.len() > max_bytes {
        return Err(Error::TooLarge { what: "the document", size: saved.len(), limit: max_bytes });
    }
    Ok(saved)
}

/// The `crdt` strategy's merger for Automerge documents.
#[derive(Debug, Clone)]
pub struct AutomergeMerger {
    max_bytes: usize,
}

impl Default for AutomergeMerger {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_DOCUMENT_BYTES }
    }
}

impl AutomergeMerger {
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl CrdtMerger for AutomergeMerger {
    fn apply(&self, current: Option<&[u8]>, change: &[u8]) -> Result<Vec<u8>, String> {
        merge(current, change, self.max_bytes).map_err(|e| e.to_string())
    }
}

/// One replica of a document, and its sync state with each peer it talks to.
pub struct DocumentPeer {
    doc: AutoCommit,
    peers: BTreeMap<String, sync::State>,
    max_message: usize,
}

impl std::fmt::Debug for DocumentPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentPeer").field("peers", &self.peers.keys()).finish_non_exhaustive()
    }
}

impl DocumentPeer {
    /// An empty document whose local changes are authored by `actor` (the client id's bytes:
    /// never random, so replays are deterministic).
    pub fn new(actor: &[u8]) -> Self {
        Self::from_doc(AutoCommit::new().with_actor(ActorId::from(actor)))
    }

    /// An empty document whose text indices count in `encoding` (the browser: UTF-16 code
    /// units, as JS strings do). The encoding is local: it is not part of the document.
    pub fn with_encoding(actor: &[u8], encoding: TextEncoding) -> Self {
        Self::from_doc(AutoCommit::new_with_encoding(encoding).with_actor(ActorId::from(actor)))
    }

    /// A stored document (a save, with or without trailing changes).
    pub fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, Error> {
        Ok(Self::from_doc(load(Some(bytes))?.with_actor(ActorId::from(actor))))
    }

    fn from_doc(doc: AutoCommit) -> Self {
        Self { doc, peers: BTreeMap::new(), max_message: DEFAULT_MAX_MESSAGE_BYTES }
    }

    pub fn with_max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The document, for reading and local edits (Automerge's own API).
    pub fn doc(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes made since `heads` (an incremental save), e.g. to persist local edits.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// The changes made since `heads`, each encoded on its own: what a client sends as `CRDT`
    /// operations, one change each, for [`merge`].
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.doc.get_changes(heads).into_iter().map(|c| c.raw_bytes().to_vec()).collect()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The next sync message for `peer`, or `None` when it has everything we know it lacks.
    /// A message is at most the limit when the document allows it: Automerge sends the changes
    /// a peer needs in one message, so a larger one is split by the caller's transport or
    /// refused by the receiver.
    pub fn generate(&mut self, peer: &str) -> Option<Vec<u8>> {
        let state = self.peers.entry(peer.to_string()).or_default();
        self.doc.sync().generate_sync_message(state).map(|m| m.encode())
    }

    /// Apply a sync message from `peer`. Refused, with nothing changed: one over the message
    /// limit or not a sync message.
    pub fn receive(&mut self, peer: &str, message: &[u8]) -> Result<(), Error> {
        if message.len() > self.max_message {
            return Err(Error::TooLarge {
                what: "a sync message",
                size: message.len(),
                limit: self.max_message,
            });
        }
        let message = sync::Message::decode(message).map_err(decode)?;
        let state = self.peers.entry(peer.to_string()).or_default();
        self.doc.sync().receive_sync_message(state, message).map_err(decode)
    }

    /// What this replica shares with `peer`, to store and hand to [`Self::restore_peer`] in a
    /// later session (`None`: never talked to it).
    pub fn peer_state(&self, peer: &str) -> Option<Vec<u8>> {
        self.peers.get(peer).map(sync::State::encode)
    }

    /// Start `peer`'s session from a stored [`Self::peer_state`]; bytes that are not one are
    /// ignored (the session then starts from nothing, which is slower, never wrong).
    pub fn restore_peer(&mut self, peer: &str, state: &[u8]) {
        if let Ok(s) = sync::State::decode(state) {
            self.peers.insert(peer.to_string(), s);
        }
    }

    /// `peer` went away: keep only what both sides are known to share, so the next session
    /// starts from there instead of from nothing.
    pub fn disconnected(&mut self, peer: &str) {
        if let Some(state) = self.peers.get_mut(peer) {
            *state = sync::State::decode(&state.encode()).unwrap_or_default();
        }
    }
}

/// Whether a sync message brings or asks for something: changes, or the hashes of changes its
/// sender needs (a dependency it lacks — after a Bloom-filter false positive, say). A message
/// with neither only acknowledges and can wait for the next exchange; one that does not decode
/// counts as carrying something (its receiver refuses it, loudly).
pub fn carries_something(message: &[u8]) -> bool {
    sync::Message::decode(message)
        .map(|m| !m.changes.is_empty() || !m.need.is_empty())
        .unwrap_or(true)
}

/// Exchange messages between `a` (which calls the other `b_name`) and `b` (`a_name`) until
/// neither has anything to send; returns the bytes sent each way. For tests, tools and
/// in-process replicas.
pub fn sync_until_quiet(
    a: &mut DocumentPeer,
    b_name: &str,
    b: &mut DocumentPeer,
    a_name: &str,
) -> Result<(usize, usize), Error> {
    let (mut a_to_b, mut b_to_a) = (0, 0);
    for _ in 0..1000 {
        let m1 = a.generate(b_name);
        if let Some(m) = &m1 {
            a_to_b += m.len();
            b.receive(a_name, m)?;
        }
        let m2 = b.generate(a_name);
        if let Some(m) = &m2 {
            b_to_a += m.len();
            a.receive(b_name, m)?;
        }
        if m1.is_none() && m2.is_none() {
            return Ok((a_to_b, b_to_a));
        }
    }
    Err(Error::Decode("sync did not settle in 1,000 rounds".into()))
}

#[cfg(test)]
mod tests;
