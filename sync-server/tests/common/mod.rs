//! The test harness: a real server state on a real SQLite file or the real PostgreSQL, requests
//! through the router (`tower::ServiceExt::oneshot`), tokens minted with the test secret.
//!
//! PostgreSQL: `PF2_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`). When
//! it is unreachable the test fails if `PF2_REQUIRE_POSTGRES=1` (CI sets it) and otherwise says
//! loudly that it skipped.

#![allow(dead_code)]

pub mod net;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use sync_server::auth::Claims;
use sync_server::config::Config;
use sync_server::state::AppState;
use tower::ServiceExt;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct TestApp {
    pub state: AppState,
    pub tenant: String,
    pub backend: Backend,
    pub config: Config,
    _dir: Option<std::sync::Arc<TempDir>>,
}

/// A temporary folder removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("pf2-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn postgres_url() -> String {
    std::env::var("PF2_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", String::from_utf8_lossy(&self.body));
        self
    }
}

impl TestApp {
    /// A fresh app on `backend`, or `None` (with a loud message) if PostgreSQL is not reachable
    /// and not required.
    pub async fn start(backend: Backend) -> Option<TestApp> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = TempDir::new();
                (format!("sqlite://{}/pf2.db", dir.0.display()), Some(dir))
            }
            Backend::Postgres => (postgres_url(), None),
        };
        let mut config = Config::for_tests(&url);
        tweak(&mut config);
        let state = match config.build().await {
            Ok(s) => s,
            Err(e)
                if backend == Backend::Postgres
                    && std::env::var("PF2_REQUIRE_POSTGRES").as_deref() != Ok("1") =>
            {
                eprintln!(
                    "SKIPPED (PostgreSQL test): PostgreSQL is not reachable at {url}: {e}. Set PF2_REQUIRE_POSTGRES=1 to make this fail."
                );
                return None;
            }
            Err(e) => panic!("cannot start the app on {backend:?}: {e}"),
        };
        let tenant = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Some(TestApp { state, tenant, backend, config, _dir: dir.map(std::sync::Arc::new) })
    }

    /// Another app (as a restarted server would be) on `app`'s database and tenant, with its
    /// configuration changed by `tweak`.
    pub async fn reopen(app: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = app.config.clone();
        tweak(&mut config);
        let state = config.build().await.expect("the app reopens");
        TestApp {
            state,
            tenant: app.tenant.clone(),
            backend: app.backend,
            config,
            _dir: app._dir.clone(),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.token_for(&self.tenant, user, &[])
    }

    /// A token for `user` of this app's tenant carrying `extra` claims (`{"projects": [...]}`).
    pub fn token_with(&self, user: &str, extra: Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut c = Claims::new(&self.tenant, user, now, 600);
        c.other = extra.as_object().cloned().unwrap_or_default();
        self.state.jwt.mint(&c).unwrap()
    }

    pub fn token_for(&self, tenant: &str, user: &str, roles: &[&str]) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut c = Claims::new(tenant, user, now, 600);
        c.roles = roles.iter().map(|r| r.to_string()).collect();
        self.state.jwt.mint(&c).unwrap()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
        let resp = sync_server::app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
        Response { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.send(Method::GET, path, Some(token), &[], None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.send(Method::POST, path, Some(token), &[], Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    /// A reconcile request body for `client` with `ops`.
    pub fn reconcile_body(&self, request_id: &str, client: &str, ops: Vec<Value>) -> Value {
        json!({
            "requestId": request_id,
            "clientId": client,
            "tenantId": self.tenant,
            "operations": ops,
            "requestedAt": "2026-01-30T12:00:00Z",
        })
    }

    /// A wire operation by `client`, its `seq`-th: say what it does (`create`, `update`,
    /// `delete`, `kind`), optionally when (`at`, default `seq` ms past the test epoch) and
    /// against which vector clock (`after`, default empty), then `build` it.
    pub fn op(&self, client: &str, seq: u64) -> OpBuilder {
        OpBuilder {
            tenant: self.tenant.clone(),
            client: client.into(),
            seq,
            entity_type: "todo".into(),
            entity: String::new(),
            kind: "CREATE",
            payload: Value::Null,
            millis: seq,
            base: json!({}),
        }
    }

    pub async fn reconcile(
        &self,
        token: &str,
        request_id: &str,
        client: &str,
        ops: Vec<Value>,
    ) -> Response {
        self.post(
            "/api/reconciliation/reconcile",
            token,
            &self.reconcile_body(request_id, client, ops),
        )
        .await
    }
}

/// An HS256 token with an arbitrary header, signed with `secret` (for the JWT attack matrix).
pub fn raw_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let h = B64.encode(serde_json::to_vec(header).unwrap());
    let c = B64.encode(serde_json::to_vec(claims).unwrap());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{c}").as_bytes());
    format!("{h}.{c}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Bodies from outside for the decoder property tests: arbitrary bytes, or `valid` with a few
/// bytes overwritten.
pub fn arbitrary_or_mutated(valid: Vec<u8>) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(move |flips| {
            let mut b = valid.clone();
            for (at, x) in flips {
                let i = at % b.len();
                b[i] = x;
            }
            b
        }),
    ]
}

/// The decoder property test of one REST route: 300 bodies from [`arbitrary_or_mutated`]`(valid)`
/// POSTed to `path` are answered `accepted` or one of `refused` (never a 500), and a refused
/// body carries an error code and leaves `probe` (the state it must not touch) unchanged.
#[allow(clippy::too_many_arguments)]
pub fn post_bodies_never_fail_inside<P, F>(
    rt: &tokio::runtime::Runtime,
    app: &TestApp,
    path: &str,
    token: &str,
    valid: Vec<u8>,
    accepted: u16,
    refused: &[u16],
    probe: impl Fn() -> F,
) where
    P: PartialEq + std::fmt::Debug,
    F: std::future::Future<Output = P>,
{
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 300,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(&arbitrary_or_mutated(valid), |body| {
            rt.block_on(async {
                let before = probe().await;
                let r = app.send(Method::POST, path, Some(token), &[], Some(body)).await;
                let code = r.status.as_u16();
                prop_assert!(
                    code == accepted || refused.contains(&code),
                    "status {code}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                if code != accepted {
                    prop_assert_eq!(before, probe().await, "a refused body changed state");
                    prop_assert!(!r.error_code().is_empty());
                }
                Ok(())
            })
        })
        .unwrap();
}

/// A fresh app on a backend (and with a config tweak), or return from the test when
/// PostgreSQL is unreachable and not required (`TestApp::start` has said so loudly).
#[macro_export]
macro_rules! app {
    ($backend:expr) => {
        match $crate::common::TestApp::start($backend).await {
            Some(app) => app,
            None => return,
        }
    };
    ($backend:expr, $tweak:expr) => {
        match $crate::common::TestApp::start_with($backend, $tweak).await {
            Some(app) => app,
            None => return,
        }
    };
}

/// Generate `#[tokio::test]`s for SQLite and PostgreSQL from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Postgres).await } )*
        }
    };
}

