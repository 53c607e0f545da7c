//! `GET /api/events/poll`: long-polling the tenant's event log.

use super::extract::{Auth, Query, rate_limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::protocol::{EventFilter, EventPage};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollQuery {
    last_event_id: Option<String>,
    limit: Option<i64>,
    wait: Option<u64>,
    /// Comma-separated event type patterns (`order.*,todo.created`).
    types: Option<String>,
    /// Payload attribute equalities as a JSON object (`{"region":"eu"}`).
    filter: Option<String>,
}

/// `GET /api/events/poll`: events after `lastEventId` (a sequence number or an event id), at
/// most `limit` (default 100, at most 1000), waiting up to `wait` seconds (≤ 30) for the first.
pub async fn poll(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    rate_limit(&state, &auth, "poll", state.limits.poll_rate)?;
    let after = match q.last_event_id.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => n,
            Err(_) => state
                .bus
                .event_seq(&auth.tenant, s)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("unknown lastEventId {s:?}")))?,
        },
    };
    let filter = EventFilter {
        event_types: q
            .types
            .map(|s| {
                s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default(),
        attributes: match q.filter.as_deref() {
            None | Some("") => Default::default(),
            Some(f) => serde_json::from_str(f).map_err(|e| {
                ApiError::invalid(format!(
                    "filter must be a JSON object of payload attributes: {e}"
                ))
            })?,
        },
    };
    filter.validate()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as u32;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(30));
    let page = state.bus.read(&auth.tenant, after, limit, &filter, wait).await?;
    state.metrics.add("pf2_events_polled_total", &[], page.events.len() as u64);
    Ok(Json(EventPage {
        events: page.events,
        has_more: page.has_more,
        next_event_id: page.next.to_string(),
    })
    .into_response())
}
