//! The event bus on REST: publishing (`POST /api/events`), subscriptions, consumer-group
//! claim / ack / nack with long-polling, and the dead-letter queue. Services use it with a token
//! holding the `service` role (or `admin`); everything is scoped to the token's tenant.

use super::extract::{Auth, JsonBody, Path, Query};
use super::openapi::TenantHeader;
use crate::bus::{StartFrom, SubscriptionSpec};
use crate::error::ApiError;
use crate::error::{ErrorBody, Refusals};
use crate::state::AppState;
use crate::store::{
    Claimed, DeadLetter, DlqQuery, NackOutcome, NewEvent, SubscriptionKind, SubscriptionRow,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sdk_core::ErrorCode;
use sdk_core::hlc::HlcTimestamp;
use sdk_core::protocol::EventFilter;
use sdk_core::protocol::WireEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

pub use crate::bus::BUS_ROLES;

fn require_service(auth: &Auth) -> Result<(), ApiError> {
    crate::bus::require_operator(&auth.identity)
}

fn iso(ms: i64) -> String {
    HlcTimestamp::new(ms.max(0) as u64, 0).to_string()
}

/// One event as a publisher sends it (architecture.md §5).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "eventType": "order.created", "payload": {"orderId": "o-1", "region": "eu"}}))]
pub struct PublishedEvent {
    /// A UUID (the idempotency key: the same id again is reported `duplicate`); absent: one
    /// is made.
    #[serde(default)]
    #[schema(
        pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
    )]
    event_id: Option<String>,
    /// 1 to 128 of `A-Z a-z 0-9 - _ . :` (`order.created`).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    event_type: String,
    /// The token's tenant, if given; another is 403 `TENANT_VIOLATION`.
    #[serde(default)]
    tenant_id: Option<String>,
    /// When it happened (RFC 3339, from 1970 on); absent: when it is appended.
    #[serde(default)]
    #[schema(format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    timestamp: Option<String>,
    #[serde(default)]
    payload: Value,
    /// Kept as given, with `source` (the publisher) and `traceId` added when absent.
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    /// 1 to 32 characters (default `1.0`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32)]
    schema_version: Option<String>,
    /// Under sync rules, the channels whose readers alone see the event (none: tenant-wide);
    /// kept as `metadata.channels`. At most 64, each 1 to 256 characters.
    #[serde(default)]
    #[schema(schema_with = channels_schema)]
    channels: Option<Vec<String>>,
}

/// `channels` of a published event: at most 64 names of 1 to 256 characters.
fn channels_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(sdk_core::rules::MAX_CHANNEL_LEN));
    ArrayBuilder::new().items(name).max_items(Some(sdk_core::rules::MAX_ENTITY_CHANNELS)).build()
}

/// `POST /api/events`'s body: one event, or several in order.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum PublishBody {
    One(PublishedEvent),
    Batch(PublishBatch),
}

/// Several events, appended in order in one transaction (at most 500 by default).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"events": [{"eventType": "order.created", "payload": {"orderId": "o-1"}}, {"eventType": "order.paid", "payload": {"orderId": "o-1", "amount": 42}}]}))]
pub struct PublishBatch {
    #[schema(max_items = 500)]
    events: Vec<PublishedEvent>,
}

/// Where one published event went.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "sequence": 43, "duplicate": false}))]
pub struct PublishResult {
    event_id: String,
    /// Its position in the tenant's log.
    sequence: u64,
    /// The event id was published before: nothing was appended.
    duplicate: bool,
}

/// The answer to a publish: one result, or `results` in the batch's order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PublishAnswer {
    One(PublishResult),
    Batch { results: Vec<PublishResult> },
}

