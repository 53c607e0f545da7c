//! Vector clocks: one counter per client that has written. They detect concurrency — two
//! writes neither of which had seen the other — which is what the conflict strategies resolve.
//!
//! The client's entry is its `clientSeq`: an operation's clock is the clock of the state it was
//! made against with the author's entry set to the operation's sequence number.

use crate::error::Error;
use crate::ids::ClientId;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// How two clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockOrder {
    Before,
    After,
    Equal,
    Concurrent,
}

/// A vector clock. Zero entries are never stored, so equal clocks are equal maps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct VectorClock(BTreeMap<ClientId, u64>);

impl VectorClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, client: &ClientId) -> u64 {
        self.0.get(client).copied().unwrap_or(0)
    }

    /// Set `client`'s entry (zero removes it).
    pub fn set(&mut self, client: ClientId, value: u64) {
        if value == 0 {
            self.0.remove(&client);
        } else {
            self.0.insert(client, value);
        }
    }

    /// Bump `client`'s entry by one and return the new value.
    pub fn increment(&mut self, client: &ClientId) -> u64 {
        let v = self.get(client) + 1;
        self.0.insert(client.clone(), v);
        v
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VectorClock) {
        for (c, &v) in &other.0 {
            let e = self.0.entry(c.clone()).or_insert(0);
            *e = (*e).max(v);
        }
    }

    pub fn merged(&self, other: &VectorClock) -> VectorClock {
        let mut m = self.clone();
        m.merge(other);
        m
    }

    /// Whether every entry of `other` is ≤ ours (we have seen everything it has).
    pub fn dominates(&self, other: &VectorClock) -> bool {
        other.0.iter().all(|(c, &v)| self.get(c) >= v)
    }

    /// One walk over both sorted maps (O(n + m)).
    pub fn compare(&self, other: &VectorClock) -> ClockOrder {
        let (mut ahead, mut behind) = (false, false);
        let mut a = self.0.iter().peekable();
        let mut b = other.0.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    ahead = true;
                    break;
                }
                (None, Some(_)) => {
                    behind = true;
                    break;
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    Ordering::Less => {
                        ahead = true;
                        a.next();
                    }
                    Ordering::Greater => {
                        behind = true;
                        b.next();
                    }
                    Ordering::Equal => {
                        ahead |= va > vb;
                        behind |= va < vb;
                        a.next();
                        b.next();
                    }
                },
            }
            if ahead && behind {
                return ClockOrder::Concurrent;
            }
        }
        match (ahead, behind) {
            (false, false) => ClockOrder::Equal,
            (true, false) => ClockOrder::After,
            (false, true) => ClockOrder::Before,
            (true, true) => ClockOrder::Concurrent,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, u64)> {
        self.0.iter().map(|(c, &v)| (c, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compact binary form: `varint(n)` then per entry, in id order, `varint(len) id varint(value)`.
    pub fn encode_compact(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() * 16);
        put_varint(&mut out, self.0.len() as u64);
        for (c, &v) in &self.0 {
            put_varint(&mut out, c.as_str().len() as u64);
            out.extend_from_slice(c.as_str().as_bytes());
            put_varint(&mut out, v);
        }
        out
    }

    /// Decode [`Self::encode_compact`]; refuses trailing bytes, unsorted or duplicate ids,
    /// zero values, invalid ids and truncation.
    pub fn decode_compact(mut bytes: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::Decode(format!("vector clock: {why}"));
        let n = get_varint(&mut bytes).ok_or_else(|| bad("truncated count"))?;
        if n > bytes.len() as u64 {
            return Err(bad("count larger than the data"));
        }
        let mut map = BTreeMap::new();
        let mut prev: Option<ClientId> = None;
        for _ in 0..n {
            let len = get_varint(&mut bytes).ok_or_else(|| bad("truncated id length"))? as usize;
            if len > bytes.len() {
                return Err(bad("truncated id"));
            }
            let (id, rest) = bytes.split_at(len);
            bytes = rest;
            let id = std::str::from_utf8(id).map_err(|_| bad("id is not UTF-8"))?;
            let id = ClientId::new(id)?;
            let v = get_varint(&mut bytes).ok_or_else(|| bad("truncated value"))?;
            if v == 0 {
                return Err(bad("zero entry"));
            }
            if prev.as_ref().is_some_and(|p| p >= &id) {
                return Err(bad("ids not in strictly increasing order"));
            }
            prev = Some(id.clone());
            map.insert(id, v);
        }
        if !bytes.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self(map))
    }
}

impl PartialOrd for VectorClock {
    /// The causal partial order: `None` when concurrent.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            ClockOrder::Before => Some(Ordering::Less),
            ClockOrder::After => Some(Ordering::Greater),
            ClockOrder::Equal => Some(Ordering::Equal),
            ClockOrder::Concurrent => None,
        }
    }
}

impl FromIterator<(ClientId, u64)> for VectorClock {
    fn from_iter<T: IntoIterator<Item = (ClientId, u64)>>(iter: T) -> Self {
        let mut c = VectorClock::new();
        for (id, v) in iter {
            let merged = c.get(&id).max(v);
            c.set(id, merged);
        }
        c
    }
}

