-- The event bus: durable subscriptions, consumer groups, the dead-letter queue. Append-only.

-- The publisher's own timestamp (epoch ms); NULL for events the server wrote (created_at then).
ALTER TABLE events ADD COLUMN occurred_at BIGINT;

-- A named subscription of a tenant. kind 'durable': one position (cursor = acknowledged
-- through); kind 'group': competing consumers (cursor = events up to here are in deliveries
-- or done). event_types: JSON array of patterns; filter: JSON object of payload equalities.
CREATE TABLE event_subscriptions (
    tenant_id      TEXT NOT NULL,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    event_types    TEXT NOT NULL,
    filter         TEXT NOT NULL,
    cursor         BIGINT NOT NULL,
    max_deliveries BIGINT NOT NULL,
    lease_ms       BIGINT NOT NULL,
    backoff_ms     BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A consumer group's events not yet acknowledged. visible_at: when it may be claimed (0: now;
-- a lease's end; a retry's backoff). A row is one event held by at most one member at a time.
CREATE TABLE event_deliveries (
    tenant_id        TEXT NOT NULL,
    subscription     TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    attempts         BIGINT NOT NULL,
    visible_at       BIGINT NOT NULL,
    consumer         TEXT,
    lease_token      TEXT,
    last_error       TEXT,
    event_override   TEXT,
    first_at         BIGINT,
    last_at          BIGINT,
    PRIMARY KEY (tenant_id, subscription, seq)
);
CREATE INDEX event_deliveries_visible ON event_deliveries (tenant_id, subscription, visible_at);

-- Events a group gave up on, with their original data (they outlive retention).
CREATE TABLE dead_letters (
    tenant_id        TEXT NOT NULL,
    dlq_id           TEXT NOT NULL,
    subscription     TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    original_payload TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    schema_version   TEXT NOT NULL,
    event_time       BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    consumer         TEXT,
    first_attempt_at BIGINT,
    last_attempt_at  BIGINT,
    dead_at          BIGINT NOT NULL,
    status           TEXT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, dlq_id)
);
CREATE INDEX dead_letters_by_time ON dead_letters (tenant_id, status, dead_at);
