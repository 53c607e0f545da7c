//! The documents' SQL: a compacted save per document plus the changes appended since, in order.

use super::{Backend, Store, db};
use crate::error::ApiError;
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
}

impl Store {
    /// The document, or `None` when nothing was ever stored for it.
    pub async fn document(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredDocument>, ApiError> {
        let Some(row) = sqlx::query(
            "SELECT save, changes_bytes, next_seq FROM documents WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        else {
            return Ok(None);
        };
        let changes = self.document_changes_after(tenant, id, 0).await?;
        Ok(Some(StoredDocument {
            save: row.get(0),
            changes_bytes: row.get(1),
            seq: row.get::<i64, _>(2) - 1,
            changes,
        }))
    }

    /// Changes appended after number `after`, in order.
    pub async fn document_changes_after(
        &self,
        tenant: &str,
        id: &str,
        after: i64,
    ) -> Result<Vec<Vec<u8>>, ApiError> {
        let rows = sqlx::query(
            "SELECT bytes FROM document_changes WHERE tenant_id = $1 AND document_id = $2 AND seq > $3 ORDER BY seq",
        )
        .bind(tenant)
        .bind(id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Append `bytes` (an incremental save) to the document, creating it when new. Returns the
    /// change's number and the bytes appended since the last compaction.
    pub async fn append_document_change(
        &self,
        tenant: &str,
        id: &str,
        bytes: &[u8],
    ) -> Result<(i64, i64), ApiError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let now = crate::api::now_ms() as i64;
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

    /// Fold the changes up to number `through` into `save` (a save that contains them).
    pub async fn compact_document(
        &self,
        tenant: &str,
        id: &str,
        save: &[u8],
        through: i64,
    ) -> Result<(), ApiError> {
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
        sqlx::query(
            "DELETE FROM document_changes WHERE tenant_id = $1 AND document_id = $2 AND seq <= $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(through)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "UPDATE documents SET save = $3, changes_bytes = changes_bytes - $4, updated_at = $5 \
             WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(save.to_vec())
        .bind(folded)
        .bind(crate::api::now_ms() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}
