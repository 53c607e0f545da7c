//! The audit log's chains (migration 0006): every entry is appended to its tenant's chain of
//! its retention class, in the transaction of the action it records, with a MAC linking it to
//! the entry before (sdk_core::audit_chain). Verification walks each chain in storage order;
//! pruning removes a chain's oldest entries and moves its anchor, and is itself audited.

use super::{AuditEntry, Backend, Store, StoreError, db};
use sdk_core::audit_chain::{Break, ChainKey, Entry, Head, Link, Stored, Verifier};
use serde_json::json;
use sqlx::Row;

/// The retention class (and chain) of an action: connection lifecycle, super-admin access, or
/// everything else (data decisions: conflicts, dead letters, pruning).
pub fn chain_of(action: &str) -> &'static str {
    if action.starts_with("ws.") || action.starts_with("auth.") {
        "connection"
    } else if action == "tenant.cross_access" {
        "access"
    } else {
        "data"
    }
}

/// One chain's state after verification.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub tenant: String,
    pub chain: String,
    /// Entries verified (since the anchor), or where the chain breaks.
    pub result: Result<u64, Break>,
    pub head: Head,
}

/// Append `entries` to their chains in `conn`'s transaction, stored at `now`. Chains are locked
/// in (tenant, chain) order, so two transactions never wait on each other's chains in a cycle.
pub(super) async fn append(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    key: Option<&ChainKey>,
    entries: &[AuditEntry<'_>],
    now: i64,
) -> Result<(), StoreError> {
    let Some(key) = key else {
        // No key (a store used without a server's configuration): entries outside any chain.
        for e in entries {
            insert(conn, e, "", 0, "", now).await?;
        }
        return Ok(());
    };
    let mut chains: Vec<(&str, &'static str)> =
        entries.iter().map(|e| (e.tenant, chain_of(e.action))).collect();
    chains.sort_unstable();
    chains.dedup();
    for (tenant, chain) in chains {
        let mut head = lock_head(conn, backend, tenant, chain).await?;
        for e in entries.iter().filter(|e| e.tenant == tenant && chain_of(e.action) == chain) {
            let details = e.details.to_string();
            let seq = head.seq + 1;
            let entry = Entry {
                tenant,
                chain,
                seq,
                at: now,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                details: &details,
            };
            let hash = key.entry_mac(&head.hash, &entry);
            insert(conn, e, chain, seq, &hash, now).await?;
            head.seq = seq;
            head.hash = hash;
        }
        store_head(conn, key, tenant, chain, &head).await?;
    }
    Ok(())
}

async fn insert(
    conn: &mut sqlx::AnyConnection,
    e: &AuditEntry<'_>,
    chain: &str,
    seq: u64,
    hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, details, at, chain, chain_seq, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(e.tenant)
    .bind(e.actor)
    .bind(e.action)
    .bind(e.target)
    .bind(e.outcome)
    .bind(e.details.to_string())
    .bind(now)
    .bind(chain)
    .bind(seq as i64)
    .bind(hash)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// The chain's head, locked for this transaction (made on first use).
async fn lock_head(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    tenant: &str,
    chain: &str,
) -> Result<Head, StoreError> {
    sqlx::query(
        "INSERT INTO audit_chains (tenant_id, chain, seq, hash, pruned_seq, pruned_hash, mac) \
         VALUES ($1, $2, 0, '', 0, '', '') ON CONFLICT (tenant_id, chain) DO NOTHING",
    )
    .bind(tenant)
    .bind(chain)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let r = sqlx::query(&format!(
        "SELECT seq, hash, pruned_seq, pruned_hash FROM audit_chains WHERE tenant_id = $1 AND chain = $2{lock}"
    ))
    .bind(tenant)
    .bind(chain)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    Ok(head_from(&r, 0))
}

fn head_from(r: &sqlx::any::AnyRow, at: usize) -> Head {
    Head {
        seq: r.get::<i64, _>(at) as u64,
        hash: r.get(at + 1),
        anchor: Link { seq: r.get::<i64, _>(at + 2) as u64, hash: r.get(at + 3) },
    }
}

async fn store_head(
    conn: &mut sqlx::AnyConnection,
    key: &ChainKey,
    tenant: &str,
    chain: &str,
    head: &Head,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE audit_chains SET seq = $3, hash = $4, pruned_seq = $5, pruned_hash = $6, mac = $7 \
         WHERE tenant_id = $1 AND chain = $2",
    )
    .bind(tenant)
    .bind(chain)
    .bind(head.seq as i64)
    .bind(&head.hash)
    .bind(head.anchor.seq as i64)
    .bind(&head.anchor.hash)
    .bind(key.head_mac(tenant, chain, head))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Rows of a chain read per query while verifying.
const PAGE: i64 = 1_000;

impl Store {
    /// Verify every chain (of `tenant`, or of all tenants) against `key`.
    /// [`Store::verify_audit`] of one tenant's chains with the key this store writes with (the
    /// ops page's chain state).
    pub async fn verify_tenant_audit(&self, tenant: &str) -> Result<Vec<ChainReport>, StoreError> {
        let key = self.audit_key.clone().ok_or_else(|| StoreError::internal("no audit key"))?;
        self.verify_audit(&key, Some(tenant)).await
    }

    pub async fn verify_audit(
        &self,
        key: &ChainKey,
        tenant: Option<&str>,
    ) -> Result<Vec<ChainReport>, StoreError> {
        let heads = sqlx::query(
            "SELECT tenant_id, chain, seq, hash, pruned_seq, pruned_hash, mac FROM audit_chains \
             WHERE ($1 = '' OR tenant_id = $1) ORDER BY tenant_id, chain",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let mut reports = Vec::with_capacity(heads.len());
        for h in heads {
            let (tenant, chain, mac): (String, String, String) = (h.get(0), h.get(1), h.get(6));
            let head = Head {
                seq: h.get::<i64, _>(2) as u64,
                hash: h.get(3),
                anchor: Link { seq: h.get::<i64, _>(4) as u64, hash: h.get(5) },
            };
            let result =
                Self::verify_chain(&mut conn, key, &tenant, &chain, &head, &mac, None).await?;
            reports.push(ChainReport { tenant, chain, result, head });
        }
        Ok(reports)
    }

    /// Walk one chain by storage id from its anchor (up to position `upto`, if given, without
    /// the head's checks).
    #[allow(clippy::too_many_arguments)]
    async fn verify_chain(
        conn: &mut sqlx::AnyConnection,
        key: &ChainKey,
        tenant: &str,
        chain: &str,
        head: &Head,
        mac: &str,
        upto: Option<u64>,
    ) -> Result<Result<u64, Break>, StoreError> {
        let mut v = Verifier::new(key, head.anchor.clone());
        let mut after_id = i64::MIN;
        loop {
            // Entries moved to this chain or out of it (chain_seq 0) break it where they were.
            let rows = sqlx::query(
                "SELECT id, chain_seq, at, actor, action, target, outcome, details, hash FROM audit_log \
                 WHERE tenant_id = $1 AND chain = $2 AND id > $3 ORDER BY id LIMIT $4",
            )
            .bind(tenant)
            .bind(chain)
            .bind(after_id)
            .bind(PAGE)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
            for r in &rows {
                let seq = r.get::<i64, _>(1) as u64;
                if upto.is_some_and(|u| seq > u) {
                    return Ok(v.finish_partial());
                }
                let (actor, action, target, outcome, details, hash): (
                    String,
                    String,
                    String,
                    String,
                    String,
                    String,
                ) = (r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
                v.next(&Stored {
                    id: r.get(0),
                    entry: Entry {
                        tenant,
                        chain,
                        seq,
                        at: r.get(2),
                        actor: &actor,
                        action: &action,
                        target: &target,
                        outcome: &outcome,
                        details: &details,
                    },
                    hash: &hash,
                });
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == PAGE => after_id = r.get(0),
                _ => break,
            }
        }
        Ok(match upto {
            Some(_) => v.finish_partial(),
            None => v.finish(tenant, chain, head, mac),
        })
    }

    /// Retention for one class: remove the entries of every `chain` stored before `cutoff`
    /// (epoch ms), oldest first, keeping each chain verifiable: its anchor moves to the last
    /// entry removed, and the pruning is appended to the chain. A chain that does not verify
    /// up to there is left as it is (the evidence stays) and reported. Returns entries removed.
    /// `tenant`: only that tenant's chain (`None`: every tenant's).
    pub async fn prune_audit(
        &self,
        chain: &str,
        cutoff: i64,
        tenant: Option<&str>,
    ) -> Result<u64, StoreError> {
        let Some(key) = self.audit_key.clone() else { return Ok(0) };
        let tenants: Vec<String> = sqlx::query(
            "SELECT tenant_id FROM audit_chains WHERE chain = $1 AND ($2 = '' OR tenant_id = $2)",
        )
        .bind(chain)
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| r.get(0))
        .collect();
        let mut removed = 0;
        for tenant in tenants {
            removed += self.prune_chain(&key, &tenant, chain, cutoff).await?;
        }
        Ok(removed)
    }

    async fn prune_chain(
        &self,
        key: &ChainKey,
        tenant: &str,
        chain: &str,
        cutoff: i64,
    ) -> Result<u64, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let head = lock_head(&mut tx, self.backend, tenant, chain).await?;
        // The longest run of oldest entries stored before the cutoff.
        let keep_from: Option<i64> = sqlx::query(
            "SELECT MIN(chain_seq) FROM audit_log WHERE tenant_id = $1 AND chain = $2 AND chain_seq > $3 AND at >= $4",
        )
        .bind(tenant)
        .bind(chain)
        .bind(head.anchor.seq as i64)
        .bind(cutoff)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .get(0);
        let through = keep_from.map(|k| k as u64 - 1).unwrap_or(head.seq);
        if through <= head.anchor.seq {
            return Ok(0);
        }
        if let Err(b) =
            Self::verify_chain(&mut tx, key, tenant, chain, &head, "", Some(through)).await?
        {
            tracing::error!(tenant, chain, broken = %b, "audit chain does not verify: not pruned");
            return Ok(0);
        }
        let last = sqlx::query(
            "SELECT hash FROM audit_log WHERE tenant_id = $1 AND chain = $2 AND chain_seq = $3",
        )
        .bind(tenant)
        .bind(chain)
        .bind(through as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let removed = sqlx::query(
            "DELETE FROM audit_log WHERE tenant_id = $1 AND chain = $2 AND chain_seq > 0 AND chain_seq <= $3",
        )
        .bind(tenant)
        .bind(chain)
        .bind(through as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        let moved = Head { anchor: Link { seq: through, hash: last.get(0) }, ..head };
        store_head(&mut tx, key, tenant, chain, &moved).await?;
        // The pruning itself, in the same chain (the data class keeps it 7 years by default).
        let record = AuditEntry {
            tenant,
            actor: "retention",
            action: "audit.pruned",
            target: chain,
            outcome: "ok",
            details: json!({ "through": through, "removed": removed, "cutoff": cutoff }),
        };
        append(&mut tx, self.backend, Some(key), &[record], crate::clock::now_ms() as i64).await?;
        tx.commit().await.map_err(db)?;
        Ok(removed)
    }
}
