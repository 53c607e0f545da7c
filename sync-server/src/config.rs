//! Configuration from flags and environment (`PF2_*`), and building the [`AppState`].
//!
//! With no JWT secret or key configured, development mode generates a 256-bit secret once, keeps
//! it in the data folder (`jwt-secret`, mode 0600) and says so in the log: the server never runs
//! with a guessable secret. The webhook signing secret works the same way (`webhook-secret`).

use crate::auth::JwtConfig;
use crate::limits::Limits;
use crate::ratelimit::Rate;
use crate::state::AppState;
use crate::store::{SqliteSync, Store};
use anyhow::Context;
use jsonwebtoken::Algorithm;
use sdk_core::apply::ApplyEngine;
use sdk_core::ids::EntityType;
use sdk_core::rules::SyncRules;
use sdk_core::strategy::{ConflictStrategy, OnOverlap, StrategyRegistry};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Eddsa,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "PF2_LISTEN", default_value = "127.0.0.1:3000", global = true)]
    pub listen: String,
    /// `sqlite://path` (embedded, the default) or `postgres://…`.
    #[arg(long, env = "PF2_DATABASE_URL", default_value = "sqlite://./data/pf2.db", global = true)]
    pub database_url: String,
    /// Folder for generated development secrets (default: the SQLite file's folder, or ./data).
    #[arg(long, env = "PF2_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "PF2_SQLITE_SYNCHRONOUS", value_enum, default_value = "full", global = true)]
    pub sqlite_synchronous: SqliteSync,
    /// Database connections per process (default: 4 for SQLite, 16 for PostgreSQL).
    #[arg(long, env = "PF2_DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<u32>,
    /// An OpenTelemetry collector's OTLP/HTTP endpoint (`http://127.0.0.1:4318`): the server's
    /// spans are exported there. Unset: nothing is exported.
    #[arg(long, env = "PF2_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    #[arg(long, env = "PF2_JWT_ALGORITHM", value_enum, default_value = "hs256", global = true)]
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 shared secret (≥ 32 bytes). Generated and kept in the data folder when absent.
    #[arg(long, env = "PF2_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// PEM file of the RS256 / EdDSA public key.
    #[arg(long, env = "PF2_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,
    /// PEM file of the matching private key (only for the `token` command).
    #[arg(long, env = "PF2_JWT_PRIVATE_KEY", global = true)]
    pub jwt_private_key: Option<PathBuf>,
    #[arg(long, env = "PF2_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "PF2_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Clock leeway for exp/nbf, seconds (capped at 30).
    #[arg(long, env = "PF2_JWT_LEEWAY", default_value_t = 5, global = true)]
    pub jwt_leeway: u64,
    #[arg(long, env = "PF2_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub webhook_secret: Option<String>,
    /// The key of the audit log's chains (at least 32 characters; every process of a
    /// deployment the same). Kept outside the database: whoever can write the audit table
    /// cannot forge an entry. Unset: a generated one in `data-dir/audit-key` (development).
    #[arg(long, env = "PF2_AUDIT_KEY", hide_env_values = true, global = true)]
    pub audit_key: Option<String>,
    /// Days connection audits (sockets, refused sign-ins) are kept.
    #[arg(long, env = "PF2_AUDIT_RETENTION_CONNECTION_DAYS", default_value_t = 90, global = true)]
    pub audit_retention_connection_days: u64,
    /// Days every other audit entry (super-admin access, conflict and dead-letter decisions) is
    /// kept (default: 7 years).
    #[arg(long, env = "PF2_AUDIT_RETENTION_DAYS", default_value_t = 2557, global = true)]
    pub audit_retention_days: u64,
    #[arg(long, env = "PF2_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,
    #[arg(long, env = "PF2_MAX_BATCH", default_value_t = 500, global = true)]
    pub max_batch: usize,
    #[arg(long, env = "PF2_MAX_DELTA", default_value_t = 1000, global = true)]
    pub max_delta: u64,
    /// Requests per minute per user (api.md: polling 60, reconciliation 10).
    #[arg(long, env = "PF2_RATE_POLL", default_value_t = 60, global = true)]
    pub rate_poll: u32,
    #[arg(long, env = "PF2_RATE_RECONCILE", default_value_t = 10, global = true)]
    pub rate_reconcile: u32,
    #[arg(long, env = "PF2_RATE_TRANSACTIONS", default_value_t = 60, global = true)]
    pub rate_transactions: u32,
    /// Conflict strategy of an entity type, repeatable: `--strategy document=manual`. Strategies:
    /// `lww`, `field-merge` (the default for every type), `field-merge-manual`, `manual`,
    /// `automerge` (CRDT documents: operations carry Automerge changes and always merge).
    /// Custom merge functions and other CRDT mergers are registered in code (`Config::build_with`).
    #[arg(long = "strategy", env = "PF2_STRATEGIES", value_delimiter = ',', global = true)]
    pub strategies: Vec<String>,
    /// A sync rule file (TOML, docs/api/sync-rules.md): who may read and write what inside a
    /// tenant. Checked at start (a bad file stops the server, naming the line). Without one
    /// every user of a tenant reads and writes the whole tenant.
    #[arg(long, env = "PF2_SYNC_RULES", global = true)]
    pub sync_rules: Option<PathBuf>,
    /// Sync rules as text, set in code (tests, embedders); the file wins when both are set.
    #[arg(skip)]
    pub sync_rules_text: Option<String>,
    /// Browser origins allowed to open WebSockets (repeatable; `*`, exact, or `http://host:*`).
    /// Default: the CORS origins when `--cors-allowed-origin` is set, else localhost and
    /// 127.0.0.1 on any port. Pages served by this server itself are always allowed.
    #[arg(
        long = "ws-allowed-origin",
        env = "PF2_WS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub ws_allowed_origins: Vec<String>,
    /// Origins whose pages may call the REST API from the browser (CORS), repeatable or
    /// comma-separated: `https://app.example`, `http://localhost:*` (any port), or `*`. Default:
    /// none — only pages served from this server's own origin. The WebSocket allowlist
    /// (`--ws-allowed-origin`) is these when it is not set itself.
    #[arg(
        long = "cors-allowed-origin",
        env = "PF2_CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_allowed_origins: Vec<String>,
    #[arg(long, env = "PF2_WS_MAX_CONNECTIONS", default_value_t = 10_000, global = true)]
    pub ws_max_connections: usize,
    /// Messages per minute per WebSocket connection (api.md: 100).
    #[arg(long, env = "PF2_WS_RATE", default_value_t = crate::limits::DEFAULT_WS_RATE_PER_MINUTE, global = true)]
    pub ws_rate: u32,
    #[arg(long, env = "PF2_WS_SEND_BUFFER", default_value_t = 256, global = true)]
    pub ws_send_buffer: usize,
    /// Worker threads of the runtime WebSocket sessions run on, apart from HTTP (default: one
    /// per core; 0 runs them on the HTTP runtime).
    #[arg(long, env = "PF2_REALTIME_THREADS", global = true)]
    pub realtime_threads: Option<usize>,
    /// How the session threads run beside the HTTP threads: `idle` (Linux's SCHED_IDLE: the
    /// CPU the rest leaves, given up at once to a request) or that many `nice` steps below (0:
    /// the same priority). Realtime is what may degrade when the CPU is short.
    #[arg(long, env = "PF2_REALTIME_NICE", default_value_t = crate::realtime::runtime::DEFAULT_PRIORITY, global = true)]
    pub realtime_nice: crate::realtime::runtime::Priority,
    /// Milliseconds a busy event stream gathers events before its next delivery (0: every
    /// event goes out on its own). An event after a quiet spell goes out at once.
    #[arg(long, env = "PF2_EVENT_BATCH_MS", default_value_t = crate::limits::DEFAULT_EVENT_BATCH_MS, global = true)]
    pub event_batch_ms: u64,
    #[arg(long, env = "PF2_EVENT_RETENTION_DAYS", default_value_t = 7, global = true)]
    pub event_retention_days: u64,
    #[arg(long, env = "PF2_IDEMPOTENCY_RETENTION_DAYS", default_value_t = 7, global = true)]
    pub idempotency_retention_days: u64,
    /// Serve the files of this directory at `/` (the demo app, a browser test page). API routes
    /// take precedence.
    #[arg(long, env = "PF2_STATIC_DIR", global = true)]
    pub static_dir: Option<std::path::PathBuf>,
    /// `redis://host:port`: join the other processes on the same database (room, direct and
    /// event fan-out, presence). Without it the process is on its own.
    #[arg(long, env = "PF2_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// Retention of an event type, repeatable, first match wins: `--event-retention audit.*=90`
    /// (days). Other types keep `--event-retention-days`.
    #[arg(
        long = "event-retention",
        env = "PF2_EVENT_RETENTION",
        value_delimiter = ',',
        global = true
    )]
    pub event_retention: Vec<String>,
    /// Event types kept indefinitely (patterns, repeatable).
    #[arg(
        long = "critical-event-type",
        env = "PF2_CRITICAL_EVENT_TYPES",
        value_delimiter = ',',
        default_value = "transaction.*",
        global = true
    )]
    pub critical_event_types: Vec<String>,
    /// Deliveries of an event to a consumer group before it is dead-lettered (default for new
    /// groups; each group may set its own).
    #[arg(long, env = "PF2_BUS_MAX_DELIVERIES", default_value_t = 3, global = true)]
    pub bus_max_deliveries: u32,
    /// How long a claimed event stays leased, ms.
    #[arg(long, env = "PF2_BUS_VISIBILITY_TIMEOUT_MS", default_value_t = 30_000, global = true)]
    pub bus_visibility_timeout_ms: u64,
    /// First retry delay after a nack, ms (doubling per retry, at most 5 minutes).
    #[arg(long, env = "PF2_BUS_RETRY_BACKOFF_MS", default_value_t = 1_000, global = true)]
    pub bus_retry_backoff_ms: u64,
    /// Events published per second per tenant (api.md: 1,000).
    #[arg(long, env = "PF2_RATE_PUBLISH", default_value_t = 1_000, global = true)]
    pub rate_publish: u32,
    /// Largest stored form of a collaborative document, bytes (a `doc_sync` past it is refused
    /// with PAYLOAD_TOO_LARGE).
    #[arg(long, env = "PF2_MAX_DOCUMENT_BYTES", default_value_t = crate::limits::DEFAULT_MAX_DOCUMENT_BYTES, global = true)]
    pub max_document_bytes: usize,
    /// Appended change bytes after which a document's changes are folded into its save.
    #[arg(long, env = "PF2_DOCUMENT_COMPACT_BYTES", default_value_t = crate::limits::DEFAULT_COMPACT_BYTES, global = true)]
    pub document_compact_bytes: i64,
    /// Presence TTL, seconds: an entry lives this long after its client's last frame
    /// (heartbeats every 30 s keep it alive), in Redis too.
    #[arg(long, env = "PF2_PRESENCE_TTL_SECS", default_value_t = 90, global = true)]
    pub presence_ttl_secs: u64,
}

