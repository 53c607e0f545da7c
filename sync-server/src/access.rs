//! Who may read and write what (docs/api/sync-rules.md): a caller's grants under the server's
//! sync rules, from their token and the grant rows the store indexes. The one place every
//! surface asks — REST, `/v1/ws` and Socket.IO reach it through the services — so a rule holds on
//! all of them or none.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::store::Store;
use sdk_core::apply::EntityRecord;
use sdk_core::ids::TenantId;
use sdk_core::protocol::WireScope;
use sdk_core::rules::{Channels, Claims, Grants, Scope, SyncRules};
use std::sync::Arc;

/// The server's sync rules, if any, and the store that indexes them.
#[derive(Debug, Clone)]
pub struct AccessRules {
    store: Arc<Store>,
}

/// What one caller may do, as of when it was computed.
#[derive(Debug, Clone)]
pub enum Access {
    /// The server runs without rules: tenant-wide, as before rules existed.
    Unruled,
    /// Under rules.
    Ruled { rules: Arc<SyncRules>, grants: Grants },
}

impl AccessRules {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Whether the server enforces rules at all.
    pub fn enforced(&self) -> bool {
        self.store.rules().is_some()
    }

    /// `identity`'s access in `tenant` now: their token's grants and their grant rows'.
    pub async fn of(&self, tenant: &TenantId, identity: &Identity) -> Result<Access, ApiError> {
        let Some(rules) = self.store.rules().cloned() else { return Ok(Access::Unruled) };
        let claims = Claims::new(&identity.claims, &identity.roles);
        if rules.grants(&claims, &[]).is_tenant_wide() {
            return Ok(Access::Ruled { rules, grants: Grants::tenant_wide() });
        }
        self.store.index_tenant(tenant.as_str()).await?;
        let rows = self.store.user_grants(tenant.as_str(), identity.user.as_str()).await?;
        let grants = rules.grants(&claims, &rows);
        Ok(Access::Ruled { rules, grants })
    }
}

impl Access {
    /// Whether `record` may be shown.
    pub fn reads(&self, record: &EntityRecord) -> bool {
        match self {
            Access::Unruled => true,
            Access::Ruled { rules, grants } => {
                grants.is_tenant_wide() || grants.may_read(&rules.record_channels(record))
            }
        }
    }

    /// Whether `record` may be changed (before the change; the apply engine judges the after).
    pub fn writes(&self, record: &EntityRecord) -> bool {
        match self {
            Access::Unruled => true,
            Access::Ruled { rules, grants } => {
                grants.is_tenant_wide() || grants.may_write(&rules.record_channels(record))
            }
        }
    }

    /// What a client that asked for `wanted` channels syncs; `None` without rules.
    pub fn scope(&self, wanted: Option<&[String]>) -> Option<Scope> {
        match self {
            Access::Unruled => None,
            Access::Ruled { grants, .. } => Some(grants.scope(wanted)),
        }
    }

    /// The `scope` a delta computed for `scope` carries.
    pub fn wire_scope(&self, scope: &Scope) -> Option<WireScope> {
        match self {
            Access::Unruled => None,
            Access::Ruled { rules, .. } => Some(WireScope {
                rules: rules.fingerprint().to_string(),
                channels: match scope {
                    Scope::Tenant => None,
                    Scope::Channels(c) => Some(c.iter().cloned().collect()),
                },
                reset: false,
            }),
        }
    }

    /// The channels `record` belongs to, for a client that syncs channels (`None` otherwise).
    pub fn channels_of(&self, record: &EntityRecord, scope: &Scope) -> Option<Vec<String>> {
        match (self, scope) {
            (Access::Ruled { rules, .. }, Scope::Channels(_)) => {
                Some(rules.record_channels(record).into_iter().collect())
            }
            _ => None,
        }
    }

