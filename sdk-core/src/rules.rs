//! Sync rules: who may read and write what inside a tenant.
//!
//! A rule file (TOML; docs/api/sync-rules.md) says which **channels** the entities of each type
//! belong to — templates over the entity's own state — and which channels a user holds: templates
//! over their token's claims, and **grant rows**, entities of a type marked as granting whose
//! state names a user and the channels granted. A user reads an entity when they hold read on
//! at least one of its channels, and may change it only when they hold write on every channel
//! it belongs to before the change and after it.
//!
//! Everything here is pure. The server enforces with it (reads filtered by channel, writes
//! gated by [`WriteCheck`] inside the apply engine); a client can predict with it.
//!
//! ```
//! use sdk_core::rules::{Claims, SyncRules};
//! use sdk_core::ids::{EntityId, EntityType};
//! use serde_json::json;
//!
//! let rules = SyncRules::parse(r#"
//!     [grants]
//!     read  = ["user:{sub}", "project:{projects[]}"]
//!     write = ["user:{sub}"]
//!     [entities.todo]
//!     channels = ["user:{owner}"]
//! "#).unwrap();
//! let todo = EntityType::new("todo").unwrap();
//! let id = EntityId::new("t1").unwrap();
//! let state = json!({"owner": "alice", "title": "milk"});
//! let channels = rules.entity_channels(&todo, &id, state.as_object());
//! assert_eq!(channels.iter().collect::<Vec<_>>(), ["user:alice"]);
//!
//! let claims = json!({"sub": "alice", "projects": ["p1", "p2"]});
//! let alice = rules.grants(&Claims::new(claims.as_object().unwrap(), &[]), &[]);
//! assert!(alice.may_read(&channels));
//! assert!(alice.reads("project:p2"));
//! assert!(!alice.writes("project:p2"));
//! ```

use crate::apply::{EntityBody, EntityRecord, WriteGate};
use crate::error::Error;
use crate::ids::{EntityId, EntityKey, EntityType};
use crate::operation::Object;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most channels one entity (or document) may belong to; a write that would leave an
/// entity in more is refused.
pub const MAX_ENTITY_CHANNELS: usize = 64;
/// The most channels one user holds from their token and grant rows together; past it the rest
/// are not granted (denied, never widened).
pub const MAX_USER_CHANNELS: usize = 10_000;
/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;
/// The largest rule file, in bytes.
pub const MAX_RULES_BYTES: usize = 1 << 20;

/// Roles whose holders keep tenant-wide access under any rules (`super_admin`: the platform's
/// audited cross-tenant operator).
pub const TENANT_WIDE_ROLES: [&str; 3] = ["admin", "service", "super_admin"];

/// A set of channel names, sorted.
pub type Channels = BTreeSet<String>;

// ---------------------------------------------------------------------------------------------
// Templates

/// A channel template: text with `{placeholders}`. A placeholder is a dotted path into the
/// value it is expanded over (`{owner}`, `{meta.team}`); `[]` at its end expands an array into
/// one channel per element (`{projects[]}`); in an entity's or a document's template `{id}` is
/// its id. `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Placeholder {
    path: Vec<String>,
    /// `[]`: one value per array element.
    each: bool,
}

/// What a placeholder may name in a given place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// `[grants]`: the token's claims.
    Claims,
    /// An entity type's channels and grant row: the entity's state, and `{id}`.
    Entity,
    /// `[documents]`: only `{id}`.
    Document,
    /// `[direct]`: only `{sender}` and `{recipient}`.
    Direct,
}

