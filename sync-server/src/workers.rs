//! Background work: Class D transaction processing, webhook callbacks, retention (per event
//! type, critical types kept), presence sweeps and the event bus gauges.
//!
//! Transactions are executed by a [`TransactionProcessor`] — the integration point where a
//! platform plugs its business logic. The built-in [`AcceptObjects`] confirms any transaction whose
//! payload is a JSON object and fails any other. A transaction is settled exactly once: a worker
//! first claims it (`pending → processing` with a 60 s lease, a conditional update, so only one
//! claimant wins across processes), executes it, and settles it from `processing` inside the same
//! database transaction that appends its `transaction.confirmed` / `transaction.failed` event (a
//! critical event, never pruned).

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::TransactionRow;
use crate::trace;
use hmac::{Hmac, Mac};
use sdk_core::trace::TraceContext;
use serde_json::{Value, json};
use sha2::Sha256;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Executes a Class D transaction. Must be idempotent by transaction id if it has outside
/// effects: after a crash between execution and settlement it runs again.
pub trait TransactionProcessor: Send + Sync + 'static {
    /// `Ok(result)` confirms, `Err(reason)` fails the transaction.
    fn process(&self, kind: &str, payload: &Value) -> Result<Value, String>;
}

/// Confirms object payloads, fails everything else.
#[derive(Debug, Default)]
pub struct AcceptObjects;

impl TransactionProcessor for AcceptObjects {
    fn process(&self, kind: &str, payload: &Value) -> Result<Value, String> {
        match payload {
            Value::Object(_) => Ok(json!({ "accepted": kind })),
            _ => Err("the payload must be a JSON object".into()),
        }
    }
}

/// `sha256=<hex>` HMAC of `body` with `secret`: the `X-PF2-Signature` header of webhooks.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Settle every pending transaction once.
pub async fn process_pending(
    state: &AppState,
    processor: &dyn TransactionProcessor,
) -> Result<usize, ApiError> {
    process_pending_in(state, processor, None).await
}

/// Settle the pending transactions of one tenant (`None`: every tenant) once.
pub async fn process_pending_in(
    state: &AppState,
    processor: &dyn TransactionProcessor,
    tenant: Option<&str>,
) -> Result<usize, ApiError> {
    const LEASE_MS: i64 = 60_000;
    let pending = state.store.pending_transactions(now_ms() as i64, LEASE_MS, 100, tenant).await?;
    let mut settled = 0;
    for t in pending {
        if !state.store.claim_transaction(&t, now_ms() as i64, LEASE_MS).await? {
            continue;
        }
        state.metrics.inc("pf2_transactions_executed_total", &[]);
        // The trace of the request that created it goes on: its settled event carries it.
        let (cx, caller) = continued(&t);
        let span = tracing::info_span!("transaction", trace_id = %cx.trace_id, span_id = %cx.span_id, kind = %t.kind);
        crate::telemetry::adopt(&span, &cx, caller.as_ref());
        let (status, result) = span.in_scope(|| match processor.process(&t.kind, &t.body) {
            Ok(r) => ("confirmed", r),
            Err(reason) => ("failed", json!({ "error": reason })),
        });
        let event_id = uuid::Uuid::new_v4().to_string();
        let settle = state.store.settle_transaction(&t, status, &result, &event_id);
        if trace::scope(cx, settle).instrument(span).await? {
            settled += 1;
            state.metrics.inc("pf2_transactions_total", &[("status", status)]);
            let (seq, _) = state.store.tenant_seq(&t.tenant_id).await?;
            if let Ok(tenant) = sdk_core::ids::TenantId::new(t.tenant_id.as_str()) {
                state.feed.events_appended(&tenant, seq);
            }
        }
    }
    Ok(settled)
}

/// Deliver every webhook that is due once; failures are retried with exponential backoff.
pub async fn deliver_callbacks(state: &AppState) -> Result<usize, ApiError> {
    deliver_callbacks_in(state, None).await
}

