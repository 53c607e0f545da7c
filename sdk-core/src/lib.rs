//! # sdk-core — the sans-io core of PF-2 Sync
//!
//! Everything PF-2 Sync decides lives here, and none of it does I/O: time arrives as `now_ms`,
//! randomness as a seed, bytes as slices; frames to send, storage writes, timers and app events
//! come out. The browser SDK (`sdk-wasm`), the server (`sync-server`) and the convergence
//! simulator all run this same code.
//!
//! ## Layout
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`ids`] | validated id newtypes: tenant, client, operation, entity type / id, user, room |
//! | [`hlc`] | hybrid logical clock and LWW stamps |
//! | [`vclock`] | vector clocks: compare, merge, compact encoding |
//! | [`operation`] | the Operation (CREATE / UPDATE patch / DELETE / CRDT bytes) and its validation |
//! | [`strategy`] | conflict strategies per entity type, custom merge and CRDT merger registries |
//! | [`apply`] | the server's deterministic, idempotent apply engine |
//! | [`local_store`] | the client's key-value database layout (IndexedDB in the browser) |
//! | [`persist`] | the versioned storage form of entity records |
//! | [`snapshot`] | deltas, canonical snapshots, SHA-256 checksums, chunking |
//! | [`interaction`] | interaction classes A–D and their transport policy |
//! | [`protocol`] | versioned wire frames, JSON and MessagePack codecs |
//! | [`rest`] | the long-polling transport: frames as REST requests and back |
//! | [`pacing`] | message budgets: the rate limit's token bucket, and the client's pacer that coalesces within it |
//! | [`rules`] | sync rules: the channels an entity belongs to, what a user may read and write, the write gate |
//! | [`queue`] | the client's persistent outbound operation queue |
//! | [`client`] | the client sync state machine |
//! | [`error`] | the crate's one error type and the wire error codes |
//! | [`trace`] | W3C Trace Context: `traceparent` parsed and written, span ids from given bits |
//!
//! ## Example: two clients and the apply engine
//!
//! ```
//! use sdk_core::apply::{ApplyEngine, ApplyState};
//! use sdk_core::client::{ClientConfig, Output, SyncClient};
//! use sdk_core::ids::{ClientId, EntityKey, OperationId, TenantId};
//! use sdk_core::operation::OperationKind;
//! use sdk_core::strategy::StrategyRegistry;
//! use serde_json::json;
//!
//! let tenant = TenantId::new("acme").unwrap();
//! let config = ClientConfig::new(ClientId::new("laptop").unwrap(), tenant.clone(), 42);
//! let mut client = SyncClient::new(config, Default::default());
//! let key = EntityKey::parse("acme", "todo", "t1").unwrap();
//! let patch = json!({"title": "milk", "done": false}).as_object().unwrap().clone();
//! client.mutate(1_000, OperationId::new("op-1").unwrap(), key.clone(), OperationKind::Create(patch)).unwrap();
//! // The optimistic local view already shows the write, online or not.
//! assert_eq!(client.get(&key).unwrap()["title"], "milk");
//!
//! // The server side: the same operation through the apply engine.
//! let ops = client.queue().pending().map(|q| q.op.clone()).collect::<Vec<_>>();
//! let engine = ApplyEngine::new(StrategyRegistry::default());
//! let mut state = ApplyState::default();
//! let out = engine
//!     .apply_batch(&tenant, ops.into_iter().map(sdk_core::apply::Submitted::Valid).collect(), &mut state)
//!     .unwrap();
//! assert_eq!(out.changes.len(), 1);
//! # let _ = std::iter::from_fn(|| client.poll_output()).filter(|o| matches!(o, Output::Store(_))).count();
//! ```

pub mod apply;
pub mod audit_chain;
pub mod client;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod interaction;
pub mod local_store;
pub mod log_window;
pub mod operation;
pub mod pacing;
pub mod persist;
pub mod protocol;
pub mod queue;
pub mod rest;
pub mod rng;
pub mod rules;
pub mod snapshot;
pub mod storage;
pub mod strategy;
pub mod trace;
pub mod vclock;

pub use error::{Error, ErrorCode};
