use super::*;
use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use proptest::prelude::*;

/// A replica with a shared text object created by a common ancestor change.
fn replicas(n: usize) -> (Vec<DocumentPeer>, automerge::ObjId) {
    let mut origin = DocumentPeer::new(b"origin");
    let text = origin.doc().put_object(ROOT, "text", ObjType::Text).unwrap();
    origin.doc().splice_text(&text, 0, 0, "base").unwrap();
    let saved = origin.save();
    let peers = (0..n)
        .map(|i| DocumentPeer::load(&saved, format!("actor-{i}").as_bytes()).unwrap())
        .collect();
    (peers, text)
}

fn text_of(p: &mut DocumentPeer, text: &automerge::ObjId) -> String {
    p.doc().text(text).unwrap()
}

#[test]
fn two_peers_editing_offline_converge_and_a_reconnect_sends_only_what_is_new() {
    let (mut ps, text) = replicas(2);
    let (mut a, mut b) = (ps.remove(0), ps.remove(0));
    sync_until_quiet(&mut a, "b", &mut b, "a").unwrap();
    for i in 0..200 {
        a.doc().splice_text(&text, 0, 0, &format!("a{i} ")).unwrap();
        let len = b.doc().length(&text);
        b.doc().splice_text(&text, len, 0, &format!(" b{i}")).unwrap();
    }
    let (first, _) = sync_until_quiet(&mut a, "b", &mut b, "a").unwrap();
    let t = text_of(&mut a, &text);
    assert_eq!(t, text_of(&mut b, &text), "identical after sync");
    assert!(t.contains("a199 ") && t.contains(" b199") && t.contains("base"));
    // Disconnect; one more edit each; reconnect: only the new changes travel.
    a.disconnected("b");
    b.disconnected("a");
    a.doc().splice_text(&text, 0, 0, "x").unwrap();
    b.doc().splice_text(&text, 0, 0, "y").unwrap();
    let (again, _) = sync_until_quiet(&mut a, "b", &mut b, "a").unwrap();
    assert_eq!(text_of(&mut a, &text), text_of(&mut b, &text));
    assert!(again * 3 < first, "reconnect sent {again} bytes, the first sync {first}");
}

/// The document a stored form holds: its heads (the set of changes) and its text.
fn state_of(bytes: &[u8], text: &automerge::ObjId) -> (Vec<ChangeHash>, String) {
    let mut p = DocumentPeer::load(bytes, b"reader").unwrap();
    let mut heads = p.heads();
    heads.sort();
    (heads, text_of(&mut p, text))
}

/// Saved bytes record the order changes arrived in, so two replicas may store different bytes
/// for the same document; what they hold — the set of changes, hence every value — is the same.
#[test]
fn the_merger_is_idempotent_and_order_free() {
    let (mut ps, text) = replicas(3);
    let base = ps[0].save();
    let mut changes = Vec::new();
    for (i, p) in ps.iter_mut().enumerate() {
        let heads = p.heads();
        p.doc().splice_text(&text, 0, 0, &format!("<{i}>")).unwrap();
        changes.extend(p.changes_since(&heads));
    }
    let merger = AutomergeMerger::default();
    let apply_all = |order: &[usize]| {
        let mut doc = base.clone();
        for &i in order {
            doc = merger.apply(Some(&doc), &changes[i]).unwrap();
        }
        doc
    };
    let one = state_of(&apply_all(&[0, 1, 2]), &text);
    assert_eq!(one, state_of(&apply_all(&[2, 0, 1]), &text), "any order");
    assert_eq!(one, state_of(&apply_all(&[1, 1, 2, 0, 2]), &text), "duplicates change nothing");
    let once = apply_all(&[0, 1, 2]);
    assert_eq!(once, merger.apply(Some(&once), &changes[1]).unwrap(), "a repeat keeps the bytes");
    let t = one.1;
    assert!(["<0>", "<1>", "<2>", "base"].iter().all(|s| t.contains(s)), "{t}");
}

