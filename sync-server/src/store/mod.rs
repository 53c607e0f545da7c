//! All SQL of the server, for SQLite (embedded default) and PostgreSQL (scale-out), through
//! `sqlx::AnyPool`. One SQL text serves both backends where their dialects agree (`$n`
//! placeholders, `ON CONFLICT`); the few statements that differ are chosen by [`Backend`].
//!
//! Concurrency: every write for a tenant first locks that tenant's row (`SELECT … FOR UPDATE` on
//! PostgreSQL; on SQLite one in-process writer lock, as SQLite has a single writer anyway), so
//! batches of one tenant apply one at a time, across processes too.

use sdk_core::apply::{
    ApplyEngine, ApplyState, BatchOutcome, Change, EntityRecord, Footprint, StoredResult, Submitted,
};
use sdk_core::ids::{ClientId, EntityId, EntityKey, EntityType, OperationId, TenantId};
use sdk_core::persist::{decode_record, encode_record};
use sdk_core::protocol::{
    ServerFrame, WireConflict, WireEntity, WireEvent, WireOpResult, delta_frame,
};
use sdk_core::rules::{Claims, SyncRules, WriteCheck};
use serde_json::{Value, json};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod appender;
mod audit;
mod bus;
mod documents;
mod error;
mod rules;
pub use audit::{ChainReport, chain_of};
pub use bus::{
    Appended, Claimed, DeadLetter, DlqQuery, NackOutcome, NewEvent, Published, SubscriptionKind,
    SubscriptionRow, SubscriptionStats,
};
pub use documents::StoredDocument;
pub use error::StoreError;
pub use rules::{Followed, ScopedRead, Writer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// SQLite's `synchronous` pragma: `full` (default; every commit reaches the disk) or `normal`
/// (WAL-safe against corruption, may lose the last commits on power loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer: serialize writers in-process instead of retrying `SQLITE_BUSY`.
    write_lock: tokio::sync::Mutex<()>,
    /// SQLite: the event appender's thread and connection (store/appender.rs).
    appender: Option<appender::Appender>,
    /// Reads of the event log ([`Store::events_after`]) since start: what the log's readers
    /// cost the database (tests count them; `pf2_event_log_reads_total` says who read).
    log_reads: std::sync::atomic::AtomicU64,
    /// The sync rules every write keeps the index of (`store/rules.rs`) and is gated by; `None`:
    /// tenant-wide access.
    rules: Option<std::sync::Arc<SyncRules>>,
    /// Tenants whose index this process knows to be built with `rules`.
    indexed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The key of the audit chains (store/audit.rs); `None`: entries outside any chain.
    audit_key: Option<std::sync::Arc<sdk_core::audit_chain::ChainKey>>,
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Entity records by key (a batch's entities as they were before it).
type Records = std::collections::BTreeMap<EntityKey, EntityRecord>;

/// What a reconcile transaction produced.
#[derive(Debug)]
pub enum Reconciled {
    /// First time this request id was seen: the response now stored for it.
    Fresh {
        response: String,
        outcome: BatchOutcome,
        version: u64,
        /// Under sync rules, what the batch did to the index (`None` without rules).
        followed: Option<Followed>,
    },
    /// Seen before: the stored response and the hash of the request that produced it.
    Replay { response: String, request_hash: String },
}

/// What a reconcile response needs from inside the transaction.
#[derive(Debug)]
pub struct ReconcileView<'a> {
    pub outcome: &'a BatchOutcome,
    pub version: u64,
    /// Entities changed after `lastKnownVersion`, when it was given and the gap is small.
    pub delta: Option<Vec<WireEntity>>,
    /// The gap was too large or below retention: the client should take a snapshot.
    pub snapshot_required: bool,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: WireEvent,
    pub critical: bool,
}

#[derive(Debug, Clone)]
pub struct ConflictRow {
    pub conflict: WireConflict,
    pub status: String,
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TransactionRow {
    pub tenant_id: String,
    pub transaction_id: String,
    pub kind: String,
    pub body: Value,
    pub user_id: String,
    pub status: String,
    pub result: Option<Value>,
    pub callback_url: Option<String>,
    pub callback_state: String,
    pub callback_attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The trace context of the request that created it (`traceparent` form), continued by its
    /// processing and its webhook.
    pub traceparent: Option<String>,
}

/// An audit entry (security events, manual resolutions, cross-tenant access).
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub tenant: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub details: Value,
}

/// Connections per process: SQLite in WAL reads in parallel while writers take turns in-process;
/// PostgreSQL's pool is multiplied by the number of processes against its `max_connections`.
pub const DEFAULT_SQLITE_POOL: u32 = 4;
pub const DEFAULT_POSTGRES_POOL: u32 = 16;

fn db(e: sqlx::Error) -> StoreError {
    StoreError::from(e)
}

/// A SQLite URL as the pool opens it (created if missing) and the file's path; its directory is
/// created.
fn sqlite_file(url: &str) -> Result<(String, String), StoreError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::internal(format!("creating {}: {e}", dir.display())))?;
    }
    let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
    Ok((url, path.to_string()))
}

impl Store {
    /// Connect to `sqlite://path` (created if missing; WAL) or `postgres://…` with the default
    /// pool, and migrate.
    pub async fn connect(url: &str, sync: SqliteSync) -> Result<Store, StoreError> {
        Self::connect_pooled(url, sync, None).await
    }

