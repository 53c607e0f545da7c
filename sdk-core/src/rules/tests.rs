use super::*;
use crate::apply::{ApplyEngine, ApplyState, Outcome, Submitted};
use crate::hlc::HlcTimestamp;
use crate::ids::{ClientId, OperationId, TenantId};
use crate::operation::{Operation, OperationKind};
use crate::strategy::StrategyRegistry;
use crate::vclock::VectorClock;
use proptest::prelude::*;
use serde_json::json;

/// The issue's file, verbatim: it is also the docs' first example.
const EXAMPLE: &str = include_str!("../../tests/data/example-rules.toml");

fn rules() -> SyncRules {
    SyncRules::parse(EXAMPLE).expect("the example parses")
}

fn obj(v: Value) -> Object {
    v.as_object().expect("an object").clone()
}

fn channels(rules: &SyncRules, ty: &str, id: &str, state: Value) -> Vec<String> {
    let state = obj(state);
    let ty = EntityType::new(ty).unwrap();
    rules.entity_channels(&ty, &EntityId::new(id).unwrap(), Some(&state)).into_iter().collect()
}

fn user(claims: Value, roles: &[&str], rows: &[RowGrant]) -> Grants {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    rules().grants(&Claims::new(&obj(claims), &roles), rows)
}

fn record(ty: &str, id: &str, state: Value) -> EntityRecord {
    EntityRecord {
        key: EntityKey::parse("acme", ty, id).unwrap(),
        body: EntityBody::Object(obj(state)),
        fields: BTreeMap::new(),
        clock: VectorClock::new(),
        version: 1,
        deleted: None,
        last_write: crate::hlc::Stamp {
            time: HlcTimestamp::new(1, 0),
            client: ClientId::new("s").unwrap(),
        },
    }
}

fn check_refused(text: &str, line: usize, words: &str) {
    let e = SyncRules::parse(text).expect_err("the file is refused").to_string();
    assert!(e.contains(&format!("line {line}:")), "{e:?} should name line {line}");
    assert!(e.contains(words), "{e:?} should say {words:?}");
}

#[test]
fn the_docs_first_example_is_this_file() {
    let docs = include_str!("../../../docs/api/sync-rules.md");
    assert!(
        docs.contains(EXAMPLE),
        "docs/api/sync-rules.md must show tests/data/example-rules.toml verbatim"
    );
}

#[test]
fn the_example_gives_each_type_its_channels() {
    let r = rules();
    assert_eq!(channels(&r, "todo", "t1", json!({"owner": "alice"})), ["user:alice"]);
    assert_eq!(channels(&r, "task", "k1", json!({"projectId": "p1"})), ["project:p1"]);
    assert_eq!(channels(&r, "project", "p1", json!({"name": "x"})), ["project:p1"]);
    assert_eq!(channels(&r, "member", "m1", json!({"projectId": 7})), ["project:7"]);
    assert!(r.is_granting(&EntityType::new("member").unwrap()));
    assert!(!r.is_granting(&EntityType::new("task").unwrap()));
    assert_eq!(r.document_channels("notes").into_iter().collect::<Vec<_>>(), ["doc:notes"]);
}

#[test]
fn a_missing_field_gives_no_channel_and_an_unknown_type_none() {
    let r = rules();
    for state in [json!({}), json!({"owner": null}), json!({"owner": ""}), json!({"owner": {}})] {
        assert!(channels(&r, "todo", "t1", state).is_empty());
    }
    assert!(channels(&r, "secret", "s1", json!({"owner": "alice"})).is_empty());
}

#[test]
fn templates_expand_dotted_paths_arrays_and_products() {
    let r = SyncRules::parse(
        r#"[entities.doc]
           channels = ["team:{meta.team}", "tag:{tags[]}", "{kind}:{ids[]}:{id}", "x{{y}}"]"#,
    )
    .unwrap();
    let got = channels(
        &r,
        "doc",
        "d1",
        json!({"meta": {"team": "red"}, "tags": ["a", 2, true, null, {}], "kind": "k", "ids": ["1", "2"]}),
    );
    assert_eq!(
        got,
        ["k:1:d1", "k:2:d1", "tag:2", "tag:a", "tag:true", "team:red", "x{y}"],
        "arrays expand, non-scalars give nothing, braces double"
    );
}