/// Check one published event and turn it into what the store appends.
fn new_event(auth: &Auth, e: PublishedEvent) -> Result<NewEvent, ApiError> {
    if let Some(t) = &e.tenant_id
        && t != auth.tenant.as_str()
    {
        return Err(ApiError::tenant_violation());
    }
    let event_id = match e.event_id {
        Some(id) => uuid::Uuid::parse_str(&id)
            .ok()
            .filter(|_| id.len() == 36)
            .ok_or_else(|| ApiError::invalid(format!("eventId {id:?} is not a hyphenated UUID")))?
            .hyphenated()
            .to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let ty = &e.event_type;
    if ty.is_empty()
        || ty.len() > 128
        || !ty.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::invalid(format!(
            "eventType {ty:?}: 1 to 128 of A-Z a-z 0-9 - _ . :"
        )));
    }
    let occurred_at = match &e.timestamp {
        Some(ts) => Some(
            HlcTimestamp::parse(ts)
                .map_err(|err| ApiError::invalid(format!("timestamp: {err}")))?
                .millis as i64,
        ),
        None => None,
    };
    let mut metadata = e.metadata.unwrap_or_default();
    metadata.entry("source").or_insert_with(|| Value::String(auth.user().to_string()));
    if let Some(channels) = e.channels {
        let max = sdk_core::rules::MAX_ENTITY_CHANNELS;
        let too_long = channels
            .iter()
            .any(|c| c.is_empty() || c.chars().count() > sdk_core::rules::MAX_CHANNEL_LEN);
        if channels.len() > max || too_long {
            return Err(ApiError::invalid(format!(
                "channels: at most {max}, each 1 to {} characters",
                sdk_core::rules::MAX_CHANNEL_LEN
            )));
        }
        metadata.insert(sdk_core::rules::EVENT_CHANNELS.into(), Value::from(channels));
    }
    let schema_version = e.schema_version.unwrap_or_else(|| "1.0".into());
    if schema_version.is_empty() || schema_version.chars().count() > 32 {
        return Err(ApiError::invalid("schemaVersion must be 1 to 32 characters"));
    }
    Ok(NewEvent {
        event_id,
        event_type: e.event_type,
        payload: e.payload,
        metadata: Value::Object(metadata),
        schema_version,
        occurred_at,
        critical: false,
    })
}

/// `POST /api/events`: one event, or `{"events": [...]}`. 201 with each event's sequence once
/// durable; a repeated `eventId` is reported `duplicate` and not appended again.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    summary = "Publish events durably, idempotent by eventId (service role); 201",
    params(TenantHeader),
    request_body = PublishBody,
    responses(
        (status = 201, description = "Durable: each event's sequence, or `duplicate`", body = PublishAnswer),
        (status = 413, description = "PAYLOAD_TOO_LARGE: more events than a publish may carry, or the body is over the limit", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn publish(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<Value>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let batch = body.value.get("events").is_some();
    let raw: Vec<Value> = match body.value {
        Value::Object(mut o) if batch => match o.remove("events") {
            Some(Value::Array(v)) => v,
            _ => return Err(ApiError::invalid("events must be an array")),
        },
        v @ Value::Object(_) => vec![v],
        _ => return Err(ApiError::invalid("publish one event object or {\"events\": [...]}")),
    };
    let max = state.limits.bus.max_publish_batch;
    if raw.len() > max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("at most {max} events per publish"),
        ));
    }
    let events = raw
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let e: PublishedEvent = serde_json::from_value(v)
                .map_err(|err| ApiError::invalid(format!("events[{i}]: {err}")))?;
            new_event(&auth, e)
                .map_err(|err| ApiError { message: format!("events[{i}]: {}", err.message), ..err })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let key = format!("{}\u{0}publish", auth.tenant);
    let n = events.len() as u32;
    super::extract::metered(&state, &key, "publish", state.limits.bus.publish_rate, n)?;
    let out = state.bus.publish(&auth.tenant, events).await?;
    let mut results: Vec<PublishResult> = out
        .into_iter()
        .map(|p| PublishResult {
            event_id: p.event_id,
            sequence: p.sequence,
            duplicate: p.duplicate,
        })
        .collect();
    let body = match (batch, results.pop()) {
        (false, Some(one)) => PublishAnswer::One(one),
        (_, last) => PublishAnswer::Batch { results: results.into_iter().chain(last).collect() },
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

// ---- subscriptions ---------------------------------------------------------------------------

/// A subscription as it should be (unset fields take the bus's defaults). A filter has at most
/// 32 terms, event types and attributes together; an existing subscription keeps its kind.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"kind": "group", "eventTypes": ["order.*"], "filter": {"region": "eu"}, "maxDeliveries": 3, "startFrom": "earliest"}))]
pub struct SubscriptionBody {
    /// `durable` or `group`.
    #[schema(pattern = "^(durable|group)$")]
    kind: String,
    /// Event types it takes: names, or prefixes ending in `*` (none: every type).
    #[serde(default)]
    #[schema(schema_with = event_type_patterns)]
    event_types: Vec<String>,
    /// Payload attribute equalities: a dotted path to a string, number, boolean or null.
    #[serde(default)]
    #[schema(schema_with = attribute_filter)]
    filter: BTreeMap<String, Value>,
    /// Deliveries before an event is dead-lettered (groups; default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    max_deliveries: Option<u32>,
    /// How long a claimed event stays leased to its member (default 30,000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 43_200_000)]
    visibility_timeout_ms: Option<u64>,
    /// The first retry's delay, doubling after (capped by the server).
    #[serde(default)]
    retry_backoff_ms: Option<u64>,
    /// Where it starts: `"earliest"` (the oldest event kept), `"latest"` (the default: what is
    /// published from now on), or after a sequence number.
    #[serde(default)]
    #[schema(schema_with = start_from)]
    start_from: Option<Value>,
}

fn event_type_patterns() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let pattern = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some("^[^*]*[*]?$"));
    ArrayBuilder::new().items(pattern).max_items(Some(EventFilter::MAX_TERMS)).build()
}