/// Deliver the due webhooks of one tenant (`None`: every tenant) once.
pub async fn deliver_callbacks_in(
    state: &AppState,
    tenant: Option<&str>,
) -> Result<usize, ApiError> {
    let due = state.store.callbacks_due(now_ms() as i64, 50, tenant).await?;
    let mut delivered = 0;
    for t in due {
        if deliver(state, &t).await {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// The context work on transaction `t` runs in: a child of the request that created it (a
/// new trace for one created before traces were kept), and that request's context.
fn continued(t: &TransactionRow) -> (TraceContext, Option<TraceContext>) {
    let caller = trace::caller(t.traceparent.as_deref());
    (trace::continue_or_start(caller.as_ref()), caller)
}

async fn deliver(state: &AppState, t: &TransactionRow) -> bool {
    let Some(url) = &t.callback_url else { return false };
    // The receiver continues the transaction's trace: the webhook names its own span.
    let (cx, caller) = continued(t);
    let span =
        tracing::info_span!("webhook", trace_id = %cx.trace_id, span_id = %cx.span_id, url = %url);
    crate::telemetry::adopt(&span, &cx, caller.as_ref());
    deliver_in(state, t, url, cx).instrument(span).await
}

async fn deliver_in(state: &AppState, t: &TransactionRow, url: &str, cx: TraceContext) -> bool {
    let body = json!({
        "transactionId": t.transaction_id,
        "tenantId": t.tenant_id,
        "type": t.kind,
        "status": t.status,
        "result": t.result,
    })
    .to_string();
    let timestamp = (now_ms() / 1000).to_string();
    let signature = sign(&state.webhook_secret, &timestamp, body.as_bytes());
    let sent = state
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("x-pf2-timestamp", &timestamp)
        .header("x-pf2-signature", signature)
        .header("x-pf2-transaction-id", &t.transaction_id)
        .header(trace::TRACEPARENT, cx.to_string())
        .body(body)
        .send()
        .await;
    let ok = matches!(&sent, Ok(r) if r.status().is_success());
    let attempts = t.callback_attempts + 1;
    let (state_name, next_at) = if ok {
        ("delivered", 0)
    } else if attempts >= state.limits.webhook_max_attempts {
        ("failed", 0)
    } else {
        let delay =
            state.limits.webhook_base_delay.as_millis() as i64 * (1i64 << (attempts - 1).min(16));
        ("pending", now_ms() as i64 + delay)
    };
    state
        .metrics
        .inc("pf2_webhook_deliveries_total", &[("outcome", if ok { "ok" } else { "error" })]);
    if let Err(e) = state.store.record_callback(t, state_name, attempts, next_at).await {
        tracing::warn!(error = %e, "recording a webhook attempt");
    }
    ok
}

/// Delete events, idempotency keys and audit entries past retention (audit chains stay
/// verifiable: store/audit.rs).
pub async fn retention(state: &AppState) -> Result<(u64, u64), ApiError> {
    let now = now_ms() as i64;
    let rules: Vec<(String, i64)> = state
        .limits
        .bus
        .retention
        .iter()
        .map(|(pattern, keep)| (pattern.clone(), now - keep.as_millis() as i64))
        .collect();
    let events = state
        .store
        .prune_events(now - state.limits.event_retention.as_millis() as i64, &rules, None)
        .await?;
    let keys = state
        .store
        .prune_idempotency(now - state.limits.idempotency_retention.as_millis() as i64)
        .await?;
    let l = &state.limits;
    for (chain, keep) in [
        ("connection", l.audit_retention_connection),
        ("access", l.audit_retention),
        ("data", l.audit_retention),
    ] {
        let removed = state.store.prune_audit(chain, now - keep.as_millis() as i64, None).await?;
        if removed > 0 {
            tracing::info!(chain, removed, "audit retention");
        }
    }
    Ok((events, keys))
}

/// Run the workers until `shutdown` resolves.
pub async fn run(
    state: AppState,
    processor: Arc<dyn TransactionProcessor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut retention_tick = tokio::time::interval(Duration::from_secs(3600));
    let sweep_every =
        (state.limits.presence_ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut sweep_tick = tokio::time::interval(sweep_every);
    let mut gauge_tick = tokio::time::interval(Duration::from_secs(15));
    let mut compaction_tick = tokio::time::interval(Duration::from_secs(300));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = state.transactions.notified() => {}
                        _ = tick.tick() => {}
            _ = sweep_tick.tick() => state.hub.sweep(),
            _ = gauge_tick.tick() => {
                if let Err(e) = state.bus.record_gauges().await {
                    tracing::warn!(error = %e, "event bus gauges");
                }
            }
            _ = compaction_tick.tick() => {
                let idle = crate::documents::IDLE_COMPACTION_AFTER;
                match state.documents.compact_idle(idle).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(documents = n, "idle documents compacted"),
                    Err(e) => tracing::warn!(error = %e, "compacting idle documents"),
                }
            }
            _ = retention_tick.tick() => {
                match retention(&state).await {
                    Ok((events, keys)) => tracing::info!(events, keys, "retention pass"),
                    Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                }
            }
        }
        if let Err(e) = process_pending(&state, processor.as_ref()).await {
            tracing::warn!(error = %e, "processing transactions");
        }
        if let Err(e) = deliver_callbacks(&state).await {
            tracing::warn!(error = %e, "delivering webhooks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231 test case 2 shape: key "Jefe"; here over "t.body".
        let s = sign(b"Jefe", "1", b"what do ya want for nothing?");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(
            s,
            sign(b"Jefe", "2", b"what do ya want for nothing?"),
            "the timestamp is signed"
        );
        assert_ne!(s, sign(b"other", "1", b"what do ya want for nothing?"));
    }

    #[test]
    fn the_default_processor_accepts_objects_only() {
        assert!(AcceptObjects.process("payment.create", &json!({"amount": 1})).is_ok());
        assert!(AcceptObjects.process("payment.create", &json!([1])).is_err());
    }
}
