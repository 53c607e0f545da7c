-- PF-2 Sync schema, PostgreSQL. Append-only: never edit an applied migration, add a new one.

-- Per tenant: the one sequence shared by entity versions and events, and the retention mark.
CREATE TABLE tenants (
    tenant_id     TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL DEFAULT 0,
    pruned_through BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE entities (
    tenant_id   TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    deleted     BIGINT NOT NULL,
    record      BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, entity_type, entity_id)
);
CREATE INDEX entities_by_version ON entities (tenant_id, version);
CREATE INDEX entities_by_type ON entities (tenant_id, entity_type, entity_id);

-- The last applied clientSeq per client (Replicache's lastMutationID).
CREATE TABLE client_ledgers (
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    last_seq  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
);

-- Every operation's outcome, replayed verbatim for duplicates.
CREATE TABLE operation_results (
    tenant_id    TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    client_seq   BIGINT,
    result       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, operation_id)
);

-- Whole reconcile responses, so a replayed request gets the identical bytes.
CREATE TABLE reconcile_requests (
    tenant_id    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);

-- The event log: entity changes, transaction confirmations, published events.
CREATE TABLE events (
    tenant_id      TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    event_id       TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    schema_version TEXT NOT NULL,
    critical       BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE UNIQUE INDEX events_by_id ON events (tenant_id, event_id);
CREATE INDEX events_by_age ON events (created_at);

CREATE TABLE conflicts (
    tenant_id   TEXT NOT NULL,
    conflict_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL,
    resolution  TEXT,
    resolved_by TEXT,
    resolved_at BIGINT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, conflict_id)
);
CREATE INDEX conflicts_by_status ON conflicts (tenant_id, status, created_at);

CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit_log (tenant_id, at);

-- Class D.
CREATE TABLE transactions (
    tenant_id      TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    kind           TEXT NOT NULL,
    body           TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL,
    result         TEXT,
    callback_url   TEXT,
    callback_state TEXT NOT NULL,
    callback_attempts BIGINT NOT NULL DEFAULT 0,
    callback_next_at  BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, transaction_id)
);
CREATE INDEX transactions_by_status ON transactions (status);

CREATE TABLE idempotency_keys (
    tenant_id      TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    response       TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
