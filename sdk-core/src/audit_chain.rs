//! Tamper-evident audit chains, without I/O.
//!
//! Each audit entry carries a MAC (HMAC-SHA-256) of its own fields and of the MAC of the entry
//! before it in its chain (a chain is one tenant's entries of one retention class). The key is a
//! secret the database does not hold, so whoever can write the audit table cannot forge a
//! MAC: editing an entry, deleting one, or moving one breaks the chain at that entry, and
//! [`verify`] names the first entry where the chain breaks. The chain's head (last position and
//! MAC, and where pruning left it) carries a MAC of its own, so the last entries cannot be cut off
//! unnoticed either. What a MAC cannot show is a rollback of the whole table to an earlier copy;
//! operators who need that anchor the head elsewhere (the `audit verify` output prints it).
//!
//! Pruning (retention) removes a chain's oldest entries. The head then records the position and
//! MAC of the last entry removed (the *anchor*), and the first entry left must link to it.

use sha2::{Digest, Sha256};
use std::fmt;

const BLOCK: usize = 64;

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret that keys every chain (at least 32 bytes).
#[derive(Clone)]
pub struct ChainKey(Vec<u8>);

impl ChainKey {
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!("the audit key must be at least 32 bytes, not {}", secret.len()));
        }
        Ok(Self(secret.to_vec()))
    }

    /// The MAC of `entry` following `prev` (the previous entry's MAC, or the anchor's).
    pub fn entry_mac(&self, prev: &str, entry: &Entry<'_>) -> String {
        let seq = entry.seq.to_be_bytes();
        let at = entry.at.to_be_bytes();
        let fields: [&[u8]; 9] = [
            entry.tenant.as_bytes(),
            entry.chain.as_bytes(),
            &seq,
            &at,
            entry.actor.as_bytes(),
            entry.action.as_bytes(),
            entry.target.as_bytes(),
            entry.outcome.as_bytes(),
            entry.details.as_bytes(),
        ];
        hex(&hmac(&self.0, &[&framed(b"entry", prev, &fields)]))
    }

    /// The MAC of a chain's head: where it ends and where pruning left it.
    pub fn head_mac(&self, tenant: &str, chain: &str, head: &Head) -> String {
        let seq = head.seq.to_be_bytes();
        let pruned = head.anchor.seq.to_be_bytes();
        let fields: [&[u8]; 6] = [
            tenant.as_bytes(),
            chain.as_bytes(),
            &seq,
            head.hash.as_bytes(),
            &pruned,
            head.anchor.hash.as_bytes(),
        ];
        hex(&hmac(&self.0, &[&framed(b"head", "", &fields)]))
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(…)")
    }
}

/// `tag`, then `prev` and each field with its length before it: no two different entries
/// encode alike.
fn framed(tag: &[u8], prev: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut m = tag.to_vec();
    for f in std::iter::once(prev.as_bytes()).chain(fields.iter().copied()) {
        m.extend_from_slice(&(f.len() as u64).to_be_bytes());
        m.extend_from_slice(f);
    }
    m
}

/// One entry's fields, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub chain: &'a str,
    /// Its position in the chain: 1, 2, 3, … (never reused after pruning).
    pub seq: u64,
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub details: &'a str,
}

/// A position in a chain and the MAC there (`seq` 0 and `""` before the first entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

/// A chain's head: its last entry, and the anchor pruning left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub anchor: Link,
}

/// Where a chain breaks. `id` is the row's id in storage (its insertion order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The entry's fields or MAC are not what was written.
    Altered { id: i64, seq: u64 },
    /// Entries between the previous one and this one are gone.
    Removed { id: i64, expected: u64, found: u64 },
    /// The entry is out of its place (stored before an entry it should follow).
    Reordered { id: i64, seq: u64 },
    /// The chain ends before its head says: its last entries are gone.
    Truncated { last: u64, head: u64 },
    /// The head's MAC does not match: the head itself was changed.
    HeadAltered,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Altered { id, seq } => write!(f, "entry {id} (position {seq}) was altered"),
            Break::Removed { id, expected, found } if found == &(expected + 1) => {
                write!(f, "entry at position {expected} was removed (before entry {id})")
            }
            Break::Removed { id, expected, found } => write!(
                f,
                "entries at positions {expected}–{} were removed (before entry {id})",
                found - 1
            ),
            Break::Reordered { id, seq } => {
                write!(f, "entry {id} (position {seq}) was moved out of its place")
            }
            Break::Truncated { last, head } => {
                write!(f, "entries after position {last} were removed (the chain reached {head})")
            }
            Break::HeadAltered => write!(f, "the chain's head was altered"),
        }
    }
}

