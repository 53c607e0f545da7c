-- A document's save is replaced only by a compaction that read the current one (optimistic
-- concurrency between processes and the periodic compactor). Append-only.
ALTER TABLE documents ADD COLUMN save_version INTEGER NOT NULL DEFAULT 0;
