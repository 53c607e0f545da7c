//! The event bus's SQL: publishing onto the tenant's log, named subscriptions, consumer-group
//! deliveries with leases, the dead-letter queue, and retention by event type.
//!
//! A consumer group keeps one row per event it has taken from the log but not finished
//! (`event_deliveries`). Claiming picks visible rows (`visible_at <= now`) in sequence order and
//! leases them (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so members in several processes never
//! take the same row; SQLite has one writer). An ack deletes the row if the caller still holds
//! the lease; a nack or an expired lease makes it visible again later; after `max_deliveries`
//! deliveries it moves to `dead_letters` with its original data.

use super::StoreError;
use super::{Backend, EVENT_COLUMNS, Store, Tx, db, event_from_row, placeholders, set_seq};
use crate::store::AuditEntry;
use sdk_core::ErrorCode;
use sdk_core::protocol::{EventFilter, WireEvent};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::HashMap;

/// An event to publish (architecture.md §5 fields; the tenant comes from the caller).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
    pub schema_version: String,
    /// The publisher's timestamp, epoch ms (`None`: the time it was stored).
    pub occurred_at: Option<i64>,
    /// Kept past retention (transaction events and the configured critical types).
    pub critical: bool,
}

/// What an append did: each event's outcome, and what a reader at the tail needs to take the
/// new events from memory instead of reading them back.
#[derive(Debug, Clone)]
pub struct Appended {
    pub outcomes: Vec<Published>,
    /// The sequence of the tenant's last event before this append, when known exactly (every
    /// event at or below it was committed and none lies between it and the first new one).
    pub prev_event: Option<u64>,
    /// The time the new events were stored at, epoch ms (their `created_at`).
    pub at: i64,
}

/// The outcome of publishing one event: its place in the log; `duplicate` when an event with
/// this id was already there (publishing is idempotent by `eventId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub sequence: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// One consumer position the server keeps, advanced by acks.
    Durable,
    /// Competing consumers: each event is leased to one member at a time.
    Group,
}

impl SubscriptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionKind::Durable => "durable",
            SubscriptionKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "durable" => Some(SubscriptionKind::Durable),
            "group" => Some(SubscriptionKind::Group),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub name: String,
    pub kind: SubscriptionKind,
    pub filter: EventFilter,
    /// Durable: acknowledged through here. Group: events up to here are taken from the log.
    pub cursor: u64,
    pub max_deliveries: u32,
    pub lease_ms: u64,
    pub backoff_ms: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Counts for a subscription's status and the lag metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Taken from the log and not yet acknowledged (leased, waiting or backing off).
    pub pending: u64,
    /// Leased to a member right now.
    pub leased: u64,
    /// In the dead-letter queue, not reprocessed.
    pub dead: u64,
}

/// One event leased to a consumer.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: WireEvent,
    /// Deliveries so far, this one included.
    pub attempt: u32,
    pub lease_token: String,
    pub lease_expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackOutcome {
    /// Visible again at this time (epoch ms).
    Retry { at: i64 },
    /// That was the last delivery: the event is in the dead-letter queue.
    DeadLettered { dlq_id: String },
    /// The caller no longer holds the lease (it expired and another member took the event).
    LeaseLost,
}

/// A dead-lettered event and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub dlq_id: String,
    pub subscription: String,
    /// The event as it will be reprocessed (`payload` may have been edited).
    pub event: WireEvent,
    pub original_payload: Value,
    pub reason: String,
    pub attempts: u32,
    pub consumer: Option<String>,
    pub first_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub dead_at: i64,
    /// `dead`, or `reprocessed` once sent back to its group.
    pub status: String,
    pub updated_at: i64,
}

/// DLQ search criteria; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct DlqQuery {
    pub subscription: Option<String>,
    /// An event-type name or `prefix.*`.
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub dead_after: Option<i64>,
    pub dead_before: Option<i64>,
    pub limit: i64,
}

/// `pattern` (`name` or `prefix*`) as a LIKE pattern with `\` escapes.
pub(super) fn like_pattern(pattern: &str) -> String {
    let (body, wild) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (pattern, false),
    };
    let mut out = String::with_capacity(body.len() + 1);
    for ch in body.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    if wild {
        out.push('%');
    }
    out
}

fn json_text(s: String) -> Value {
    serde_json::from_str(&s).unwrap_or(Value::Null)
}

/// Log pages a claim scans at most for a selective filter before answering.
const MAX_FILL_PAGES: usize = 50;

const SUB_COLUMNS: &str = "name, kind, event_types, filter, cursor, max_deliveries, lease_ms, backoff_ms, created_at, updated_at";

fn subscription_from_row(r: &AnyRow) -> Result<SubscriptionRow, StoreError> {
    let kind: String = r.get(1);
    let event_types: Vec<String> = serde_json::from_str(&r.get::<String, _>(2))
        .map_err(|e| StoreError::internal(format!("stored subscription patterns: {e}")))?;
    let attributes = serde_json::from_str(&r.get::<String, _>(3))
        .map_err(|e| StoreError::internal(format!("stored subscription filter: {e}")))?;
    Ok(SubscriptionRow {
        name: r.get(0),
        kind: SubscriptionKind::parse(&kind)
            .ok_or_else(|| StoreError::internal(format!("stored subscription kind {kind:?}")))?,
        filter: EventFilter { event_types, attributes },
        cursor: r.get::<i64, _>(4) as u64,
        max_deliveries: r.get::<i64, _>(5) as u32,
        lease_ms: r.get::<i64, _>(6) as u64,
        backoff_ms: r.get::<i64, _>(7) as u64,
        created_at: r.get(8),
        updated_at: r.get(9),
    })
}