/// Claims for user `u` of `tenant`, valid for 10 minutes, with `extra` fields set (a `null`
/// removes the field).
pub fn claims(tenant: &str, extra: Value) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = json!({"sub": "u", "tenantId": tenant, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Tokens every surface must refuse with `AUTH_FAILED`, for `tenant` on a server whose HS256
/// secret is [`SECRET`]: (what is wrong, the token).
pub fn bad_tokens(tenant: &str) -> Vec<(&'static str, String)> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |extra: Value| claims(tenant, extra);
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let b64 = |v: &Value| B64.encode(serde_json::to_vec(v).unwrap());
    let rsa_public =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rsa-public.pem")).unwrap();
    let rsa_private =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rsa-private.pem")).unwrap();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    vec![
        ("garbage", "not.a.jwt".into()),
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(json!({})))),
        ),
        ("wrong algorithm (HS512)", hs512),
        (
            "HS/RS confusion: HS256 signed with the RSA public key",
            raw_token(&hs, &claims(json!({})), &rsa_public),
        ),
        ("RS256 token on an HS256 server", rs256),
        ("expired", raw_token(&hs, &claims(json!({"exp": now - 3600})), SECRET.as_bytes())),
        (
            "nbf in the future",
            raw_token(&hs, &claims(json!({"nbf": now + 3600})), SECRET.as_bytes()),
        ),
        ("no exp", raw_token(&hs, &claims(json!({"exp": null})), SECRET.as_bytes())),
        (
            "bad signature",
            raw_token(&hs, &claims(json!({})), b"another-secret-another-secret-0123456"),
        ),
        (
            "key in header (jwk)",
            raw_token(
                &json!({"alg": "HS256", "typ": "JWT", "jwk": {"kty": "oct", "k": "YXR0YWNrZXI"}, "kid": "attacker"}),
                &claims(json!({})),
                b"attacker",
            ),
        ),
        ("no tenant", raw_token(&hs, &claims(json!({"tenantId": null})), SECRET.as_bytes())),
    ]
}

/// A valid token made the same way as [`bad_tokens`] (the control).
pub fn good_raw_token(tenant: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    raw_token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": "u", "tenantId": tenant, "exp": now + 600}),
        SECRET.as_bytes(),
    )
}

/// See [`TestApp::op`].
pub struct OpBuilder {
    tenant: String,
    client: String,
    seq: u64,
    entity_type: String,
    entity: String,
    kind: &'static str,
    payload: Value,
    millis: u64,
    base: Value,
}

impl OpBuilder {
    pub fn create(self, entity_type: &str, entity: &str, payload: Value) -> Self {
        self.kind("CREATE", entity_type, entity, payload)
    }

    pub fn update(self, entity_type: &str, entity: &str, payload: Value) -> Self {
        self.kind("UPDATE", entity_type, entity, payload)
    }

    pub fn delete(self, entity_type: &str, entity: &str) -> Self {
        self.kind("DELETE", entity_type, entity, Value::Null)
    }

    /// Any `operationType`, valid or not (for the refusal tests).
    pub fn kind(
        mut self,
        kind: &'static str,
        entity_type: &str,
        entity: &str,
        payload: Value,
    ) -> Self {
        (self.kind, self.entity_type, self.entity, self.payload) =
            (kind, entity_type.into(), entity.into(), payload);
        self
    }

    /// The operation's HLC time, in ms past the test epoch.
    pub fn at(mut self, millis: u64) -> Self {
        self.millis = millis;
        self
    }

    /// The vector clock the operation was made against (its own entry is added).
    pub fn after(mut self, base: &Value) -> Self {
        self.base = base.clone();
        self
    }

    pub fn build(self) -> Value {
        let mut clock = self.base.as_object().cloned().unwrap_or_default();
        clock.insert(self.client.clone(), json!(self.seq));
        json!({
            "operationId": format!("{}-{}-{}", self.client, self.seq, self.tenant),
            "clientId": self.client,
            "clientSeq": self.seq,
            "tenantId": self.tenant,
            "entityType": self.entity_type,
            "entityId": self.entity,
            "operationType": self.kind,
            "payload": self.payload,
            "timestamp": sdk_core::hlc::HlcTimestamp::new(1_800_000_000_000 + self.millis, 0).to_string(),
            "vectorClock": clock,
        })
    }
}