#[test]
fn a_change_before_its_dependency_waits_for_it() {
    let (mut ps, text) = replicas(1);
    let mut p = ps.remove(0);
    let base = p.save();
    let h0 = p.heads();
    p.doc().splice_text(&text, 0, 0, "1").unwrap();
    let first = p.changes_since(&h0).remove(0);
    let h1 = p.heads();
    p.doc().splice_text(&text, 0, 0, "2").unwrap();
    let second = p.changes_since(&h1).remove(0);
    let m = AutomergeMerger::default();
    let early = m.apply(Some(&base), &second).unwrap();
    let mut view = DocumentPeer::load(&early, b"r").unwrap();
    assert_eq!(text_of(&mut view, &text), "base", "the orphan is kept, not applied");
    let done = m.apply(Some(&early), &first).unwrap();
    let mut view = DocumentPeer::load(&done, b"r").unwrap();
    assert_eq!(text_of(&mut view, &text), "21base");
    let in_order = m.apply(Some(&m.apply(Some(&base), &first).unwrap()), &second).unwrap();
    assert_eq!(state_of(&done, &text), state_of(&in_order, &text));
}

#[test]
fn limits_and_bad_bytes_are_refused_with_nothing_changed() {
    let (mut ps, text) = replicas(1);
    let mut p = ps.remove(0);
    let base = p.save();
    let h = p.heads();
    // Text that does not compress: the document really grows.
    let noise: String = (0..20_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    p.doc().splice_text(&text, 0, 0, &noise).unwrap();
    let big = p.changes_since(&h).remove(0);
    let small = AutomergeMerger::with_max_bytes(base.len() + 100);
    assert!(matches!(merge(Some(&base), &big, base.len() + 100), Err(Error::TooLarge { .. })));
    assert!(small.apply(Some(&base), &big).is_err());
    assert!(merge(Some(&base), b"not automerge", 1 << 20).is_err());
    assert!(merge(Some(&base), b"", 1 << 20).is_err());
    assert!(merge(Some(b"garbage"), &big, 1 << 20).is_err());
    let mut peer = DocumentPeer::new(b"p").with_max_message(16);
    assert!(matches!(peer.receive("x", &[0u8; 17]), Err(Error::TooLarge { .. })));
    assert!(matches!(peer.receive("x", &[0x42, 1, 2]), Err(Error::Decode(_))));
    let code = sdk_core::Error::from(Error::Decode("x".into())).code();
    assert_eq!(code, sdk_core::ErrorCode::MergeFailed);
}

/// `from`'s next message for `to`, if any: its change count as the pacing rule reads it equals
/// Automerge's, and a cut of it is read without a panic. Counted in `seen` (acks, with changes).
fn one_message(
    from: &mut DocumentPeer,
    to: &mut DocumentPeer,
    to_name: &str,
    from_name: &str,
    cut: prop::sample::Index,
    seen: &mut (u32, u32),
) -> Result<bool, TestCaseError> {
    let Some(m) = from.generate(to_name) else { return Ok(false) };
    let theirs = automerge::sync::Message::decode(&m).unwrap().changes.len() as u64;
    prop_assert_eq!(sdk_core::pacing::sync_message_changes(&m), Some(theirs));
    if theirs == 0 {
        seen.0 += 1
    } else {
        seen.1 += 1
    }
    let _ = sdk_core::pacing::sync_message_changes(&m[..cut.index(m.len())]);
    to.receive(from_name, &m).unwrap();
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Decoders of outside bytes: arbitrary changes, documents and sync messages are Ok or an
    /// error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = merge(None, &bytes, 1 << 20);
        let _ = merge(Some(&bytes), b"\x85\x6f\x4a\x83", 1 << 20);
        let _ = DocumentPeer::load(&bytes, b"a");
        let _ = DocumentPeer::new(b"a").receive("p", &bytes);
        let _ = sdk_core::pacing::sync_message_changes(&bytes);
    }

    /// The rate limit's reading of a sync message (`sdk_core::pacing`, which cannot depend on
    /// Automerge) counts what Automerge's own decoder counts, for every message of real
    /// exchanges — acknowledgements and messages carrying changes — and any cut of one reads
    /// as no message or a count, never a panic.
    #[test]
    fn the_pacing_change_count_agrees_with_automerge(
        edits in proptest::collection::vec((0usize..2, "[a-z]{1,3}"), 1..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut ps, text) = replicas(2);
        let (mut a, mut b) = (ps.remove(0), ps.remove(0));
        let mut seen = (0, 0);
        for (who, s) in &edits {
            let p = if *who == 0 { &mut a } else { &mut b };
            let len = p.doc().length(&text);
            p.doc().splice_text(&text, len, 0, s).unwrap();
            p.doc().commit();
            // One exchange, message by message in both directions until quiet.
            for _ in 0..10 {
                let ab = one_message(&mut a, &mut b, "b", "a", cut, &mut seen)?;
                let ba = one_message(&mut b, &mut a, "a", "b", cut, &mut seen)?;
                if !ab && !ba { break; }
            }
        }
        prop_assert!(seen.0 > 0 && seen.1 > 0, "both kinds of message were read: {seen:?}");
    }

    /// Three replicas make random concurrent edits and sync pairwise in a random order (some
    /// pairs more than once): all end with the same text and heads.
    #[test]
    fn replicas_converge_whatever_the_sync_order(
        edits in proptest::collection::vec((0usize..3, 0usize..8, "[a-z]{1,3}"), 1..30),
        order in proptest::collection::vec((0usize..3, 0usize..3), 1..12),
    ) {
        let (mut ps, text) = replicas(3);
        for (who, at, s) in &edits {
            let len = ps[*who].doc().length(&text);
            ps[*who].doc().splice_text(&text, (*at).min(len), 0, s).unwrap();
        }
        let names = ["r0", "r1", "r2"];
        let pair = |ps: &mut Vec<DocumentPeer>, i: usize, j: usize| {
            if i == j { return; }
            let (lo, hi) = (i.min(j), i.max(j));
            let (left, right) = ps.split_at_mut(hi);
            sync_until_quiet(&mut left[lo], names[hi], &mut right[0], names[lo]).unwrap();
        };
        for (i, j) in order {
            pair(&mut ps, i, j);
        }
        // Then everyone meets everyone, as a reconnecting cluster would.
        for (i, j) in [(0, 1), (1, 2), (0, 2), (0, 1)] {
            pair(&mut ps, i, j);
        }
        let texts: Vec<String> = ps.iter_mut().map(|p| text_of(p, &text)).collect();
        prop_assert!(texts.iter().all(|t| t == &texts[0]), "{texts:?}");
        let heads: Vec<Vec<ChangeHash>> = ps.iter_mut().map(|p| { let mut h = p.heads(); h.sort(); h }).collect();
        prop_assert!(heads.iter().all(|h| h == &heads[0]));
    }
}