fn attribute_filter() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let scalar = ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Number,
            Type::Boolean,
            Type::Null,
        ]))
        .build();
    let path = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(128))
        .pattern(Some("^[^.]+([.][^.]+)*$"))
        .build();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(scalar.into())))
        .property_names(Some(path))
        .max_properties(Some(EventFilter::MAX_TERMS))
        .build()
}

fn start_from() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["earliest", "latest"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// A subscription: its settings, position and lag.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"name": "billing", "kind": "group", "eventTypes": ["order.*"], "filter": {"region": "eu"}, "position": 40, "maxDeliveries": 5, "visibilityTimeoutMs": 30000, "retryBackoffMs": 1000, "lag": 3, "pending": 2, "inFlight": 1, "deadLetters": 0, "createdAt": "2026-12-07T09:00:00.000Z", "updatedAt": "2026-12-07T10:15:31.000Z"}))]
pub struct SubscriptionView {
    name: String,
    /// `durable` (one reader, the server keeps its position) or `group` (competing consumers).
    kind: &'static str,
    event_types: Vec<String>,
    /// Payload attribute equalities (dotted paths).
    #[schema(value_type = Object)]
    filter: BTreeMap<String, Value>,
    /// Durable: acknowledged through here. Group: taken from the log through here.
    position: u64,
    max_deliveries: u32,
    visibility_timeout_ms: u64,
    retry_backoff_ms: u64,
    /// Events not yet handled: the log past the position (and, for a group, those taken but not
    /// acknowledged).
    lag: u64,
    pending: u64,
    in_flight: u64,
    dead_letters: u64,
    created_at: String,
    updated_at: String,
}

/// Every subscription of the tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    subscriptions: Vec<SubscriptionView>,
}

/// A subscription's name: 1 to 128 of `A-Z a-z 0-9 - _ . :`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$", example = "billing")]
    name: String,
}

async fn subscription_json(
    state: &AppState,
    tenant: &str,
    s: &SubscriptionRow,
) -> Result<SubscriptionView, ApiError> {
    let now = crate::clock::now_ms() as i64;
    let stats = state.store.subscription_stats(tenant, &s.name, now).await?;
    let (seq, _) = state.store.tenant_seq(tenant).await?;
    let behind = seq.saturating_sub(s.cursor);
    Ok(SubscriptionView {
        name: s.name.clone(),
        kind: s.kind.as_str(),
        event_types: s.filter.event_types.clone(),
        filter: s.filter.attributes.clone(),
        position: s.cursor,
        max_deliveries: s.max_deliveries,
        visibility_timeout_ms: s.lease_ms,
        retry_backoff_ms: s.backoff_ms,
        lag: behind + if s.kind == SubscriptionKind::Group { stats.pending } else { 0 },
        pending: stats.pending,
        in_flight: stats.leased,
        dead_letters: stats.dead,
        created_at: iso(s.created_at),
        updated_at: iso(s.updated_at),
    })
}

