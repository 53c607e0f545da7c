//! Validated identifiers. Every id that crosses a boundary is one of these newtypes, so an
//! unvalidated string can never reach the apply engine, a storage key or a room name.
//!
//! Rules: non-empty, at most the type's length, ASCII letters, digits and `- _ . : @`.
//! Entity types are stricter (a letter first, no `:` or `@`) because they name strategies and
//! appear in URL paths.

use crate::error::Error;
use std::fmt;

fn check(kind: &'static str, s: &str, max: usize, extra: &[u8]) -> Result<(), Error> {
    let problem = if s.is_empty() {
        Some("must not be empty".to_string())
    } else if s.len() > max {
        Some(format!("{} bytes is longer than the limit of {max}", s.len()))
    } else {
        s.bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || extra.contains(b)))
            .map(|b| format!("character {:?} is not allowed", b as char))
    };
    match problem {
        Some(problem) => Err(Error::InvalidId { kind, problem }),
        None => Ok(()),
    }
}

const ID_CHARS: &[u8] = b"-_.:@";

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:expr, $first_letter:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                check($kind, &s, $max, $extra)?;
                if $first_letter && !s.as_bytes()[0].is_ascii_alphabetic() {
                    return Err(Error::InvalidId { kind: $kind, problem: "must start with a letter".into() });
                }
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A tenant. Always taken from a verified token, never from a request body alone.
    TenantId, "tenant id", 64, ID_CHARS, false
);
id_type!(
    /// One installation of the SDK (a browser profile, a device). Owns a `clientSeq` sequence.
    ClientId, "client id", 128, ID_CHARS, false
);
id_type!(
    /// A globally unique operation id (UUIDs are typical); the deduplication key.
    OperationId, "operation id", 128, ID_CHARS, false
);
id_type!(
    /// A kind of entity (`todo`, `document`); names its conflict strategy.
    EntityType, "entity type", 64, b"-_.", true
);
id_type!(
    /// An entity within its type.
    EntityId, "entity id", 128, ID_CHARS, false
);
id_type!(
    /// A user, from the token's `sub` claim.
    UserId, "user id", 128, ID_CHARS, false
);
id_type!(
    /// A room for group messages and presence.
    RoomId, "room id", 128, ID_CHARS, false
);

id_type!(
    /// A collaborative document (Automerge), within its tenant.
    DocumentId, "document id", 128, b"-_.:", false
);
id_type!(
    /// A durable subscription or consumer group of the event bus, within its tenant.
    SubscriptionName, "subscription name", 128, b"-_.:", false
);

/// The full address of an entity: `(tenant, entity type, entity id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityKey {
    pub tenant: TenantId,
    pub entity_type: EntityType,
    pub entity_id: EntityId,
}

impl EntityKey {
    pub fn new(tenant: TenantId, entity_type: EntityType, entity_id: EntityId) -> Self {
        Self { tenant, entity_type, entity_id }
    }

    /// Parse from raw strings, validating each part.
    pub fn parse(tenant: &str, entity_type: &str, entity_id: &str) -> Result<Self, Error> {
        Ok(Self::new(
            TenantId::new(tenant)?,
            EntityType::new(entity_type)?,
            EntityId::new(entity_id)?,
        ))
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.entity_type, self.entity_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_refused(r: Result<impl fmt::Debug, Error>, needle: &str) {
        match r {
            Err(Error::InvalidId { problem, .. }) => assert!(problem.contains(needle), "{problem}"),
            other => panic!("expected InvalidId containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_typical_ids() {
        ClientId::new("client-789").unwrap();
        OperationId::new("3f2b1c9e-8a4d-4c1e-9b7a-0d5e6f7a8b9c").unwrap();
        TenantId::new("tenant-456").unwrap();
        EntityType::new("document").unwrap();
        EntityId::new("doc:456@v1").unwrap();
        assert_eq!(EntityKey::parse("t", "todo", "1").unwrap().to_string(), "t/todo/1");
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        check_refused(ClientId::new(""), "empty");
        check_refused(TenantId::new("x".repeat(65)), "longer");
        check_refused(EntityId::new("a b"), "' '");
        check_refused(EntityId::new("a/b"), "'/'");
        check_refused(EntityId::new("é"), "not allowed");
        check_refused(EntityType::new("1todo"), "letter");
        check_refused(EntityType::new("to:do"), "':'");
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        assert!(serde_json::from_str::<ClientId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<ClientId>("\"not ok\"").is_err());
        assert!(serde_json::from_str::<ClientId>("\"\"").is_err());
    }

    proptest! {
        #[test]
        fn validation_never_panics_and_accepted_ids_round_trip(s in ".{0,200}") {
            if let Ok(id) = EntityId::new(s.clone()) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(s.len() <= EntityId::MAX_LEN);
            }
        }
    }
}