/// A stored entry with its storage id and MAC.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub id: i64,
    pub entry: Entry<'a>,
    pub hash: &'a str,
}

/// Walks one chain in storage order (by id) and checks each link; [`Verifier::finish`] checks
/// the end against the head.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k ChainKey,
    prev: Link,
    count: u64,
    broken: Option<Break>,
}

impl<'k> Verifier<'k> {
    /// Start at the chain's anchor (where pruning left it; the default for an unpruned chain).
    pub fn new(key: &'k ChainKey, anchor: Link) -> Self {
        Self { key, prev: anchor, count: 0, broken: None }
    }

    /// The next stored entry. After the first break, nothing more is checked.
    pub fn next(&mut self, s: &Stored<'_>) {
        if self.broken.is_some() {
            return;
        }
        let seq = s.entry.seq;
        let expected = self.prev.seq + 1;
        let broken = if seq < expected {
            Some(Break::Reordered { id: s.id, seq })
        } else if self.key.entry_mac(&self.prev.hash, &s.entry) == s.hash {
            None
        } else if seq > expected {
            // Its MAC may still be right for the entry it followed: then entries are missing.
            Some(Break::Removed { id: s.id, expected, found: seq })
        } else {
            Some(Break::Altered { id: s.id, seq })
        };
        match broken {
            Some(b) => self.broken = Some(b),
            None => {
                self.prev = Link { seq, hash: s.hash.to_string() };
                self.count += 1;
            }
        }
    }

    /// The number of entries checked so far, or the first break (a part of a chain: no head).
    pub fn finish_partial(self) -> Result<u64, Break> {
        self.broken.map_or(Ok(self.count), Err)
    }

