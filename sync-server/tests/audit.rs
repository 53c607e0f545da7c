//! The tamper-evident audit log, on a real SQLite file and on the real PostgreSQL: entries
//! altered, removed, moved, cut off, or a chain head edited — each found and named by the
//! verification, also through `sync-server audit verify`; pruning keeps the chain verifiable.

mod common;

use common::{Backend, TestApp};
use sdk_core::audit_chain::Break;
use serde_json::json;
use sync_server::store::{AuditEntry, ChainReport};

on_both_backends!(
    every_kind_of_tampering_is_found_and_named,
    pruning_keeps_the_chain_verifiable_and_refuses_a_broken_one,
);

/// `n` entries of the data chain and `n / 2` of the connection chain for `tenant`.
async fn write(app: &TestApp, tenant: &str, n: usize) {
    for i in 0..n {
        let mut entries = vec![AuditEntry {
            tenant,
            actor: "ann",
            action: "conflict.resolve",
            target: "todo/t1",
            outcome: "ok",
            details: json!({ "i": i, "choice": "server" }),
        }];
        if i % 2 == 1 {
            entries.push(AuditEntry {
                tenant,
                actor: "bob",
                action: "ws.closed",
                target: "/v1/ws",
                outcome: "1000",
                details: json!({ "i": i }),
            });
        }
        app.state.store.audit_all(&entries).await.unwrap();
    }
}

async fn verify(app: &TestApp, tenant: &str) -> Vec<ChainReport> {
    let key = app.config.audit_chain_key().unwrap();
    app.state.store.verify_audit(&key, Some(tenant)).await.unwrap()
}

fn result<'a>(reports: &'a [ChainReport], chain: &str) -> &'a Result<u64, Break> {
    &reports.iter().find(|r| r.chain == chain).expect("the chain").result
}

/// Run SQL against the app's database (what someone with database access could do).
async fn sql(app: &TestApp, query: &str, tenant: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&app.config.database_url).await.unwrap();
    sqlx::query(query).bind(tenant).execute(&mut conn).await.unwrap();
}

async fn id_of(app: &TestApp, tenant: &str, seq: i64) -> i64 {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(&app.config.database_url).await.unwrap();
    sqlx::query(
        "SELECT id FROM audit_log WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = $2",
    )
    .bind(tenant)
    .bind(seq)
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0)
}

