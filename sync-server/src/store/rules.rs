//! The sync rules' index (migration 0005): the channels each entity belongs to, the channels
//! entities left, and what grant rows grant. Written in the transaction of the change it
//! follows, by every writer of entities ([`follow_changes`]); rebuilt from a tenant's entities,
//! on its first use, when it was built with another rule file ([`Store::ensure_indexed`]).

use super::{CHUNK, Store, StoreError, db, placeholders, record_from_row};
use sdk_core::apply::EntityRecord;
use sdk_core::ids::EntityKey;
use sdk_core::ids::EntityType;
use sdk_core::protocol::WireRemoval;
use sdk_core::rules::{Channels, RowGrant, SyncRules};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

/// Entities read per statement while the index is rebuilt.
const REBUILD_PAGE: i64 = 1000;

/// What a write did to the index: the users whose grants may have changed, and every channel
/// a changed entity was in before or is in after (whose readers are poked).
#[derive(Debug, Clone, Default)]
pub struct Followed {
    pub grants_changed: BTreeSet<String>,
    pub touched: Channels,
}

/// Who writes a batch, for the write gate: their token's claims (with `sub`) and roles.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub user: &'a str,
    pub claims: &'a sdk_core::operation::Object,
    pub roles: &'a [String],
}

impl Store {
    /// Without rules, forget which rule file every tenant's index was built with: writes no
    /// longer keep the index, so rules coming back must rebuild it (called at start).
    pub async fn forget_rules_index(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sync_rules_index").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    /// Under rules, make `tenant`'s index current before it is used, inside a transaction that
    /// holds the tenant's lock: rebuilt from its entities when it was built with another rule
    /// file, or never. Known-current tenants are remembered per process.
    pub(super) async fn ensure_indexed(
        &self,
        conn: &mut sqlx::AnyConnection,
        tenant: &str,
    ) -> Result<(), StoreError> {
        let Some(rules) = self.rules.as_deref() else { return Ok(()) };
        if self.indexed.lock().expect("not poisoned").contains(tenant) {
            return Ok(());
        }
        let built: Option<String> =
            sqlx::query("SELECT fingerprint FROM sync_rules_index WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?
                .map(|r| r.get(0));
        if built.as_deref() != Some(rules.fingerprint()) {
            let entities = rebuild(conn, tenant, rules).await?;
            tracing::info!(tenant, entities, "sync rules: the tenant's channel index was rebuilt");
        }
        self.indexed.lock().expect("not poisoned").insert(tenant.to_string());
        Ok(())
    }

    /// [`Store::ensure_indexed`] in a transaction of its own (before a read).
    pub async fn index_tenant(&self, tenant: &str) -> Result<(), StoreError> {
        if self.rules.is_none() || self.indexed.lock().expect("not poisoned").contains(tenant) {
            return Ok(());
        }
        let (mut tx, _guard, _) = self.begin_tenant(tenant).await?;
        self.ensure_indexed(&mut tx, tenant).await?;
        tx.commit().await.map_err(db)
    }

    /// The grants grant rows give `user` in `tenant`.
    pub async fn user_grants(&self, tenant: &str, user: &str) -> Result<Vec<RowGrant>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        user_rows(&mut conn, tenant, user).await
    }
}

/// One page of a scoped delta as the store reads it (see `protocol::http::scoped_delta_frame`).
#[derive(Debug, Default)]
pub struct ScopedRead {
    pub changed: Vec<EntityRecord>,
    pub changed_more: bool,
    pub removed: Vec<WireRemoval>,
    pub removed_more: bool,
}

impl Store {
    /// A scoped delta's page for a client that syncs `syncs` and held `held` through `since`:
    /// the entities of `syncs ∩ held` changed after `since`, every entity of `syncs \ held`
    /// (move-in), and the entities that left a held channel after `since` and are in none of
    /// `syncs` now (removals) — each stream in version order, at most `limit`.
    pub async fn scoped_delta(
        &self,
        tenant: &str,
        since: u64,
        limit: i64,
        syncs: &Channels,
        held: &Channels,
    ) -> Result<ScopedRead, StoreError> {
        let kept: Vec<&String> = syncs.intersection(held).collect();
        let gained: Vec<&String> = syncs.difference(held).collect();
        let mut out = ScopedRead::default();
        let mut conn = self.pool.acquire().await.map_err(db)?;
        // Placeholders from $3 on: `since` only when there are kept channels (PostgreSQL
        // refuses a parameter the statement does not use).
        let mut cond = Vec::new();
        let mut n = 3;
        let mut list = |len: usize| {
            let l = (n..n + len).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            n += len;
            l
        };
        if !kept.is_empty() {
            let since_at = format!("${}", 3 + kept.len());
            cond.push(format!("(channel IN ({}) AND version > {since_at})", list(kept.len())));
            list(1);
        }
        if !gained.is_empty() {
            cond.push(format!("channel IN ({})", list(gained.len())));
        }
        if !cond.is_empty() {
            let sql = format!(
                "SELECT e.entity_type, e.entity_id, e.record FROM entities e JOIN \
                 (SELECT DISTINCT entity_type, entity_id, version FROM entity_channels \
                  WHERE tenant_id = $1 AND ({}) ORDER BY version LIMIT $2) c \
                 ON e.tenant_id = $1 AND e.entity_type = c.entity_type AND e.entity_id = c.entity_id \
                 ORDER BY c.version",
                cond.join(" OR ")
            );
            let mut q = sqlx::query(&sql).bind(tenant).bind(limit + 1);
            for c in &kept {
                q = q.bind(c.as_str());
            }
            if !kept.is_empty() {
                q = q.bind(since as i64);
            }
            for c in &gained {
                q = q.bind(c.as_str());
            }
            let rows = q.fetch_all(&mut *conn).await.map_err(db)?;
            out.changed_more = rows.len() as i64 > limit;
            for r in rows.iter().take(limit as usize) {
                out.changed.push(record_from_row(tenant, r)?);
            }
        }
        if !kept.is_empty() {
            let exits = (4..4 + kept.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
            let first = 4 + kept.len();
            let now = (first..first + syncs.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
            let sql = format!(
                "SELECT DISTINCT x.seq, x.entity_type, x.entity_id FROM channel_exits x \
                 WHERE x.tenant_id = $1 AND x.seq > $3 AND x.channel IN ({}) \
                 AND NOT EXISTS (SELECT 1 FROM entity_channels c WHERE c.tenant_id = $1 \
                   AND c.entity_type = x.entity_type AND c.entity_id = x.entity_id AND c.channel IN ({})) \
                 ORDER BY x.seq LIMIT $2",
                exits.join(", "),
                now.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(tenant).bind(limit + 1).bind(since as i64);
            for c in kept.iter().copied().chain(syncs) {
                q = q.bind(c.as_str());
            }
            let rows = q.fetch_all(&mut *conn).await.map_err(db)?;
            out.removed_more = rows.len() as i64 > limit;
            for r in rows.iter().take(limit as usize) {
                let bad = |e: sdk_core::Error| StoreError::internal(format!("stored exit: {e}"));
                out.removed.push(WireRemoval {
                    version: r.get::<i64, _>(0) as u64,
                    entity_type: EntityType::new(r.get::<String, _>(1)).map_err(bad)?,
                    entity_id: sdk_core::ids::EntityId::new(r.get::<String, _>(2)).map_err(bad)?,
                });
            }
        }
        Ok(out)
    }

    /// How many entities of `channels` changed after `version` (a long scoped sync's progress:
    /// the pages after one ending at `version` hold exactly these).
    pub async fn entities_after_in(
        &self,
        tenant: &str,
        channels: &Channels,
        version: u64,
    ) -> Result<u64, StoreError> {
        if channels.is_empty() {
            return Ok(0);
        }
        let list = (3..3 + channels.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT DISTINCT entity_type, entity_id FROM entity_channels \
             WHERE tenant_id = $1 AND version > $2 AND channel IN ({})) x",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(version as i64);
        for c in channels {
            q = q.bind(c.as_str());
        }
        let row = q.fetch_one(&self.pool).await.map_err(db)?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    /// A page of `entity_type`'s live entities in id order after `cursor`, only those in one of
    /// `channels` (a collection snapshot for a client that syncs channels).
    pub async fn entities_page_in(
        &self,
        tenant: &str,
        entity_type: &EntityType,
        cursor: Option<&str>,
        limit: i64,
        channels: &Channels,
    ) -> Result<Vec<EntityRecord>, StoreError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let list = (5..5 + channels.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
        let sql = format!(
            "SELECT e.entity_type, e.entity_id, e.record FROM entities e \
             WHERE e.tenant_id = $1 AND e.entity_type = $2 AND e.entity_id > $3 AND e.deleted = 0 \
             AND EXISTS (SELECT 1 FROM entity_channels c WHERE c.tenant_id = $1 \
               AND c.entity_type = e.entity_type AND c.entity_id = e.entity_id AND c.channel IN ({})) \
             ORDER BY e.entity_id LIMIT $4",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(tenant)
            .bind(entity_type.as_str())
            .bind(cursor.unwrap_or(""))
            .bind(limit);
        for c in channels {
            q = q.bind(c.as_str());
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rows = q.fetch_all(&mut *conn).await.map_err(db)?;
        rows.iter().map(|r| record_from_row(tenant, r)).collect()
    }
}

/// Rebuild `tenant`'s index from its entities under `rules`; returns how many were indexed.
async fn rebuild(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    rules: &SyncRules,
) -> Result<u64, StoreError> {
    for table in ["entity_channels", "channel_exits", "user_grants", "sync_rules_index"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    let (mut after_type, mut after_id) = (String::new(), String::new());
    let mut entities = 0;
    loop {
        let rows = sqlx::query(
            "SELECT entity_type, entity_id, record FROM entities \
             WHERE tenant_id = $1 AND (entity_type, entity_id) > ($2, $3) \
             ORDER BY entity_type, entity_id LIMIT $4",
        )
        .bind(tenant)
        .bind(&after_type)
        .bind(&after_id)
        .bind(REBUILD_PAGE)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let Some(last) = rows.last() else { break };
        (after_type, after_id) = (last.get(0), last.get(1));
        let records =
            rows.iter().map(|r| record_from_row(tenant, r)).collect::<Result<Vec<_>, _>>()?;
        let finals: Vec<&EntityRecord> = records.iter().collect();
        entities += finals.len() as u64;
        index_records(conn, tenant, rules, &finals).await?;
    }
    sqlx::query("INSERT INTO sync_rules_index (tenant_id, fingerprint) VALUES ($1, $2)")
        .bind(tenant)
        .bind(rules.fingerprint())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(entities)
}

/// The grants grant rows give `user` (read inside a batch's transaction: grants as they were
/// when the batch began).
pub(super) async fn user_rows(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    user: &str,
) -> Result<Vec<RowGrant>, StoreError> {
    let rows = sqlx::query(
        "SELECT channel, MAX(can_read), MAX(can_write) FROM user_grants \
         WHERE tenant_id = $1 AND user_id = $2 GROUP BY channel ORDER BY channel",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| RowGrant {
            user: user.to_string(),
            channel: r.get(0),
            read: r.get::<i64, _>(1) != 0,
            write: r.get::<i64, _>(2) != 0,
        })
        .collect())
}

/// Keep the index in step with the final records a write leaves (in its transaction): each
/// entity's channel rows replaced, a channel it left recorded as an exit at its new version, a
/// grant row's grants replaced. The old rows are what the rules give the records as they were
/// before the write (`before`; the index was built with the same rules), deleted by their whole
/// primary key: no lookup by a key prefix, whose plans PostgreSQL makes badly without statistics.
pub(super) async fn follow_changes(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    rules: &SyncRules,
    finals: &[&EntityRecord],
    before: &BTreeMap<EntityKey, EntityRecord>,
) -> Result<Followed, StoreError> {
    let mut changed = BTreeSet::new();
    let mut touched = Channels::new();
    let mut exits = Vec::new();
    let mut old_rows: Vec<(String, &EntityRecord)> = Vec::new();
    let mut old_grants: Vec<(RowGrant, &EntityRecord)> = Vec::new();
    for rec in finals {
        let after = rules.record_channels(rec);
        if let Some(was) = before.get(&rec.key) {
            let was_in = rules.record_channels(was);
            exits.extend(was_in.difference(&after).map(|c| (c.clone(), *rec)));
            old_rows.extend(was_in.iter().map(|c| (c.clone(), *rec)));
            touched.extend(was_in);
            for g in rules.row_grants(was) {
                changed.insert(g.user.clone());
                old_grants.push((g, *rec));
            }
        }
        touched.extend(after);
        changed.extend(rules.row_grants(rec).into_iter().map(|g| g.user));
    }
    for part in exits.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO channel_exits (tenant_id, channel, seq, entity_type, entity_id) VALUES {} \
             ON CONFLICT DO NOTHING",
            placeholders(part.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for (channel, rec) in part {
            q = q
                .bind(tenant)
                .bind(channel.as_str())
                .bind(rec.version as i64)
                .bind(rec.key.entity_type.as_str())
                .bind(rec.key.entity_id.as_str());
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    let rows = old_rows
        .iter()
        .map(|(c, rec)| vec![c.as_str(), rec.key.entity_type.as_str(), rec.key.entity_id.as_str()]);
    let columns = ["channel", "entity_type", "entity_id"];
    delete_by_key(conn, "entity_channels", tenant, &columns, rows.collect()).await?;
    let rows = old_grants.iter().map(|(g, rec)| {
        let (ty, id) = (rec.key.entity_type.as_str(), rec.key.entity_id.as_str());
        vec![ty, id, g.user.as_str(), g.channel.as_str()]
    });
    let columns = ["source_type", "source_id", "user_id", "channel"];
    delete_by_key(conn, "user_grants", tenant, &columns, rows.collect()).await?;
    index_records(conn, tenant, rules, finals).await?;
    Ok(Followed { grants_changed: changed, touched })
}

/// Delete the rows of `table` in `tenant` whose `columns` (with `tenant_id`, its whole primary
/// key) hold one of `rows`' values: full-key equalities, which every planner serves by index.
async fn delete_by_key(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    tenant: &str,
    columns: &[&str],
    rows: Vec<Vec<&str>>,
) -> Result<(), StoreError> {
    for part in rows.chunks(CHUNK) {
        let cond = (0..part.len())
            .map(|i| {
                let eq = columns
                    .iter()
                    .enumerate()
                    .map(|(c, name)| format!("{name} = ${}", 2 + i * columns.len() + c));
                format!("({})", eq.collect::<Vec<_>>().join(" AND "))
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!("DELETE FROM {table} WHERE tenant_id = $1 AND ({cond})");
        let mut q = sqlx::query(&sql).bind(tenant);
        for v in part.iter().flatten() {
            q = q.bind(*v);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Insert the channel rows and grant rows of `records` (whose old rows are gone).
async fn index_records(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    rules: &SyncRules,
    records: &[&EntityRecord],
) -> Result<(), StoreError> {
    let rows: Vec<(String, &EntityRecord)> = records
        .iter()
        .flat_map(|rec| rules.record_channels(rec).into_iter().map(move |c| (c, *rec)))
        .collect();
    for part in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO entity_channels (tenant_id, channel, entity_type, entity_id, version) VALUES {}",
            placeholders(part.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for (channel, rec) in part {
            q = q
                .bind(tenant)
                .bind(channel.as_str())
                .bind(rec.key.entity_type.as_str())
                .bind(rec.key.entity_id.as_str())
                .bind(rec.version as i64);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    let grants: Vec<(RowGrant, &EntityRecord)> = records
        .iter()
        .flat_map(|rec| rules.row_grants(rec).into_iter().map(move |g| (g, *rec)))
        .collect();
    for part in grants.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO user_grants (tenant_id, source_type, source_id, user_id, channel, can_read, can_write) VALUES {}",
            placeholders(part.len(), 7, 1)
        );
        let mut q = sqlx::query(&sql);
        for (g, rec) in part {
            q = q
                .bind(tenant)
                .bind(rec.key.entity_type.as_str())
                .bind(rec.key.entity_id.as_str())
                .bind(g.user.as_str())
                .bind(g.channel.as_str())
                .bind(g.read as i64)
                .bind(g.write as i64);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}