#[test]
fn a_token_grants_its_templates_and_grant_rows_add_theirs() {
    let alice = user(json!({"sub": "alice", "projects": ["p1"]}), &[], &[]);
    assert!(alice.reads("user:alice") && alice.writes("project:p1"));
    assert!(!alice.reads("user:bob") && !alice.reads("project:p2"));

    let member = record("member", "m1", json!({"userId": "alice", "projectId": "p2"}));
    let rows = rules().row_grants(&member);
    assert_eq!(
        rows,
        [RowGrant { user: "alice".into(), channel: "project:p2".into(), read: true, write: true }]
    );
    let alice = user(json!({"sub": "alice"}), &[], &rows);
    assert!(alice.reads("project:p2") && alice.writes("project:p2"));
    let bob = user(json!({"sub": "bob"}), &[], &rows);
    assert!(!bob.reads("project:p2"), "a grant row grants only the user it names");
}

#[test]
fn a_deleted_grant_row_grants_nothing_and_roles_are_tenant_wide() {
    let mut member = record("member", "m1", json!({"userId": "alice", "projectId": "p2"}));
    member.deleted = Some(crate::apply::Write {
        stamp: member.last_write.clone(),
        dot: (ClientId::new("s").unwrap(), 1),
    });
    assert!(rules().row_grants(&member).is_empty());
    assert_eq!(
        rules().record_channels(&member).into_iter().collect::<Vec<_>>(),
        ["project:p2"],
        "a tombstone keeps its channels: its readers see it deleted"
    );
    for role in ["admin", "service"] {
        let g = user(json!({"sub": "root"}), &[role], &[]);
        assert!(g.is_tenant_wide() && g.reads("anything") && g.may_write(&Channels::new()));
    }
    assert!(!user(json!({"sub": "x"}), &["editor"], &[]).is_tenant_wide());
}

#[test]
fn read_needs_one_channel_and_write_needs_all() {
    let g = Grants::of(["a".to_string()], ["a".to_string()]);
    let ab: Channels = ["a", "b"].map(String::from).into();
    assert!(g.may_read(&ab));
    assert!(!g.may_write(&ab));
    assert!(!g.may_read(&Channels::new()), "an entity in no channel is nobody's");
}

#[test]
fn partial_sync_narrows_to_what_is_granted() {
    let g = Grants::of(["a", "b"].map(String::from), []);
    assert_eq!(g.scope(None), Scope::Channels(["a", "b"].map(String::from).into()));
    let wanted = ["b", "c"].map(String::from);
    assert_eq!(g.scope(Some(&wanted)), Scope::Channels(["b".to_string()].into()));
    assert_eq!(Grants::tenant_wide().scope(None), Scope::Tenant);
    assert_eq!(
        Grants::tenant_wide().scope(Some(&wanted)),
        Scope::Channels(["b", "c"].map(String::from).into())
    );
}

#[test]
fn a_bad_file_is_refused_naming_its_line() {
    check_refused("[grants]\nread = [\"user:{sub\"]\n", 2, "never closed");
    check_refused("[entities.todo]\nchannels = [\"a\"]\ncolour = 1\n", 3, "unknown field");
    check_refused("\n[entities.todo]\nchannels = []\n", 3, "no channels");
    check_refused("[documents]\nchannels = [\"doc:{owner}\"]\n", 2, "only {id}");
    check_refused("[entities.\"1x\"]\nchannels = [\"a\"]\n", 1, "entity type");
    check_refused("[entities.t]\nchannels = [\"a:{b..c}\"]\n", 2, "dotted path");
    check_refused("[entities.t]\nchannels = [\"a\"]\ngrants = { user = \"{u}\" }\n", 3, "neither");
    check_refused("[grants]\nread = \"user:{sub}\"\n", 2, "sequence");
    check_refused("x = [\n", 1, "");
    assert!(SyncRules::parse("").is_ok(), "an empty file grants nothing and is valid");
}