const DLQ_COLUMNS: &str = "dlq_id, subscription, seq, event_id, event_type, payload, original_payload, metadata, schema_version, event_time, reason, attempts, consumer, first_attempt_at, last_attempt_at, dead_at, status, updated_at";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// An event's own columns, in the events table's order (`event_id` … `critical`): both append
/// paths bind them alike.
fn bind_event<'q>(q: AnyQuery<'q>, e: &'q NewEvent) -> AnyQuery<'q> {
    q.bind(e.event_id.as_str())
        .bind(e.event_type.as_str())
        .bind(e.payload.to_string())
        .bind(super::event_metadata(&e.metadata))
        .bind(e.schema_version.as_str())
        .bind(e.critical as i64)
}

/// A unique index refused a row (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "23505")
}

fn dead_letter_from_row(tenant: &str, r: &AnyRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        dlq_id: r.get(0),
        subscription: r.get(1),
        event: WireEvent {
            sequence: r.get::<i64, _>(2) as u64,
            event_id: r.get(3),
            event_type: r.get(4),
            tenant_id: sdk_core::ids::TenantId::new(tenant)
                .map_err(|e| StoreError::internal(e.to_string()))?,
            timestamp: sdk_core::hlc::HlcTimestamp::new(r.get::<i64, _>(9).max(0) as u64, 0)
                .to_string(),
            payload: json_text(r.get(5)),
            metadata: json_text(r.get(7)),
            schema_version: r.get(8),
        },
        original_payload: json_text(r.get(6)),
        reason: r.get(10),
        attempts: r.get::<i64, _>(11) as u32,
        consumer: r.get(12),
        first_attempt_at: r.get(13),
        last_attempt_at: r.get(14),
        dead_at: r.get(15),
        status: r.get(16),
        updated_at: r.get(17),
    })
}

/// Where each event of a publish goes, before sequences are allocated: already in the log
/// (an earlier publish), or the n-th new one (1-based; an id repeated within the batch takes
/// the slot of its first occurrence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Known(u64),
    Fresh(u64),
}

/// The log's last sequence and the sequences of `events`' ids already in it, read in the
/// transaction that will append (the tenant's writer held).
async fn known_events(
    tx: &mut Tx<'_>,
    tenant: &str,
    events: &[NewEvent],
) -> Result<(u64, HashMap<String, u64>), StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let mut known = HashMap::new();
    let mut prev = 0;
    // The log's end rides with the first chunk's lookup (one statement, not two); its row is
    // marked by an empty id, which no event has (ids are UUIDs).
    const END: &str =
        "SELECT '', COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = $1 UNION ALL ";
    for (i, chunk) in ids.chunks(super::CHUNK).enumerate() {
        let sql = format!(
            "{}SELECT event_id, seq FROM events WHERE tenant_id = $1 AND event_id IN ({})",
            if i == 0 { END } else { "" },
            placeholders(chunk.len(), 1, 2)
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await.map_err(db)? {
            let (id, seq): (String, i64) = (r.get(0), r.get(1));
            match id.is_empty() {
                true => prev = seq as u64,
                false => drop(known.insert(id, seq as u64)),
            }
        }
    }
    Ok((prev, known))
}

/// Each event's [`Slot`], and how many are new.
pub(super) fn classify(events: &[NewEvent], known: &HashMap<String, u64>) -> (Vec<Slot>, u64) {
    let mut fresh_ids: HashMap<&str, u64> = HashMap::new();
    let slots = events
        .iter()
        .map(|e| match known.get(&e.event_id) {
            Some(&s) => Slot::Known(s),
            None => {
                let next = fresh_ids.len() as u64 + 1;
                Slot::Fresh(*fresh_ids.entry(e.event_id.as_str()).or_insert(next))
            }
        })
        .collect();
    (slots, fresh_ids.len() as u64)
}

