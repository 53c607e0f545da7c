//! Extractors whose rejections are api.md errors (`{"error": {code, message}}`), not axum's
//! plain-text defaults: bodies over the limit are 413 `PAYLOAD_TOO_LARGE`, malformed JSON,
//! queries and paths are 400 `INVALID_REQUEST`. [`Auth`] is the verified caller of a request;
//! [`rate_limit`] the per-user limit of a route.

use crate::auth::{Identity, SUPER_ADMIN};
use crate::error::ApiError;
use crate::ratelimit::{Quota, Rate};
use crate::state::AppState;
use crate::store::AuditEntry;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdk_core::ErrorCode;
use sdk_core::ids::TenantId;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Instant;

/// A JSON body, with its raw bytes (for hashing).
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let raw = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is over the size limit")
            } else {
                ApiError::invalid(format!("cannot read the body: {e}"))
            }
        })?;
        let invalid = |e: serde_json::Error| ApiError::invalid(format!("invalid JSON body: {e}"));
        let value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            // `1441.0` is an integer to JSON Schema (and so to our OpenAPI document): read such
            // numbers as integers and try once more.
            Err(first) => {
                let mut v: Value = serde_json::from_slice(&raw).map_err(invalid)?;
                sdk_core::protocol::integral_numbers(&mut v);
                serde_json::from_value(v).map_err(|_| invalid(first))?
            }
        };
        Ok(JsonBody { value, raw })
    }
}

/// Query parameters.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
    }
}

/// Raw JSON text as a response with a status.
pub fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The per-user limit of `route`: `RATE_LIMIT` with `Retry-After` once it is spent. Either way
/// the answer says where the caller stands (see [`quota_headers`]).
pub fn rate_limit(state: &AppState, auth: &Auth, route: &str, rate: Rate) -> Result<(), ApiError> {
    let key = format!("{}\u{0}{}\u{0}{route}", auth.tenant, auth.user());
    metered(state, &key, route, rate, 1)
}

/// Take `n` of `rate` for `key` (a caller and a route), noting the quota for the answer's
/// headers.
pub fn metered(
    state: &AppState,
    key: &str,
    route: &str,
    rate: Rate,
    n: u32,
) -> Result<(), ApiError> {
    let (taken, quota) = state.rate.check_quota(key, rate, Instant::now(), n);
    let _ = QUOTA.try_with(|q| q.set(Some(quota)));
    taken.map_err(|retry| {
        state.metrics.inc("pf2_rate_limited_total", &[("route", route)]);
        ApiError::rate_limited(retry)
    })
}

tokio::task_local! {
    /// The quota of the rate limit the current request was metered by.
    static QUOTA: std::cell::Cell<Option<Quota>>;
}

/// Middleware: an answer to a rate-limited route carries the caller's standing — the IETF
/// draft's `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until the
/// bucket is full again) and `RateLimit-Policy` (`10;w=60`) — on success and on 429 alike, so a
/// client paces itself before it is refused.
pub async fn quota_headers(req: Request, next: axum::middleware::Next) -> Response {
    QUOTA
        .scope(std::cell::Cell::new(None), async move {
            let mut res = next.run(req).await;
            if let Some(q) = QUOTA.with(|q| q.get()) {
                let h = res.headers_mut();
                h.insert("ratelimit-limit", HeaderValue::from(q.limit));
                h.insert("ratelimit-remaining", HeaderValue::from(q.remaining));
                h.insert("ratelimit-reset", HeaderValue::from(q.reset_secs));
                let policy = format!("{};w={}", q.limit, q.window_secs);
                if let Ok(v) = HeaderValue::from_str(&policy) {
                    h.insert("ratelimit-policy", v);
                }
            }
            res
        })
        .await
}

/// An authenticated request: the identity and the tenant it acts on (the token's, or for an
/// audited super-admin access, the one named in `X-Tenant-ID`).
#[derive(Debug, Clone)]
pub struct Auth {
    pub identity: Identity,
    pub tenant: TenantId,
}

impl Auth {
    pub fn user(&self) -> &str {
        self.identity.user.as_str()
    }

    /// The tenant's operators: `admin`, or `super_admin` (`what` names what was refused).
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.identity.has_role("admin") || self.identity.has_role(crate::auth::SUPER_ADMIN) {
            return Ok(());
        }
        Err(ApiError::new(ErrorCode::AuthzFailed, format!("{what} needs the admin role")))
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn client_addr(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let path = parts.uri.path().to_string();
        let token = header(parts, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let identity = match token {
            None => Err(ApiError::auth("missing bearer token")),
            Some(t) => state.jwt.verify(t),
        };
        let identity = match identity {
            Ok(i) => i,
            Err(e) => {
                state.metrics.inc("pf2_auth_failures_total", &[]);
                let details =
                    json!({ "path": path, "ip": client_addr(parts), "reason": e.message });
                let _ = state
                    .store
                    .audit(&AuditEntry {
                        tenant: "-",
                        actor: "-",
                        action: "auth.failed",
                        target: &path,
                        outcome: "denied",
                        details,
                    })
                    .await;
                return Err(e);
            }
        };
        let requested = header(parts, "x-tenant-id").map(str::to_string);
        let tenant = match requested {
            None => identity.tenant.clone(),
            Some(t) if t == identity.tenant.as_str() => identity.tenant.clone(),
            Some(t) => {
                let justification =
                    header(parts, "x-justification").map(str::trim).filter(|j| !j.is_empty());
                let other = TenantId::new(t.clone()).map_err(|_| ApiError::tenant_violation())?;
                let allowed = identity.has_role(SUPER_ADMIN) && justification.is_some();
                let details: Value = json!({
                    "path": path,
                    "tokenTenant": identity.tenant.as_str(),
                    "justification": justification,
                    "ip": client_addr(parts),
                });
                let entry = AuditEntry {
                    tenant: other.as_str(),
                    actor: identity.user.as_str(),
                    action: "tenant.cross_access",
                    target: &path,
                    outcome: if allowed { "allowed" } else { "denied" },
                    details,
                };
                state.store.audit(&entry).await?;
                if !allowed {
                    return Err(ApiError::tenant_violation());
                }
                other
            }
        };
        Ok(Auth { identity, tenant })
    }
}
