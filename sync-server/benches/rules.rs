//! Partial sync under sync rules (issue 14): a member of 1 project of 1,000 pulls from zero in a
//! tenant of 100,000 entities, beside the same pull in a tenant holding only that project's
//! entities (the floor), on SQLite and PostgreSQL, in the same run. `make bench-rules`; results
//! go to docs/benchmarks.md.
//!
//! Both tenants are written through the sync service (reconcile batches of 500, as an admin),
//! so the index is what the server keeps. The pulls go through `SyncService::pull` — grants,
//! index scan, records — without HTTP, alternating big and small, and report medians.
//! Env: `PF2_BENCH_PROJECTS` (default 1,000), `PF2_BENCH_TASKS` (per project, default 100),
//! `PF2_BENCH_PULLS` (default 50), `PF2_TEST_POSTGRES_URL`.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use sync_server::auth::Identity;
use sync_server::config::Config;
use sync_server::state::AppState;
use sync_server::sync::PullRequest;

const RULES: &str = r#"
[grants]
read  = ["user:{sub}", "project:{projects[]}"]
write = ["user:{sub}", "project:{projects[]}"]
[entities.task]
channels = ["project:{projectId}"]
"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn identity(tenant: &str, user: &str, roles: &[&str], claims: Value) -> Identity {
    let mut claims = claims.as_object().cloned().unwrap_or_default();
    claims.insert("sub".into(), json!(user));
    Identity {
        user: user.parse().unwrap(),
        tenant: tenant.parse().unwrap(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: u64::MAX,
        claims: Arc::new(claims),
    }
}

/// Write `tasks` tasks into each of `projects` (project `p0` is the member's), as an admin.
async fn seed(state: &AppState, tenant: &str, projects: usize, tasks: usize) {
    let admin = identity(tenant, "admin", &["admin"], json!({}));
    let ops: Vec<Value> = (0..projects)
        .flat_map(|p| (0..tasks).map(move |t| (p, t)))
        .enumerate()
        .map(|(i, (p, t))| {
            json!({
                "operationId": format!("seed-{i}"),
                "clientId": "seeder",
                "clientSeq": i + 1,
                "tenantId": tenant,
                "entityType": "task",
                "entityId": format!("p{p}-t{t}"),
                "operationType": "CREATE",
                "payload": {"projectId": format!("p{p}"), "title": format!("task {t}"), "done": false},
                "timestamp": sdk_core::hlc::HlcTimestamp::new(1_800_000_000_000 + i as u64, 0).to_string(),
                "vectorClock": {"seeder": i + 1},
            })
        })
        .collect();
    let tenant_id = tenant.parse().unwrap();
    for (n, chunk) in ops.chunks(500).enumerate() {
        let request = serde_json::from_value(json!({
            "requestId": format!("seed-{n}"),
            "clientId": "seeder",
            "operations": chunk,
        }))
        .unwrap();
        let a = state
            .sync
            .reconcile(&tenant_id, &admin, request, sdk_core::interaction::Transport::Rest)
            .await
            .unwrap();
        assert!(a.response.resolved_operations.iter().all(|r| r.error.is_none()));
    }
}

/// One pull from zero as the member of `p0`; ms, and how many entities it brought.
async fn pull(state: &AppState, tenant: &str) -> (f64, usize) {
    let member = identity(tenant, "member", &[], json!({"projects": ["p0"]}));
    let request = PullRequest { since: 0, limit: 1000, channels: None, held: None };
    let start = Instant::now();
    let frame = state.sync.pull(&tenant.parse().unwrap(), &member, request, None).await.unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let sdk_core::protocol::ServerFrame::Delta { entities, has_more, .. } = frame else {
        panic!("a delta")
    };
    assert!(!has_more);
    (ms, entities.len())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn run(label: &str, url: &str) {
    let (projects, tasks, pulls) =
        (env("PF2_BENCH_PROJECTS", 1000), env("PF2_BENCH_TASKS", 100), env("PF2_BENCH_PULLS", 50));
    let mut config = Config::for_tests(url);
    config.sync_rules_text = Some(RULES.into());
    let state = match config.build().await {
        Ok(s) => s,
        Err(e) => return eprintln!("{label} skipped: {e}"),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (big, small) = (format!("big-{}", &id[..12]), format!("small-{}", &id[..12]));
    let started = Instant::now();
    seed(&state, &big, projects, tasks).await;
    let seeded_big = started.elapsed().as_secs_f64();
    seed(&state, &small, 1, tasks).await;
    // The same writes without rules, for what keeping the index costs them.
    let unruled = Config::for_tests(url).build().await.unwrap();
    let started = Instant::now();
    seed(&unruled, &format!("plain-{}", &id[..12]), projects, tasks).await;
    let seeded_plain = started.elapsed().as_secs_f64();
    let (mut big_ms, mut small_ms) = (Vec::new(), Vec::new());
    for _ in 0..pulls {
        let (ms, n) = pull(&state, &big).await;
        assert_eq!(n, tasks, "the member sees exactly p0's tasks");
        big_ms.push(ms);
        let (ms, n) = pull(&state, &small).await;
        assert_eq!(n, tasks);
        small_ms.push(ms);
    }
    let (b, s) = (median(big_ms), median(small_ms));
    println!(
        "| {label} | {} | {tasks} | {b:.2} | {s:.2} | **{:.2}×** | {seeded_big:.1} | {seeded_plain:.1} |",
        projects * tasks,
        b / s
    );
}

#[tokio::main]
async fn main() {
    println!(
        "| backend | entities in the tenant | the member's | pull from zero, ms (median) | floor: a tenant of only those, ms | ratio | writing the big tenant under rules, s | the same without rules, s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let dir = std::env::temp_dir().join(format!("pf2-bench-rules-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    run("SQLite", &format!("sqlite://{}/pf2.db", dir.display())).await;
    let pg = std::env::var("PF2_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    run("PostgreSQL", &pg).await;
    let _ = std::fs::remove_dir_all(dir);
}
