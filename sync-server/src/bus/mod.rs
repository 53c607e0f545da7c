//! The durable event bus, in process: publish onto the tenant's log, read it (broadcast, each
//! reader its own position), durable subscriptions (the server keeps the position), consumer
//! groups (competing consumers with leases, retries with exponential backoff, a dead-letter
//! queue after the last delivery), and retention by event type.
//!
//! [`EventBus`] is the Rust API; [`http`] puts it on REST and `/v1/ws` uses it for `Follow` and
//! `Consume`. Every read is of the one log (`events`, by sequence), so an offset means the same
//! on every transport, and every position and lease is in the database: a process can die at
//! any moment and another carries on.
//!
//! ```no_run
//! # async fn run(state: sync_server::state::AppState) -> Result<(), sync_server::error::ApiError> {
//! use sync_server::bus::SubscriptionSpec;
//! use std::time::Duration;
//! let bus = &state.bus;
//! let tenant = sdk_core::ids::TenantId::new("acme").unwrap();
//! bus.publish(&tenant, vec![sync_server::bus::event("order.placed", serde_json::json!({"id": 1}))]).await?;
//! bus.put_subscription(&tenant, SubscriptionSpec::group("billing")).await?;
//! for d in bus.claim(&tenant, "billing", "worker-1", 10, Duration::from_secs(5)).await? {
//!     // … handle d.event idempotently, then:
//!     bus.ack(&tenant, "billing", &[(d.event.sequence, d.lease_token)]).await?;
//! }
//! # Ok(()) }
//! ```

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::feed::{ChangeFeed, Woke};
pub use crate::limits::BusPolicy;
use crate::metrics::Metrics;
use crate::store::{
    Claimed, NackOutcome, NewEvent, Published, Store, SubscriptionKind, SubscriptionRow,
};
use crate::tail::{EventTail, Interest, Told, event_of};
use sdk_core::ErrorCode;
use sdk_core::ids::SubscriptionName;
use sdk_core::ids::TenantId;
use sdk_core::protocol::{EventFilter, WireEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The delay before retry number `attempt` (1 = after the first failed delivery):
/// `base · 2^(attempt-1)`, at most `max`.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

/// An event with a fresh id, no metadata and schema version 1.0 (the in-process shorthand).
pub fn event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.into(),
        payload,
        metadata: json!({}),
        schema_version: "1.0".into(),
        occurred_at: None,
        critical: false,
    }
}

/// What a subscription should be; `None` fields take the bus defaults.
/// Roles that may publish, consume and operate the bus (on every transport: REST and the
/// `/v1/ws` `consume` frame alike).
pub const BUS_ROLES: [&str; 2] = ["service", "admin"];

/// Publishing, consuming and operating the bus need one of [`BUS_ROLES`]: a consumer group is
/// handed every event it matches, whoever may read it.
pub fn require_operator(identity: &crate::auth::Identity) -> Result<(), ApiError> {
    if BUS_ROLES.iter().any(|r| identity.has_role(r)) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::AuthzFailed,
            "the event bus needs a token with the service (or admin) role",
        ))
    }
}

#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub name: String,
    pub kind: SubscriptionKind,
    pub filter: EventFilter,
    pub max_deliveries: Option<u32>,
    pub lease: Option<Duration>,
    pub backoff: Option<Duration>,
    /// Position it here (a sequence); a new subscription without it starts at the log's end.
    pub start: Option<StartFrom>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest event still retained.
    Earliest,
    /// The log's end: only events published from now on.
    Latest,
    /// After this sequence.
    After(u64),
}

impl SubscriptionSpec {
    pub fn group(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: SubscriptionKind::Group,
            filter: EventFilter::default(),
            max_deliveries: None,
            lease: None,
            backoff: None,
            start: None,
        }
    }

    pub fn durable(name: &str) -> Self {
        Self { kind: SubscriptionKind::Durable, ..Self::group(name) }
    }
}

/// A page of the log: the events that matched, the position to continue after (it passes
/// events that did not match), and whether more are already there.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub events: Vec<WireEvent>,
    pub next: u64,
    pub has_more: bool,
}

/// Subscription names: like ids, 1–128 of `A-Za-z0-9-_.:` ([`SubscriptionName`]).
pub fn valid_name(name: &str) -> Result<(), ApiError> {
    SubscriptionName::new(name).map(|_| ()).map_err(|e| ApiError::invalid(e.to_string()))
}

