-- Tamper-evident audit (docs/runbooks/server.md, "The audit log"): each entry's MAC covers its
-- fields and the MAC of the entry before it in its chain — one chain per tenant and retention
-- class — keyed by a secret the database does not hold (sdk_core::audit_chain). Entries written
-- before this migration have chain_seq 0: they are outside every chain.
ALTER TABLE audit_log ADD COLUMN chain TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN chain_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_log ADD COLUMN hash TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_by_chain ON audit_log (tenant_id, chain, id);

-- Each chain's head, with its own MAC: the last position and MAC, and the anchor pruning left
-- (the position and MAC of the last entry removed by retention).
CREATE TABLE audit_chains (
    tenant_id   TEXT NOT NULL,
    chain       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    pruned_seq  BIGINT NOT NULL,
    pruned_hash TEXT NOT NULL,
    mac         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, chain)
);
