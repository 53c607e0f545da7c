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
