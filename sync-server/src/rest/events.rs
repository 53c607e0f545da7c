//! `GET /api/events/poll`: long-polling the tenant's event log.

use super::extract::{Auth, Query, rate_limit};
use super::openapi::TenantHeader;
use crate::bus::LogPage;
use crate::error::{ApiError, ErrorBody, Refusals};
use crate::state::AppState;
use crate::tail::Interest;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sdk_core::ids::ClientId;
use sdk_core::protocol::http::{DocumentVersion, watched_documents};
use sdk_core::protocol::{EventFilter, EventPage};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct PollQuery {
    /// Where to resume: a sequence number (`0`: from the start) or the id of an event of the
    /// tenant's log (an unknown id is 400).
    #[param(example = "42")]
    last_event_id: Option<String>,
    /// Events at most, clamped to 1…1000 (default 100).
    limit: Option<i64>,
    /// Seconds to wait for the first event, at most 30 (default 0: answer at once).
    wait: Option<u64>,
    /// Comma-separated event type patterns (`order.*,todo.created`).
    types: Option<String>,
    /// Payload attribute equalities as a JSON object (`{"region":"eu"}`).
    filter: Option<String>,
    /// Documents to watch as well, `id@version,…` (the version the client has): the poll also
    /// ends when one of them is stored past it. Without `lastEventId`, only documents.
    documents: Option<String>,
    /// The client polling (with `documents`): a change of its own (it has it) does not end the
    /// poll.
    #[param(pattern = "^[A-Za-z0-9_.:@-]{1,128}$")]
    client_id: Option<String>,
}

/// `GET /api/events/poll`: events after `lastEventId` (a sequence number or an event id), at
/// most `limit` (default 100, at most 1000), waiting up to `wait` seconds (≤ 30) for the first
/// — or for one of the watched `documents` to change: one waiting request serves a degraded
/// client's events and documents (docs/api/rest.md).
#[utoipa::path(
    get,
    path = "/api/events/poll",
    tag = "events",
    summary = "Long-poll the tenant's event log (broadcast: the reader keeps its position)",
    params(PollQuery, TenantHeader),
    responses(
        (status = 200, description = "The events after `lastEventId` the caller may read (none when the wait ended first); resume from `nextEventId`", body = EventPage),
        (status = 410, description = "SNAPSHOT_REQUIRED: `lastEventId` is older than the log keeps", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
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
    let access = state.sync.access(&auth.tenant, &auth.identity).await?;
    let interest = Interest { filter, reader: access.event_reader() };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as u32;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(30));
    let watched =
        watched_documents(q.documents.as_deref().unwrap_or("")).map_err(ApiError::invalid)?;
    // Watching a document tells when it changes: under sync rules only a reader may.
    for d in &watched {
        access.document(&d.document_id)?;
    }
    let documents_only = !watched.is_empty() && q.last_event_id.is_none();
    let (bus, tenant, interest) = (&state.bus, &auth.tenant, &interest);
    let read = |wait| async move {
        match documents_only {
            true => {
                // Only documents: the wait is for them.
                tokio::time::sleep(wait).await;
                Ok(LogPage { events: vec![], next: after, has_more: false })
            }
            false => bus.read(tenant, after, limit, interest, wait).await,
        }
    };
    let client = match q.client_id {
        Some(c) => Some(ClientId::new(c).map_err(|e| ApiError::invalid(e.to_string()))?),
        None => None,
    };
    let mut documents = Vec::new();
    let page = if watched.is_empty() {
        read(wait).await?
    } else {
        let deadline = tokio::time::Instant::now() + wait;
        let mut watched = watched;
        loop {
            // Subscribed before looking, so a change in between still wakes the wait.
            let mut wakes: Vec<_> = watched
                .iter()
                .map(|d| state.feed.watch_document(&auth.tenant, &d.document_id))
                .collect();
            let others = others_changes(&state, &auth, client.as_ref(), &mut watched).await?;
            if !others.is_empty() {
                documents = others;
                break read(Duration::ZERO).await?;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let woken =
                futures_util::future::select_all(wakes.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                page = read(remaining) => break page?,
                _ = woken => continue,
            }
        }
    };
    state.metrics.add("pf2_events_polled_total", &[], page.events.len() as u64);
    Ok(Json(EventPage {
        events: page.events,
        has_more: page.has_more,
        next_event_id: page.next.to_string(),
        documents,
    })
    .into_response())
}

/// The watched documents others changed past the version the client has. Changes of the
/// client's own bring it nothing: `watched` moves past them.
async fn others_changes(
    state: &AppState,
    auth: &Auth,
    client: Option<&ClientId>,
    watched: &mut [DocumentVersion],
) -> Result<Vec<DocumentVersion>, ApiError> {
    let changed = changed_documents(state, auth, watched).await?;
    let own = |d: &DocumentVersion| {
        let Some(c) = client else { return false };
        let w = watched.iter().find(|w| w.document_id == d.document_id);
        let after = w.map(|w| w.version).unwrap_or(0);
        state.documents.only_own(&auth.tenant, &d.document_id, c, after, d.version)
    };
    let (own, others): (Vec<_>, Vec<_>) = changed.into_iter().partition(own);
    for d in own {
        if let Some(w) = watched.iter_mut().find(|w| w.document_id == d.document_id) {
            w.version = d.version;
        }
    }
    Ok(others)
}

/// The watched documents stored past the version the client named.
async fn changed_documents(
    state: &AppState,
    auth: &Auth,
    watched: &[DocumentVersion],
) -> Result<Vec<DocumentVersion>, ApiError> {
    let ids: Vec<&str> = watched.iter().map(|d| d.document_id.as_str()).collect();
    let stored = state.store.document_versions(auth.tenant.as_str(), &ids).await?;
    Ok(watched
        .iter()
        .filter_map(|w| {
            let (_, v) = stored.iter().find(|(id, _)| *id == w.document_id)?;
            let version = u64::try_from(*v).ok()?;
            let document_id = w.document_id.clone();
            (version > w.version).then_some(DocumentVersion { document_id, version })
        })
        .collect())
}