mod json_edits {
    use super::*;
    use crate::json;
    use serde_json::{Value, json};

    fn path(v: Value) -> Vec<Value> {
        v.as_array().unwrap().clone()
    }

    #[test]
    fn edits_by_path_read_back_as_json() {
        let mut p = DocumentPeer::with_encoding(b"a", TextEncoding::Utf16CodeUnit);
        let d = p.doc();
        json::put(d, &path(json!(["title"])), &json!("Notes")).unwrap();
        json::put(d, &path(json!(["todos"])), &json!([{"t": "milk", "done": false}])).unwrap();
        json::insert(d, &path(json!(["todos"])), 1, &json!({"t": "eggs", "n": 2.5})).unwrap();
        json::put(d, &path(json!(["todos", 0, "done"])), &json!(true)).unwrap();
        json::put_text(d, &path(json!(["body"])), "héllo 👋").unwrap();
        // UTF-16 indices: the emoji is two code units.
        json::splice(d, &path(json!(["body"])), 8, 0, "!").unwrap();
        json::splice(d, &path(json!(["body"])), 0, 1, "H").unwrap();
        json::delete(d, &path(json!(["todos", 1, "n"]))).unwrap();
        assert_eq!(
            json::get(d, &[]).unwrap().unwrap(),
            json!({"title": "Notes", "body": "Héllo 👋!",
                   "todos": [{"t": "milk", "done": true}, {"t": "eggs"}]})
        );
        assert_eq!(json::get(d, &path(json!(["todos", 1, "t"]))).unwrap(), Some(json!("eggs")));
        assert_eq!(json::get(d, &path(json!(["nope", 3]))).unwrap(), None);
    }

    #[test]
    fn edits_that_do_not_fit_are_refused_clearly() {
        let mut p = DocumentPeer::new(b"a");
        let d = p.doc();
        json::put_text(d, &path(json!(["body"])), "abc").unwrap();
        json::put(d, &path(json!(["n"])), &json!(1)).unwrap();
        for (what, r) in [
            ("past the end", json::splice(d, &path(json!(["body"])), 2, 5, "")),
            ("nothing there", json::splice(d, &path(json!(["missing"])), 0, 0, "x")),
            ("not a map", json::put(d, &path(json!(["n", "x"])), &json!(1))),
            ("not a", json::insert(d, &path(json!(["body"])), 0, &json!(1))),
            ("empty", json::put(d, &[], &json!(1))),
            ("whole number", json::put(d, &path(json!(["body", -1])), &json!(1))),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(what), "{what:?} in {e:?}");
        }
        assert_eq!(json::get(d, &[]).unwrap().unwrap(), json!({"body": "abc", "n": 1}));
    }
}