#[test]
fn an_event_is_tenant_wide_unless_its_metadata_names_channels() {
    let g = Grants::of(["a".to_string()], []);
    assert!(g.may_read_event(&json!({"source": "x"})));
    assert!(g.may_read_event(&json!({"channels": ["b", "a"]})));
    assert!(!g.may_read_event(&json!({"channels": ["b"]})));
    assert!(!g.may_read_event(&json!({"channels": []})), "in no channel: nobody's");
    assert!(Grants::tenant_wide().may_read_event(&json!({"channels": []})));
    let ann = user(json!({"sub": "ann"}), &[], &[]);
    assert!(ann.may_read_event(&json!({"readers": ["ann"]})));
    assert!(!ann.may_read_event(&json!({"readers": ["ben"]})), "another user's transaction");
    assert!(!g.may_read_event(&json!({"readers": ["ann"]})), "no user: no reader");
}

#[test]
fn direct_messages_belong_to_their_templates_channels() {
    let r =
        SyncRules::parse("[direct]\nchannels = [\"dm:{recipient}\", \"from:{sender}\"]\n").unwrap();
    let c: Vec<String> = r.direct_channels("alice", "bob").into_iter().collect();
    assert_eq!(c, ["dm:bob", "from:alice"]);
    assert!(rules().direct_channels("alice", "bob").is_empty(), "no [direct]: none");
    check_refused("[direct]\nchannels = [\"dm:{owner}\"]\n", 2, "only {sender} and {recipient}");
}

#[test]
fn the_fingerprint_follows_the_file() {
    assert_eq!(rules().fingerprint(), rules().fingerprint());
    let other = SyncRules::parse("[entities.todo]\nchannels = [\"user:{owner}\"]\n").unwrap();
    assert_ne!(rules().fingerprint(), other.fingerprint());
}

// ---- the write gate inside the apply engine

fn op(seq: u64, id: &str, ty: &str, kind: OperationKind) -> Submitted {
    let client = ClientId::new("c1").unwrap();
    let mut clock = VectorClock::new();
    for _ in 0..seq {
        clock.increment(&client);
    }
    Submitted::Valid(Operation {
        id: OperationId::new(format!("op-{seq}")).unwrap(),
        client_id: client,
        client_seq: Some(seq),
        key: EntityKey::parse("acme", ty, id).unwrap(),
        kind,
        clock,
        timestamp: HlcTimestamp::new(1_000 + seq, 0),
        class: crate::interaction::InteractionClass::C,
    })
}

fn create(state: Value) -> OperationKind {
    OperationKind::Create(obj(state))
}

fn run(grants: &Grants, state: &mut ApplyState, batch: Vec<Submitted>) -> Vec<Outcome> {
    let engine = ApplyEngine::new(StrategyRegistry::default());
    let r = rules();
    let tenant = TenantId::new("acme").unwrap();
    let out =
        engine.apply_batch_gated(&tenant, batch, state, &WriteCheck::new(&r, grants)).unwrap();
    out.results.into_iter().map(|r| r.outcome).collect()
}

fn authz(o: &Outcome) -> bool {
    matches!(o, Outcome::Refused { code: crate::error::ErrorCode::AuthzFailed, .. })
}

#[test]
fn a_refused_write_consumes_its_seq_and_changes_nothing() {
    let bob = user(json!({"sub": "bob"}), &[], &[]);
    let mut state = ApplyState::default();
    let out = run(
        &bob,
        &mut state,
        vec![
            op(1, "t1", "todo", create(json!({"owner": "alice", "title": "x"}))),
            op(2, "t2", "todo", create(json!({"owner": "bob", "title": "mine"}))),
            op(3, "s1", "secret", create(json!({"owner": "bob"}))),
            op(4, "t3", "todo", create(json!({"title": "nobody's"}))),
        ],
    );
    assert!(authz(&out[0]), "another user's channel: {:?}", out[0]);
    assert!(matches!(out[1], Outcome::Applied { version: 1 }), "{:?}", out[1]);
    assert!(authz(&out[2]), "a type without a rule: {:?}", out[2]);
    assert!(authz(&out[3]), "a result in no channel: {:?}", out[3]);
    assert_eq!(state.version, 1);
    assert_eq!(state.entities.len(), 1);
    assert_eq!(state.ledgers[&ClientId::new("c1").unwrap()], 4, "every seq is consumed");
}

