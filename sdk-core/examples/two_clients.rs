//! Two clients edit the same todo while offline, then reconnect to an in-process server running
//! the apply engine. Prints what each side sees. `cargo run -p sdk-core --example two_clients`.

use sdk_core::apply::{ApplyEngine, ApplyState};
use sdk_core::client::{AppEvent, ClientConfig, Output, SyncClient};
use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
use sdk_core::operation::OperationKind;
use sdk_core::protocol::{ClientFrame, ServerFrame, WireConflict, WireEntity, WireOpResult};
use sdk_core::snapshot::delta_since;
use sdk_core::strategy::StrategyRegistry;
use serde_json::json;

struct Server {
    engine: ApplyEngine,
    state: ApplyState,
    tenant: TenantId,
}

impl Server {
    /// Answer one client frame (the real server does this over WebSocket and REST).
    fn handle(&mut self, client: &ClientId, frame: ClientFrame) -> Vec<ServerFrame> {
        match frame {
            ClientFrame::Push { batch_id, operations } => {
                let batch = operations.into_iter().map(|w| w.into_submitted().unwrap()).collect();
                let out = self.engine.apply_batch(&self.tenant, batch, &mut self.state).unwrap();
                vec![ServerFrame::PushResult {
                    batch_id,
                    results: out.results.iter().map(WireOpResult::from_result).collect(),
                    current_version: self.state.version,
                    conflicts: out.conflicts.iter().map(WireConflict::from_conflict).collect(),
                }]
            }
            ClientFrame::Pull { since, .. } => {
                let (records, _) = delta_since(self.state.entities.values(), since, usize::MAX);
                vec![ServerFrame::Delta {
                    since,
                    version: self.state.version,
                    entities: records.into_iter().map(WireEntity::from_record).collect(),
                    has_more: false,
                    client_seq: self.state.ledgers.get(client).copied().or(Some(0)),
                    removed: vec![],
                    scope: None,
                    remaining: None,
                }]
            }
            _ => Vec::new(),
        }
    }
}

/// Run a client against the server until neither has anything more to say.
fn sync(name: &str, c: &mut SyncClient, server: &mut Server, now: u64) {
    let mut inbox = Vec::new();
    loop {
        while let Some(out) = c.poll_output() {
            match out {
                Output::Connect(_) => c.link_opened(now, "dev-token"),
                Output::Send(frame) => inbox.extend(server.handle(c.client_id(), frame)),
                Output::Event(AppEvent::Conflict { result, .. }) => println!(
                    "  {name}: conflict on {} resolved as {:?} (from me: {:?}, server kept: {:?})",
                    result.operation_id,
                    result.resolution,
                    result.fields_from_client,
                    result.fields_kept_server
                ),
                Output::Event(AppEvent::Status(s)) => println!("  {name}: status {}", s.as_str()),
                _ => {}
            }
        }
        if inbox.is_empty() {
            break;
        }
        for frame in std::mem::take(&mut inbox) {
            c.handle_frame(now, frame);
        }
    }
}

fn show(o: Option<sdk_core::operation::Object>) -> String {
    o.map(|o| serde_json::Value::Object(o).to_string()).unwrap_or_else(|| "(nothing)".into())
}

fn main() {
    let tenant = TenantId::new("acme").unwrap();
    let todo = EntityKey::parse("acme", "todo", "groceries").unwrap();
    let mut server = Server {
        engine: ApplyEngine::new(StrategyRegistry::default()),
        state: ApplyState::default(),
        tenant: tenant.clone(),
    };
    let client = |name: &str, seed| {
        SyncClient::new(
            ClientConfig::new(ClientId::new(name).unwrap(), tenant.clone(), seed),
            StrategyRegistry::default(),
        )
    };
    let (mut laptop, mut phone) = (client("laptop", 1), client("phone", 2));
    let patch = |v: serde_json::Value| v.as_object().unwrap().clone();

    println!("1. The laptop creates a todo and syncs it.");
    laptop.set_online(1_000, true);
    laptop
        .mutate(
            1_000,
            OperationId::new("l-1").unwrap(),
            todo.clone(),
            OperationKind::Create(patch(json!({"title": "milk", "done": false}))),
        )
        .unwrap();
    sync("laptop", &mut laptop, &mut server, 1_000);
    phone.set_online(1_100, true);
    sync("phone", &mut phone, &mut server, 1_100);
    println!("   phone sees {}", show(phone.get(&todo)));

    println!("2. Both go offline and edit the same todo.");
    laptop.set_online(2_000, false);
    phone.set_online(2_000, false);
    laptop
        .mutate(
            3_000,
            OperationId::new("l-2").unwrap(),
            todo.clone(),
            OperationKind::Update(patch(json!({"title": "oat milk"}))),
        )
        .unwrap();
    phone
        .mutate(
            3_500,
            OperationId::new("p-1").unwrap(),
            todo.clone(),
            OperationKind::Update(patch(json!({"done": true, "title": "milk x2"}))),
        )
        .unwrap();
    println!("   laptop (offline) sees {}", show(laptop.get(&todo)));
    println!("   phone  (offline) sees {}", show(phone.get(&todo)));

    println!("3. They reconnect; field-level merge keeps both edits, later write wins on `title`.");
    laptop.set_online(4_000, true);
    sync("laptop", &mut laptop, &mut server, 4_000);
    phone.set_online(4_100, true);
    sync("phone", &mut phone, &mut server, 4_100);
    laptop.set_online(4_200, false);
    laptop.set_online(4_300, true);
    sync("laptop", &mut laptop, &mut server, 4_300);
    println!("   laptop sees {}", show(laptop.get(&todo)));
    println!("   phone  sees {}", show(phone.get(&todo)));
    assert_eq!(laptop.get(&todo), phone.get(&todo), "both replicas converge");
    println!("   both replicas hold the same state at server version {}.", server.state.version);
}