mod local_log {
    use super::*;
    use crate::log::{DocumentLog, LogWrite};
    use std::collections::BTreeMap;

    /// A store that carries out writes as IndexedDB would.
    fn apply(store: &mut BTreeMap<u64, Vec<u8>>, w: LogWrite) {
        match w {
            LogWrite::Append { seq, bytes } => {
                store.insert(seq, bytes);
            }
            LogWrite::Compact { save, below } => {
                store.retain(|s, _| *s == 0 || *s >= below);
                store.insert(0, save);
            }
        }
    }

    fn reopen(store: &BTreeMap<u64, Vec<u8>>) -> (DocumentPeer, DocumentLog) {
        let records = store.iter().map(|(s, b)| (*s, b.clone())).collect();
        DocumentLog::restore(records, b"a", TextEncoding::Utf16CodeUnit, 4096).unwrap()
    }

    #[test]
    fn increments_then_a_compacting_save_restore_the_same_document() {
        let mut store = BTreeMap::new();
        let (mut peer, mut log) = reopen(&store);
        assert_eq!(log.flush(&mut peer), None, "nothing new");
        let text = peer.doc().put_object(ROOT, "t", ObjType::Text).unwrap();
        let mut compactions = 0;
        for i in 0..300 {
            let len = peer.doc().length(&text);
            peer.doc().splice_text(&text, len, 0, &format!("edit {i}; ")).unwrap();
            peer.doc().commit();
            let w = log.flush(&mut peer).unwrap();
            compactions += matches!(w, LogWrite::Compact { .. }) as usize;
            apply(&mut store, w);
            assert!(log.appended_bytes() <= 4096);
            if i % 37 == 0 {
                // A reload at any point sees every edit so far.
                let (mut again, _) = reopen(&store);
                assert_eq!(again.heads(), peer.heads(), "after edit {i}");
            }
        }
        assert!(compactions >= 1, "the threshold was crossed");
        assert!(store.len() < 100, "compaction keeps the store small: {} records", store.len());
        let (mut again, mut log2) = reopen(&store);
        assert_eq!(again.doc().text(&text).unwrap(), peer.doc().text(&text).unwrap());
        // The reopened log continues after the stored records.
        again.doc().splice_text(&text, 0, 0, "x").unwrap();
        match log2.flush(&mut again).unwrap() {
            LogWrite::Append { seq, .. } => assert!(!store.contains_key(&seq)),
            LogWrite::Compact { .. } => {}
        }
    }

    #[test]
    fn a_failed_write_is_recovered_by_the_next_flush() {
        let mut store = BTreeMap::new();
        let (mut peer, mut log) = reopen(&store);
        let text = peer.doc().put_object(ROOT, "t", ObjType::Text).unwrap();
        peer.doc().splice_text(&text, 0, 0, "lost?").unwrap();
        let _dropped = log.flush(&mut peer).unwrap();
        log.failed();
        peer.doc().splice_text(&text, 0, 0, "no: ").unwrap();
        let w = log.flush(&mut peer).unwrap();
        assert!(matches!(w, LogWrite::Compact { .. }));
        apply(&mut store, w);
        let (mut again, _) = reopen(&store);
        assert_eq!(again.doc().text(&text).unwrap(), "no: lost?");
    }

    #[test]
    fn a_stored_peer_state_lets_a_new_session_send_only_what_is_new() {
        let (mut ps, text) = replicas(2);
        let (mut a, mut server) = (ps.remove(0), ps.remove(0));
        for i in 0..300 {
            a.doc().splice_text(&text, 0, 0, &format!("{i} ")).unwrap();
            a.doc().commit();
        }
        let (first, _) = sync_until_quiet(&mut a, "server", &mut server, "a").unwrap();
        let state = a.peer_state("server").unwrap();
        // The page reloads: a fresh replica from the same bytes, its session from the state.
        let mut reloaded = DocumentPeer::load(&a.save(), b"actor-0").unwrap();
        reloaded.restore_peer("server", &state);
        server.disconnected("a");
        reloaded.doc().splice_text(&text, 0, 0, "new ").unwrap();
        let (again, _) = sync_until_quiet(&mut reloaded, "server", &mut server, "a").unwrap();
        assert_eq!(server.doc().text(&text).unwrap(), reloaded.doc().text(&text).unwrap());
        assert!(again * 5 < first, "reconnect sent {again} bytes, first sync {first}");
    }
}