#[test]
fn moving_an_entity_needs_write_on_both_sides() {
    let alice = user(json!({"sub": "alice", "projects": ["p1"]}), &[], &[]);
    let mut state = ApplyState::default();
    run(&alice, &mut state, vec![op(1, "k1", "task", create(json!({"projectId": "p1"})))]);
    let before = state.clone();
    let patch = |p: &str| OperationKind::Update(obj(json!({"projectId": p})));
    let out = run(&alice, &mut state, vec![op(2, "k1", "task", patch("p9"))]);
    assert!(authz(&out[0]), "into a project alice may not write: {:?}", out[0]);
    assert_eq!(state.entities, before.entities, "the refused move changed nothing");
    assert_eq!(state.version, before.version);

    let carol = user(json!({"sub": "carol", "projects": ["p9"]}), &[], &[]);
    let out = run(&carol, &mut state, vec![op(3, "k1", "task", patch("p9"))]);
    assert!(authz(&out[0]), "out of a project carol may not write: {:?}", out[0]);
    let out = run(&carol, &mut state, vec![op(4, "k1", "task", OperationKind::Delete)]);
    assert!(authz(&out[0]), "nor delete it: {:?}", out[0]);
}

proptest! {
    /// Whatever the grants and operations, an applied change leaves its entity in channels the
    /// writer may write, and an entity the writer may not write is never changed.
    #[test]
    fn the_gate_never_lets_a_write_through_without_write(
        writable in prop::collection::btree_set(0u8..4, 0..4),
        ops in prop::collection::vec((0u8..3, 0u8..5, any::<bool>()), 1..12),
    ) {
        let g = Grants::of([], writable.iter().map(|p| format!("project:p{p}")));
        let mut state = ApplyState::default();
        // Seed entities in every project as an admin would.
        let admin = Grants::tenant_wide();
        let seed = (0..3u8).map(|i| op(u64::from(i) + 1, &format!("k{i}"), "task", create(json!({"projectId": format!("p{i}")})))).collect();
        run(&admin, &mut state, seed);
        for (n, (entity, project, delete)) in ops.into_iter().enumerate() {
            let key = EntityKey::parse("acme", "task", &format!("k{entity}")).unwrap();
            let before = state.entities.get(&key).cloned();
            let kind = if delete { OperationKind::Delete } else { OperationKind::Update(obj(json!({"projectId": format!("p{project}")}))) };
            let out = run(&g, &mut state, vec![op(n as u64 + 4, &format!("k{entity}"), "task", kind)]);
            let after = state.entities.get(&key).cloned();
            let r = rules();
            if after != before {
                prop_assert!(g.may_write(&r.record_channels(after.as_ref().unwrap())));
                prop_assert!(g.may_write(&r.record_channels(before.as_ref().unwrap())));
            } else if let Some(b) = &before
                && !g.may_write(&r.record_channels(b))
            {
                prop_assert!(authz(&out[0]), "{:?}", out[0]);
            }
        }
    }

    /// Parsing never panics, and what parses renders back to its source.
    #[test]
    fn templates_parse_or_explain(s in "[a-z{}:.\\[\\]]{0,16}") {
        if let Ok(t) = Template::parse(&s) {
            prop_assert_eq!(t.as_str(), s.as_str());
            prop_assert!(!t.parts.is_empty());
        }
    }

    /// A rule file of any bytes is refused with a line or parsed; never a panic.
    #[test]
    fn any_file_is_parsed_or_refused(s in "\\PC{0,200}") {
        if let Err(e) = SyncRules::parse(&s) {
            prop_assert!(e.to_string().contains("line "), "{}", e);
        }
    }

    /// Channels computed from a state are deterministic and bounded.
    #[test]
    fn channels_are_bounded(tags in prop::collection::vec("[a-z]{1,4}", 0..40), ids in prop::collection::vec(0u32..100, 0..40)) {
        let r = SyncRules::parse("[entities.t]\nchannels = [\"{tags[]}:{ids[]}\"]\n").unwrap();
        let c = channels(&r, "t", "x", json!({"tags": tags, "ids": ids}));
        prop_assert!(c.len() <= MAX_ENTITY_CHANNELS);
        let distinct = tags.iter().collect::<BTreeSet<_>>().len() * ids.iter().collect::<BTreeSet<_>>().len();
        if distinct <= MAX_ENTITY_CHANNELS {
            prop_assert_eq!(c.len(), distinct);
        } else {
            prop_assert!(c.is_empty(), "past the limit an entity belongs to no channel");
        }
    }
}