/// The in-process event bus API.
#[derive(Debug, Clone)]
pub struct EventBus {
    store: Arc<Store>,
    policy: Arc<BusPolicy>,
    metrics: Arc<Metrics>,
    feed: ChangeFeed,
    /// Where log reads come from (shared with every live reader of the tenant).
    tail: Arc<EventTail>,
}

impl EventBus {
    pub fn new(
        store: Arc<Store>,
        policy: Arc<BusPolicy>,
        metrics: Arc<Metrics>,
        feed: ChangeFeed,
        tail: Arc<EventTail>,
    ) -> Self {
        Self { store, policy, metrics, feed, tail }
    }

    pub fn policy(&self) -> &BusPolicy {
        &self.policy
    }

    /// Publish `events` (at most the batch limit) durably; acknowledged once committed.
    /// Idempotent by `event_id`: a repeat is reported `duplicate` and appended nowhere.
    pub async fn publish(
        &self,
        tenant: &TenantId,
        mut events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, ApiError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if events.len() > self.policy().max_publish_batch {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("at most {} events per publish", self.policy().max_publish_batch),
            ));
        }
        for e in &mut events {
            e.critical = e.critical || self.policy().is_critical(&e.event_type);
        }
        let started = std::time::Instant::now();
        let appended = self.store.publish_events(tenant.as_str(), &events).await?;
        self.metrics.observe("pf2_bus_append_duration_ms", &[], started.elapsed());
        let out = appended.outcomes;
        let dups = out.iter().filter(|p| p.duplicate).count() as u64;
        self.metrics.add("pf2_bus_published_total", &[], out.len() as u64 - dups);
        self.metrics.add("pf2_bus_publish_duplicates_total", &[], dups);
        let fresh: Vec<WireEvent> = out
            .iter()
            .zip(&events)
            .filter(|(p, _)| !p.duplicate)
            .map(|(p, e)| crate::store::appended_event(tenant, p.sequence, e, appended.at))
            .collect();
        if let Some(top) = fresh.last().map(|e| e.sequence) {
            let _span = tracing::info_span!("fanout", sequence = top).entered();
            // Readers at the tail take the new events from here, not from the store: told
            // after the window holds them, they find them there.
            if let Some(prev) = appended.prev_event {
                self.tail.appended(tenant.as_str(), prev, fresh);
            }
            self.feed.events_appended(tenant, top);
        }
        Ok(out)
    }

    /// The sequence of the event with id `event_id`, if it is still in the log.
    pub async fn event_seq(
        &self,
        tenant: &TenantId,
        event_id: &str,
    ) -> Result<Option<u64>, ApiError> {
        Ok(self.store.event_seq(tenant.as_str(), event_id).await?)
    }

    /// Create or change a subscription.
    pub async fn put_subscription(
        &self,
        tenant: &TenantId,
        spec: SubscriptionSpec,
    ) -> Result<(SubscriptionRow, bool), ApiError> {
        valid_name(&spec.name)?;
        spec.filter.validate().map_err(ApiError::from)?;
        let p = self.policy();
        let max_deliveries = spec.max_deliveries.unwrap_or(p.max_deliveries);
        if !(1..=100).contains(&max_deliveries) {
            return Err(ApiError::invalid("maxDeliveries must be 1 to 100"));
        }
        let lease = spec.lease.unwrap_or(p.lease);
        if lease < Duration::from_millis(100) || lease > Duration::from_secs(12 * 3600) {
            return Err(ApiError::invalid("visibilityTimeoutMs must be 100 ms to 12 h"));
        }
        let backoff = spec.backoff.unwrap_or(p.backoff).min(p.max_backoff);
        let t = tenant.as_str();
        let start = match spec.start {
            None => None,
            Some(StartFrom::Latest) => Some(self.store.tenant_seq(t).await?.0),
            Some(StartFrom::Earliest) => Some(self.store.tenant_seq(t).await?.1),
            Some(StartFrom::After(s)) => {
                let (_, pruned) = self.store.tenant_seq(t).await?;
                if s < pruned {
                    return Err(ApiError::new(
                        ErrorCode::SnapshotRequired,
                        format!("events up to {pruned} are past retention"),
                    ));
                }
                Some(s)
            }
        };
        let row = SubscriptionRow {
            name: spec.name,
            kind: spec.kind,
            filter: spec.filter,
            cursor: 0,
            max_deliveries,
            lease_ms: lease.as_millis() as u64,
            backoff_ms: backoff.as_millis() as u64,
            created_at: 0,
            updated_at: 0,
        };
        Ok(self.store.put_subscription(t, &row, start).await?)
    }

    /// Subscription `name`, which must be of `kind` (`NOT_FOUND` / `INVALID_REQUEST` otherwise).
    pub async fn subscription(
        &self,
        tenant: &TenantId,
        name: &str,
        kind: SubscriptionKind,
    ) -> Result<SubscriptionRow, ApiError> {
        valid_name(name)?;
        let sub = self
            .store
            .subscription(tenant.as_str(), name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no subscription {name:?}")))?;
        if sub.kind != kind {
            return Err(ApiError::invalid(format!(
                "{name:?} is a {} subscription, not a {}",
                sub.kind.as_str(),
                kind.as_str()
            )));
        }
        Ok(sub)
    }

    /// Read the log after `after`: events `interest` wants, waiting up to `wait` for the first
    /// one. Below retention the answer is `SNAPSHOT_REQUIRED`.
    pub async fn read(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: u32,
        interest: &Interest,
        wait: Duration,
    ) -> Result<LogPage, ApiError> {
        let t = tenant.as_str();
        let limit = limit.clamp(1, 1000) as usize;
        let reader = self.tail.reader(t);
        let mut wake = self.feed.subscribe(t);
        let deadline = tokio::time::Instant::now() + wait;
        let mut unsure_since = None;
        loop {
            let head = *wake.borrow_and_update();
            let told = Told { head, unsure_since };
            let rows = self.tail.after(&reader, after, limit + 1, told).await?;
            let has_more = rows.len() > limit;
            let scanned = &rows[..rows.len().min(limit)];
            if !scanned.is_empty() || tokio::time::Instant::now() >= deadline {
                let next = scanned.last().map(|f| event_of(f).sequence).unwrap_or(after);
                let events: Vec<WireEvent> = scanned
                    .iter()
                    .map(|f| event_of(f))
                    .filter(|e| interest.wants(e))
                    .cloned()
                    .collect();
                return Ok(LogPage { events, next, has_more });
            }
            let waited = tokio::time::Instant::now();
            let woke = self.feed.wait(&mut wake, Some(deadline)).await;
            unsure_since = (woke != Woke::Notified).then_some(waited);
        }
    }

    /// A dead letter went back to its group: wake its claimers here and everywhere.
    pub fn kick_waiters(&self, tenant: &TenantId) {
        self.feed.kick_waiters(tenant)
    }

    /// A durable subscription's next events after its stored position, with its filter.
    pub async fn poll_subscription(
        &self,
        tenant: &TenantId,
        name: &str,
        limit: u32,
        wait: Duration,
    ) -> Result<(SubscriptionRow, LogPage), ApiError> {
        let sub = self.subscription(tenant, name, SubscriptionKind::Durable).await?;
        let interest = Interest::all(sub.filter.clone());
        let page = self.read(tenant, sub.cursor, limit, &interest, wait).await?;
        Ok((sub, page))
    }

    /// A durable subscription has handled everything through `sequence`.
    pub async fn ack_position(
        &self,
        tenant: &TenantId,
        name: &str,
        sequence: u64,
    ) -> Result<u64, ApiError> {
        Ok(self.store.advance_cursor(tenant.as_str(), name, sequence).await?)
    }

    /// Lease up to `max` events of consumer group `group` to `consumer`, waiting up to `wait`
    /// for one (new events, expired leases of other members, retries coming due).
    pub async fn claim(
        &self,
        tenant: &TenantId,
        group: &str,
        consumer: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Claimed>, ApiError> {
        if consumer.is_empty() || consumer.chars().count() > 128 {
            return Err(ApiError::invalid("consumer must be 1 to 128 characters"));
        }
        let sub = self.subscription(tenant, group, SubscriptionKind::Group).await?;
        let max = max.clamp(1, 500);
        let t = tenant.as_str();
        let mut wake = self.feed.subscribe(t);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            wake.borrow_and_update();
            let now = now_ms() as i64;
            let (claimed, dead) = self.store.claim(t, &sub, consumer, max, now).await?;
            if dead > 0 {
                self.metrics.add("pf2_bus_dead_lettered_total", &[], dead as u64);
            }
            if !claimed.is_empty() || tokio::time::Instant::now() >= deadline {
                self.metrics.add("pf2_bus_delivered_total", &[], claimed.len() as u64);
                let redelivered = claimed.iter().filter(|c| c.attempt > 1).count() as u64;
                self.metrics.add("pf2_bus_redelivered_total", &[], redelivered);
                return Ok(claimed);
            }
            let until = match self.store.next_visible(t, group, now).await? {
                Some(at) => deadline.min(
                    tokio::time::Instant::now() + Duration::from_millis((at - now).max(1) as u64),
                ),
                None => deadline,
            };
            self.feed.wait(&mut wake, Some(until)).await;
        }
    }

    /// Acknowledge deliveries (`(sequence, lease token)`); per item, whether the lease held.
    pub async fn ack(
        &self,
        tenant: &TenantId,
        group: &str,
        items: &[(u64, String)],
    ) -> Result<Vec<bool>, ApiError> {
        if items.len() > 500 {
            return Err(ApiError::invalid("at most 500 acknowledgements at once"));
        }
        // A group that does not exist (or a durable subscription) is said so, as for a nack —
        // not answered `lease_lost` for every delivery.
        self.subscription(tenant, group, SubscriptionKind::Group).await?;
        let out = self.store.ack(tenant.as_str(), group, items).await?;
        let acked = out.iter().filter(|a| **a).count() as u64;
        self.metrics.add("pf2_bus_acked_total", &[], acked);
        self.metrics.add("pf2_bus_lease_lost_total", &[], out.len() as u64 - acked);
        Ok(out)
    }

    /// A delivery failed: retry after `retry_after` (or the backoff for its attempt), or move it
    /// to the dead-letter queue if that was its last delivery.
    pub async fn nack(
        &self,
        tenant: &TenantId,
        group: &str,
        sequence: u64,
        lease_token: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<NackOutcome, ApiError> {
        let sub = self.subscription(tenant, group, SubscriptionKind::Group).await?;
        let reason: String = reason.chars().take(2000).collect();
        let p = self.policy();
        let delay = |attempt: u32| {
            retry_after
                .map(|d| d.min(p.max_backoff))
                .unwrap_or_else(|| {
                    backoff(Duration::from_millis(sub.backoff_ms), attempt, p.max_backoff)
                })
                .as_millis() as i64
        };
        let now = now_ms() as i64;
        let outcome = self
            .store
            .nack(tenant.as_str(), &sub, sequence, lease_token, &reason, delay, now)
            .await?;
        let label = match &outcome {
            NackOutcome::Retry { .. } => "retry",
            NackOutcome::DeadLettered { .. } => "dead_lettered",
            NackOutcome::LeaseLost => "lease_lost",
        };
        self.metrics.inc("pf2_bus_nacked_total", &[("outcome", label)]);
        if matches!(outcome, NackOutcome::DeadLettered { .. }) {
            self.metrics.inc("pf2_bus_dead_lettered_total", &[]);
        }
        Ok(outcome)
    }
}

impl EventBus {
    /// Refresh the lag and dead-letter gauges of every subscription (the monitoring runbook's
    /// alerts read these).
    pub async fn record_gauges(&self) -> Result<(), ApiError> {
        let now = now_ms() as i64;
        for (tenant, name, kind, cursor, seq) in self.store.all_subscription_positions().await? {
            let stats = self.store.subscription_stats(&tenant, &name, now).await?;
            let labels = [("tenant", tenant.as_str()), ("subscription", name.as_str())];
            let lag = seq.saturating_sub(cursor)
                + if kind == SubscriptionKind::Group { stats.pending } else { 0 };
            self.metrics.set_gauge("pf2_bus_consumer_lag", &labels, lag as f64);
            self.metrics.set_gauge("pf2_bus_in_flight", &labels, stats.leased as f64);
            self.metrics.set_gauge("pf2_bus_dlq_size", &labels, stats.dead as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let (b, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = (1..=8).map(|a| backoff(b, a, max).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(b, 0, max), b, "attempt 0 is treated as the first");
        assert_eq!(backoff(b, u32::MAX, max), max, "no overflow");
    }

    #[test]
    fn retention_is_per_type_first_match_and_critical_types_are_kept() {
        let p = BusPolicy {
            retention: vec![
                ("audit.*".into(), Duration::from_secs(90 * 86_400)),
                ("audit.debug".into(), Duration::from_secs(86_400)),
            ],
            ..BusPolicy::default()
        };
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(p.retention_of("order.placed", week), Some(week));
        assert_eq!(p.retention_of("audit.debug", week), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(p.retention_of("transaction.confirmed", week), None);
        assert!(!BusPolicy { critical: vec![], ..p }.is_critical("transaction.x"));
    }

    #[test]
    fn subscription_names_are_validated() {
        assert!(valid_name("billing-v2.eu:1").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(129)] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }
}