    /// Read on channel `channel` (a room, a document's channel).
    pub fn reads_channel(&self, channel: &str) -> bool {
        match self {
            Access::Unruled => true,
            Access::Ruled { grants, .. } => grants.reads(channel),
        }
    }

    pub fn writes_channel(&self, channel: &str) -> bool {
        match self {
            Access::Unruled => true,
            Access::Ruled { grants, .. } => grants.writes(channel),
        }
    }

    /// Opening or syncing collaborative document `id` needs read on one of its channels
    /// (`[documents]`); the answer says whether its changes may be sent too (write on all).
    pub fn document(&self, id: &str) -> Result<bool, ApiError> {
        let Access::Ruled { rules, grants } = self else { return Ok(true) };
        if grants.is_tenant_wide() {
            return Ok(true);
        }
        let channels = rules.document_channels(id);
        if !grants.may_read(&channels) {
            return Err(ApiError::new(
                sdk_core::ErrorCode::AuthzFailed,
                "the sync rules do not let you read this document",
            ));
        }
        Ok(!channels.is_empty() && grants.may_write(&channels))
    }

    /// Joining room `room` or seeing its presence needs read on the channel of its id.
    pub fn check_room_read(&self, room: &str) -> Result<(), ApiError> {
        match self.reads_channel(room) {
            true => Ok(()),
            false => Err(ApiError::new(
                sdk_core::ErrorCode::AuthzFailed,
                "the sync rules do not let you into this room",
            )),
        }
    }

    /// Sending to room `room` needs write on the channel of its id.
    pub fn check_room_write(&self, room: &str) -> Result<(), ApiError> {
        match self.writes_channel(room) {
            true => Ok(()),
            false => Err(ApiError::new(
                sdk_core::ErrorCode::AuthzFailed,
                "the sync rules do not let you send to this room",
            )),
        }
    }

    /// A direct message from `sender` to `recipient`: under rules it belongs to the channels
    /// `[direct]` gives (none: refused), and the sender needs write on all of them. Returns
    /// them (`None` without rules), for the event a Class B message is logged as.
    pub fn direct(&self, sender: &str, recipient: &str) -> Result<Option<Channels>, ApiError> {
        let Access::Ruled { rules, grants } = self else { return Ok(None) };
        let channels = rules.direct_channels(sender, recipient);
        if grants.is_tenant_wide() || (!channels.is_empty() && grants.may_write(&channels)) {
            return Ok(Some(channels));
        }
        Err(ApiError::new(
            sdk_core::ErrorCode::AuthzFailed,
            "the sync rules do not let you send this direct message",
        ))
    }

    /// Whether a Class D transaction created by `user` may be seen: without rules by anyone of
    /// the tenant; under rules by its creator and tenant-wide readers.
    pub fn reads_transaction_of(&self, user: &str) -> bool {
        match self {
            Access::Unruled => true,
            Access::Ruled { grants, .. } => grants.is_tenant_wide() || grants.user() == Some(user),
        }
    }

    /// The channels whose changes a socket is poked for (`None`: every change).
    pub fn poke_reads(&self) -> Option<Channels> {
        match self {
            Access::Ruled { grants, .. } if !grants.is_tenant_wide() => {
                Some(grants.read_channels().clone())
            }
            _ => None,
        }
    }

    /// Who reads an event stream, for [`crate::tail::Interest`]: `None` sees every event.
    pub fn event_reader(&self) -> Option<Arc<crate::tail::Reader>> {
        match self {
            Access::Ruled { grants, .. } if !grants.is_tenant_wide() => {
                Some(crate::tail::Reader::new(grants.clone()))
            }
            _ => None,
        }
    }

    /// The grants a live stream's [`crate::tail::Reader`] follows (tenant-wide: every event).
    pub fn grants(&self) -> Grants {
        match self {
            Access::Ruled { grants, .. } => grants.clone(),
            Access::Unruled => Grants::tenant_wide(),
        }
    }
}