async fn every_kind_of_tampering_is_found_and_named(backend: Backend) {
    sqlx::any::install_default_drivers();
    let app = app!(backend);
    let t = |s: &str| format!("{}-{s}", app.tenant);

    let intact = t("intact");
    write(&app, &intact, 6).await;
    let r = verify(&app, &intact).await;
    assert_eq!(result(&r, "data"), &Ok(6));
    assert_eq!(result(&r, "connection"), &Ok(3));

    let altered = t("altered");
    write(&app, &altered, 6).await;
    sql(&app, "UPDATE audit_log SET details = '{\"i\":2,\"choice\":\"client\"}' WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 3", &altered).await;
    let id = id_of(&app, &altered, 3).await;
    assert_eq!(result(&verify(&app, &altered).await, "data"), &Err(Break::Altered { id, seq: 3 }));
    assert_eq!(
        result(&verify(&app, &altered).await, "connection"),
        &Ok(3),
        "the other chain is intact"
    );

    let removed = t("removed");
    write(&app, &removed, 6).await;
    let next = id_of(&app, &removed, 5).await;
    sql(
        &app,
        "DELETE FROM audit_log WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 4",
        &removed,
    )
    .await;
    assert_eq!(
        result(&verify(&app, &removed).await, "data"),
        &Err(Break::Removed { id: next, expected: 4, found: 5 })
    );

    let moved = t("moved");
    write(&app, &moved, 6).await;
    // Two entries trade places in storage (their ids swapped).
    let (a, b) = (id_of(&app, &moved, 2).await, id_of(&app, &moved, 4).await);
    sql(&app, &format!("UPDATE audit_log SET id = -1 WHERE tenant_id = $1 AND id = {a}"), &moved)
        .await;
    sql(&app, &format!("UPDATE audit_log SET id = {a} WHERE tenant_id = $1 AND id = {b}"), &moved)
        .await;
    sql(&app, &format!("UPDATE audit_log SET id = {b} WHERE tenant_id = $1 AND id = -1"), &moved)
        .await;
    let err = result(&verify(&app, &moved).await, "data").clone().unwrap_err();
    assert!(
        matches!(err, Break::Removed { id, .. } | Break::Reordered { id, .. } if id == a),
        "{err:?}"
    );

    let cut = t("cut");
    write(&app, &cut, 6).await;
    sql(
        &app,
        "DELETE FROM audit_log WHERE tenant_id = $1 AND chain = 'data' AND chain_seq >= 5",
        &cut,
    )
    .await;
    assert_eq!(
        result(&verify(&app, &cut).await, "data"),
        &Err(Break::Truncated { last: 4, head: 6 })
    );

    let head = t("head");
    write(&app, &head, 6).await;
    // Cut off the last entry and make the head say the chain ends before it.
    sql(
        &app,
        "DELETE FROM audit_log WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 6",
        &head,
    )
    .await;
    sql(&app, "UPDATE audit_chains SET seq = 5, hash = (SELECT hash FROM audit_log WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 5) WHERE tenant_id = $1 AND chain = 'data'", &head).await;
    assert_eq!(result(&verify(&app, &head).await, "data"), &Err(Break::HeadAltered));

    // A forged entry: the right shape, but no key to make its MAC.
    let forged = t("forged");
    write(&app, &forged, 2).await;
    sql(&app, "UPDATE audit_log SET hash = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 2", &forged).await;
    assert!(matches!(
        result(&verify(&app, &forged).await, "data"),
        Err(Break::Altered { seq: 2, .. })
    ));

    // The command line says the same, with its exit code.
    let cli = |tenant: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
            .args(["audit", "verify", "--tenant", tenant])
            .env("PF2_DATABASE_URL", &app.config.database_url)
            .env("PF2_AUDIT_KEY", app.config.audit_key.as_deref().unwrap())
            .env("PF2_LOG", "error")
            .output()
            .unwrap()
    };
    let ok = cli(&intact);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    assert!(out.contains("2 chains, 9 entries verified, 0 broken"), "{out}");
    let bad = cli(&altered);
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("entry {id} (position 3) was altered")), "{out}");
}

async fn pruning_keeps_the_chain_verifiable_and_refuses_a_broken_one(backend: Backend) {
    sqlx::any::install_default_drivers();
    let app = app!(backend);
    let tenant = format!("{}-pruned", app.tenant);
    write(&app, &tenant, 5).await;
    // Everything stored so far is past a cutoff of now.
    let cutoff = sync_server::clock::now_ms() as i64 + 1;
    let removed = app.state.store.prune_audit("data", cutoff, Some(&tenant)).await.unwrap();
    assert!(removed >= 5, "{removed}");
    let r = verify(&app, &tenant).await;
    let data = r.iter().find(|r| r.chain == "data").unwrap();
    assert_eq!(data.result, Ok(1), "only the record of the pruning is left: {data:?}");
    assert_eq!(data.head.anchor.seq, 5, "anchored at the last entry removed");
    assert_eq!(result(&r, "connection"), &Ok(2), "another class keeps its entries");
    write(&app, &tenant, 2).await;
    assert_eq!(result(&verify(&app, &tenant).await, "data"), &Ok(3));

    // A broken chain is not pruned: the evidence stays.
    let broken = format!("{}-broken", app.tenant);
    write(&app, &broken, 4).await;
    sql(&app, "UPDATE audit_log SET actor = 'mallory' WHERE tenant_id = $1 AND chain = 'data' AND chain_seq = 2", &broken).await;
    let cutoff = sync_server::clock::now_ms() as i64 + 1;
    app.state.store.prune_audit("data", cutoff, Some(&broken)).await.unwrap();
    assert!(matches!(
        result(&verify(&app, &broken).await, "data"),
        Err(Break::Altered { seq: 2, .. })
    ));
}
