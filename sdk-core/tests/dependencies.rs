//! sdk-core is sans-io: its normal dependency tree must never gain a runtime, a browser binding,
//! a database driver or an entropy source. This reads `cargo metadata` and walks the resolved
//! graph from sdk-core through normal (non-dev, non-build) edges for the host and wasm32 targets.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const FORBIDDEN: &[&str] =
    &["tokio", "mio", "web-sys", "js-sys", "sqlx", "getrandom", "wasm-bindgen"];

fn normal_dependencies(filter_platform: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform", filter_platform])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names.iter().find(|(_, n)| **n == "sdk-core").map(|(id, _)| *id).unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            if normal {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_string()).collect()
}

#[test]
fn sdk_core_depends_on_no_io_runtime_or_entropy_source() {
    for target in ["x86_64-unknown-linux-gnu", "wasm32-unknown-unknown"] {
        let deps = normal_dependencies(target);
        assert!(deps.contains("serde"), "the walk found sdk-core's dependencies: {deps:?}");
        let bad: Vec<&&str> = FORBIDDEN.iter().filter(|f| deps.contains(**f)).collect();
        assert!(bad.is_empty(), "sdk-core ({target}) depends on {bad:?}; it must stay sans-io");
    }
}