mod message_parts {
    use crate::parts::{Reassembly, split};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_message_survives_being_cut_into_parts(
            msg in proptest::collection::vec(any::<u8>(), 0..5000),
            part in 1usize..2000,
        ) {
            let mut r = Reassembly::new(10_000);
            let mut whole = None;
            let parts: Vec<_> = split(&msg, part).collect();
            prop_assert!(parts.iter().all(|(p, _)| p.len() <= part));
            for (i, (p, more)) in parts.iter().enumerate() {
                prop_assert_eq!(*more, i + 1 < parts.len());
                let got = r.push("doc", p, *more).unwrap();
                prop_assert_eq!(got.is_some(), !more);
                whole = got.or(whole);
            }
            prop_assert_eq!(whole.unwrap(), msg);
        }
    }

    #[test]
    fn parts_past_the_limit_are_refused_and_forgotten() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push("d", &[1; 60], true).unwrap(), None);
        let e = r.push("d", &[2; 60], true).unwrap_err().to_string();
        assert!(e.contains("120 bytes exceeds the limit of 100"), "{e}");
        // The stream starts afresh; another stream was never affected.
        assert_eq!(r.push("d", &[3; 10], false).unwrap(), Some(vec![3; 10]));
        assert_eq!(r.push("e", &[4; 50], true).unwrap(), None);
        r.discard("e");
        assert_eq!(r.push("e", &[5; 5], false).unwrap(), Some(vec![5; 5]));
    }
}

/// A replica holding a change whose dependency it lacks asks for the dependency: that message
/// carries no changes, and still must be sent (the REST transport sends only messages that
/// carry something; a dropped `need` left a replica short of the other's last keystrokes).
#[test]
fn a_message_that_asks_for_a_missing_dependency_carries_something() {
    let (mut ps, text) = replicas(2);
    let (mut a, mut b) = (ps.remove(0), ps.remove(0));
    sync_until_quiet(&mut a, "b", &mut b, "a").unwrap();
    let before = a.heads();
    a.doc().splice_text(&text, 0, 0, "x").unwrap();
    a.doc().commit();
    let middle = a.heads();
    a.doc().splice_text(&text, 0, 0, "y").unwrap();
    a.doc().commit();
    let later = a.doc().get_changes(&middle);
    assert_eq!(later.len(), 1);
    // b gets the second change only: it is queued until its dependency arrives.
    b.doc().apply_changes(later).unwrap();
    assert_eq!(text_of(&mut b, &text), "base");
    // A new session: a says what it has (its heads), and b lacks a dependency of them.
    a.disconnected("b");
    b.disconnected("a");
    let hello = a.generate("b").expect("a new session starts with a message");
    assert!(automerge::sync::Message::decode(&hello).unwrap().changes.is_empty());
    b.receive("a", &hello).unwrap();
    let asks = b.generate("a").expect("b has something to say");
    let decoded = automerge::sync::Message::decode(&asks).unwrap();
    assert!(decoded.changes.is_empty(), "it brings nothing");
    assert!(!decoded.need.is_empty(), "it asks for the missing change");
    assert!(carries_something(&asks));
    // Answered, b has both changes.
    a.receive("b", &asks).unwrap();
    sync_until_quiet(&mut a, "b", &mut b, "a").unwrap();
    assert_eq!(text_of(&mut b, &text), "yxbase");
    assert_ne!(a.heads(), before);

    // A bare acknowledgement carries nothing; bytes that are no message count as something.
    let (mut ps, _) = replicas(2);
    let (mut c, mut d) = (ps.remove(0), ps.remove(0));
    sync_until_quiet(&mut c, "d", &mut d, "c").unwrap();
    c.disconnected("d");
    let hello = c.generate("d").expect("a new session starts with a message");
    assert!(!carries_something(&hello));
    assert!(carries_something(b"not a sync message"));
}
