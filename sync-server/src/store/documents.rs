//! The documents' SQL: a compacted save per document plus the changes appended since, in order.

use super::StoreError;
use super::{Backend, Store, db};
use sqlx::Row;

/// A stored document: its save and the changes appended after it (`seq` order), up to `seq`.
#[derive(Debug, Clone, Default)]
pub struct StoredDocument {
    pub save: Vec<u8>,
    pub changes: Vec<Vec<u8>>,
    /// The last appended change's number (0: none yet).
    pub seq: i64,
    /// Bytes appended since the save.
    pub changes_bytes: i64,
    /// Bumped by every compaction: a compaction must name the version it read.
    pub save_version: i64,
}

impl Store {
    /// A read transaction that sees one snapshot (SQLite's read transactions do; PostgreSQL's
    /// default sees each statement's own).
    async fn snapshot(&self) -> Result<super::Tx<'_>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        Ok(tx)
    }

    /// The document, or `None` when nothing was ever stored for it. The save and the changes
    /// are read in one snapshot: a compaction between two reads would drop the changes it
    /// folded from both.
    pub async fn document(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredDocument>, StoreError> {
        let mut tx = self.snapshot().await?;
        let Some(row) = sqlx::query(
            "SELECT save, changes_bytes, next_seq, save_version FROM documents WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        else {
            return Ok(None);
        };
        let changes = changes_after(&mut tx, tenant, id, 0).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(StoredDocument {
            save: row.get(0),
            changes_bytes: row.get(1),
            seq: row.get::<i64, _>(2) - 1,
            save_version: row.get(3),
            changes: changes.into_iter().map(|(_, b)| b).collect(),
        }))
    }

    /// The changes appended after number `after`, in order with their numbers, and the save
    /// version they sit on (read together: a different version means a compaction folded
    /// some of them into a save this reader does not have).
    pub async fn document_changes_after(
        &self,
        tenant: &str,
        id: &str,
        after: i64,
    ) -> Result<(i64, Vec<(i64, Vec<u8>)>), StoreError> {
        let mut tx = self.snapshot().await?;
        let version: i64 = sqlx::query(
            "SELECT save_version FROM documents WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map_or(0, |r| r.get(0));
        let changes = changes_after(&mut tx, tenant, id, after).await?;
        tx.commit().await.map_err(db)?;
        Ok((version, changes))
    }

    /// The version of each of `ids` that is stored: the number of its last appended change
    /// (it only grows; compaction keeps it). Absent ids are left out.
    pub async fn document_versions(
        &self,
        tenant: &str,
        ids: &[&str],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT document_id, next_seq - 1 FROM documents WHERE tenant_id = $1 AND document_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db)?;
        Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect())
    }

    pub async fn append_document_change(
        &self,
        tenant: &str,
        id: &str,
        bytes: &[u8],
    ) -> Result<(i64, i64), StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let now = crate::clock::now_ms() as i64;
        sqlx::query(
            "INSERT INTO documents (tenant_id, document_id, save, changes_bytes, next_seq, updated_at) \
             VALUES ($1, $2, $3, 0, 1, $4) ON CONFLICT (tenant_id, document_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(id)
        .bind(Vec::<u8>::new())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT next_seq, changes_bytes FROM documents WHERE tenant_id = $1 AND document_id = $2{lock}"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let (seq, total) = (row.get::<i64, _>(0), row.get::<i64, _>(1) + bytes.len() as i64);
        sqlx::query(
            "INSERT INTO document_changes (tenant_id, document_id, seq, bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(id)
        .bind(seq)
        .bind(bytes.to_vec())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "UPDATE documents SET next_seq = $3, changes_bytes = $4, updated_at = $5 WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(seq + 1)
        .bind(total)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok((seq, total))
    }

    /// Fold the changes up to number `through` into `save` (a save that contains every one of
    /// them), if the stored save is still version `read` (else nothing changes and `None`: another
    /// process or the periodic compactor got there first). Returns the new version.
    pub async fn compact_document(
        &self,
        tenant: &str,
        id: &str,
        save: &[u8],
        through: i64,
        read: i64,
    ) -> Result<Option<i64>, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let folded: i64 = sqlx::query(
            "SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM document_changes WHERE tenant_id = $1 AND document_id = $2 AND seq <= $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(through)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .get(0);
        let updated = sqlx::query(
            "UPDATE documents SET save = $3, changes_bytes = changes_bytes - $4, updated_at = $5, \
             save_version = save_version + 1 \
             WHERE tenant_id = $1 AND document_id = $2 AND save_version = $6",
        )
        .bind(tenant)
        .bind(id)
        .bind(save.to_vec())
        .bind(folded)
        .bind(crate::clock::now_ms() as i64)
        .bind(read)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            return Ok(None); // the transaction rolls back on drop
        }
        sqlx::query(
            "DELETE FROM document_changes WHERE tenant_id = $1 AND document_id = $2 AND seq <= $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(through)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(read + 1))
    }

    /// Documents with changes appended and no write since `before` (epoch ms), at most `limit`.
    pub async fn idle_documents_with_changes(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, document_id FROM documents WHERE changes_bytes > 0 AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

async fn changes_after(
    tx: &mut super::Tx<'_>,
    tenant: &str,
    id: &str,
    after: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, bytes FROM document_changes WHERE tenant_id = $1 AND document_id = $2 AND seq > $3 ORDER BY seq",
    )
    .bind(tenant)
    .bind(id)
    .bind(after)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