    /// [`Store::connect`] with `pool_size` connections (default: [`DEFAULT_SQLITE_POOL`] or
    /// [`DEFAULT_POSTGRES_POOL`]; docs/runbooks/server.md says how to size it).
    pub async fn connect_pooled(
        url: &str,
        sync: SqliteSync,
        pool_size: Option<u32>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::internal(format!("unsupported database URL {url:?}")));
        };
        let (url, sqlite_path) = match backend {
            Backend::Sqlite => {
                let (url, path) = sqlite_file(url)?;
                (url, Some(path))
            }
            Backend::Postgres => (url.to_string(), None),
        };
        let synchronous = match sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        let size = pool_size.filter(|n| *n > 0).unwrap_or(match backend {
            Backend::Sqlite => DEFAULT_SQLITE_POOL,
            Backend::Postgres => DEFAULT_POSTGRES_POOL,
        });
        // Every connection is opened up front, by the pool's own task on the runtime that builds
        // the store (HTTP's), and kept. A connection belongs to whoever opened it: PostgreSQL's
        // socket answers on the opener's runtime, and SQLite's worker thread inherits the
        // opener's priority. One opened by a WebSocket session (on the sessions' runtime, busy
        // and at nice +10 under a fan-out) would slow every HTTP request that later drew it
        // (measured: publishing to 10,000 subscribers on PostgreSQL 2.2× faster).
        if backend == Backend::Sqlite {
            // WAL is the file's, not a connection's: set it once, alone, before the pool opens
            // its connections together (each switching it at once made some wait on the others
            // and log `database is locked` at every start).
            use sqlx::Connection as _;
            let mut first = sqlx::AnyConnection::connect(&url).await.map_err(|e| {
                StoreError::internal(format!("opening the {} database: {e}", backend.name()))
            })?;
            first.execute("PRAGMA journal_mode = WAL").await.map_err(db)?;
            first.close().await.map_err(db)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(size)
            .min_connections(size)
            .idle_timeout(None)
            .max_lifetime(None)
            // sqlx pings a connection after every use, before it goes back to the pool, and
            // drops one that does not answer; pinging again before every use would put a
            // second round trip on every statement's path (measured: see docs/benchmarks.md).
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // The busy timeout first: a connection opened while another writes
                        // must wait, not fail, on its own first statements.
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                StoreError::internal(format!("connecting to the {} database: {e}", backend.name()))
            })?;
        // Open them all now, from here (see above): held at once, then given back to the pool.
        let mut held = Vec::with_capacity(size as usize);
        for _ in 0..size {
            held.push(pool.acquire().await.map_err(|e| {
                StoreError::internal(format!("opening the {} pool: {e}", backend.name()))
            })?);
        }
        drop(held);
        // Started from here too, for the same reason (its thread inherits this one's priority).
        let appender = match &sqlite_path {
            Some(path) => Some(appender::Appender::start(path, synchronous)?),
            None => None,
        };
        let store = Store {
            pool,
            backend,
            write_lock: tokio::sync::Mutex::new(()),
            appender,
            log_reads: Default::default(),
            rules: None,
            indexed: Default::default(),
            audit_key: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Enforce `rules` from now on (`None`: tenant-wide access; then call
    /// [`Store::forget_rules_index`] before serving).
    pub fn with_rules(mut self, rules: Option<std::sync::Arc<SyncRules>>) -> Self {
        self.rules = rules;
        self
    }

    /// Chain every audit entry with `key` (see store/audit.rs).
    pub fn with_audit_key(mut self, key: sdk_core::audit_chain::ChainKey) -> Self {
        self.audit_key = Some(std::sync::Arc::new(key));
        self
    }

    pub fn rules(&self) -> Option<&std::sync::Arc<SyncRules>> {
        self.rules.as_ref()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&self.pool).await.map_err(|e| StoreError::internal(format!("migrations: {e}")))
    }

    /// Round-trip time of a trivial query.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let start = Instant::now();
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db)?;
        Ok(start.elapsed())
    }

    /// On SQLite, the in-process writer lock (SQLite has one writer; waiting here beats retrying
    /// `SQLITE_BUSY`). On PostgreSQL, nothing: row locks do the work.
    async fn sqlite_writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Begin a write transaction holding the tenant's lock; returns the tenant's sequence.
    async fn begin_tenant(
        &self,
        tenant: &str,
    ) -> Result<(Tx<'_>, Option<tokio::sync::MutexGuard<'_, ()>>, u64), StoreError> {
        let guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("INSERT INTO tenants (tenant_id, seq, pruned_through) VALUES ($1, 0, 0) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let lock = match self.backend {
            Backend::Sqlite => "SELECT seq FROM tenants WHERE tenant_id = $1",
            Backend::Postgres => "SELECT seq FROM tenants WHERE tenant_id = $1 FOR UPDATE",
        };
        let seq: i64 = sqlx::query(lock).bind(tenant).fetch_one(&mut *tx).await.map_err(db)?.get(0);
        Ok((tx, guard, seq as u64))
    }

    pub async fn tenant_seq(&self, tenant: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query("SELECT seq, pruned_through FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64)).unwrap_or((0, 0)))
    }

    /// Run a reconcile batch in one transaction: lock the tenant, answer a replayed request from
    /// storage, otherwise load what the batch touches, run the apply engine, and write entities,
    /// ledgers, results, conflicts, events and the response together.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "store.transaction", skip_all, fields(tenant = %tenant))]
    pub async fn reconcile(
        &self,
        engine: &ApplyEngine,
        tenant: &TenantId,
        request_id: &str,
        request_hash: &str,
        batch: Vec<Submitted>,
        last_known: Option<u64>,
        max_delta: u64,
        writer: Writer<'_>,
        respond: impl FnOnce(ReconcileView<'_>) -> String,
    ) -> Result<Reconciled, StoreError> {
        let t = tenant.as_str();
        let (mut tx, _guard, seq) = self.begin_tenant(t).await?;
        if let Some(row) = sqlx::query(
            "SELECT response, request_hash FROM reconcile_requests WHERE tenant_id = $1 AND request_id = $2",
        )
        .bind(t)
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        {
            return Ok(Reconciled::Replay { response: row.get(0), request_hash: row.get(1) });
        }
        self.ensure_indexed(&mut tx, t).await?;
        let footprint = Footprint::of(tenant, &batch);
        let (mut state, existed) = load_footprint(&mut tx, t, seq, &footprint).await?;
        let ledgers_before = state.ledgers.clone();
        // What the batch's entities were, for the rules' index (its old rows).
        let records_before = match self.rules {
            Some(_) => state.entities.clone(),
            None => Default::default(),
        };
        let apply = tracing::info_span!("apply", operations = batch.len());
        let outcome = match self.rules.as_deref() {
            None => apply.in_scope(|| engine.apply_batch(tenant, batch, &mut state))?,
            Some(rules) => {
                // Grants as they are when the batch begins (the tenant is locked).
                let rows = rules::user_rows(&mut tx, t, writer.user).await?;
                let grants = rules.grants(&Claims::new(writer.claims, writer.roles), &rows);
                let gate = WriteCheck::new(rules, &grants);
                apply.in_scope(|| engine.apply_batch_gated(tenant, batch, &mut state, &gate))?
            }
        };
        let now = crate::clock::now_ms() as i64;
        let followed = write_outcome(
            &mut tx,
            t,
            (&outcome, &state, &ledgers_before, &existed),
            self.rules.as_deref().map(|r| (r, &records_before)),
            now,
        )
        .await?;
        if state.version != seq {
            set_seq(&mut tx, t, state.version).await?;
        }
        let (delta, snapshot_required) = match last_known {
            None => (None, false),
            Some(since) if state.version.saturating_sub(since) > max_delta => (None, true),
            Some(since) => {
                let pruned = pruned_through(&mut tx, t).await?;
                if since < pruned {
                    (None, true)
                } else {
                    let (items, _) = entities_since(&mut tx, t, since, max_delta as i64).await?;
                    (Some(items), false)
                }
            }
        };
        let response = respond(ReconcileView {
            outcome: &outcome,
            version: state.version,
            delta,
            snapshot_required,
        });
        sqlx::query(
            "INSERT INTO reconcile_requests (tenant_id, request_id, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t)
        .bind(request_id)
        .bind(request_hash)
        .bind(&response)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::debug!(version = state.version, "reconcile batch committed");
        Ok(Reconciled::Fresh { response, outcome, version: state.version, followed })
    }

    /// Entities changed after `since`, oldest first; `has_more` when more than `limit`.
    pub async fn delta(
        &self,
        tenant: &str,
        since: u64,
        limit: i64,
    ) -> Result<(Vec<WireEntity>, bool), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        entities_since(&mut conn, tenant, since, limit).await
    }

    /// A pull: entities changed after `since` (at most `limit`), the version to continue from,
    /// and — on the last page — the last `clientSeq` of `client` that the state includes. The
    /// sequence numbers are read before the entities, so a batch committing in between can only
    /// make the confirmation conservative (the client keeps an operation a little longer), never
    /// early.
    pub async fn pull(
        &self,
        tenant: &str,
        since: u64,
        limit: i64,
        client: Option<&ClientId>,
    ) -> Result<ServerFrame, StoreError> {
        let client_seq = match client {
            Some(c) => Some(self.client_seq(tenant, c).await?),
            None => None,
        };
        let (seq, _) = self.tenant_seq(tenant).await?;
        let (entities, has_more) = self.delta(tenant, since, limit).await?;
        let mut frame = delta_frame(since, seq, entities, has_more, client_seq);
        if let ServerFrame::Delta { has_more: true, version, remaining, .. } = &mut frame {
            *remaining = Some(self.entities_after(tenant, *version).await?);
        }
        Ok(frame)
    }

    /// How many of `tenant`'s entities changed after `version` (a long sync's progress).
    pub async fn entities_after(&self, tenant: &str, version: u64) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM entities WHERE tenant_id = $1 AND version > $2")
                .bind(tenant)
                .bind(version as i64)
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    /// The last applied `clientSeq` of a client (0 if none).
    pub async fn client_seq(&self, tenant: &str, client: &ClientId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT last_seq FROM client_ledgers WHERE tenant_id = $1 AND client_id = $2",
        )
        .bind(tenant)
        .bind(client.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64).unwrap_or(0))
    }

    pub async fn entity(&self, key: &EntityKey) -> Result<Option<EntityRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        load_entity(&mut conn, key).await
    }

    /// A page of an entity type's entities in id order, after `cursor`.
    pub async fn entities_page(
        &self,
        tenant: &str,
        entity_type: &EntityType,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EntityRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT entity_type, entity_id, record FROM entities \
             WHERE tenant_id = $1 AND entity_type = $2 AND entity_id > $3 AND deleted = 0 \
             ORDER BY entity_id LIMIT $4",
        )
        .bind(tenant)
        .bind(entity_type.as_str())
        .bind(cursor.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| record_from_row(tenant, r)).collect()
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        tenant: &str,
        after: u64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.log_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(tenant)
        .bind(after as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| event_from_row(tenant, r)).collect()
    }

    /// How many times the event log has been read since start.
    pub fn log_reads(&self) -> u64 {
        self.log_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sequence of the event with this id, if it exists.
    pub async fn event_seq(&self, tenant: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT seq FROM events WHERE tenant_id = $1 AND event_id = $2")
            .bind(tenant)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Append an event outside a batch (transaction confirmations, published events).
    pub async fn append_event(
        &self,
        tenant: &str,
        event_id: &str,
        event_type: &str,
        payload: &Value,
        metadata: &Value,
        critical: bool,
    ) -> Result<u64, StoreError> {
        let (mut tx, _guard, seq) = self.begin_tenant(tenant).await?;
        let seq = seq + 1;
        insert_event(
            &mut tx,
            tenant,
            seq,
            event_id,
            event_type,
            payload,
            metadata,
            critical,
            crate::clock::now_ms() as i64,
        )
        .await?;
        set_seq(&mut tx, tenant, seq).await?;
        tx.commit().await.map_err(db)?;
        Ok(seq)
    }

    /// Delete events past retention: a non-critical event whose type matches a rule's pattern
    /// (`name` or `prefix*`, first match wins) when older than that rule's cutoff (epoch ms),
    /// any other when older than `default_cutoff` — but never one a consumer group still has to
    /// deliver. `tenant`: one tenant (`None`: every tenant). Records the highest deleted
    /// sequence per tenant so readers below it get `SNAPSHOT_REQUIRED`.
    pub async fn prune_events(
        &self,
        default_cutoff: i64,
        rules: &[(String, i64)],
        tenant: Option<&str>,
    ) -> Result<u64, StoreError> {
        let _guard = self.sqlite_writer().await;
        let tenant = tenant.unwrap_or("");
        // $1 tenant, $2 default cutoff, then (pattern, cutoff) pairs from $3.
        let like = |i: usize| format!("event_type LIKE ${} ESCAPE '\\'", 3 + 2 * i);
        let mut cases: Vec<String> = (0..rules.len())
            .map(|i| {
                let earlier: Vec<String> = (0..i).map(|j| format!("NOT {}", like(j))).collect();
                let mut terms = vec![like(i), format!("created_at < ${}", 4 + 2 * i)];
                terms.extend(earlier);
                format!("({})", terms.join(" AND "))
            })
            .collect();
        let mut default_terms: Vec<String> =
            (0..rules.len()).map(|j| format!("NOT {}", like(j))).collect();
        default_terms.push("created_at < $2".into());
        cases.push(format!("({})", default_terms.join(" AND ")));
        let condition = format!(
            "critical = 0 AND ($1 = '' OR tenant_id = $1) AND ({}) AND NOT EXISTS \
             (SELECT 1 FROM event_deliveries d WHERE d.tenant_id = events.tenant_id AND d.seq = events.seq)",
            cases.join(" OR ")
        );
        let patterns: Vec<(String, i64)> =
            rules.iter().map(|(p, c)| (bus::like_pattern(p), *c)).collect();
        let mut tx = self.pool.begin().await.map_err(db)?;
        let marks_sql =
            format!("SELECT tenant_id, MAX(seq) FROM events WHERE {condition} GROUP BY tenant_id");
        let mut q = sqlx::query(&marks_sql).bind(tenant).bind(default_cutoff);
        for (p, c) in &patterns {
            q = q.bind(p.clone()).bind(*c);
        }
        let marks = q.fetch_all(&mut *tx).await.map_err(db)?;
        for m in &marks {
            sqlx::query("UPDATE tenants SET pruned_through = $2 WHERE tenant_id = $1 AND pruned_through < $2")
                .bind(m.get::<String, _>(0))
                .bind(m.get::<i64, _>(1))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            // The channels' exits (sync rules' removals) go with the log: a client behind this
            // mark starts over (`scope.reset`).
            sqlx::query("DELETE FROM channel_exits WHERE tenant_id = $1 AND seq <= $2")
                .bind(m.get::<String, _>(0))
                .bind(m.get::<i64, _>(1))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let delete_sql = format!("DELETE FROM events WHERE {condition}");
        let mut q = sqlx::query(&delete_sql).bind(tenant).bind(default_cutoff);
        for (p, c) in &patterns {
            q = q.bind(p.clone()).bind(*c);
        }
        let deleted = q.execute(&mut *tx).await.map_err(db)?.rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    pub async fn conflicts(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConflictRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT body, status, resolution, resolved_by FROM conflicts \
             WHERE tenant_id = $1 AND ($2 = '' OR status = $2) ORDER BY created_at, conflict_id LIMIT $3",
        )
        .bind(tenant)
        .bind(status.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(conflict_from_row).collect()
    }

    /// Resolve an open conflict: `decide` gets the conflict and the current entity and returns
    /// the change to write (or none for "keep the server's version"). Audited in the same
    /// transaction. Returns the conflict row as resolved and the new tenant sequence.
    pub async fn resolve_conflict(
        &self,
        tenant: &TenantId,
        conflict_id: &str,
        actor: &str,
        resolution: &str,
        decide: impl FnOnce(&WireConflict, &mut ApplyState) -> Result<Option<Change>, StoreError>,
    ) -> Result<(ConflictRow, u64, Option<Followed>), StoreError> {
        let t = tenant.as_str();
        let (mut tx, _guard, seq) = self.begin_tenant(t).await?;
        let row = sqlx::query(
            "SELECT body, status, resolution, resolved_by FROM conflicts WHERE tenant_id = $1 AND conflict_id = $2",
        )
        .bind(t)
        .bind(conflict_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::not_found(format!("no conflict {conflict_id}")))?;
        let mut row = conflict_from_row(&row)?;
        let key = EntityKey::new(
            tenant.clone(),
            row.conflict.entity_type.clone(),
            row.conflict.entity_id.clone(),
        );
        self.ensure_indexed(&mut tx, t).await?;
        let mut state = ApplyState { version: seq, ..ApplyState::default() };
        if let Some(rec) = load_entity(&mut tx, &key).await? {
            state.entities.insert(key.clone(), rec);
        }
        let existed = state.entities.contains_key(&key);
        let records_before: Records = state.entities.clone();
        // `decide` first: a resolver the rules refuse learns nothing, not even the status.
        let change = decide(&row.conflict, &mut state)?;
        if row.status != "open" {
            return Err(StoreError::invalid(format!(
                "conflict {conflict_id} is already {}",
                row.status
            )));
        }
        let mut followed = None;
        let now = crate::clock::now_ms() as i64;
        if let Some(change) = &change {
            let before: BTreeSet<EntityKey> =
                if existed { [key.clone()].into() } else { BTreeSet::new() };
            let rules = self.rules.as_deref().map(|r| (r, &records_before));
            followed = write_changes(&mut tx, t, std::slice::from_ref(change), &before, rules, now)
                .await?;
            set_seq(&mut tx, t, state.version).await?;
        }
        sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolution = $3, resolved_by = $4, resolved_at = $5 \
             WHERE tenant_id = $1 AND conflict_id = $2",
        )
        .bind(t)
        .bind(conflict_id)
        .bind(resolution)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.insert_audit(
            &mut tx,
            &AuditEntry {
                tenant: t,
                actor,
                action: "conflict.resolve",
                target: conflict_id,
                outcome: resolution,
                details: json!({ "version": change.as_ref().map(|c| c.version) }),
            },
            now,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        row.status = "resolved".into();
        row.resolution = Some(resolution.into());
        row.resolved_by = Some(actor.into());
        Ok((row, state.version, followed))
    }

    pub async fn audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.audit_all(std::slice::from_ref(entry)).await
    }

    /// Several entries in one transaction (all or none).
    pub async fn audit_all(&self, entries: &[AuditEntry<'_>]) -> Result<(), StoreError> {
        let now = crate::clock::now_ms() as i64;
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        self.insert_audit_all(&mut tx, entries, now).await?;
        tx.commit().await.map_err(db)
    }

    /// Audit entries in the caller's transaction: each appended to its chain.
    async fn insert_audit_all(
        &self,
        conn: &mut sqlx::AnyConnection,
        entries: &[AuditEntry<'_>],
        now: i64,
    ) -> Result<(), StoreError> {
        audit::append(conn, self.backend, self.audit_key.as_deref(), entries, now).await
    }

    async fn insert_audit(
        &self,
        conn: &mut sqlx::AnyConnection,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.insert_audit_all(conn, std::slice::from_ref(entry), now).await
    }

    pub async fn audit_entries(&self, tenant: &str, limit: i64) -> Result<Vec<Value>, StoreError> {
        let rows = sqlx::query(
            "SELECT actor, action, target, outcome, details, at FROM audit_log WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                json!({
                    "actor": r.get::<String, _>(0),
                    "action": r.get::<String, _>(1),
                    "target": r.get::<String, _>(2),
                    "outcome": r.get::<String, _>(3),
                    "details": serde_json::from_str::<Value>(&r.get::<String, _>(4)).unwrap_or(Value::Null),
                    "at": r.get::<i64, _>(5),
                })
            })
            .collect())
    }

    /// Create a Class D transaction under an idempotency key, atomically. Returns the stored
    /// response and request hash when the key was used before (the caller compares hashes).
    pub async fn create_transaction(
        &self,
        row: &TransactionRow,
        idem_key: &str,
        request_hash: &str,
        response: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (mut tx, _guard, _) = self.begin_tenant(&row.tenant_id).await?;
        if let Some(existing) = sqlx::query(
            "SELECT response, request_hash FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2",
        )
        .bind(&row.tenant_id)
        .bind(idem_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        {
            return Ok(Some((existing.get(0), existing.get(1))));
        }
        sqlx::query(
            "INSERT INTO transactions (tenant_id, transaction_id, kind, body, user_id, status, result, callback_url, \
             callback_state, callback_attempts, created_at, updated_at, traceparent) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, 0, $9, $9, $10)",
        )
        .bind(&row.tenant_id)
        .bind(&row.transaction_id)
        .bind(&row.kind)
        .bind(row.body.to_string())
        .bind(&row.user_id)
        .bind(&row.status)
        .bind(row.callback_url.clone())
        .bind(&row.callback_state)
        .bind(row.created_at)
        .bind(row.traceparent.clone())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, transaction_id, response, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.tenant_id)
        .bind(idem_key)
        .bind(request_hash)
        .bind(&row.transaction_id)
        .bind(response)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(None)
    }

    pub async fn transaction(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<TransactionRow>, StoreError> {
        let row =
            sqlx::query(&format!("{TX_COLUMNS} WHERE tenant_id = $1 AND transaction_id = $2"))
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.as_ref().map(transaction_from_row).transpose()
    }

    /// Transactions to execute: pending, or claimed by a worker whose lease expired. `tenant`
    /// limits the scan to one tenant (`None`: all tenants).
    pub async fn pending_transactions(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{TX_COLUMNS} WHERE (status = 'pending' OR (status = 'processing' AND updated_at < $1)) \
             AND ($3 = '' OR tenant_id = $3) ORDER BY created_at LIMIT $2"
        ))
        .bind(now - lease_ms)
        .bind(limit)
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(transaction_from_row).collect()
    }

    /// Claim a transaction for execution (a lease of `lease_ms`). Only one claimant wins, across
    /// processes: the update is conditional on the row still being what the claimant read.
    pub async fn claim_transaction(
        &self,
        t: &TransactionRow,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let _guard = self.sqlite_writer().await;
        let claimed = sqlx::query(
            "UPDATE transactions SET status = 'processing', updated_at = $3 WHERE tenant_id = $1 AND transaction_id = $2 \
             AND (status = 'pending' OR (status = 'processing' AND updated_at < $4))",
        )
        .bind(&t.tenant_id)
        .bind(&t.transaction_id)
        .bind(now)
        .bind(now - lease_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// Settle a claimed transaction (confirmed / failed) and append its event to the log, in one
    /// transaction. Returns false when it was no longer claimed (another worker settled it).
    pub async fn settle_transaction(
        &self,
        t: &TransactionRow,
        status: &str,
        result: &Value,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let (mut tx, _guard, seq) = self.begin_tenant(&t.tenant_id).await?;
        let now = crate::clock::now_ms() as i64;
        let updated = sqlx::query(
            "UPDATE transactions SET status = $3, result = $4, updated_at = $5, \
             callback_state = CASE WHEN callback_url IS NULL THEN 'none' ELSE 'pending' END \
             WHERE tenant_id = $1 AND transaction_id = $2 AND status = 'processing'",
        )
        .bind(&t.tenant_id)
        .bind(&t.transaction_id)
        .bind(status)
        .bind(result.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        let payload = json!({
            "transactionId": t.transaction_id,
            "type": t.kind,
            "status": status,
            "result": result,
        });
        let mut metadata = json!({ "source": "sync-server", "userId": t.user_id });
        if self.rules.is_some() {
            // Under sync rules a transaction's outcome is its creator's (and tenant-wide readers').
            metadata[sdk_core::rules::EVENT_READERS] = json!([t.user_id]);
        }
        let seq = seq + 1;
        insert_event(
            &mut tx,
            &t.tenant_id,
            seq,
            event_id,
            &format!("transaction.{status}"),
            &payload,
            &metadata,
            true,
            now,
        )
        .await?;
        set_seq(&mut tx, &t.tenant_id, seq).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// Transactions whose webhook is due, of one tenant (`None`: every tenant).
    pub async fn callbacks_due(
        &self,
        now: i64,
        limit: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{TX_COLUMNS} WHERE callback_state = 'pending' AND callback_next_at <= $1 \
             AND ($3 = '' OR tenant_id = $3) ORDER BY updated_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(transaction_from_row).collect()
    }

    pub async fn record_callback(
        &self,
        t: &TransactionRow,
        state: &str,
        attempts: i64,
        next_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE transactions SET callback_state = $3, callback_attempts = $4, callback_next_at = $5 \
             WHERE tenant_id = $1 AND transaction_id = $2",
        )
        .bind(&t.tenant_id)
        .bind(&t.transaction_id)
        .bind(state)
        .bind(attempts)
        .bind(next_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Delete idempotency keys and reconcile responses older than `older_than_ms`.
    pub async fn prune_idempotency(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(older_than_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        let b = sqlx::query("DELETE FROM reconcile_requests WHERE created_at < $1")
            .bind(older_than_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(a + b)
    }

    /// The raw floor for benchmarks: plain inserts of `rows` entity rows in one transaction.
    pub async fn floor_insert(
        &self,
        tenant: &str,
        rows: &[(String, Vec<u8>)],
        base_version: i64,
    ) -> Result<(), StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (i, (id, record)) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO entities (tenant_id, entity_type, entity_id, version, deleted, record) VALUES ($1, 'floor', $2, $3, 0, $4) \
                 ON CONFLICT (tenant_id, entity_type, entity_id) DO UPDATE SET version = excluded.version, record = excluded.record",
            )
            .bind(tenant)
            .bind(id)
            .bind(base_version + i as i64)
            .bind(record.clone())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }
    /// Benchmark floor for the event bus: append `payloads` to a bare queue (the events table
    /// of a floor tenant: multi-row inserts, no tenant lock, no id check, no sequence row).
    pub async fn floor_queue_push(
        &self,
        tenant: &str,
        first_seq: i64,
        payloads: &[String],
    ) -> Result<(), StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (c, chunk) in payloads.chunks(CHUNK).enumerate() {
            let sql = format!(
                "INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at) VALUES {}",
                placeholders(chunk.len(), 9, 1)
            );
            let mut q = sqlx::query(&sql);
            for (i, p) in chunk.iter().enumerate() {
                let seq = first_seq + (c * CHUNK + i) as i64;
                q = q
                    .bind(tenant)
                    .bind(seq)
                    .bind(format!("f-{seq}"))
                    .bind("floor.event")
                    .bind(p.as_str())
                    .bind("{}")
                    .bind("1.0")
                    .bind(0i64)
                    .bind(0i64);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Benchmark floor: take and delete the oldest `n` rows of the bare queue in one
    /// transaction (the textbook SQL queue: `FOR UPDATE SKIP LOCKED` on PostgreSQL).
    pub async fn floor_queue_take(&self, tenant: &str, n: i64) -> Result<usize, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let rows = sqlx::query(&format!(
            "SELECT seq, payload FROM events WHERE tenant_id = $1 ORDER BY seq LIMIT $2{}",
            self.skip_locked()
        ))
        .bind(tenant)
        .bind(n)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(last) = rows.last().map(|r| r.get::<i64, _>(0)) {
            sqlx::query("DELETE FROM events WHERE tenant_id = $1 AND seq <= $2")
                .bind(tenant)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(rows.len())
    }
}

const TX_COLUMNS: &str = "SELECT tenant_id, transaction_id, kind, body, user_id, status, result, callback_url, \
    callback_state, callback_attempts, created_at, updated_at, traceparent FROM transactions";

fn transaction_from_row(r: &AnyRow) -> Result<TransactionRow, StoreError> {
    let json = |s: String| {
        serde_json::from_str::<Value>(&s)
            .map_err(|e| StoreError::internal(format!("stored json: {e}")))
    };
    Ok(TransactionRow {
        tenant_id: r.get(0),
        transaction_id: r.get(1),
        kind: r.get(2),
        body: json(r.get(3))?,
        user_id: r.get(4),
        status: r.get(5),
        result: r.get::<Option<String>, _>(6).map(json).transpose()?,
        callback_url: r.get(7),
        callback_state: r.get(8),
        callback_attempts: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
        traceparent: r.get(12),
    })
}

fn conflict_from_row(r: &AnyRow) -> Result<ConflictRow, StoreError> {
    Ok(ConflictRow {
        conflict: serde_json::from_str(&r.get::<String, _>(0))
            .map_err(|e| StoreError::internal(format!("stored conflict: {e}")))?,
        status: r.get(1),
        resolution: r.get(2),
        resolved_by: r.get(3),
    })
}

fn record_from_row(tenant: &str, r: &AnyRow) -> Result<EntityRecord, StoreError> {
    let bad = |e: sdk_core::Error| StoreError::internal(format!("stored entity: {e}"));
    let key = EntityKey::new(
        TenantId::new(tenant).map_err(bad)?,
        EntityType::new(r.get::<String, _>(0)).map_err(bad)?,
        EntityId::new(r.get::<String, _>(1)).map_err(bad)?,
    );
    decode_record(key, &r.get::<Vec<u8>, _>(2)).map_err(bad)
}

/// The columns [`event_from_row`] reads, in its order.
const EVENT_COLUMNS: &str = "seq, event_id, event_type, payload, metadata, schema_version, critical, COALESCE(occurred_at, created_at)";

/// An event's `timestamp`: when it happened (the publisher's) or else when it was stored.
fn event_timestamp(ms: i64) -> String {
    sdk_core::hlc::HlcTimestamp::new(ms.max(0) as u64, 0).to_string()
}

/// The event readers of the log get for `e`, appended at `seq` at `at` (epoch ms): what
/// [`event_from_row`] reads back, without reading it.
pub fn appended_event(tenant: &TenantId, seq: u64, e: &NewEvent, at: i64) -> WireEvent {
    WireEvent {
        sequence: seq,
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        tenant_id: tenant.clone(),
        timestamp: event_timestamp(e.occurred_at.unwrap_or(at)),
        payload: e.payload.clone(),
        metadata: crate::trace::stamp(&e.metadata),
        schema_version: e.schema_version.clone(),
    }
}

/// An event's metadata as stored: every event appended while a request (or a frame, or a
/// transaction's processing) runs carries its trace id (`crate::trace`). Every write of an
/// event goes through here, and [`appended_event`] stamps its copy the same way.
fn event_metadata(metadata: &Value) -> String {
    crate::trace::stamp(metadata).to_string()
}

fn event_from_row(tenant: &str, r: &AnyRow) -> Result<StoredEvent, StoreError> {
    let json = |s: String| serde_json::from_str::<Value>(&s).unwrap_or(Value::Null);
    let created: i64 = r.get(7);
    Ok(StoredEvent {
        event: WireEvent {
            sequence: r.get::<i64, _>(0) as u64,
            event_id: r.get(1),
            event_type: r.get(2),
            tenant_id: TenantId::new(tenant).map_err(|e| StoreError::internal(e.to_string()))?,
            timestamp: event_timestamp(created),
            payload: json(r.get(3)),
            metadata: json(r.get(4)),
            schema_version: r.get(5),
        },
        critical: r.get::<i64, _>(6) != 0,
    })
}

async fn load_entity(
    conn: &mut sqlx::AnyConnection,
    key: &EntityKey,
) -> Result<Option<EntityRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT entity_type, entity_id, record FROM entities WHERE tenant_id = $1 AND entity_type = $2 AND entity_id = $3",
    )
    .bind(key.tenant.as_str())
    .bind(key.entity_type.as_str())
    .bind(key.entity_id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(|r| record_from_row(key.tenant.as_str(), &r)).transpose()
}

/// Everything `footprint` touches, read inside the batch's transaction: the entities (and which
/// of them existed), the clients' ledgers and the stored results of its operations.
async fn load_footprint(
    tx: &mut Tx<'_>,
    t: &str,
    seq: u64,
    footprint: &Footprint,
) -> Result<(ApplyState, BTreeSet<EntityKey>), StoreError> {
    let mut state = ApplyState { version: seq, ..ApplyState::default() };
    let keys: Vec<&EntityKey> = footprint.entities.iter().collect();
    for rec in load_entities(tx, t, &keys).await? {
        state.entities.insert(rec.key.clone(), rec);
    }
    let existed: BTreeSet<EntityKey> = state.entities.keys().cloned().collect();
    for c in &footprint.clients {
        let row = sqlx::query(
            "SELECT last_seq FROM client_ledgers WHERE tenant_id = $1 AND client_id = $2",
        )
        .bind(t)
        .bind(c.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
        if let Some(row) = row {
            state.ledgers.insert(c.clone(), row.get::<i64, _>(0) as u64);
        }
    }
    let ids: Vec<&OperationId> = footprint.operations.iter().collect();
    for (id, stored) in load_results(tx, t, &ids).await? {
        state.results.insert(id, stored);
    }
    Ok((state, existed))
}

/// Write what a batch produced: entity records, changed ledgers, fresh results, conflicts.
async fn write_outcome(
    tx: &mut Tx<'_>,
    t: &str,
    (outcome, state, ledgers_before, existed): (
        &BatchOutcome,
        &ApplyState,
        &std::collections::BTreeMap<ClientId, u64>,
        &BTreeSet<EntityKey>,
    ),
    rules: Option<(&SyncRules, &Records)>,
    now: i64,
) -> Result<Option<Followed>, StoreError> {
    let followed = write_changes(tx, t, &outcome.changes, existed, rules, now).await?;
    for (client, seq) in &state.ledgers {
        if ledgers_before.get(client) != Some(seq) {
            sqlx::query(
                "INSERT INTO client_ledgers (tenant_id, client_id, last_seq) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id, client_id) DO UPDATE SET last_seq = excluded.last_seq",
            )
            .bind(t)
            .bind(client.as_str())
            .bind(*seq as i64)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
    }
    // Unrecorded refusals (gaps, reused numbers) are not stored: the engine did not record them.
    let fresh: Vec<(&sdk_core::apply::OpResult, &StoredResult)> = outcome
        .results
        .iter()
        .filter(|r| !r.duplicate)
        .filter_map(|r| {
            state
                .results
                .get(&r.operation_id)
                .filter(|s| s.client_seq == r.client_seq)
                .map(|s| (r, s))
        })
        .collect();
    insert_results(tx, t, &fresh, now).await?;
    for c in &outcome.conflicts {
        let wire = WireConflict::from_conflict(c);
        sqlx::query(
                "INSERT INTO conflicts (tenant_id, conflict_id, entity_type, entity_id, body, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'open', $6) ON CONFLICT (tenant_id, conflict_id) DO NOTHING",
            )
            .bind(t)
            .bind(&c.id)
            .bind(c.key.entity_type.as_str())
            .bind(c.key.entity_id.as_str())
            .bind(serde_json::to_string(&wire).expect("serializes"))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(followed)
}

async fn entities_since(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    since: u64,
    limit: i64,
) -> Result<(Vec<WireEntity>, bool), StoreError> {
    let rows = sqlx::query(
        "SELECT entity_type, entity_id, record FROM entities WHERE tenant_id = $1 AND version > $2 ORDER BY version LIMIT $3",
    )
    .bind(tenant)
    .bind(since as i64)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let has_more = rows.len() as i64 > limit;
    let items = rows
        .iter()
        .take(limit as usize)
        .map(|r| record_from_row(tenant, r).map(|rec| WireEntity::from_record(&rec)))
        .collect::<Result<_, _>>()?;
    Ok((items, has_more))
}

async fn pruned_through(conn: &mut sqlx::AnyConnection, tenant: &str) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT pruned_through FROM tenants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    Ok(row.map(|r| r.get::<i64, _>(0) as u64).unwrap_or(0))
}

async fn set_seq(conn: &mut sqlx::AnyConnection, tenant: &str, seq: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE tenants SET seq = $2 WHERE tenant_id = $1")
        .bind(tenant)
        .bind(seq as i64)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// `($a, $b, …)` placeholders for `rows` rows of `cols` values, numbered from `first`.
fn placeholders(rows: usize, cols: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> =
                (0..cols).map(|c| format!("${}", first + r * cols + c)).collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows per multi-row statement (well under SQLite's and PostgreSQL's parameter limits).
const CHUNK: usize = 100;

async fn load_entities(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    keys: &[&EntityKey],
) -> Result<Vec<EntityRecord>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "SELECT entity_type, entity_id, record FROM entities WHERE tenant_id = $1 AND (entity_type, entity_id) IN ({})",
            placeholders(chunk.len(), 2, 2)
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for k in chunk {
            q = q.bind(k.entity_type.as_str()).bind(k.entity_id.as_str());
        }
        for row in q.fetch_all(&mut *conn).await.map_err(db)? {
            out.push(record_from_row(tenant, &row)?);
        }
    }
    Ok(out)
}

async fn load_results(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    ids: &[&OperationId],
) -> Result<Vec<(OperationId, StoredResult)>, StoreError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT operation_id, client_id, client_seq, result FROM operation_results WHERE tenant_id = $1 AND operation_id IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for row in q.fetch_all(&mut *conn).await.map_err(db)? {
            let bad = |e: String| StoreError::internal(format!("stored result: {e}"));
            let id = OperationId::new(row.get::<String, _>(0)).map_err(|e| bad(e.to_string()))?;
            let client_id =
                ClientId::new(row.get::<String, _>(1)).map_err(|e| bad(e.to_string()))?;
            let result: WireOpResult =
                serde_json::from_str(&row.get::<String, _>(3)).map_err(|e| bad(e.to_string()))?;
            out.push((
                id,
                StoredResult {
                    client_id,
                    client_seq: row.get::<Option<i64>, _>(2).map(|s| s as u64),
                    outcome: result.to_outcome(),
                },
            ));
        }
    }
    Ok(out)
}

async fn insert_results(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    results: &[(&sdk_core::apply::OpResult, &StoredResult)],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in results.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO operation_results (tenant_id, operation_id, client_id, client_seq, result, created_at) VALUES {} \
             ON CONFLICT (tenant_id, operation_id) DO NOTHING",
            placeholders(chunk.len(), 6, 1)
        );
        let mut q = sqlx::query(&sql);
        for (r, stored) in chunk {
            q = q
                .bind(tenant)
                .bind(r.operation_id.as_str())
                .bind(stored.client_id.as_str())
                .bind(r.client_seq.map(|s| s as i64))
                .bind(serde_json::to_string(&WireOpResult::from_result(r)).expect("serializes"))
                .bind(now);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Write a batch's changes: each changed entity once with its final record (and, under sync
/// rules, its index rows), and one `<type>.created|updated|deleted` event per change (an entity
/// is created by its first change when it did not exist before the batch). Returns what it did
/// to the rules' index.
async fn write_changes(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    changes: &[Change],
    existed: &BTreeSet<EntityKey>,
    rules: Option<(&SyncRules, &Records)>,
    now: i64,
) -> Result<Option<Followed>, StoreError> {
    let mut latest: std::collections::BTreeMap<&EntityKey, &Change> =
        std::collections::BTreeMap::new();
    for c in changes {
        latest.insert(&c.record.key, c);
    }
    let finals: Vec<&Change> = latest.into_values().collect();
    for chunk in finals.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO entities (tenant_id, entity_type, entity_id, version, deleted, record) VALUES {} \
             ON CONFLICT (tenant_id, entity_type, entity_id) DO UPDATE SET version = excluded.version, \
             deleted = excluded.deleted, record = excluded.record",
            placeholders(chunk.len(), 6, 1)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            let rec = &c.record;
            q = q
                .bind(tenant)
                .bind(rec.key.entity_type.as_str())
                .bind(rec.key.entity_id.as_str())
                .bind(c.version as i64)
                .bind(rec.is_deleted() as i64)
                .bind(encode_record(rec));
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    let followed = match rules {
        Some((rules, before)) => {
            let records: Vec<&EntityRecord> = finals.iter().map(|c| &c.record).collect();
            Some(rules::follow_changes(conn, tenant, rules, &records, before).await?)
        }
        None => None,
    };
    let rules = rules.map(|(r, _)| r);
    let mut exists = existed.clone();
    // Under sync rules an entity's event goes only to its readers: its channels travel in the
    // event's metadata (`sdk_core::rules::EVENT_CHANNELS`).
    let metadata = |rec: &EntityRecord| {
        event_metadata(&match rules {
            None => json!({ "source": "reconciliation" }),
            Some(r) => json!({
                "source": "reconciliation",
                (sdk_core::rules::EVENT_CHANNELS): r.record_channels(rec),
            }),
        })
    };
    for chunk in changes.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at) VALUES {}",
            placeholders(chunk.len(), 9, 1)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            let rec = &c.record;
            let created = exists.insert(rec.key.clone());
            let verb = if rec.is_deleted() {
                "deleted"
            } else if created {
                "created"
            } else {
                "updated"
            };
            let payload = json!({
                "entity": WireEntity::from_record(rec),
                "operationId": c.operation_id.as_ref().map(OperationId::as_str),
                "clientId": c.client_id.as_ref().map(ClientId::as_str),
            });
            q = q
                .bind(tenant)
                .bind(c.version as i64)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(format!("{}.{verb}", rec.key.entity_type))
                .bind(payload.to_string())
                .bind(metadata(rec))
                .bind("1.0")
                .bind(0i64)
                .bind(now);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(followed)
}

#[allow(clippy::too_many_arguments)]
async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    seq: u64,
    event_id: &str,
    event_type: &str,
    payload: &Value,
    metadata: &Value,
    critical: bool,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, '1.0', $7, $8)",
    )
    .bind(tenant)
    .bind(seq as i64)
    .bind(event_id)
    .bind(event_type)
    .bind(payload.to_string())
    .bind(event_metadata(metadata))
    .bind(critical as i64)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