/// `PUT /api/events/subscriptions/{name}`: create (201) or change (200) a subscription.
#[utoipa::path(
    put,
    path = "/api/events/subscriptions/{name}",
    tag = "events",
    summary = "Create or change a subscription (service or admin)",
    params(SubscriptionPath, TenantHeader),
    request_body = SubscriptionBody,
    responses((status = 201, description = "Created", body = SubscriptionView), (status = 200, description = "Changed", body = SubscriptionView), (status = 410, description = "SNAPSHOT_REQUIRED: `startFrom` is past retention", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn put_subscription(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
    body: JsonBody<SubscriptionBody>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let b = body.value;
    let kind = SubscriptionKind::parse(&b.kind)
        .ok_or_else(|| ApiError::invalid("kind must be \"durable\" or \"group\""))?;
    let start = match b.start_from {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "earliest" => Some(StartFrom::Earliest),
        Some(Value::String(s)) if s == "latest" => Some(StartFrom::Latest),
        Some(v) => Some(StartFrom::After(v.as_u64().ok_or_else(|| {
            ApiError::invalid("startFrom is \"earliest\", \"latest\" or a sequence number")
        })?)),
    };
    let spec = SubscriptionSpec {
        name,
        kind,
        filter: EventFilter { event_types: b.event_types, attributes: b.filter },
        max_deliveries: b.max_deliveries,
        lease: b.visibility_timeout_ms.map(Duration::from_millis),
        backoff: b.retry_backoff_ms.map(Duration::from_millis),
        start,
    };
    let (row, created) = state.bus.put_subscription(&auth.tenant, spec).await?;
    let body = subscription_json(&state, auth.tenant.as_str(), &row).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(body)).into_response())
}

/// `GET /api/events/subscriptions/{name}`.
#[utoipa::path(
    get,
    path = "/api/events/subscriptions/{name}",
    tag = "events",
    summary = "A subscription's settings, position and lag",
    params(SubscriptionPath, TenantHeader),
    responses((status = 200, description = "The subscription", body = SubscriptionView), (status = 404, description = "NOT_FOUND: no such subscription", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn get_subscription(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let t = auth.tenant.as_str();
    let row = state
        .store
        .subscription(t, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no subscription {name:?}")))?;
    Ok(Json(subscription_json(&state, t, &row).await?).into_response())
}

/// `GET /api/events/subscriptions`.
#[utoipa::path(
    get,
    path = "/api/events/subscriptions",
    tag = "events",
    summary = "Durable subscriptions and consumer groups with lag",
    params(TenantHeader),
    responses((status = 200, description = "Every subscription", body = SubscriptionList), Refusals),
    security(("bearer" = [])),
)]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let t = auth.tenant.as_str();
    let mut out = Vec::new();
    for row in state.store.subscriptions(t).await? {
        out.push(subscription_json(&state, t, &row).await?);
    }
    Ok(Json(SubscriptionList { subscriptions: out }).into_response())
}