/// The outcomes of a publish whose new events follow sequence `base`, and the rows to insert.
pub(super) fn allocate<'a>(
    events: &'a [NewEvent],
    slots: &[Slot],
    base: u64,
) -> (Vec<Published>, Vec<(u64, &'a NewEvent)>) {
    let mut rows = Vec::new();
    let out = events
        .iter()
        .zip(slots)
        .map(|(e, slot)| {
            let (sequence, duplicate) = match *slot {
                Slot::Known(s) => (s, true),
                Slot::Fresh(n) if n as usize > rows.len() => {
                    rows.push((base + n, e));
                    (base + n, false)
                }
                Slot::Fresh(n) => (base + n, true),
            };
            Published { event_id: e.event_id.clone(), sequence, duplicate }
        })
        .collect();
    (out, rows)
}

/// Insert `rows` (sequence, event) into the tenant's log.
async fn insert_events(
    tx: &mut Tx<'_>,
    tenant: &str,
    rows: &[(u64, &NewEvent)],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(super::CHUNK) {
        let sql = format!(
            "INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at, occurred_at) VALUES {}",
            placeholders(chunk.len(), 10, 1)
        );
        let mut q = sqlx::query(&sql);
        for (s, e) in chunk {
            q = bind_event(q.bind(tenant).bind(*s as i64), e).bind(now).bind(e.occurred_at);
        }
        q.execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// A batch's distinct events in order of first appearance, and each id's index among them
/// (later copies of an id within the batch are duplicates of its first).
fn distinct(events: &[NewEvent]) -> (Vec<&NewEvent>, HashMap<&str, usize>) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&NewEvent> = Vec::new();
    for e in events {
        first.entry(e.event_id.as_str()).or_insert_with(|| {
            unique.push(e);
            unique.len() - 1
        });
    }
    (unique, first)
}

/// Each event's outcome, from where each distinct id landed: (sequence, in the log before).
fn outcomes(
    events: &[NewEvent],
    unique: &[&NewEvent],
    first: &HashMap<&str, usize>,
    placed: &HashMap<String, (u64, bool)>,
) -> Result<Vec<Published>, String> {
    events
        .iter()
        .map(|e| {
            let &(sequence, known) = placed
                .get(&e.event_id)
                .ok_or_else(|| format!("publish: no outcome for {}", e.event_id))?;
            // The first copy of an id in this batch is the one appended (unless known before).
            let is_first = std::ptr::eq(unique[first[e.event_id.as_str()]], e);
            Ok(Published { event_id: e.event_id.clone(), sequence, duplicate: known || !is_first })
        })
        .collect()
}

/// The event time (epoch ms) encoded in a wire timestamp.
fn event_time(e: &WireEvent) -> i64 {
    sdk_core::hlc::HlcTimestamp::parse(&e.timestamp).map(|t| t.millis as i64).unwrap_or(0)
}

impl Store {
    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite (its one writer is held).
    pub(super) fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// Append `events` to the tenant's log in one transaction (durable when this returns).
    /// An event id already in the log — from an earlier call or earlier in this batch — is not
    /// appended again; its outcome says `duplicate` with the original sequence.
    #[tracing::instrument(name = "store.transaction", skip_all, fields(tenant = %tenant, events = events.len()))]
    pub async fn publish_events(
        &self,
        tenant: &str,
        events: &[NewEvent],
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            let at = crate::clock::now_ms() as i64;
            return Ok(Appended { outcomes: Vec::new(), prev_event: None, at });
        }
        if self.backend == Backend::Postgres {
            match self.publish_in_one_statement(tenant, events).await {
                // The same event id published concurrently: decided again under the lock.
                Err(e) if is_unique_violation(&e) => {}
                other => return other.map_err(db),
            }
        }
        if let Some(appender) = &self.appender {
            // Its metadata stamped here, where the request's trace is current.
            let events = events
                .iter()
                .map(|e| NewEvent { metadata: crate::trace::stamp(&e.metadata), ..e.clone() })
                .collect();
            let _writer = self.sqlite_writer().await;
            let now = crate::clock::now_ms() as i64;
            return appender.append(tenant, events, now).await;
        }
        let (mut tx, _guard, seq) = self.begin_tenant(tenant).await?;
        // Under the tenant's lock: every event before ours is committed and seen.
        let (prev, known) = known_events(&mut tx, tenant, events).await?;
        let (slots, fresh) = classify(events, &known);
        let now = crate::clock::now_ms() as i64;
        let (out, rows) = allocate(events, &slots, seq);
        insert_events(&mut tx, tenant, &rows, now).await?;
        if fresh > 0 {
            set_seq(&mut tx, tenant, seq + fresh).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Appended { outcomes: out, prev_event: Some(prev), at: now })
    }

    /// PostgreSQL: the append of [`Self::publish_events`] as one statement, so one round trip to
    /// the database instead of seven (begin, tenant row, lock, known ids, insert, sequence,
    /// commit); with CPU contended, each round trip waits for the server process to be scheduled.
    /// The tenant row's upsert takes its lock and moves its sequence past the new events; an id
    /// committed by a concurrent publish after this statement's snapshot fails the unique index
    /// (the caller then takes the locked path).
    async fn publish_in_one_statement(
        &self,
        tenant: &str,
        events: &[NewEvent],
    ) -> Result<Appended, sqlx::Error> {
        let (unique, first) = distinct(events);
        let values: Vec<String> = (0..unique.len())
            .map(|r| {
                let p = 2 + r * 8;
                format!(
                    "(${}::bigint, ${}::text, ${}::text, ${}::text, ${}::text, ${}::text, ${}::bigint, ${}::bigint)",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7
                )
            })
            .collect();
        let now_param = 2 + unique.len() * 8;
        let sql = format!(
            "WITH v (ord, event_id, event_type, payload, metadata, schema_version, critical, occurred_at) AS (VALUES {values}), \
             known AS (SELECT e.event_id, e.seq FROM events e JOIN v ON e.event_id = v.event_id WHERE e.tenant_id = $1), \
             fresh AS (SELECT v.*, row_number() OVER (ORDER BY v.ord) AS rn FROM v WHERE v.event_id NOT IN (SELECT event_id FROM known)), \
             n AS (SELECT count(*) AS c FROM fresh), \
             snap AS (SELECT COALESCE((SELECT seq FROM tenants WHERE tenant_id = $1), 0) AS seq, \
                             COALESCE((SELECT max(seq) FROM events WHERE tenant_id = $1), 0) AS last_event), \
             t AS (INSERT INTO tenants AS t (tenant_id, seq, pruned_through) SELECT $1, n.c, 0 FROM n \
                   ON CONFLICT (tenant_id) DO UPDATE SET seq = t.seq + EXCLUDED.seq RETURNING t.seq), \
             ins AS (INSERT INTO events (tenant_id, seq, event_id, event_type, payload, metadata, schema_version, critical, created_at, occurred_at) \
                     SELECT $1, t.seq - n.c + f.rn, f.event_id, f.event_type, f.payload, f.metadata, f.schema_version, f.critical, ${now_param}, f.occurred_at \
                     FROM fresh f, t, n RETURNING event_id, seq) \
             SELECT event_id, seq, 0::bigint AS kind FROM ins UNION ALL SELECT event_id, seq, 1::bigint FROM known \
             UNION ALL SELECT '', CASE WHEN snap.seq = t.seq - n.c THEN snap.last_event ELSE -1 END, 2::bigint FROM snap, t, n",
            values = values.join(", "),
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for (i, e) in unique.iter().enumerate() {
            q = bind_event(q.bind(i as i64), e).bind(e.occurred_at);
        }
        let now = crate::clock::now_ms() as i64;
        let rows = q.bind(now).fetch_all(&self.pool).await?;
        let mut placed: HashMap<String, (u64, bool)> = HashMap::with_capacity(rows.len());
        // The statement's snapshot predates its wait for the tenant's lock: its last event is
        // exact only if nobody moved the tenant's sequence in between (the last row says).
        let mut prev_event = None;
        for r in rows {
            let (seq, kind) = (r.get::<i64, _>(1), r.get::<i64, _>(2));
            match kind {
                2 => prev_event = u64::try_from(seq).ok(),
                _ => drop(placed.insert(r.get(0), (seq as u64, kind == 1))),
            }
        }
        let out = outcomes(events, &unique, &first, &placed).map_err(sqlx::Error::Protocol)?;
        Ok(Appended { outcomes: out, prev_event, at: now })
    }

    pub async fn subscription(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        load_subscription(&mut conn, tenant, name).await
    }

    pub async fn subscriptions(&self, tenant: &str) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLUMNS} FROM event_subscriptions WHERE tenant_id = $1 ORDER BY name"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(subscription_from_row).collect()
    }

    /// Create a subscription or change its settings. `start` (a sequence) positions it: a new
    /// one without `start` begins at the log's end; an existing one keeps its position unless
    /// `start` is given, which also drops a group's pending deliveries (a seek). Returns the
    /// stored row and whether it was created.
    pub async fn put_subscription(
        &self,
        tenant: &str,
        want: &SubscriptionRow,
        start: Option<u64>,
    ) -> Result<(SubscriptionRow, bool), StoreError> {
        let (mut tx, _guard, seq) = self.begin_tenant(tenant).await?;
        let now = crate::clock::now_ms() as i64;
        let existing = load_subscription(&mut tx, tenant, &want.name).await?;
        let patterns = serde_json::to_string(&want.filter.event_types).expect("strings serialize");
        let attributes = serde_json::to_string(&want.filter.attributes).expect("json serializes");
        let start = start.map(|s| s.min(seq));
        let created = existing.is_none();
        match existing {
            Some(old) if old.kind != want.kind => {
                return Err(StoreError::invalid(format!(
                    "subscription {:?} is a {} subscription; delete it to change its kind",
                    want.name,
                    old.kind.as_str()
                )));
            }
            Some(old) => {
                let cursor = start.unwrap_or(old.cursor);
                sqlx::query(
                    "UPDATE event_subscriptions SET event_types = $3, filter = $4, cursor = $5, max_deliveries = $6, \
                     lease_ms = $7, backoff_ms = $8, updated_at = $9 WHERE tenant_id = $1 AND name = $2",
                )
                .bind(tenant)
                .bind(&want.name)
                .bind(&patterns)
                .bind(&attributes)
                .bind(cursor as i64)
                .bind(want.max_deliveries as i64)
                .bind(want.lease_ms as i64)
                .bind(want.backoff_ms as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if start.is_some() {
                    sqlx::query(
                        "DELETE FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2",
                    )
                    .bind(tenant)
                    .bind(&want.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO event_subscriptions (tenant_id, name, kind, event_types, filter, cursor, max_deliveries, lease_ms, backoff_ms, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
                )
                .bind(tenant)
                .bind(&want.name)
                .bind(want.kind.as_str())
                .bind(&patterns)
                .bind(&attributes)
                .bind(start.unwrap_or(seq) as i64)
                .bind(want.max_deliveries as i64)
                .bind(want.lease_ms as i64)
                .bind(want.backoff_ms as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
        }
        let row = load_subscription(&mut tx, tenant, &want.name).await?.ok_or_else(|| {
            StoreError::internal("a subscription vanished inside its transaction")
        })?;
        tx.commit().await.map_err(db)?;
        Ok((row, created))
    }

    /// Delete a subscription and its pending deliveries (its dead letters stay).
    pub async fn delete_subscription(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let n = sqlx::query("DELETE FROM event_subscriptions WHERE tenant_id = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    pub async fn subscription_stats(
        &self,
        tenant: &str,
        name: &str,
        now: i64,
    ) -> Result<SubscriptionStats, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN lease_token IS NOT NULL AND visible_at > $3 THEN 1 ELSE 0 END), 0) \
             FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2",
        )
        .bind(tenant)
        .bind(name)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let dead: i64 = sqlx::query(
            "SELECT COUNT(*) FROM dead_letters WHERE tenant_id = $1 AND subscription = $2 AND status = 'dead'",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?
        .get(0);
        Ok(SubscriptionStats {
            pending: r.get::<i64, _>(0) as u64,
            leased: r.get::<i64, _>(1) as u64,
            dead: dead as u64,
        })
    }

    /// Durable subscriptions: acknowledged through `sequence` (never backwards, never past the
    /// log's end). Returns the position after the call.
    pub async fn advance_cursor(
        &self,
        tenant: &str,
        name: &str,
        sequence: u64,
    ) -> Result<u64, StoreError> {
        let _guard = self.sqlite_writer().await;
        sqlx::query(
            "UPDATE event_subscriptions SET cursor = $3, updated_at = $4 WHERE tenant_id = $1 AND name = $2 \
             AND kind = 'durable' AND cursor < $3 AND $3 <= (SELECT seq FROM tenants WHERE tenant_id = $1)",
        )
        .bind(tenant)
        .bind(name)
        .bind(sequence as i64)
        .bind(crate::clock::now_ms() as i64)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let row = sqlx::query(
            "SELECT cursor, kind FROM event_subscriptions WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(r) if r.get::<String, _>(1) == "durable" => Ok(r.get::<i64, _>(0) as u64),
            Some(_) => Err(StoreError::invalid(format!(
                "{name:?} is a consumer group: acknowledge its deliveries, not a position"
            ))),
            None => Err(StoreError::not_found(format!("no subscription {name:?}"))),
        }
    }

    /// Lease up to `max` events of consumer group `sub` to `consumer` until `now + lease`.
    /// In one transaction: read the oldest visible deliveries; when there are fewer than `max`,
    /// take new matching events from the log first (the member holding the subscription's row
    /// lock does this; the others skip it); move those whose last allowed delivery ran out to
    /// the dead-letter queue; lease the rest. Returns the leased events and how many were
    /// dead-lettered.
    pub async fn claim(
        &self,
        tenant: &str,
        sub: &SubscriptionRow,
        consumer: &str,
        max: u32,
        now: i64,
    ) -> Result<(Vec<Claimed>, usize), StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let name = sub.name.as_str();
        let filler = sqlx::query(&format!(
            "SELECT cursor FROM event_subscriptions WHERE tenant_id = $1 AND name = $2{}",
            self.skip_locked()
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|r| r.get::<i64, _>(0) as u64);
        let mut visible = self.visible_deliveries(&mut tx, tenant, name, now, max).await?;
        if visible.len() < max as usize
            && let Some(cursor) = filler
            && self.fill_group(&mut tx, tenant, sub, cursor, max, now).await?
        {
            visible = self.visible_deliveries(&mut tx, tenant, name, now, max).await?;
        }
        let (expired, rows): (Vec<AnyRow>, Vec<AnyRow>) =
            visible.into_iter().partition(|r| r.get::<i64, _>(1) >= sub.max_deliveries as i64);
        // Events whose last allowed delivery ran out without an ack.
        for r in &expired {
            let attempts = r.get::<i64, _>(1);
            let reason = r.get::<Option<String>, _>(3).unwrap_or_else(|| {
                format!("no acknowledgement within the lease, {attempts} deliveries")
            });
            dead_letter(&mut tx, tenant, name, r, &reason, now).await?;
        }
        if rows.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok((Vec::new(), expired.len()));
        }
        let token = uuid::Uuid::new_v4().to_string();
        let lease_end = now + sub.lease_ms as i64;
        let seqs: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
        let sql = format!(
            "UPDATE event_deliveries SET attempts = attempts + 1, visible_at = $3, consumer = $4, lease_token = $5, \
             first_at = COALESCE(first_at, $6), last_at = $6 WHERE tenant_id = $1 AND subscription = $2 AND seq IN ({})",
            placeholders(seqs.len(), 1, 7)
        );
        let mut q = sqlx::query(&sql)
            .bind(tenant)
            .bind(name)
            .bind(lease_end)
            .bind(consumer)
            .bind(&token)
            .bind(now);
        for s in &seqs {
            q = q.bind(*s);
        }
        q.execute(&mut *tx).await.map_err(db)?;
        let mut events = events_by_seq(&mut tx, tenant, &seqs).await?;
        tx.commit().await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq = r.get::<i64, _>(0) as u64;
            let event = match r.get::<Option<String>, _>(4) {
                Some(o) => serde_json::from_str::<WireEvent>(&o)
                    .map_err(|e| StoreError::internal(format!("stored event override: {e}")))?,
                None => match events.remove(&seq) {
                    Some(e) => e,
                    None => {
                        tracing::warn!(
                            tenant,
                            subscription = name,
                            seq,
                            "a delivery without its event"
                        );
                        continue;
                    }
                },
            };
            out.push(Claimed {
                event,
                attempt: r.get::<i64, _>(1) as u32 + 1,
                lease_token: token.clone(),
                lease_expires_at: lease_end,
            });
        }
        Ok((out, expired.len()))
    }

    /// When the earliest delivery of `sub` that is not visible at `now` becomes visible (a
    /// lease running out, a retry coming due).
    pub async fn next_visible(
        &self,
        tenant: &str,
        sub: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(visible_at) FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2 AND visible_at > $3",
        )
        .bind(tenant)
        .bind(sub)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    /// The oldest deliveries of `sub` visible at `now` (rows of `seq, attempts, consumer,
    /// last_error, event_override, first_at, last_at`), locked against other members.
    async fn visible_deliveries(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        sub: &str,
        now: i64,
        max: u32,
    ) -> Result<Vec<AnyRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT seq, attempts, consumer, last_error, event_override, first_at, last_at FROM event_deliveries \
             WHERE tenant_id = $1 AND subscription = $2 AND visible_at <= $3 ORDER BY seq LIMIT $4{}",
            self.skip_locked()
        ))
        .bind(tenant)
        .bind(sub)
        .bind(now)
        .bind(max as i64)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)
    }

    /// Take matching events after `cursor` into the group's deliveries (at least `want`'s worth
    /// of the log is scanned) and advance the cursor past what was scanned. Returns whether
    /// any delivery was added.
    async fn fill_group(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        sub: &SubscriptionRow,
        cursor: u64,
        want: u32,
        _now: i64,
    ) -> Result<bool, StoreError> {
        let pruned: i64 = sqlx::query("SELECT pruned_through FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if (cursor as i64) < pruned {
            return Err(StoreError::new(
                ErrorCode::SnapshotRequired,
                format!(
                    "consumer group {:?} is at {cursor}, but events up to {pruned} are past retention; \
                     reposition it (PUT with startFrom) after taking what you need from a snapshot",
                    sub.name
                ),
            ));
        }
        let scan = (want as i64 * 4).max(200);
        let mut cursor = cursor as i64;
        let mut added = false;
        // Page through the log until something matches or the end (a selective filter over a
        // long backlog), at most `MAX_FILL_PAGES` pages in one transaction.
        for _ in 0..MAX_FILL_PAGES {
            // Payloads are read (and parsed) only when the filter looks into them.
            let payload = if sub.filter.attributes.is_empty() { "" } else { ", payload" };
            let rows = sqlx::query(&format!(
                "SELECT seq, event_type{payload} FROM events WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .bind(tenant)
            .bind(cursor)
            .bind(scan)
            .fetch_all(&mut **tx)
            .await
            .map_err(db)?;
            let Some(last) = rows.last().map(|r| r.get::<i64, _>(0)) else { break };
            let at_end = (rows.len() as i64) < scan;
            let matching: Vec<i64> = rows
                .iter()
                .filter(|r| {
                    let payload = match sub.filter.attributes.is_empty() {
                        true => Value::Null,
                        false => json_text(r.get(2)),
                    };
                    sub.filter.matches(&r.get::<String, _>(1), &payload)
                })
                .map(|r| r.get::<i64, _>(0))
                .collect();
            for chunk in matching.chunks(super::CHUNK) {
                let sql = format!(
                    "INSERT INTO event_deliveries (tenant_id, subscription, seq, attempts, visible_at) VALUES {} \
                     ON CONFLICT (tenant_id, subscription, seq) DO NOTHING",
                    placeholders(chunk.len(), 5, 1)
                );
                let mut q = sqlx::query(&sql);
                for s in chunk {
                    q = q.bind(tenant).bind(&sub.name).bind(*s).bind(0i64).bind(0i64);
                }
                q.execute(&mut **tx).await.map_err(db)?;
            }
            cursor = last;
            added |= !matching.is_empty();
            if added || at_end {
                break;
            }
        }
        sqlx::query(
            "UPDATE event_subscriptions SET cursor = $3 WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(&sub.name)
        .bind(cursor)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(added)
    }

    /// Acknowledge deliveries: each leaves the group if `lease_token` still holds it. Returns,
    /// per item, whether it did (`false`: the lease was lost to another member, or already acked).
    pub async fn ack(
        &self,
        tenant: &str,
        sub: &str,
        items: &[(u64, String)],
    ) -> Result<Vec<bool>, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        // One statement per lease token (a claim's deliveries share one), per chunk.
        let mut by_token: Vec<(&str, Vec<i64>)> = Vec::new();
        for (seq, token) in items {
            match by_token.iter_mut().find(|(t, _)| *t == token.as_str()) {
                Some((_, seqs)) => seqs.push(*seq as i64),
                None => by_token.push((token.as_str(), vec![*seq as i64])),
            }
        }
        let mut acked: std::collections::HashSet<(i64, &str)> = std::collections::HashSet::new();
        for (token, seqs) in &by_token {
            for chunk in seqs.chunks(super::CHUNK) {
                let sql = format!(
                    "DELETE FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2 AND lease_token = $3 \
                     AND seq IN ({}) RETURNING seq",
                    placeholders(chunk.len(), 1, 4)
                );
                let mut q = sqlx::query(&sql).bind(tenant).bind(sub).bind(*token);
                for s in chunk {
                    q = q.bind(*s);
                }
                for r in q.fetch_all(&mut *tx).await.map_err(db)? {
                    acked.insert((r.get::<i64, _>(0), *token));
                }
            }
        }
        let out = items.iter().map(|(s, t)| acked.remove(&(*s as i64, t.as_str()))).collect();
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// A delivery failed: visible again after `delay_ms(attempt)`, or — after the last allowed
    /// delivery — moved to the dead-letter queue with `reason`.
    #[allow(clippy::too_many_arguments)]
    pub async fn nack(
        &self,
        tenant: &str,
        sub: &SubscriptionRow,
        seq: u64,
        token: &str,
        reason: &str,
        delay_ms: impl Fn(u32) -> i64,
        now: i64,
    ) -> Result<NackOutcome, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "SELECT seq, attempts, consumer, last_error, event_override, first_at, last_at FROM event_deliveries \
             WHERE tenant_id = $1 AND subscription = $2 AND seq = $3 AND lease_token = $4{}",
            self.for_update()
        ))
        .bind(tenant)
        .bind(&sub.name)
        .bind(seq as i64)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db)?;
            return Ok(NackOutcome::LeaseLost);
        };
        let attempts = row.get::<i64, _>(1);
        let outcome = if attempts >= sub.max_deliveries as i64 {
            let dlq_id = dead_letter(&mut tx, tenant, &sub.name, &row, reason, now).await?;
            NackOutcome::DeadLettered { dlq_id }
        } else {
            let at = now + delay_ms(attempts as u32).max(0);
            sqlx::query(
                "UPDATE event_deliveries SET visible_at = $4, lease_token = NULL, last_error = $5 \
                 WHERE tenant_id = $1 AND subscription = $2 AND seq = $3",
            )
            .bind(tenant)
            .bind(&sub.name)
            .bind(seq as i64)
            .bind(at)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            NackOutcome::Retry { at }
        };
        tx.commit().await.map_err(db)?;
        Ok(outcome)
    }

    pub async fn dead_letters(
        &self,
        tenant: &str,
        q: &DlqQuery,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DLQ_COLUMNS} FROM dead_letters WHERE tenant_id = $1 \
             AND ($2 = '' OR subscription = $2) AND ($3 = '' OR event_type LIKE $3 ESCAPE '\\') \
             AND ($4 = '' OR status = $4) AND dead_at >= $5 AND dead_at < $6 \
             ORDER BY dead_at DESC, dlq_id LIMIT $7"
        ))
        .bind(tenant)
        .bind(q.subscription.as_deref().unwrap_or(""))
        .bind(q.event_type.as_deref().map(like_pattern).unwrap_or_default())
        .bind(q.status.as_deref().unwrap_or(""))
        .bind(q.dead_after.unwrap_or(i64::MIN))
        .bind(q.dead_before.unwrap_or(i64::MAX))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| dead_letter_from_row(tenant, r)).collect()
    }

    pub async fn dead_letter(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        load_dead_letter(&mut conn, tenant, id, "").await
    }

    /// Replace a dead letter's payload (its original stays), audited in the same transaction.
    pub async fn edit_dead_letter(
        &self,
        tenant: &str,
        id: &str,
        payload: &Value,
        actor: &str,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let now = crate::clock::now_ms() as i64;
        let n = sqlx::query(
            "UPDATE dead_letters SET payload = $3, updated_at = $4 WHERE tenant_id = $1 AND dlq_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(payload.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        self.insert_audit(&mut tx, &dlq_audit(tenant, actor, "dlq.edit", id, payload.clone()), now)
            .await?;
        let dl = load_dead_letter(&mut tx, tenant, id, "").await?;
        tx.commit().await.map_err(db)?;
        Ok(dl)
    }

    /// Send a dead letter back to its consumer group as a fresh delivery (attempts start over;
    /// the possibly edited payload is what the group receives), audited.
    pub async fn reprocess_dead_letter(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
    ) -> Result<DeadLetter, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let now = crate::clock::now_ms() as i64;
        let mut dl = load_dead_letter(&mut tx, tenant, id, self.for_update())
            .await?
            .ok_or_else(|| StoreError::not_found(format!("no dead letter {id}")))?;
        if dl.status != "dead" {
            return Err(StoreError::invalid(format!("dead letter {id} was already {}", dl.status)));
        }
        let group =
            sqlx::query("SELECT kind FROM event_subscriptions WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(&dl.subscription)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if group.is_none() {
            return Err(StoreError::not_found(format!(
                "consumer group {:?} no longer exists",
                dl.subscription
            )));
        }
        let event = serde_json::to_string(&dl.event).expect("events serialize");
        let n = sqlx::query(
            "INSERT INTO event_deliveries (tenant_id, subscription, seq, attempts, visible_at, event_override) \
             VALUES ($1, $2, $3, 0, 0, $4) ON CONFLICT (tenant_id, subscription, seq) DO NOTHING",
        )
        .bind(tenant)
        .bind(&dl.subscription)
        .bind(dl.event.sequence as i64)
        .bind(event)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::invalid(format!(
                "event {} is already being delivered to {:?}",
                dl.event.sequence, dl.subscription
            )));
        }
        sqlx::query(
            "UPDATE dead_letters SET status = 'reprocessed', updated_at = $3 WHERE tenant_id = $1 AND dlq_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.insert_audit(
            &mut tx,
            &dlq_audit(tenant, actor, "dlq.reprocess", id, Value::String(dl.subscription.clone())),
            now,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        dl.status = "reprocessed".into();
        dl.updated_at = now;
        Ok(dl)
    }

    pub async fn delete_dead_letter(
        &self,
        tenant: &str,
        id: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let _guard = self.sqlite_writer().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let now = crate::clock::now_ms() as i64;
        let n = sqlx::query("DELETE FROM dead_letters WHERE tenant_id = $1 AND dlq_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n > 0 {
            self.insert_audit(
                &mut tx,
                &dlq_audit(tenant, actor, "dlq.delete", id, Value::Null),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    /// Every tenant's subscriptions with their positions (the lag gauges).
    pub async fn all_subscription_positions(
        &self,
    ) -> Result<Vec<(String, String, SubscriptionKind, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.tenant_id, s.name, s.kind, s.cursor, t.seq FROM event_subscriptions s \
             JOIN tenants t ON t.tenant_id = s.tenant_id ORDER BY s.tenant_id, s.name LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get(0),
                    r.get(1),
                    SubscriptionKind::parse(&r.get::<String, _>(2))?,
                    r.get::<i64, _>(3) as u64,
                    r.get::<i64, _>(4) as u64,
                ))
            })
            .collect())
    }
}

