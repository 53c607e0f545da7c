//! Sync messages larger than one frame: sent as parts, reassembled by the receiver.
//!
//! Automerge puts every change a peer lacks into one sync message (a first sync of a large
//! document, a long offline backlog), while a WebSocket frame is at most 64 KiB. The sender
//! cuts a message into parts of at most [`PART_BYTES`]; every part but the last says `more`;
//! the receiver joins them, up to a limit, and hands on the whole message.

use crate::Error;
use std::collections::BTreeMap;

/// Bytes of message per part: base64 in a JSON frame, well inside 64 KiB.
pub const PART_BYTES: usize = 32 * 1024;

/// `message` cut into parts of at most `part_bytes`, each with whether more follow.
pub fn split(message: &[u8], part_bytes: usize) -> impl Iterator<Item = (&[u8], bool)> {
    let n = message.len().div_ceil(part_bytes.max(1)).max(1);
    (0..n).map(move |i| {
        let start = i * part_bytes;
        let end = (start + part_bytes).min(message.len());
        (&message[start..end], i + 1 < n)
    })
}

/// Parts received so far, per stream (a document id), up to `limit` bytes each.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: BTreeMap<String, Vec<u8>>,
    limit: usize,
}

impl Reassembly {
    pub fn new(limit: usize) -> Self {
        Self { partial: BTreeMap::new(), limit }
    }

    /// One part of `stream`'s message: the whole message when this was the last part. Past the
    /// limit the partial message is dropped and the error says so.
    pub fn push(
        &mut self,
        stream: &str,
        part: &[u8],
        more: bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        let size = self.partial.get(stream).map_or(0, Vec::len) + part.len();
        if size > self.limit {
            self.partial.remove(stream);
            return Err(Error::TooLarge { what: "a sync message", size, limit: self.limit });
        }
        if !more && !self.partial.contains_key(stream) {
            return Ok(Some(part.to_vec()));
        }
        let buf = self.partial.entry(stream.to_string()).or_default();
        buf.extend_from_slice(part);
        if more { Ok(None) } else { Ok(self.partial.remove(stream)) }
    }

    /// Forget a stream's partial message (its document was closed).
    pub fn discard(&mut self, stream: &str) {
        self.partial.remove(stream);
    }
}