impl Template {
    /// Parse a template; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(format!("unmatched '}}' at byte {at} (write '}}}}' for a brace)"));
                }
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("'{{' at byte {at} is never closed"))?;
                    let placeholder = Placeholder::parse(&rest[..end])?;
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Value(placeholder));
                    while chars.peek().is_some_and(|p| p.0 <= at + 1 + end) {
                        chars.next();
                    }
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if parts.is_empty() {
            return Err("a channel template may not be empty".into());
        }
        Ok(Template { source: source.to_string(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn check(&self, context: Context) -> Result<(), String> {
        for p in self.placeholders() {
            match context {
                Context::Document if p.path != ["id"] => {
                    return Err(format!(
                        "a document's template may use only {{id}}, not {{{}}}",
                        p.name()
                    ));
                }
                Context::Direct if p.path != ["sender"] && p.path != ["recipient"] || p.each => {
                    return Err(format!(
                        "a direct message's template may use only {{sender}} and {{recipient}}, not {{{}}}",
                        p.name()
                    ));
                }
                Context::Entity | Context::Document if p.each && p.path == ["id"] => {
                    return Err("{id[]}: an id is not an array".into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// Every channel this template gives, into `out`, with `lookup` giving a placeholder's
    /// values (none: the template gives no channel). Fails when it would give more than `room`
    /// channels or one longer than [`MAX_CHANNEL_LEN`].
    fn expand(
        &self,
        lookup: &dyn Fn(&Placeholder) -> Vec<String>,
        out: &mut Channels,
        room: usize,
    ) -> Result<(), Overflow> {
        let mut names = vec![String::new()];
        for part in &self.parts {
            match part {
                Part::Text(t) => names.iter_mut().for_each(|n| n.push_str(t)),
                Part::Value(p) => {
                    let values: Channels = lookup(p).into_iter().collect();
                    if values.is_empty() {
                        return Ok(());
                    }
                    if names.len().saturating_mul(values.len()) > room {
                        return Err(Overflow);
                    }
                    names = names
                        .iter()
                        .flat_map(|n| values.iter().map(move |v| format!("{n}{v}")))
                        .collect();
                }
            }
        }
        for n in names {
            if n.len() > MAX_CHANNEL_LEN {
                return Err(Overflow);
            }
            out.insert(n);
            if out.len() > room {
                return Err(Overflow);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Too many channels, or one too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overflow;

impl Placeholder {
    fn parse(inner: &str) -> Result<Placeholder, String> {
        let (name, each) = match inner.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (inner, false),
        };
        if name.is_empty() {
            return Err("an empty placeholder {}".into());
        }
        let path: Vec<String> = name.split('.').map(str::to_string).collect();
        for seg in &path {
            let ok = !seg.is_empty()
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'));
            if !ok {
                return Err(format!(
                    "{{{inner}}}: a placeholder is a dotted path of letters, digits, '_', '-' and '$', optionally ending in []"
                ));
            }
        }
        Ok(Placeholder { path, each })
    }

    fn name(&self) -> String {
        let mut s = self.path.join(".");
        if self.each {
            s.push_str("[]");
        }
        s
    }

    /// The values at this placeholder's path in `root`: a scalar gives one, `[]` over an array
    /// one per scalar element; anything else (missing, null, an empty string, an object) none.
    fn values_in(&self, root: &Object) -> Vec<String> {
        let mut at = root.get(&self.path[0]);
        for seg in &self.path[1..] {
            at = at.and_then(Value::as_object).and_then(|o| o.get(seg));
        }
        match (at, self.each) {
            (Some(Value::Array(items)), true) => items.iter().filter_map(scalar).collect(),
            (Some(v), false) => scalar(v).into_iter().collect(),
            _ => Vec::new(),
        }
    }
}

/// A JSON scalar as it appears in a channel name.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn expand_all(
    templates: &[Template],
    lookup: &dyn Fn(&Placeholder) -> Vec<String>,
    out: &mut Channels,
    room: usize,
) -> Result<(), Overflow> {
    templates.iter().try_for_each(|t| t.expand(lookup, out, room))
}

// ---------------------------------------------------------------------------------------------
// The rule file

/// The parsed, validated rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRules {
    read: Vec<Template>,
    write: Vec<Template>,
    entities: BTreeMap<EntityType, EntityRule>,
    documents: Vec<Template>,
    direct: Vec<Template>,
    fingerprint: String,
}

/// One entity type's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRule {
    channels: Vec<Template>,
    grants: Option<GrantRule>,
}

/// What an entity of a granting type grants: to the user(s) `user` names, read and write on
/// the channels its templates give (all over the granting entity's own state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantRule {
    user: Template,
    read: Vec<Template>,
    write: Vec<Template>,
}

/// One grant a grant row gives: `user` holds read and/or write on `channel`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowGrant {
    pub user: String,
    pub channel: String,
    pub read: bool,
    pub write: bool,
}

mod raw {
    //! The file as TOML says it, with positions for the messages.
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use toml::Spanned;

    pub type Templates = Vec<Spanned<String>>;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub grants: Option<Spanned<Grants>>,
        #[serde(default)]
        pub entities: BTreeMap<String, Spanned<Entity>>,
        #[serde(default)]
        pub documents: Option<Spanned<Documents>>,
        #[serde(default)]
        pub direct: Option<Spanned<Documents>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Grants {
        #[serde(default)]
        pub read: Templates,
        #[serde(default)]
        pub write: Templates,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Entity {
        pub channels: Spanned<Templates>,
        #[serde(default)]
        pub grants: Option<Spanned<GrantRow>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GrantRow {
        pub user: Spanned<String>,
        #[serde(default)]
        pub read: Templates,
        #[serde(default)]
        pub write: Templates,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Documents {
        pub channels: Spanned<Templates>,
    }
}

/// A position in the rule file, for messages: "line 7".
struct Source<'a>(&'a str);

impl Source<'_> {
    fn line(&self, at: usize) -> usize {
        self.0[..at.min(self.0.len())].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn error(&self, at: usize, message: impl fmt::Display) -> Error {
        Error::Rules(format!("line {}: {message}", self.line(at)))
    }

    fn templates(&self, list: &raw::Templates, context: Context) -> Result<Vec<Template>, Error> {
        list.iter()
            .map(|s| {
                Template::parse(s.get_ref())
                    .and_then(|t| t.check(context).map(|()| t))
                    .map_err(|m| self.error(s.span().start, format!("{:?}: {m}", s.get_ref())))
            })
            .collect()
    }
}

impl SyncRules {
    /// Parse and validate a rule file. Every error names its line.
    pub fn parse(text: &str) -> Result<SyncRules, Error> {
        if text.len() > MAX_RULES_BYTES {
            return Err(Error::Rules(format!(
                "the file is {} bytes (limit {MAX_RULES_BYTES})",
                text.len()
            )));
        }
        let src = Source(text);
        let file: raw::File = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            src.error(at, e.message().trim())
        })?;
        let (read, write) = match &file.grants {
            Some(g) => (
                src.templates(&g.get_ref().read, Context::Claims)?,
                src.templates(&g.get_ref().write, Context::Claims)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mut entities = BTreeMap::new();
        for (name, rule) in &file.entities {
            let at = rule.span().start;
            let entity_type = EntityType::new(name.clone()).map_err(|e| src.error(at, e))?;
            let rule = rule.get_ref();
            if rule.channels.get_ref().is_empty() {
                return Err(src.error(
                    rule.channels.span().start,
                    format!(
                        "entities.{name} has no channels, so nobody could read it; leave the type out to keep it unreadable"
                    ),
                ));
            }
            let channels = src.templates(rule.channels.get_ref(), Context::Entity)?;
            let grants = match &rule.grants {
                None => None,
                Some(g) => {
                    let row = g.get_ref();
                    let user = Template::parse(row.user.get_ref())
                        .and_then(|t| t.check(Context::Entity).map(|()| t))
                        .map_err(|m| src.error(row.user.span().start, m))?;
                    if row.read.is_empty() && row.write.is_empty() {
                        return Err(src.error(
                            g.span().start,
                            format!("entities.{name}.grants grants neither read nor write"),
                        ));
                    }
                    Some(GrantRule {
                        user,
                        read: src.templates(&row.read, Context::Entity)?,
                        write: src.templates(&row.write, Context::Entity)?,
                    })
                }
            };
            entities.insert(entity_type, EntityRule { channels, grants });
        }
        let documents = match &file.documents {
            Some(d) => src.templates(d.get_ref().channels.get_ref(), Context::Document)?,
            None => Vec::new(),
        };
        let direct = match &file.direct {
            Some(d) => src.templates(d.get_ref().channels.get_ref(), Context::Direct)?,
            None => Vec::new(),
        };
        let fingerprint = hex(&Sha256::digest(text.as_bytes()));
        Ok(SyncRules { read, write, entities, documents, direct, fingerprint })
    }

    /// A digest of the file: when it changes, what every stored entity belongs to may have.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The entity types the file names, in order.
    pub fn entity_types(&self) -> impl Iterator<Item = &EntityType> {
        self.entities.keys()
    }

    /// Whether entities of `entity_type` are grant rows.
    pub fn is_granting(&self, entity_type: &EntityType) -> bool {
        self.entities.get(entity_type).is_some_and(|r| r.grants.is_some())
    }

    /// The channels an entity with this `state` belongs to (`None` state, or a type without a
    /// rule: none). Past [`MAX_ENTITY_CHANNELS`] it belongs to none — nobody but a tenant-wide
    /// reader sees it, and no write may leave an entity so.
    pub fn entity_channels(
        &self,
        entity_type: &EntityType,
        id: &EntityId,
        state: Option<&Object>,
    ) -> Channels {
        self.try_entity_channels(entity_type, id, state).unwrap_or_default()
    }

    fn try_entity_channels(
        &self,
        entity_type: &EntityType,
        id: &EntityId,
        state: Option<&Object>,
    ) -> Result<Channels, Overflow> {
        let mut out = Channels::new();
        if let Some(rule) = self.entities.get(entity_type) {
            let empty = Object::new();
            let lookup = entity_lookup(id, state.unwrap_or(&empty));
            expand_all(&rule.channels, &lookup, &mut out, MAX_ENTITY_CHANNELS)?;
        }
        Ok(out)
    }

    /// The channels a stored record belongs to. A tombstone keeps the channels of the state it
    /// holds, so the readers who saw the entity see it deleted; a CRDT body has no fields, so
    /// only `{id}` templates give it channels.
    pub fn record_channels(&self, record: &EntityRecord) -> Channels {
        let key = &record.key;
        self.entity_channels(&key.entity_type, &key.entity_id, record_state(record))
    }

    /// What a grant row grants, sorted (none for a tombstone or a type that grants nothing).
    pub fn row_grants(&self, record: &EntityRecord) -> Vec<RowGrant> {
        let key = &record.key;
        let Some(rule) = self.entities.get(&key.entity_type).and_then(|r| r.grants.as_ref()) else {
            return Vec::new();
        };
        let Some(state) = record.object() else { return Vec::new() };
        let lookup = entity_lookup(&key.entity_id, state);
        let (mut users, mut read, mut write) = (Channels::new(), Channels::new(), Channels::new());
        let ok = rule.user.expand(&lookup, &mut users, MAX_ENTITY_CHANNELS).is_ok()
            && expand_all(&rule.read, &lookup, &mut read, MAX_ENTITY_CHANNELS).is_ok()
            && expand_all(&rule.write, &lookup, &mut write, MAX_ENTITY_CHANNELS).is_ok();
        if !ok {
            return Vec::new();
        }
        let mut out = Vec::new();
        for user in &users {
            for channel in read.union(&write) {
                out.push(RowGrant {
                    user: user.clone(),
                    channel: channel.clone(),
                    read: read.contains(channel),
                    write: write.contains(channel),
                });
            }
        }
        out
    }

    /// The channels a collaborative document belongs to (no `[documents]` section: none).
    pub fn document_channels(&self, id: &str) -> Channels {
        let mut out = Channels::new();
        let lookup = |p: &Placeholder| {
            if p.path == ["id"] && !id.is_empty() { vec![id.to_string()] } else { Vec::new() }
        };
        if expand_all(&self.documents, &lookup, &mut out, MAX_ENTITY_CHANNELS).is_err() {
            out.clear();
        }
        out
    }

    /// The channels a direct message from `sender` to `recipient` belongs to (`[direct]`; none
    /// without it: under rules, direct messages are then refused). The sender needs write on
    /// every one of them.
    pub fn direct_channels(&self, sender: &str, recipient: &str) -> Channels {
        let mut out = Channels::new();
        let lookup = |p: &Placeholder| match p.path.first().map(String::as_str) {
            Some("sender") if !sender.is_empty() => vec![sender.to_string()],
            Some("recipient") if !recipient.is_empty() => vec![recipient.to_string()],
            _ => Vec::new(),
        };
        if expand_all(&self.direct, &lookup, &mut out, MAX_ENTITY_CHANNELS).is_err() {
            out.clear();
        }
        out
    }

    /// What a user holds: tenant-wide for the roles in [`TENANT_WIDE_ROLES`], otherwise the
    /// channels `[grants]` gives over their claims and those their grant rows give them
    /// (`rows`: the grants naming this user, as [`SyncRules::row_grants`] computed them).
    pub fn grants(&self, claims: &Claims<'_>, rows: &[RowGrant]) -> Grants {
        if claims.roles.iter().any(|r| TENANT_WIDE_ROLES.contains(&r.as_str())) {
            return Grants::tenant_wide();
        }
        let lookup = |p: &Placeholder| p.values_in(claims.claims);
        let mut g = Grants {
            user: claims.claims.get("sub").and_then(Value::as_str).map(str::to_string),
            ..Grants::default()
        };
        // Past the limit the rest is not granted: a partial expansion only denies more.
        let _ = expand_all(&self.read, &lookup, &mut g.read, MAX_USER_CHANNELS);
        let _ = expand_all(&self.write, &lookup, &mut g.write, MAX_USER_CHANNELS);
        let sub = claims.claims.get("sub").and_then(Value::as_str);
        for r in rows.iter().filter(|r| Some(r.user.as_str()) == sub) {
            if r.read && g.read.len() < MAX_USER_CHANNELS {
                g.read.insert(r.channel.clone());
            }
            if r.write && g.write.len() < MAX_USER_CHANNELS {
                g.write.insert(r.channel.clone());
            }
        }
        g
    }
}

fn entity_lookup<'a>(id: &'a EntityId, state: &'a Object) -> impl Fn(&Placeholder) -> Vec<String> {
    move |p: &Placeholder| {
        if p.path == ["id"] { vec![id.to_string()] } else { p.values_in(state) }
    }
}

/// The state a record's channels are computed from: its object, also when it is a tombstone.
fn record_state(record: &EntityRecord) -> Option<&Object> {
    match &record.body {
        EntityBody::Object(o) => Some(o),
        EntityBody::Crdt(_) => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Grants

/// A verified token's claims (a JSON object; `sub` names the user) and roles.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    claims: &'a Object,
    roles: &'a [String],
}

impl<'a> Claims<'a> {
    pub fn new(claims: &'a Object, roles: &'a [String]) -> Self {
        Self { claims, roles }
    }
}

/// The channels a user may read and write, or tenant-wide access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    tenant_wide: bool,
    /// The user (`sub`) these are the grants of, when known.
    user: Option<String>,
    read: Channels,
    write: Channels,
}

impl Grants {
    /// Everything in the tenant: the roles in [`TENANT_WIDE_ROLES`], and every user when the
    /// server runs without rules.
    pub fn tenant_wide() -> Self {
        Self { tenant_wide: true, ..Self::default() }
    }

    /// Explicit channels (tests, and clients predicting).
    pub fn of(
        read: impl IntoIterator<Item = String>,
        write: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            tenant_wide: false,
            user: None,
            read: read.into_iter().collect(),
            write: write.into_iter().collect(),
        }
    }

    pub fn is_tenant_wide(&self) -> bool {
        self.tenant_wide
    }

    /// The channels held for reading (empty when tenant-wide: every channel is).
    pub fn read_channels(&self) -> &Channels {
        &self.read
    }

    pub fn reads(&self, channel: &str) -> bool {
        self.tenant_wide || self.read.contains(channel)
    }

    pub fn writes(&self, channel: &str) -> bool {
        self.tenant_wide || self.write.contains(channel)
    }

    /// Read on at least one of `channels`.
    pub fn may_read(&self, channels: &Channels) -> bool {
        self.tenant_wide || channels.iter().any(|c| self.read.contains(c))
    }

    /// Write on every one of `channels`.
    pub fn may_write(&self, channels: &Channels) -> bool {
        self.tenant_wide || channels.iter().all(|c| self.write.contains(c))
    }

    /// What a client that asked for `wanted` (partial sync; `None`: everything granted) syncs.
    pub fn scope(&self, wanted: Option<&[String]>) -> Scope {
        match (wanted, self.tenant_wide) {
            (None, true) => Scope::Tenant,
            (None, false) => Scope::Channels(self.read.clone()),
            (Some(w), _) => Scope::Channels(w.iter().filter(|c| self.reads(c)).cloned().collect()),
        }
    }
}

/// What one client syncs: the whole tenant, or the entities of these channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    Channels(Channels),
}

// ---------------------------------------------------------------------------------------------
// Events

/// The key of an event's `metadata` that names its channels (an array of strings). An event
/// without it is tenant-wide; with it, only readers of at least one of them see it. The server
/// writes it on every entity event (the entity's channels) and on room messages it logs (the
/// room); publishers may set it.
pub const EVENT_CHANNELS: &str = "channels";

/// The key of an event's `metadata` that names the only users who may see it (an array of
/// user ids; the server writes it on a Class D transaction's events under rules: its creator).
pub const EVENT_READERS: &str = "readers";

/// The channels an event's `metadata` restricts it to (`None`: tenant-wide).
pub fn event_channels(metadata: &Value) -> Option<Channels> {
    strings(metadata.get(EVENT_CHANNELS)?)
}

fn strings(v: &Value) -> Option<Channels> {
    Some(v.as_array()?.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

impl Grants {
    /// Whether an event with this `metadata` may be seen: read on one of its channels, when it
    /// names any, and being one of its readers, when it names them.
    pub fn may_read_event(&self, metadata: &Value) -> bool {
        if self.tenant_wide {
            return true;
        }
        let readers = metadata.get(EVENT_READERS).and_then(strings);
        let reader_ok = readers.is_none_or(|r| self.user.as_ref().is_some_and(|u| r.contains(u)));
        reader_ok && event_channels(metadata).is_none_or(|c| self.may_read(&c))
    }

    /// The user these are the grants of (`sub`), when known.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

/// The apply engine's write gate under rules: a writer may change an entity of a type with a
/// rule only when they hold write on every channel it belongs to before the change (if it
/// exists) and after it, and the change leaves it in at least one channel (else nobody could
/// read what was written) and in at most [`MAX_ENTITY_CHANNELS`].
#[derive(Debug, Clone, Copy)]
pub struct WriteCheck<'a> {
    rules: &'a SyncRules,
    grants: &'a Grants,
}

impl<'a> WriteCheck<'a> {
    pub fn new(rules: &'a SyncRules, grants: &'a Grants) -> Self {
        Self { rules, grants }
    }
}

impl WriteGate for WriteCheck<'_> {
    fn may_change(&self, key: &EntityKey, current: Option<&EntityRecord>) -> Result<(), String> {
        if self.grants.is_tenant_wide() {
            return Ok(());
        }
        if !self.rules.entities.contains_key(&key.entity_type) {
            return Err(format!("no sync rule lets anyone write {}", key.entity_type));
        }
        match current {
            Some(rec) if !self.grants.may_write(&self.rules.record_channels(rec)) => {
                Err("no write access to this entity".into())
            }
            _ => Ok(()),
        }
    }

    fn may_leave(&self, after: &EntityRecord) -> Result<(), String> {
        if self.grants.is_tenant_wide() {
            return Ok(());
        }
        let key = &after.key;
        let channels = self
            .rules
            .try_entity_channels(&key.entity_type, &key.entity_id, record_state(after))
            .map_err(|_| {
                format!("the change would put it in over {MAX_ENTITY_CHANNELS} channels")
            })?;
        if channels.is_empty() {
            return Err("the change would leave it in no channel".into());
        }
        if !self.grants.may_write(&channels) {
            return Err("no write access to the channels the change puts it in".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
