//! Real `sync-server` processes for multi-process tests and benchmarks: start a node on its own
//! port (the address is read from its "listening" log line), mint tokens with the same secret,
//! talk REST and `/v1/ws` to it, `kill -9` it. Also a throwaway `redis-server` on a free port.

use futures_util::{SinkExt, StreamExt};
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// The `bus-worker` handler's tables (shared by runs, keyed by `run`).
pub const LEDGER_SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS bus_ledger (run TEXT NOT NULL, event_id TEXT NOT NULL, seq BIGINT NOT NULL, worker TEXT NOT NULL, PRIMARY KEY (run, event_id))",
    "CREATE TABLE IF NOT EXISTS bus_effects (run TEXT PRIMARY KEY, total BIGINT NOT NULL, applied BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bus_deliveries (run TEXT NOT NULL, event_id TEXT NOT NULL, worker TEXT NOT NULL, attempt BIGINT NOT NULL)",
];

pub const JWT_SECRET: &str = "cluster-test-secret-cluster-test-secret-01";

/// A safety limit that turns a hang into a failure (never a synchronisation delay).
pub const SAFETY: Duration = Duration::from_secs(60);

/// A binary of this workspace next to the running one (`target/<profile>/NAME`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not built next to {} (cargo test --workspace builds it; make test does)",
        exe.display()
    )
}

pub fn postgres_url() -> String {
    std::env::var("PF2_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("PF2_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether PostgreSQL and Redis answer; in CI (`PF2_REQUIRE_POSTGRES` / `PF2_REQUIRE_REDIS`)
/// their absence is a failure, elsewhere a loud skip.
pub async fn services_available() -> bool {
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&postgres_url())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let redis = redis_ping(&redis_url()).await;
    for (name, var, result) in
        [("PostgreSQL", "PF2_REQUIRE_POSTGRES", &pg), ("Redis", "PF2_REQUIRE_REDIS", &redis)]
    {
        if let Err(e) = result {
            if std::env::var(var).as_deref() == Ok("1") {
                panic!("{name} is required ({var}=1) but not reachable: {e}");
            }
            eprintln!(
                "SKIPPED (multi-process test): {name} is not reachable: {e}. Set {var}=1 to make this fail."
            );
            return false;
        }
    }
    true
}

/// PING a Redis at `url` (`redis://host:port`) over plain TCP.
pub async fn redis_ping(url: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let mut s =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(hostport))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
    s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    if buf[..n].starts_with(b"+PONG") { Ok(()) } else { Err("no PONG".into()) }
}

/// One `sync-server` process.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    pub name: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub database_url: String,
    pub redis_url: Option<String>,
    /// Extra `PF2_*` settings.
    pub env: Vec<(String, String)>,
}