async fn load_subscription(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    name: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT {SUB_COLUMNS} FROM event_subscriptions WHERE tenant_id = $1 AND name = $2"
    ))
    .bind(tenant)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    .as_ref()
    .map(subscription_from_row)
    .transpose()
}

/// One dead letter; `lock` is appended to the query (`" FOR UPDATE"` or nothing).
async fn load_dead_letter(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    id: &str,
    lock: &str,
) -> Result<Option<DeadLetter>, StoreError> {
    sqlx::query(&format!(
        "SELECT {DLQ_COLUMNS} FROM dead_letters WHERE tenant_id = $1 AND dlq_id = $2{lock}"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    .map(|r| dead_letter_from_row(tenant, &r))
    .transpose()
}

fn dlq_audit<'a>(
    tenant: &'a str,
    actor: &'a str,
    action: &'a str,
    id: &'a str,
    details: Value,
) -> AuditEntry<'a> {
    AuditEntry { tenant, actor, action, target: id, outcome: "ok", details }
}

/// Move one delivery (a row of `seq, attempts, consumer, last_error, event_override, first_at,
/// last_at`) to the dead-letter queue with the event's data. Returns the new dead letter's id.
async fn dead_letter(
    tx: &mut Tx<'_>,
    tenant: &str,
    sub: &str,
    d: &AnyRow,
    reason: &str,
    now: i64,
) -> Result<String, StoreError> {
    let seq = d.get::<i64, _>(0);
    let event = match d.get::<Option<String>, _>(4) {
        Some(o) => Some(
            serde_json::from_str::<WireEvent>(&o)
                .map_err(|e| StoreError::internal(format!("stored event override: {e}")))?,
        ),
        None => sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND seq = $2"
        ))
        .bind(tenant)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .map(|r| event_from_row(tenant, &r).map(|e| e.event))
        .transpose()?,
    };
    let dlq_id = uuid::Uuid::new_v4().to_string();
    if let Some(e) = event {
        let payload = e.payload.to_string();
        sqlx::query(
            "INSERT INTO dead_letters (tenant_id, dlq_id, subscription, seq, event_id, event_type, payload, \
             original_payload, metadata, schema_version, event_time, reason, attempts, consumer, first_attempt_at, \
             last_attempt_at, dead_at, status, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'dead', $16)",
        )
        .bind(tenant)
        .bind(&dlq_id)
        .bind(sub)
        .bind(seq)
        .bind(&e.event_id)
        .bind(&e.event_type)
        .bind(payload)
        .bind(e.metadata.to_string())
        .bind(&e.schema_version)
        .bind(event_time(&e))
        .bind(reason)
        .bind(d.get::<i64, _>(1))
        .bind(d.get::<Option<String>, _>(2))
        .bind(d.get::<Option<i64>, _>(5))
        .bind(d.get::<Option<i64>, _>(6))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    } else {
        tracing::warn!(
            tenant,
            subscription = sub,
            seq,
            "dead-lettering a delivery whose event is gone"
        );
    }
    sqlx::query(
        "DELETE FROM event_deliveries WHERE tenant_id = $1 AND subscription = $2 AND seq = $3",
    )
    .bind(tenant)
    .bind(sub)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(dlq_id)
}

