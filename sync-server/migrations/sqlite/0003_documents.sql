-- Collaborative documents (Automerge). Append-only.

-- A document's compacted form (an Automerge save) and how much has been appended since.
CREATE TABLE documents (
    tenant_id     TEXT NOT NULL,
    document_id   TEXT NOT NULL,
    save          BLOB NOT NULL,
    changes_bytes INTEGER NOT NULL,
    next_seq      INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, document_id)
);

-- Changes appended after the save (incremental saves), in order; folded into the save when
-- they grow past the compaction threshold.
CREATE TABLE document_changes (
    tenant_id   TEXT NOT NULL,
    document_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (tenant_id, document_id, seq)
);