impl NodeConfig {
    pub fn cluster() -> Self {
        Self { database_url: postgres_url(), redis_url: Some(redis_url()), env: Vec::new() }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The per-user limits these multi-process tests lift, and why: they drive one service user
/// through 10,000 published events, thousands of claims and acks, and sockets pinging every
/// second across kills and Redis outages — what is tested is delivery across processes, not the
/// limits (which have their own tests at the shipped defaults, in sync-server/tests/).
const LIFTED: [(&str, &str); 5] = [
    ("PF2_RATE_POLL", "1000000"), // why: claim/ack loops of 3 workers × 10,000 events
    ("PF2_RATE_RECONCILE", "1000000"), // why: the writers of the cross-process tests
    ("PF2_RATE_TRANSACTIONS", "1000000"), // why: as above, for Class D
    ("PF2_RATE_PUBLISH", "1000000"), // why: 10,000 events published as fast as possible
    ("PF2_WS_RATE", "1000000"),   // why: pings every second plus event acks on one socket
];

fn base_env(cmd: &mut Command) {
    cmd.env("PF2_JWT_SECRET", JWT_SECRET)
        .env("PF2_WEBHOOK_SECRET", "cluster-webhook-secret")
        // One audit key for every process of a deployment (docs/runbooks/server.md).
        .env("PF2_AUDIT_KEY", "cluster-audit-key-cluster-audit-key-0001")
        .env("PF2_LOG", "info,sqlx=warn,tower_http=warn");
    for (k, v) in LIFTED {
        cmd.env(k, v);
    }
}

impl Node {
    /// Start a node and wait for its "listening" line.
    pub async fn start(name: &str, config: &NodeConfig) -> Node {
        let mut cmd = Command::new(workspace_binary("sync-server"));
        base_env(&mut cmd);
        cmd.arg("serve")
            .env("PF2_LISTEN", "127.0.0.1:0")
            .env("PF2_DATABASE_URL", &config.database_url)
            .env_remove("PF2_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(r) = &config.redis_url {
            cmd.env("PF2_REDIS_URL", r);
        }
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sync-server");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(SAFETY, async {
            while let Ok(Some(line)) = lines.next_line().await {
                push_log(&log, &line);
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if let Some(a) = v["fields"]["address"].as_str() {
                    return a.parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("node {name} did not start:\n{}", dump(&log)));
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                push_log(&keep, &line);
            }
        });
        Node { addr, name: name.into(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `kill -9`: no shutdown, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The last lines it logged (for failure messages).
    pub fn log_tail(&self) -> String {
        dump(&self.log)
    }

    /// Poll `/health` until its `status` is `want` (a condition, with the safety limit).
    pub async fn wait_health(&self, http: &reqwest::Client, want: &str) -> Value {
        let deadline = tokio::time::Instant::now() + SAFETY;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Ok(r) = http.get(self.http("/health")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["status"] == want
            {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became {want}:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

fn push_log(log: &Mutex<VecDeque<String>>, line: &str) {
    let mut l = log.lock().expect("log lock");
    if l.len() >= 200 {
        l.pop_front();
    }
    l.push_back(line.to_string());
}

fn dump(log: &Mutex<VecDeque<String>>) -> String {
    log.lock().expect("log lock").iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A token minted by `sync-server token` with the nodes' secret.
pub fn token(tenant: &str, user: &str, roles: &[&str]) -> String {
    token_with(tenant, user, roles, &[])
}

/// A token with extra claims (`("projects", "[\"p1\"]")`, the value JSON) for sync rules.
pub fn token_with(tenant: &str, user: &str, roles: &[&str], claims: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(workspace_binary("sync-server"));
    cmd.env("PF2_JWT_SECRET", JWT_SECRET)
        .args(["token", "--tenant", tenant, "--user", user, "--ttl", "3600"]);
    for r in roles {
        cmd.args(["--role", r]);
    }
    for (k, v) in claims {
        cmd.args(["--claim", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("sync-server token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

pub fn tenant() -> String {
    format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A throwaway `redis-server` on a free port, stoppable and restartable on the same port.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let mut r = OwnRedis { port, child: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian's redis-server package) on PATH");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + SAFETY;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while redis_ping(&self.url()).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not start");
            tick.tick().await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// A native `/v1/ws` client.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsClient")
    }
}

impl WsClient {
    /// Connect to `node` as `client` and wait for `connected`.
    pub async fn connect(node: &Node, token: &str, client: &str) -> WsClient {
        let url = format!("ws://{}/v1/ws?token={token}&clientId={client}", node.addr);
        let (ws, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut c = WsClient { ws };
        c.recv_until(|f| matches!(f, ServerFrame::Connected { .. })).await;
        c
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        let text = String::from_utf8(Codec::Json.encode(f)).expect("JSON");
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next frame, `None` when the socket closed; panics after the safety limit.
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        loop {
            let msg = tokio::time::timeout(SAFETY, self.ws.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(Codec::Json.decode(t.as_bytes(), usize::MAX).expect("a frame"));
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.recv().await.expect("the socket stays open");
            if pred(&f) {
                return f;
            }
        }
    }
}