/// `DELETE /api/events/subscriptions/{name}`: with its pending deliveries.
#[utoipa::path(
    delete,
    path = "/api/events/subscriptions/{name}",
    tag = "events",
    summary = "Delete a subscription and its pending deliveries",
    params(SubscriptionPath, TenantHeader),
    responses((status = 204, description = "Deleted"), (status = 404, description = "NOT_FOUND: no such subscription", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn delete_subscription(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    if !state.store.delete_subscription(auth.tenant.as_str(), &name).await? {
        return Err(ApiError::not_found(format!("no subscription {name:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// How a durable subscription's poll reads.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct WaitQuery {
    /// Events at most (default 100; clamped to 1…1,000).
    limit: Option<u32>,
    /// Seconds to wait for the first event when there is none (0 to 30; more is 30).
    wait: Option<u64>,
}

/// A durable subscription's events after its position.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPage {
    subscription: String,
    /// Acknowledged through here.
    position: u64,
    events: Vec<WireEvent>,
    has_more: bool,
    /// Acknowledge this once the events are handled (a decimal sequence).
    next_event_id: String,
}

/// `GET /api/events/subscriptions/{name}/poll`: a durable subscription's events after its
/// position; acknowledge `nextEventId` when they are handled.
#[utoipa::path(
    get,
    path = "/api/events/subscriptions/{name}/poll",
    tag = "events",
    summary = "A durable subscription's events after its position",
    params(SubscriptionPath, WaitQuery, TenantHeader),
    responses(
        (status = 200, description = "A page (possibly empty)", body = SubscriptionPage),
        (status = 404, description = "NOT_FOUND: no such subscription", body = ErrorBody),
        (status = 410, description = "SNAPSHOT_REQUIRED: its position is past retention", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn poll_subscription(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(30));
    let (sub, page) =
        state.bus.poll_subscription(&auth.tenant, &name, q.limit.unwrap_or(100), wait).await?;
    Ok(Json(SubscriptionPage {
        subscription: sub.name,
        position: sub.cursor,
        events: page.events,
        has_more: page.has_more,
        next_event_id: page.next.to_string(),
    })
    .into_response())
}

/// What was handled: `sequence` for a durable subscription, `deliveries` for a group — one of
/// the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"deliveries": [{"sequence": 43, "leaseToken": "b1e2c3d4"}]}))]
pub struct AckBody {
    /// Durable subscriptions: handled through this sequence.
    #[serde(default)]
    sequence: Option<u64>,
    /// Consumer groups: the deliveries handled.
    #[serde(default)]
    deliveries: Vec<DeliveryRef>,
}

/// A delivery, as its claim named it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryRef {
    sequence: u64,
    lease_token: String,
}

/// The answer to an acknowledgement.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AckAnswer {
    /// A durable subscription's new position.
    Position { position: u64 },
    /// Each group delivery: `acked`, or `lease_lost` (it had expired and may be redelivered).
    Results { results: Vec<AckResult> },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResult {
    sequence: u64,
    /// `acked` or `lease_lost`.
    status: &'static str,
}

/// `POST /api/events/subscriptions/{name}/ack`.
#[utoipa::path(
    post,
    path = "/api/events/subscriptions/{name}/ack",
    tag = "events",
    summary = "Advance a durable position, or acknowledge group deliveries",
    params(SubscriptionPath, TenantHeader),
    request_body = AckBody,
    responses(
        (status = 200, description = "The new position, or each delivery's outcome", body = AckAnswer),
        (status = 404, description = "NOT_FOUND: no such subscription", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn ack(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
    body: JsonBody<AckBody>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let bus = state.bus;
    match (body.value.sequence, body.value.deliveries) {
        (Some(seq), d) if d.is_empty() => {
            let position = bus.ack_position(&auth.tenant, &name, seq).await?;
            Ok(Json(AckAnswer::Position { position }).into_response())
        }
        (None, d) if !d.is_empty() => {
            let items: Vec<(u64, String)> =
                d.into_iter().map(|r| (r.sequence, r.lease_token)).collect();
            let held = bus.ack(&auth.tenant, &name, &items).await?;
            let results = items
                .iter()
                .zip(held)
                .map(|((s, _), ok)| AckResult {
                    sequence: *s,
                    status: if ok { "acked" } else { "lease_lost" },
                })
                .collect();
            Ok(Json(AckAnswer::Results { results }).into_response())
        }
        _ => Err(ApiError::invalid(
            "acknowledge a durable subscription with sequence, a group with deliveries",
        )),
    }
}

/// A member's claim on a consumer group's events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"consumer": "worker-1", "max": 10, "waitMs": 1000}))]
pub struct ClaimBody {
    /// The member: 1 to 128 characters (its leases are its own).
    #[schema(min_length = 1, max_length = 128)]
    consumer: String,
    /// Events at most (default 10; clamped to 1…500).
    #[serde(default)]
    max: Option<u32>,
    /// Milliseconds to wait for something to claim (0 to 30,000; more is 30,000).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// An event leased to a member until `leaseExpiresAt`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    group: String,
    event: WireEvent,
    /// Deliveries so far, this one included.
    attempt: u32,
    lease_token: String,
    lease_expires_at: String,
}

/// What a claim got (possibly nothing).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"deliveries": [{"group": "billing", "event": {"sequence": 43, "eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "eventType": "order.created", "tenantId": "acme", "timestamp": "2026-12-07T10:15:31.000Z", "payload": {"orderId": "o-1", "region": "eu"}, "metadata": {"source": "orders"}, "schemaVersion": "1.0"}, "attempt": 1, "leaseToken": "b1e2c3d4", "leaseExpiresAt": "2026-12-07T10:16:01.000Z"}]}))]
pub struct ClaimedDeliveries {
    deliveries: Vec<Delivery>,
}

fn delivery(group: &str, c: &Claimed) -> Delivery {
    Delivery {
        group: group.to_string(),
        event: c.event.clone(),
        attempt: c.attempt,
        lease_token: c.lease_token.clone(),
        lease_expires_at: iso(c.lease_expires_at),
    }
}

/// `POST /api/events/subscriptions/{name}/claim`: lease events of a consumer group.
#[utoipa::path(
    post,
    path = "/api/events/subscriptions/{name}/claim",
    tag = "events",
    summary = "Lease a consumer group's events (long-poll)",
    params(SubscriptionPath, TenantHeader),
    request_body = ClaimBody,
    responses(
        (status = 200, description = "The deliveries leased (possibly none)", body = ClaimedDeliveries),
        (status = 404, description = "NOT_FOUND: no such consumer group", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn claim(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
    body: JsonBody<ClaimBody>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let b = body.value;
    let wait = Duration::from_millis(b.wait_ms.unwrap_or(0).min(30_000));
    let claimed =
        state.bus.claim(&auth.tenant, &name, &b.consumer, b.max.unwrap_or(10), wait).await?;
    let deliveries = claimed.iter().map(|c| delivery(&name, c)).collect();
    Ok(Json(ClaimedDeliveries { deliveries }).into_response())
}

/// A failed delivery.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"sequence": 43, "leaseToken": "b1e2c3d4", "reason": "payment provider timed out", "retryAfterMs": 5000}))]
pub struct NackBody {
    sequence: u64,
    lease_token: String,
    /// Why (kept with the dead letter if this was its last delivery).
    #[serde(default)]
    reason: Option<String>,
    /// Retry no sooner than this (default: the group's backoff).
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// What became of a failed delivery: `retry` (at `retryAt`), `dead_lettered` (as `dlqId`) or
/// `lease_lost` (it had expired already).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "retry", "retryAt": "2026-12-07T10:15:36.000Z"}))]
pub struct NackAnswer {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dlq_id: Option<String>,
}

/// `POST /api/events/subscriptions/{name}/nack`: a delivery failed.
#[utoipa::path(
    post,
    path = "/api/events/subscriptions/{name}/nack",
    tag = "events",
    summary = "A delivery failed: retry with backoff or dead-letter",
    params(SubscriptionPath, TenantHeader),
    request_body = NackBody,
    responses(
        (status = 200, description = "What became of it", body = NackAnswer),
        (status = 404, description = "NOT_FOUND: no such consumer group", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = [])),
)]
pub async fn nack(
    State(state): State<AppState>,
    auth: Auth,
    Path(SubscriptionPath { name }): Path<SubscriptionPath>,
    body: JsonBody<NackBody>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let b = body.value;
    let outcome = state
        .bus
        .nack(
            &auth.tenant,
            &name,
            b.sequence,
            &b.lease_token,
            b.reason.as_deref().unwrap_or("rejected by the consumer"),
            b.retry_after_ms.map(Duration::from_millis),
        )
        .await?;
    Ok(Json(nack_answer(&outcome)).into_response())
}

fn nack_answer(outcome: &NackOutcome) -> NackAnswer {
    let (status, retry_at, dlq_id) = match outcome {
        NackOutcome::Retry { at } => ("retry", Some(iso(*at)), None),
        NackOutcome::DeadLettered { dlq_id } => ("dead_lettered", None, Some(dlq_id.clone())),
        NackOutcome::LeaseLost => ("lease_lost", None, None),
    };
    NackAnswer { status, retry_at, dlq_id }
}

// ---- the dead-letter queue ---------------------------------------------------------------------

/// A dead letter: the event as it will be reprocessed, why it died, and its history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"dlqId": "dlq-1f2e", "subscription": "billing", "event": {"sequence": 43, "eventId": "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40", "eventType": "order.created", "tenantId": "acme", "timestamp": "2026-12-07T10:15:31.000Z", "payload": {"orderId": "o-1", "region": "eu"}, "metadata": {"source": "orders"}, "schemaVersion": "1.0"}, "originalPayload": {"orderId": "o-1", "region": "eu"}, "failureReason": "payment provider timed out", "deliveryCount": 5, "consumer": "worker-1", "firstAttemptAt": "2026-12-07T10:15:31.500Z", "lastAttemptAt": "2026-12-07T10:17:02.000Z", "deadLetteredAt": "2026-12-07T10:17:02.010Z", "status": "dead", "updatedAt": "2026-12-07T10:17:02.010Z"}))]
pub struct DeadLetterView {
    dlq_id: String,
    /// The consumer group it died in.
    subscription: String,
    /// As it will be reprocessed (`payload` edited, if an operator edited it).
    event: WireEvent,
    /// The payload as first delivered.
    original_payload: Value,
    failure_reason: String,
    delivery_count: u32,
    /// The member that last had it.
    consumer: Option<String>,
    first_attempt_at: Option<String>,
    last_attempt_at: Option<String>,
    dead_lettered_at: String,
    /// `dead`, or `reprocessed` once sent back to its group.
    status: String,
    updated_at: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        Self {
            dlq_id: d.dlq_id.clone(),
            subscription: d.subscription.clone(),
            event: d.event.clone(),
            original_payload: d.original_payload.clone(),
            failure_reason: d.reason.clone(),
            delivery_count: d.attempts,
            consumer: d.consumer.clone(),
            first_attempt_at: d.first_attempt_at.map(iso),
            last_attempt_at: d.last_attempt_at.map(iso),
            dead_lettered_at: iso(d.dead_at),
            status: d.status.clone(),
            updated_at: iso(d.updated_at),
        }
    }
}

/// Dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    dead_letters: Vec<DeadLetterView>,
}

/// A dead letter's id, as the queue lists it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DlqId {
    /// The `dlqId` of a listed dead letter.
    #[param(min_length = 1, max_length = 128, example = "dlq-1f2e")]
    id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DlqParams {
    /// Only this consumer group's.
    subscription: Option<String>,
    /// Only events of this type (`order.*`: every type with that prefix).
    event_type: Option<String>,
    /// `dead` (default), `reprocessed`, or `all`.
    #[param(pattern = "^(dead|reprocessed|all)$")]
    status: Option<String>,
    /// Dead-lettered at or after (RFC 3339: `2026-12-07T12:00:00Z`; before 1970 is 1970).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Dead-lettered before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// How many at most: clamped to 1…1000 (default 100).
    limit: Option<i64>,
}

/// An RFC 3339 bound of a search, epoch ms; a time before 1970 bounds nothing (0).
fn time_param(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| match HlcTimestamp::parse_clamped(s) {
            Ok(t) => Ok(t.millis as i64),
            Err(e) => Err(ApiError::invalid(format!("{name}: {e}"))),
        })
        .transpose()
}

/// `GET /api/events/dlq`: dead letters matching the criteria, newest first.
#[utoipa::path(
    get,
    path = "/api/events/dlq",
    tag = "dlq",
    summary = "Dead letters by criteria (service or admin)",
    params(DlqParams, TenantHeader),
    responses((status = 200, description = "Newest first", body = DeadLetterList), Refusals),
    security(("bearer" = [])),
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    auth: Auth,
    Query(p): Query<DlqParams>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let status = match p.status.as_deref() {
        None | Some("dead") => Some("dead".to_string()),
        Some("reprocessed") => Some("reprocessed".to_string()),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::invalid(format!("status {other:?}: dead, reprocessed or all")));
        }
    };
    let q = DlqQuery {
        subscription: p.subscription,
        event_type: p.event_type,
        status,
        dead_after: time_param("from", &p.from)?,
        dead_before: time_param("to", &p.to)?,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    let rows = state.store.dead_letters(auth.tenant.as_str(), &q).await?;
    let dead_letters = rows.iter().map(DeadLetterView::from).collect();
    Ok(Json(DeadLetterList { dead_letters }).into_response())
}

#[utoipa::path(
    get,
    path = "/api/events/dlq/{id}",
    tag = "dlq",
    summary = "One dead letter",
    params(DlqId, TenantHeader),
    responses((status = 200, description = "The dead letter", body = DeadLetterView), (status = 404, description = "NOT_FOUND: no such dead letter", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn get_dead_letter(
    State(state): State<AppState>,
    auth: Auth,
    Path(DlqId { id }): Path<DlqId>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let d = state
        .store
        .dead_letter(auth.tenant.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(DeadLetterView::from(&d)).into_response())
}

/// The payload a dead letter will be reprocessed with.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"payload": {"orderId": "o-1", "region": "eu", "retry": true}}))]
pub struct DlqEdit {
    payload: Value,
}

/// `PATCH /api/events/dlq/{id}`: replace the payload it will be reprocessed with (audited).
#[utoipa::path(
    patch,
    path = "/api/events/dlq/{id}",
    tag = "dlq",
    summary = "Edit a dead letter's payload (audited)",
    params(DlqId, TenantHeader),
    request_body = DlqEdit,
    responses((status = 200, description = "As it now is", body = DeadLetterView), (status = 404, description = "NOT_FOUND: no such dead letter", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn edit_dead_letter(
    State(state): State<AppState>,
    auth: Auth,
    Path(DlqId { id }): Path<DlqId>,
    body: JsonBody<DlqEdit>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let d = state
        .store
        .edit_dead_letter(auth.tenant.as_str(), &id, &body.value.payload, auth.user())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(DeadLetterView::from(&d)).into_response())
}

/// `POST /api/events/dlq/{id}/reprocess`: back to its consumer group, attempts from zero.
#[utoipa::path(
    post,
    path = "/api/events/dlq/{id}/reprocess",
    tag = "dlq",
    summary = "Send a dead letter back to its group (audited)",
    params(DlqId, TenantHeader),
    responses((status = 200, description = "Sent back (status `reprocessed`)", body = DeadLetterView), (status = 404, description = "NOT_FOUND: no such dead letter", body = ErrorBody), (status = 409, description = "CONFLICT: already reprocessed", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn reprocess_dead_letter(
    State(state): State<AppState>,
    auth: Auth,
    Path(DlqId { id }): Path<DlqId>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    let t = auth.tenant.clone();
    let d = state.store.reprocess_dead_letter(t.as_str(), &id, auth.user()).await?;
    state.metrics.inc("pf2_bus_reprocessed_total", &[]);
    state.bus.kick_waiters(&t);
    Ok(Json(DeadLetterView::from(&d)).into_response())
}

/// `DELETE /api/events/dlq/{id}`: gone for good (audited).
#[utoipa::path(
    delete,
    path = "/api/events/dlq/{id}",
    tag = "dlq",
    summary = "Delete a dead letter (audited)",
    params(DlqId, TenantHeader),
    responses((status = 204, description = "Deleted"), (status = 404, description = "NOT_FOUND: no such dead letter", body = ErrorBody), Refusals),
    security(("bearer" = [])),
)]
pub async fn delete_dead_letter(
    State(state): State<AppState>,
    auth: Auth,
    Path(DlqId { id }): Path<DlqId>,
) -> Result<Response, ApiError> {
    require_service(&auth)?;
    if !state.store.delete_dead_letter(auth.tenant.as_str(), &id, auth.user()).await? {
        return Err(ApiError::not_found(format!("no dead letter {id}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
