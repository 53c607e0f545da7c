//! Conflict resolution strategies, chosen per entity type, and the registries of named custom
//! merge functions and CRDT mergers.

use crate::ids::EntityType;
use crate::operation::{Object, OperationKind};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What field-level merge does when both sides wrote the same field concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOverlap {
    /// The write with the later HLC stamp wins (ties broken by client id).
    LastWriteWins,
    /// The server keeps its value for overlapping fields and records a conflict for a person.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictStrategy {
    /// Whole-object last-write-wins by HLC stamp.
    LastWriteWins,
    /// Fields touched by only one side merge; overlapping fields per [`OnOverlap`].
    FieldMerge(OnOverlap),
    /// A merge function registered under this name.
    Custom(String),
    /// The server keeps its version and records a conflict with both versions.
    Manual,
    /// Opaque CRDT change bytes merged by the merger registered under this name. Never conflicts.
    Crdt(String),
}

impl ConflictStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            ConflictStrategy::LastWriteWins => "last-write-wins",
            ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins) => "field-merge",
            ConflictStrategy::FieldMerge(OnOverlap::Manual) => "field-merge-manual",
            ConflictStrategy::Custom(_) => "custom",
            ConflictStrategy::Manual => "manual",
            ConflictStrategy::Crdt(_) => "crdt",
        }
    }
}

/// What a custom merge function sees when an operation is concurrent with the server's state.
#[derive(Debug)]
pub struct MergeInput<'a> {
    /// The server's current state; `None` when the entity is deleted (or never existed).
    pub server: Option<&'a Object>,
    /// The incoming operation.
    pub incoming: &'a OperationKind,
    /// What the client meant: the server state with the operation applied (`None` = deleted).
    pub client: Option<&'a Object>,
}

/// A deterministic merge of server state and an incoming concurrent operation. It must be a pure
/// function of its input: every replica that runs it must get the same answer.
pub trait CustomMerge: Send + Sync {
    /// The merged state, or `None` to delete the entity; `Err` refuses the operation.
    fn merge(&self, input: &MergeInput<'_>) -> Result<Option<Object>, String>;
}

impl<F> CustomMerge for F
where
    F: Fn(&MergeInput<'_>) -> Result<Option<Object>, String> + Send + Sync,
{
    fn merge(&self, input: &MergeInput<'_>) -> Result<Option<Object>, String> {
        self(input)
    }
}

/// Merges opaque CRDT change bytes into a document. Must be commutative, associative and
/// idempotent over changes (the Automerge merger satisfies this; see its own issue).
pub trait CrdtMerger: Send + Sync {
    /// The document after applying `change` to `current` (`None` = empty document).
    fn apply(&self, current: Option<&[u8]>, change: &[u8]) -> Result<Vec<u8>, String>;
}

/// Strategy per entity type plus the named functions strategies refer to.
#[derive(Clone)]
pub struct StrategyRegistry {
    default: ConflictStrategy,
    by_type: BTreeMap<EntityType, ConflictStrategy>,
    custom: BTreeMap<String, Arc<dyn CustomMerge>>,
    crdt: BTreeMap<String, Arc<dyn CrdtMerger>>,
}

impl fmt::Debug for StrategyRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyRegistry")
            .field("default", &self.default)
            .field("by_type", &self.by_type)
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .field("crdt", &self.crdt.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for StrategyRegistry {
    /// Field-level merge with per-field LWW for every type (DESIGN.md's default).
    fn default() -> Self {
        Self {
            default: ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins),
            by_type: BTreeMap::new(),
            custom: BTreeMap::new(),
            crdt: BTreeMap::new(),
        }
    }
}

impl StrategyRegistry {
    pub fn new(default: ConflictStrategy) -> Self {
        Self { default, ..Self::default() }
    }

    pub fn set(&mut self, entity_type: EntityType, strategy: ConflictStrategy) -> &mut Self {
        self.by_type.insert(entity_type, strategy);
        self
    }

    pub fn register_custom(&mut self, name: &str, f: impl CustomMerge + 'static) -> &mut Self {
        self.custom.insert(name.to_string(), Arc::new(f));
        self
    }

    pub fn register_crdt(&mut self, name: &str, m: impl CrdtMerger + 'static) -> &mut Self {
        self.crdt.insert(name.to_string(), Arc::new(m));
        self
    }

    pub fn strategy_for(&self, entity_type: &EntityType) -> &ConflictStrategy {
        self.by_type.get(entity_type).unwrap_or(&self.default)
    }

    pub fn custom(&self, name: &str) -> Option<&dyn CustomMerge> {
        self.custom.get(name).map(|f| f.as_ref())
    }

    pub fn crdt(&self, name: &str) -> Option<&dyn CrdtMerger> {
        self.crdt.get(name).map(|m| m.as_ref())
    }

    /// The merger for an entity type whose strategy is CRDT.
    pub fn crdt_for(&self, entity_type: &EntityType) -> Option<&dyn CrdtMerger> {
        match self.strategy_for(entity_type) {
            ConflictStrategy::Crdt(name) => self.crdt(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_without_a_strategy_use_the_default_field_merge() {
        let mut r = StrategyRegistry::default();
        let todo = EntityType::new("todo").unwrap();
        let doc = EntityType::new("doc").unwrap();
        r.set(doc.clone(), ConflictStrategy::Manual);
        assert_eq!(r.strategy_for(&todo), &ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins));
        assert_eq!(r.strategy_for(&doc), &ConflictStrategy::Manual);
    }

    #[test]
    fn named_functions_are_found_by_name() {
        let mut r = StrategyRegistry::default();
        r.register_custom("keep-server", |i: &MergeInput<'_>| Ok(i.server.cloned()));
        assert!(r.custom("keep-server").is_some());
        assert!(r.custom("nope").is_none());
        assert!(format!("{r:?}").contains("keep-server"));
    }
}