impl Config {
    /// Defaults with a database URL. The realtime rate limit is the shipped one; the REST rate
    /// limits are lifted, since a test drives many requests per tenant in a second.
    pub fn for_tests(database_url: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            database_url: database_url.into(),
            data_dir: None,
            sqlite_synchronous: SqliteSync::Normal,
            db_pool_size: None,
            otlp_endpoint: None,
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_secret: Some("test-secret-test-secret-test-secret-0123".into()),
            jwt_public_key: None,
            jwt_private_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: 5,
            webhook_secret: Some("test-webhook-secret".into()),
            audit_key: Some("test-audit-key-test-audit-key-test-audit-key".into()),
            audit_retention_connection_days: 90,
            audit_retention_days: 2557,
            max_body_bytes: 1024 * 1024,
            max_batch: 500,
            max_delta: 1000,
            rate_poll: 100_000,
            rate_reconcile: 100_000,
            rate_transactions: 100_000,
            strategies: Vec::new(),
            sync_rules: None,
            sync_rules_text: None,
            ws_allowed_origins: Vec::new(),
            cors_allowed_origins: Vec::new(),
            ws_max_connections: 10_000,
            // The shipped realtime limit: the session's rate rule is tested as users meet it.
            ws_rate: crate::limits::DEFAULT_WS_RATE_PER_MINUTE,
            ws_send_buffer: 256,
            realtime_threads: None,
            realtime_nice: crate::realtime::runtime::DEFAULT_PRIORITY,
            event_batch_ms: crate::limits::DEFAULT_EVENT_BATCH_MS,
            event_retention_days: 7,
            idempotency_retention_days: 7,
            static_dir: None,
            redis_url: None,
            event_retention: Vec::new(),
            critical_event_types: vec!["transaction.*".into()],
            bus_max_deliveries: 3,
            bus_visibility_timeout_ms: 30_000,
            bus_retry_backoff_ms: 1_000,
            rate_publish: 100_000,
            presence_ttl_secs: 90,
            max_document_bytes: crate::limits::DEFAULT_MAX_DOCUMENT_BYTES,
            document_compact_bytes: crate::limits::DEFAULT_COMPACT_BYTES,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let path = self
            .database_url
            .strip_prefix("sqlite://")
            .or_else(|| self.database_url.strip_prefix("sqlite:"));
        match path.map(|p| p.split('?').next().unwrap_or(p)).and_then(|p| Path::new(p).parent()) {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("./data"),
        }
    }

