-- Sync rules (docs/api/sync-rules.md): the index the rules are enforced with. Append-only.
-- Written only while the server runs with a rule file, in the transaction of the change it
-- follows; a tenant's rows are rebuilt from its entities on first use when the rule file's
-- fingerprint differs from the one they were built with (sync_rules_index), and every
-- fingerprint is forgotten when a server starts without rules.

-- The channels each entity belongs to now, with its version: a pull scans only the channels
-- a client reads, from its position.
CREATE TABLE entity_channels (
    tenant_id   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, channel, entity_type, entity_id)
);
CREATE INDEX entity_channels_by_version ON entity_channels (tenant_id, channel, version);
CREATE INDEX entity_channels_of_entity ON entity_channels (tenant_id, entity_type, entity_id);

-- An entity left a channel at seq (it moved, or its state no longer names it): the channel's
-- readers who held it get a removal. Pruned with the log.
CREATE TABLE channel_exits (
    tenant_id   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, channel, seq, entity_type, entity_id)
);

-- What each live grant row grants: user_id holds read and/or write on channel.
CREATE TABLE user_grants (
    tenant_id   TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    can_read    BIGINT NOT NULL,
    can_write   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source_type, source_id, user_id, channel)
);
CREATE INDEX user_grants_of_user ON user_grants (tenant_id, user_id);

-- The fingerprint of the rule file each tenant's index was built with (none: rebuild on use).
CREATE TABLE sync_rules_index (
    tenant_id   TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
);