/// JSON form as api.md: `{"client-789": 1}`.
impl serde::Serialize for VectorClock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for VectorClock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<ClientId, u64>::deserialize(d)?;
        Ok(raw.into_iter().collect())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        let part = (b & 0x7f) as u64;
        if i == 9 && b > 1 {
            return None; // overflow
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            // A zero final byte after a continuation is an overlong (non-canonical) encoding.
            if i > 0 && b == 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vc(entries: &[(&str, u64)]) -> VectorClock {
        entries.iter().map(|(c, v)| (ClientId::new(*c).unwrap(), *v)).collect()
    }

    #[test]
    fn compare_covers_all_four_relations() {
        assert_eq!(vc(&[("a", 1)]).compare(&vc(&[("a", 1)])), ClockOrder::Equal);
        assert_eq!(vc(&[("a", 1)]).compare(&vc(&[("a", 2)])), ClockOrder::Before);
        assert_eq!(vc(&[("a", 2), ("b", 1)]).compare(&vc(&[("a", 2)])), ClockOrder::After);
        assert_eq!(vc(&[("a", 1)]).compare(&vc(&[("b", 1)])), ClockOrder::Concurrent);
        assert_eq!(vc(&[]).compare(&vc(&[])), ClockOrder::Equal);
        assert!(vc(&[("a", 1)]).partial_cmp(&vc(&[("b", 1)])).is_none());
    }

    #[test]
    fn increment_and_merge() {
        let a = ClientId::new("a").unwrap();
        let mut x = vc(&[("b", 3)]);
        assert_eq!(x.increment(&a), 1);
        assert_eq!(x.increment(&a), 2);
        x.merge(&vc(&[("a", 1), ("b", 5), ("c", 1)]));
        assert_eq!(x, vc(&[("a", 2), ("b", 5), ("c", 1)]));
    }

    #[test]
    fn json_matches_api_md() {
        let c: VectorClock = serde_json::from_str(r#"{"client-789": 1, "zero": 0}"#).unwrap();
        assert_eq!(c, vc(&[("client-789", 1)]));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"client-789":1}"#);
        assert!(serde_json::from_str::<VectorClock>(r#"{"bad id": 1}"#).is_err());
        assert!(serde_json::from_str::<VectorClock>(r#"{"a": -1}"#).is_err());
    }

    #[test]
    fn compact_decoding_refuses_malformed_input() {
        let good = vc(&[("a", 1), ("b", 300)]).encode_compact();
        assert!(VectorClock::decode_compact(&good).is_ok());
        assert!(VectorClock::decode_compact(&good[..good.len() - 1]).is_err(), "truncated");
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(VectorClock::decode_compact(&trailing).is_err(), "trailing");
        assert!(VectorClock::decode_compact(&[2, 1, b'b', 1, 1, b'a', 1]).is_err(), "unsorted");
        assert!(VectorClock::decode_compact(&[1, 1, b'a', 0]).is_err(), "zero value");
        assert!(VectorClock::decode_compact(&[0xff; 12]).is_err(), "varint overflow");
        assert!(VectorClock::decode_compact(&[]).is_err(), "empty");
    }

    /// Found by `make fuzz` (clocks target): `80 00` decoded as a count of zero, so two byte
    /// strings meant the same clock.
    #[test]
    fn regression_overlong_varint_is_refused() {
        let crash = include_bytes!("../tests/data/fuzz/clocks-overlong-varint.bin");
        assert!(VectorClock::decode_compact(crash).is_err());
        assert!(VectorClock::decode_compact(&[1, 1, b'a', 0x81, 0x00]).is_err());
        assert!(VectorClock::decode_compact(&[0x00]).is_ok());
    }

    fn arb_clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((0u8..5, 0u64..6), 0..6).prop_map(|v| {
            v.into_iter().map(|(c, n)| (ClientId::new(format!("c{c}")).unwrap(), n)).collect()
        })
    }

    proptest! {
        #[test]
        fn compact_round_trips(c in arb_clock()) {
            prop_assert_eq!(VectorClock::decode_compact(&c.encode_compact()).unwrap(), c);
        }

        #[test]
        fn compact_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = VectorClock::decode_compact(&bytes);
        }

        #[test]
        fn merge_is_a_join(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.merged(&b), b.merged(&a));
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
            prop_assert_eq!(a.merged(&a), a.clone());
            let m = a.merged(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
        }

        #[test]
        fn compare_agrees_with_dominates(a in arb_clock(), b in arb_clock()) {
            let expected = match (a.dominates(&b), b.dominates(&a)) {
                (true, true) => ClockOrder::Equal,
                (true, false) => ClockOrder::After,
                (false, true) => ClockOrder::Before,
                (false, false) => ClockOrder::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_clock(), b in arb_clock()) {
            let flipped = match a.compare(&b) {
                ClockOrder::Before => ClockOrder::After,
                ClockOrder::After => ClockOrder::Before,
                o => o,
            };
            prop_assert_eq!(b.compare(&a), flipped);
        }
    }
}