    /// The event bus policy from the flags.
    pub fn bus_policy(&self) -> anyhow::Result<crate::limits::BusPolicy> {
        let mut retention = Vec::new();
        for spec in &self.event_retention {
            let (pattern, days) =
                spec.split_once('=').context("an event retention is TYPE_PATTERN=DAYS")?;
            let days: u64 = days.trim().parse().context("retention days must be a whole number")?;
            let filter = sdk_core::protocol::EventFilter {
                event_types: vec![pattern.trim().to_string()],
                ..Default::default()
            };
            filter.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            retention.push((pattern.trim().to_string(), Duration::from_secs(days * 86_400)));
        }
        let defaults = crate::limits::BusPolicy::default();
        Ok(crate::limits::BusPolicy {
            retention,
            critical: self.critical_event_types.iter().map(|p| p.trim().to_string()).collect(),
            max_deliveries: self.bus_max_deliveries.clamp(1, 100),
            lease: Duration::from_millis(self.bus_visibility_timeout_ms.max(100)),
            backoff: Duration::from_millis(self.bus_retry_backoff_ms),
            publish_rate: Rate::per_second(self.rate_publish),
            ..defaults
        })
    }

    pub fn limits(&self) -> Limits {
        let mut limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            max_delta: self.max_delta,
            poll_rate: Rate::per_minute(self.rate_poll),
            reconcile_rate: Rate::per_minute(self.rate_reconcile),
            transaction_rate: Rate::per_minute(self.rate_transactions),
            event_retention: Duration::from_secs(self.event_retention_days * 86_400),
            audit_retention_connection: Duration::from_secs(
                self.audit_retention_connection_days * 86_400,
            ),
            audit_retention: Duration::from_secs(self.audit_retention_days * 86_400),
            idempotency_retention: Duration::from_secs(
                self.idempotency_retention_days.max(7) * 86_400,
            ),
            ws_max_connections: self.ws_max_connections,
            ws_rate: Rate::per_minute(self.ws_rate),
            ws_send_buffer: self.ws_send_buffer,
            realtime_threads: self
                .realtime_threads
                .unwrap_or_else(crate::realtime::runtime::default_threads),
            realtime_nice: self.realtime_nice,
            event_batch_window: Duration::from_millis(self.event_batch_ms.min(1_000)),
            static_dir: self.static_dir.clone(),
            presence_ttl: Duration::from_secs(self.presence_ttl_secs.max(1)),
            max_document_bytes: self.max_document_bytes,
            document_compact_bytes: self.document_compact_bytes.max(1),
            ..Limits::default()
        };
        limits.cors_allowed_origins = self
            .cors_allowed_origins
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        // The sockets allow what their own list says; without one, the CORS origins if any are
        // listed, else the development default (localhost). Pages of the server's own origin
        // are always allowed.
        if !self.ws_allowed_origins.is_empty() {
            limits.ws_allowed_origins = self.ws_allowed_origins.clone();
        } else if !limits.cors_allowed_origins.is_empty() {
            limits.ws_allowed_origins = limits.cors_allowed_origins.clone();
        }
        limits
    }

    pub fn jwt(&self) -> anyhow::Result<JwtConfig> {
        let cfg = match self.jwt_algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = match &self.jwt_secret {
                    Some(s) => s.clone().into_bytes(),
                    None => dev_secret(&self.data_dir(), "jwt-secret")?,
                };
                JwtConfig::hs256(&secret).map_err(anyhow::Error::msg)?
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Eddsa => {
                let alg = if self.jwt_algorithm == JwtAlgorithm::Rs256 {
                    Algorithm::RS256
                } else {
                    Algorithm::EdDSA
                };
                let path = self
                    .jwt_public_key
                    .as_ref()
                    .context("RS256/EdDSA needs --jwt-public-key (PF2_JWT_PUBLIC_KEY)")?;
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let mut cfg = JwtConfig::public_key(alg, &pem).map_err(anyhow::Error::msg)?;
                if let Some(p) = &self.jwt_private_key {
                    let pem =
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    cfg = cfg.with_private_key(&pem).map_err(anyhow::Error::msg)?;
                }
                cfg
            }
        };
        Ok(cfg
            .with_issuer(self.jwt_issuer.clone())
            .with_audience(self.jwt_audience.clone())
            .with_leeway(self.jwt_leeway))
    }

    /// The strategy registry from `--strategy` flags.
    pub fn strategy_registry(&self) -> anyhow::Result<StrategyRegistry> {
        let mut r = StrategyRegistry::default();
        r.register_crdt(pf2_automerge::MERGER_NAME, pf2_automerge::AutomergeMerger::default());
        for spec in &self.strategies {
            let (ty, name) = spec.split_once('=').context("a strategy is TYPE=STRATEGY")?;
            let ty = EntityType::new(ty.trim()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let strategy = match name.trim() {
                "lww" | "last-write-wins" => ConflictStrategy::LastWriteWins,
                "field-merge" => ConflictStrategy::FieldMerge(OnOverlap::LastWriteWins),
                "field-merge-manual" => ConflictStrategy::FieldMerge(OnOverlap::Manual),
                "manual" => ConflictStrategy::Manual,
                "automerge" => ConflictStrategy::Crdt(pf2_automerge::MERGER_NAME.into()),
                other => anyhow::bail!(
                    "unknown strategy {other:?} (lww, field-merge, field-merge-manual, manual, automerge)"
                ),
            };
            r.set(ty, strategy);
        }
        Ok(r)
    }

    /// The sync rules, parsed and checked: from `--sync-rules` (a message naming the file and
    /// the line when it is wrong), else the text set in code.
    pub fn sync_rules(&self) -> anyhow::Result<Option<SyncRules>> {
        if let Some(path) = &self.sync_rules {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the sync rules {}", path.display()))?;
            let rules =
                SyncRules::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(Some(rules));
        }
        match &self.sync_rules_text {
            Some(text) => Ok(Some(SyncRules::parse(text)?)),
            None => Ok(None),
        }
    }

    /// Connect, migrate and assemble the state.
    pub async fn build(&self) -> anyhow::Result<AppState> {
        self.build_with(self.strategy_registry()?).await
    }

    /// As [`Self::build`], with a strategy registry built in code (custom merges, CRDT mergers).
    pub async fn build_with(&self, strategies: StrategyRegistry) -> anyhow::Result<AppState> {
        // Checked before anything is touched: a bad file stops the server as it starts.
        let rules = self.sync_rules()?.map(std::sync::Arc::new);
        let store =
            Store::connect_pooled(&self.database_url, self.sqlite_synchronous, self.db_pool_size)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        match &rules {
            Some(r) => tracing::info!(fingerprint = &r.fingerprint()[..12], "sync rules in force"),
            None => {
                tracing::warn!(
                    "no sync rules (--sync-rules): every user of a tenant reads and writes the whole tenant"
                );
                store.forget_rules_index().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let store = store.with_rules(rules).with_audit_key(self.audit_chain_key()?);
        let webhook = match &self.webhook_secret {
            Some(s) => s.clone().into_bytes(),
            None => dev_secret(&self.data_dir(), "webhook-secret")?,
        };
        let engine = ApplyEngine::new(strategies).with_limits(Default::default(), self.max_batch);
        let mut limits = self.limits();
        limits.bus = self.bus_policy()?;
        match &self.redis_url {
            Some(url) if !url.is_empty() => {
                AppState::clustered(store, engine, self.jwt()?, limits, webhook, url)
                    .map_err(anyhow::Error::msg)
            }
            _ => Ok(AppState::new(store, engine, self.jwt()?, limits, webhook)),
        }
    }
}

impl Config {
    /// The audit chains' key (`--audit-key`, else the development one in the data dir).
    pub fn audit_chain_key(&self) -> anyhow::Result<sdk_core::audit_chain::ChainKey> {
        let secret = match &self.audit_key {
            Some(s) => s.clone().into_bytes(),
            None => dev_secret(&self.data_dir(), "audit-key")?,
        };
        sdk_core::audit_chain::ChainKey::new(&secret).map_err(anyhow::Error::msg)
    }
}

/// Read a development secret from `dir/name`, creating a random 256-bit one if missing.
/// Processes starting together on one data dir agree: the secret is written whole to a file
/// of its own, then linked into place, which fails if another process was first — and then its
/// secret is the one read.
fn dev_secret(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    let read = |path: &Path| -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let s = s.trim().to_string();
                anyhow::ensure!(s.len() >= 32, "{} is shorter than 32 characters", path.display());
                Ok(Some(s.into_bytes()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    if let Some(s) = read(&path)? {
        return Ok(s);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let draft = dir.join(format!(".{name}.{}.{}", std::process::id(), &hex[..16]));
    std::fs::write(&draft, &hex).with_context(|| format!("writing {}", draft.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&draft, std::fs::Permissions::from_mode(0o600))?;
    }
    let linked = std::fs::hard_link(&draft, &path);
    let _ = std::fs::remove_file(&draft);
    match linked {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "development mode: generated a new {name}; set it explicitly in production");
            Ok(hex.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.with_context(|| format!("{} vanished", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::dev_secret;

    /// Processes (here threads) starting at once on one data dir end up with one secret.
    #[test]
    fn concurrent_starts_agree_on_one_development_secret() {
        let dir = std::env::temp_dir().join(format!("pf2-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| dev_secret(&dir, "audit-key").unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|x| x == &secrets[0] && x.len() == 64), "{secrets:?}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no draft left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