/// The events with sequence numbers `seqs`, by sequence.
async fn events_by_seq(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    seqs: &[i64],
) -> Result<HashMap<u64, WireEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND seq IN ({})",
        placeholders(seqs.len(), 1, 2)
    );
    let mut q = sqlx::query(&sql).bind(tenant);
    for s in seqs {
        q = q.bind(*s);
    }
    let mut events = HashMap::new();
    for r in q.fetch_all(&mut **tx).await.map_err(db)? {
        let e = event_from_row(tenant, &r)?.event;
        events.insert(e.sequence, e);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::{NewEvent, like_pattern};
    use crate::store::{SqliteSync, Store};

    async fn sqlite_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("pf2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("sqlite://{}/pf2.db", dir.display());
        Store::connect(&url, SqliteSync::Normal).await.expect("store")
    }

    fn event(id: &str) -> NewEvent {
        NewEvent {
            event_id: id.to_string(),
            event_type: "order.placed".into(),
            payload: serde_json::json!({ "id": id }),
            metadata: serde_json::json!({}),
            schema_version: "1".into(),
            occurred_at: None,
            critical: false,
        }
    }

    /// (sequence, duplicate) of each event of a publish.
    async fn publish(store: &Store, ids: &[&str]) -> Vec<(u64, bool)> {
        let events: Vec<NewEvent> = ids.iter().map(|id| event(id)).collect();
        let out = store.publish_events("t1", &events).await.expect("publish");
        out.outcomes.iter().map(|p| (p.sequence, p.duplicate)).collect()
    }

    #[tokio::test]
    async fn sqlite_appends_number_new_ids_after_the_log_and_report_repeats() {
        let store = sqlite_store("appends").await;
        assert_eq!(publish(&store, &["a", "b", "a"]).await, [(1, false), (2, false), (1, true)]);
        assert_eq!(
            publish(&store, &["c", "b", "d", "c"]).await,
            [(3, false), (2, true), (4, false), (3, true)]
        );
        let again = store.publish_events("t1", &[event("e")]).await.expect("publish");
        assert_eq!(again.prev_event, Some(4), "the log's end before the append");
        assert_eq!(store.tenant_seq("t1").await.expect("seq").0, 5);
        // A large batch numbers on without a gap.
        let many: Vec<String> = (0..1_000).map(|i| format!("m{i}")).collect();
        let ids: Vec<&str> = many.iter().map(String::as_str).chain(["a"]).collect();
        let out = publish(&store, &ids).await;
        assert_eq!(out[0], (6, false));
        assert_eq!(out[999], (1_005, false));
        assert_eq!(out[1_000], (1, true));
        assert_eq!(publish(&store, &["f"]).await, [(1_006, false)]);
    }

    #[tokio::test]
    async fn an_append_abandoned_mid_flight_leaves_the_log_whole_and_the_writer_working() {
        let store = sqlite_store("abandoned").await;
        assert_eq!(publish(&store, &["a"]).await, [(1, false)]);
        // Dropped at its first wait, with the job handed to the appender's thread: the thread
        // still appends "b", whole, before the next job.
        let abandoned = [event("b")];
        let _ =
            tokio::time::timeout(std::time::Duration::ZERO, store.publish_events("t1", &abandoned))
                .await;
        assert_eq!(publish(&store, &["b"]).await, [(2, true)], "the abandoned append landed");
        assert_eq!(publish(&store, &["c"]).await, [(3, false)]);
        assert_eq!(store.tenant_seq("t1").await.expect("seq").0, 3);
    }

    #[test]
    fn like_patterns_escape_wildcards_and_keep_prefixes() {
        assert_eq!(like_pattern("order.*"), "order.%");
        assert_eq!(like_pattern("order.placed"), "order.placed");
        assert_eq!(like_pattern("a_b%*"), "a\\_b\\%%");
    }
}