    /// The number of entries checked, or the first break. `head` is the chain's head as stored
    /// and `head_mac` its MAC.
    pub fn finish(
        self,
        tenant: &str,
        chain: &str,
        head: &Head,
        head_mac: &str,
    ) -> Result<u64, Break> {
        if let Some(b) = self.broken {
            return Err(b);
        }
        if self.key.head_mac(tenant, chain, head) != head_mac {
            return Err(Break::HeadAltered);
        }
        if self.prev.seq < head.seq {
            return Err(Break::Truncated { last: self.prev.seq, head: head.seq });
        }
        if self.prev.seq > head.seq || self.prev.hash != head.hash {
            return Err(Break::HeadAltered);
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ChainKey {
        ChainKey::new(&[7u8; 32]).unwrap()
    }

    struct Owned {
        id: i64,
        seq: u64,
        details: String,
        hash: String,
    }

    fn entry(seq: u64, details: &str) -> Entry<'_> {
        Entry {
            tenant: "t",
            chain: "data",
            seq,
            at: 1_000 + seq as i64,
            actor: "ann",
            action: "conflict.resolve",
            target: "todo/1",
            outcome: "ok",
            details,
        }
    }

    /// A chain of `n` entries, and its head and head MAC.
    fn chain(n: u64) -> (Vec<Owned>, Head, String) {
        let k = key();
        let mut prev = String::new();
        let rows: Vec<Owned> = (1..=n)
            .map(|seq| {
                let details = format!("{{\"n\":{seq}}}");
                let hash = k.entry_mac(&prev, &entry(seq, &details));
                prev = hash.clone();
                Owned { id: seq as i64 * 10, seq, details, hash }
            })
            .collect();
        let head = Head { seq: n, hash: prev, anchor: Link::default() };
        let mac = k.head_mac("t", "data", &head);
        (rows, head, mac)
    }

    fn verify(rows: &[Owned], head: &Head, mac: &str) -> Result<u64, Break> {
        let k = key();
        let mut v = Verifier::new(&k, head.anchor.clone());
        for r in rows {
            v.next(&Stored { id: r.id, entry: entry(r.seq, &r.details), hash: &r.hash });
        }
        v.finish("t", "data", head, mac)
    }

    #[test]
    fn an_intact_chain_verifies_with_its_count() {
        let (rows, head, mac) = chain(5);
        assert_eq!(verify(&rows, &head, &mac), Ok(5));
        let (none, head, mac) = chain(0);
        assert_eq!(verify(&none, &head, &mac), Ok(0));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn an_altered_field_is_named() {
        let (mut rows, head, mac) = chain(5);
        rows[2].details = "{\"n\":99}".into();
        assert_eq!(verify(&rows, &head, &mac), Err(Break::Altered { id: 30, seq: 3 }));
    }

    #[test]
    fn a_removed_entry_is_named() {
        let (mut rows, head, mac) = chain(5);
        rows.remove(2);
        let err = verify(&rows, &head, &mac).unwrap_err();
        assert_eq!(err, Break::Removed { id: 40, expected: 3, found: 4 });
        assert_eq!(err.to_string(), "entry at position 3 was removed (before entry 40)");
    }

    #[test]
    fn a_moved_entry_is_named() {
        let (mut rows, head, mac) = chain(5);
        rows.swap(1, 3);
        assert!(matches!(verify(&rows, &head, &mac), Err(Break::Removed { .. })));
        let (mut rows, head, mac) = chain(5);
        // Two rows' contents swapped (ids stay in order): the second is out of its place.
        let (a, b) = (rows[1].seq, rows[2].seq);
        rows[1].seq = b;
        rows[2].seq = a;
        let (one, two) = rows.split_at_mut(2);
        std::mem::swap(&mut one[1].details, &mut two[0].details);
        std::mem::swap(&mut one[1].hash, &mut two[0].hash);
        assert!(matches!(verify(&rows, &head, &mac), Err(Break::Removed { id: 20, .. })));
        rows.swap(1, 2);
        assert!(matches!(verify(&rows, &head, &mac), Ok(5)), "back in place");
        let (mut rows, head, mac) = chain(3);
        rows[2].seq = 2;
        assert_eq!(verify(&rows, &head, &mac), Err(Break::Reordered { id: 30, seq: 2 }));
    }

    #[test]
    fn cutting_off_the_end_or_editing_the_head_is_seen() {
        let (mut rows, head, mac) = chain(5);
        rows.truncate(3);
        assert_eq!(verify(&rows, &head, &mac), Err(Break::Truncated { last: 3, head: 5 }));
        let forged = Head { seq: 3, hash: rows[2].hash.clone(), anchor: Link::default() };
        assert_eq!(verify(&rows, &forged, &mac), Err(Break::HeadAltered));
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor() {
        let (rows, mut head, _) = chain(6);
        head.anchor = Link { seq: 2, hash: rows[1].hash.clone() };
        let mac = key().head_mac("t", "data", &head);
        assert_eq!(verify(&rows[2..], &head, &mac), Ok(4));
        assert!(matches!(verify(&rows[3..], &head, &mac), Err(Break::Removed { expected: 3, .. })));
    }

    #[test]
    fn a_short_key_is_refused() {
        assert!(ChainKey::new(b"short").is_err());
    }

    proptest! {
        /// Changing any one byte of any field of any entry breaks the chain at that entry.
        #[test]
        fn any_single_edit_breaks_the_chain_there(n in 1u64..12, pick in 0usize..100, field in 0usize..3, byte in any::<u8>()) {
            let (mut rows, head, mac) = chain(n);
            let i = pick % rows.len();
            match field {
                0 => rows[i].details.push(char::from(b'a' + byte % 26)),
                1 => {
                    let flipped = if rows[i].hash.starts_with('0') { "1" } else { "0" };
                    rows[i].hash.replace_range(0..1, flipped)
                }
                _ => rows[i].details = format!("{{\"x\":{byte}}}"),
            }
            let err = verify(&rows, &head, &mac).unwrap_err();
            let id = rows[i].id;
            let at_or_after = match err {
                Break::Altered { id: at, .. } | Break::Removed { id: at, .. } | Break::Reordered { id: at, .. } => at >= id,
                Break::Truncated { .. } | Break::HeadAltered => i + 1 == rows.len(),
            };
            prop_assert!(at_or_after, "{err:?} for an edit of entry {id}");
        }
    }
}
