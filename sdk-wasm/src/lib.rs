//! # sdk-wasm — PF-2 Sync in the browser
//!
//! A thin shell that drives sdk-core's sans-io [`SyncClient`] with the browser's I/O:
//! IndexedDB (through rexie, [`store`]) for the outbound queue, the entity cache and the cursors;
//! a `WebSocket` on the native protocol; `setTimeout` for the core's timers. Every decision
//! (backoff, batching, conflict handling, the optimistic view) is the core's.
//!
//! The JS side (`js/`, the npm package) wraps [`SyncEngine`] in the documented TypeScript API.
//! Events reach JS through one listener `(kind, payload)`, where `kind` is `status`, `change`,
//! `conflict`, `rejected`, `event`, `eventsUnavailable`, `progress`, `frame` or `error`.
//!
//! Durability: `mutate` resolves once the operation is in IndexedDB. Writes made in the same
//! turn of the event loop share one transaction (group commit).

pub mod store;

use futures_channel::oneshot;
use sdk_core::client::{AppEvent, ClientConfig, Output, SyncClient};
use sdk_core::ids::{ClientId, EntityId, EntityKey, EntityType, OperationId, TenantId};
use sdk_core::interaction::Transport;
use sdk_core::local_store::{self, RecordWrite};
use sdk_core::operation::OperationKind;
use sdk_core::pacing::{Lane, RateHeaders, Slot};
use sdk_core::protocol::http::DocumentVersion;
use sdk_core::protocol::{ClientFrame, Codec, DEFAULT_MAX_FRAME, ServerFrame};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use store::{IdbStore, from_js, to_js};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{CloseEvent, MessageEvent, WebSocket};

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// 128 random bits, hex (operation ids, the core's seed).
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .and_then(|c| c.dyn_into::<web_sys::Crypto>().ok());
    match crypto {
        Some(c) if c.get_random_values_with_u8_array(&mut bytes).is_ok() => {}
        _ => {
            for b in &mut bytes {
                *b = (js_sys::Math::random() * 256.0) as u8;
            }
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The socket of the current link, and the closures it calls (dropped with it).
struct Socket {
    ws: WebSocket,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

struct Timer {
    id: i32,
    _callback: Closure<dyn FnMut()>,
}

struct Inner {
    core: RefCell<SyncClient>,
    config: ClientConfig,
    store: IdbStore,
    tenant: TenantId,
    client_id: ClientId,
    ws_url: String,
    /// The server's base URL for REST (the long-polling transport).
    http_url: String,
    /// The long-polling link's generation, while that is the link.
    polling: Cell<Option<u32>>,
    /// The event patterns subscribed to (the long-poll loop follows them).
    subscription: RefCell<Option<Vec<String>>>,
    /// The long-polling link whose event loop is running.
    following: Cell<Option<u32>>,
    get_token: js_sys::Function,
    listener: js_sys::Function,
    socket: RefCell<Option<Socket>>,
    generation: Cell<u32>,
    timer: RefCell<Option<Timer>>,
    /// Record writes waiting for the next IndexedDB transaction, and who waits on them.
    pending: RefCell<Vec<RecordWrite>>,
    waiters: RefCell<Vec<oneshot::Sender<Result<(), String>>>>,
    flushing: Cell<bool>,
    /// The queue's length last told to the page (`pending` events).
    queued_told: Cell<usize>,
    /// Realtime frames waiting for the connection's budget, by slot: presence keeps its
    /// latest value per room, every other frame waits in order (see [`MAX_WAITING`]).
    paced: RefCell<BTreeMap<Slot, ClientFrame>>,
    paced_seq: Cell<u64>,
    /// Documents waiting for the budget: each one's builder of its sync frames, called when it
    /// is granted — so everything edited meanwhile goes in one message.
    builders: RefCell<BTreeMap<Slot, js_sys::Function>>,
    /// The REST budgets (sdk-core's mirror of the server's per-user limits).
    rest_pacer: RefCell<sdk_core::pacing::RestPacer>,
    /// Documents the long-poll watches while degraded, at the version each replica has.
    watched: RefCell<BTreeMap<String, u64>>,
    /// After a poll named changed documents: told when the documents module has synced them
    /// (its `watchDocuments`), so the next poll waits for that instead of spending the budget
    /// on an answer the sync brings anyway.
    synced: RefCell<Option<oneshot::Sender<()>>>,
}

/// Realtime frames that may wait for budget at once; past it `sendRealtime` says `false`, as
/// it does without a socket (realtime is best effort: an app that floods is told, not queued).
const MAX_WAITING: usize = 1_000;

/// The engine behind the npm package's `SyncClient`.
#[wasm_bindgen]
pub struct SyncEngine {
    inner: Rc<Inner>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Options {
    /// The server's base URL, `http(s)://host:port`.
    url: String,
    tenant_id: String,
    client_id: String,
    /// IndexedDB database name; defaults to `pf2-sync:<tenant>:<client>`.
    #[serde(default)]
    db_name: Option<String>,
    /// WebSocket failures in a row before falling back to long-polling (default 3).
    #[serde(default)]
    ws_failures_before_degraded: Option<u32>,
    /// While degraded, how often to try the WebSocket again (default 60 s).
    #[serde(default)]
    websocket_retry_ms: Option<u64>,
    /// Partial sync under sync rules: only these of the channels granted (default: all).
    #[serde(default)]
    channels: Option<Vec<String>>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("status", &self.inner.core.borrow().status())
            .field("pending", &self.inner.core.borrow().queue().len())
            .finish()
    }
}

#[wasm_bindgen]
impl SyncEngine {
    /// Open (or create) the local database, recover the queue and cache, and start offline.
    /// `get_token` is `() => Promise<string>`; `listener` is `(kind, payload) => void`.
    pub async fn open(
        options: JsValue,
        get_token: js_sys::Function,
        listener: js_sys::Function,
    ) -> Result<SyncEngine, JsValue> {
        let o: Options = serde_wasm_bindgen::from_value(options).map_err(js_err)?;
        let tenant = TenantId::new(o.tenant_id).map_err(js_err)?;
        let client_id = ClientId::new(o.client_id).map_err(js_err)?;
        let db_name = o.db_name.unwrap_or_else(|| format!("pf2-sync:{tenant}:{client_id}"));
        let store = IdbStore::open(&db_name).await.map_err(js_err)?;
        let stored = local_store::load(store.contents().await.map_err(js_err)?).map_err(js_err)?;
        let seed = u64::from_str_radix(&random_hex()[..16], 16).unwrap_or(1);
        let mut config = ClientConfig::new(client_id.clone(), tenant.clone(), seed);
        if let Some(n) = o.ws_failures_before_degraded {
            config.ws_failures_before_degraded = n.max(1);
        }
        if let Some(ms) = o.websocket_retry_ms {
            config.websocket_retry_ms = ms;
        }
        config.channels = o.channels;
        let core = SyncClient::recover(config.clone(), Default::default(), stored);
        let base = o.url.trim_end_matches('/').to_string();
        // `batch=1`: this client reads `batch` frames (the core unrolls them).
        let ws_url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/v1/ws?batch=1")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/v1/ws?batch=1")
        } else {
            format!("{base}/v1/ws?batch=1")
        };
        let http_url = base;
        Ok(SyncEngine {
            inner: Rc::new(Inner {
                core: RefCell::new(core),
                config,
                store,
                tenant,
                client_id,
                ws_url,
                http_url,
                polling: Cell::new(None),
                subscription: RefCell::new(None),
                following: Cell::new(None),
                get_token,
                listener,
                socket: RefCell::new(None),
                generation: Cell::new(0),
                timer: RefCell::new(None),
                pending: RefCell::new(Vec::new()),
                waiters: RefCell::new(Vec::new()),
                flushing: Cell::new(false),
                queued_told: Cell::new(0),
                paced: RefCell::default(),
                paced_seq: Cell::new(0),
                builders: RefCell::default(),
                rest_pacer: RefCell::default(),
                watched: RefCell::default(),
                synced: RefCell::default(),
            }),
        })
    }

    /// `offline`, `connecting`, `syncing`, `live` or `degraded`.
    #[wasm_bindgen(getter)]
    pub fn status(&self) -> String {
        self.inner.core.borrow().status().as_str().to_string()
    }

    #[wasm_bindgen(getter, js_name = clientId)]
    pub fn client_id(&self) -> String {
        self.inner.core.borrow().client_id().to_string()
    }

    /// Operations queued and not yet acknowledged.
    #[wasm_bindgen(getter, js_name = pendingCount)]
    pub fn pending_count(&self) -> usize {
        self.inner.core.borrow().queue().len()
    }

    /// The browser is online (or the app wants to sync): connect; `false`: disconnect and queue.
    #[wasm_bindgen(js_name = setOnline)]
    pub fn set_online(&self, online: bool) {
        self.inner.core.borrow_mut().set_online(now_ms(), online);
        drive(&self.inner);
    }

    /// Partial sync: sync only these of the channels granted (`null`: all). What the new set adds
    /// arrives whole; what it drops is forgotten (IndexedDB included) when the server answers.
    #[wasm_bindgen(js_name = setChannels)]
    pub fn set_channels(&self, channels: JsValue) -> Result<(), JsValue> {
        let channels: Option<Vec<String>> =
            serde_wasm_bindgen::from_value(channels).map_err(js_err)?;
        self.inner.core.borrow_mut().set_channels(now_ms(), channels);
        drive(&self.inner);
        Ok(())
    }

    /// The channels asked for (`null`: all granted).
    #[wasm_bindgen(getter)]
    pub fn channels(&self) -> JsValue {
        let core = self.inner.core.borrow();
        serde_wasm_bindgen::to_value(&core.channels()).unwrap_or(JsValue::NULL)
    }

    /// What the local state was last synced for, under sync rules: `{rules, channels?}`, or
    /// `null` (no rules).
    #[wasm_bindgen(getter)]
    pub fn scope(&self) -> JsValue {
        let core = self.inner.core.borrow();
        serde_wasm_bindgen::to_value(&core.scope()).unwrap_or(JsValue::NULL)
    }

    /// Class C: apply locally at once, queue durably, send when connected. `patch` is an object
    /// of fields to set (created when the entity is unknown locally), or `null` to delete.
    /// Resolves once the operation is in IndexedDB.
    pub async fn mutate(
        &self,
        entity_type: String,
        entity_id: String,
        patch: JsValue,
        operation_id: Option<String>,
    ) -> Result<(), JsValue> {
        let key = self.key(&entity_type, &entity_id)?;
        // An id chosen by the caller makes the call idempotent: another tab re-sending a
        // mutation after its owner tab died must not queue it twice.
        let queued =
            |id: &str| self.inner.core.borrow().queue().pending().any(|q| q.op.id.as_str() == id);
        if operation_id.as_deref().is_some_and(queued) {
            return self.flushed().await;
        }
        let kind = if patch.is_null() || patch.is_undefined() {
            OperationKind::Delete
        } else {
            let Value::Object(fields) = from_js(patch).map_err(js_err)? else {
                return Err(js_err("a patch is an object of fields, or null to delete"));
            };
            if self.inner.core.borrow().get(&key).is_some() {
                OperationKind::Update(fields)
            } else {
                OperationKind::Create(fields)
            }
        };
        let id = OperationId::new(operation_id.unwrap_or_else(random_hex)).map_err(js_err)?;
        self.inner.core.borrow_mut().mutate(now_ms(), id, key, kind).map_err(js_err)?;
        let done = drive(&self.inner);
        match done {
            Some(rx) => rx.await.map_err(|_| js_err("the engine closed"))?.map_err(js_err),
            None => Ok(()),
        }
    }

    /// The local (optimistic) view of one entity, or `undefined`.
    pub fn get(&self, entity_type: String, entity_id: String) -> Result<JsValue, JsValue> {
        let key = self.key(&entity_type, &entity_id)?;
        Ok(match self.inner.core.borrow().get(&key) {
            Some(o) => to_js(&Value::Object(o)),
            None => JsValue::UNDEFINED,
        })
    }

    /// Every entity of a type in the local view: `[{ id, value }]`, by id.
    pub fn query(&self, entity_type: String) -> Result<JsValue, JsValue> {
        let t = EntityType::new(entity_type).map_err(js_err)?;
        let rows: Vec<Value> = self
            .inner
            .core
            .borrow()
            .query(&t)
            .into_iter()
            .map(|(id, o)| json!({ "id": id.as_str(), "value": o }))
            .collect();
        Ok(to_js(&Value::Array(rows)))
    }

    /// Class B: follow the tenant's events matching these patterns (`order.*`), resuming after
    /// the last event this client saw.
    pub fn subscribe(&self, patterns: Vec<String>) {
        self.inner.core.borrow_mut().subscribe(now_ms(), patterns);
        drive(&self.inner);
    }

    /// Follow events after `after` (0: from the beginning the server retains), then live.
    #[wasm_bindgen(js_name = subscribeFrom)]
    pub fn subscribe_from(&self, patterns: Vec<String>, after: f64) {
        self.inner.core.borrow_mut().subscribe_from(now_ms(), patterns, after.max(0.0) as u64);
        drive(&self.inner);
    }

    /// The sequence number of the last event delivered, if any.
    #[wasm_bindgen(getter, js_name = lastEventId)]
    pub fn last_event_id(&self) -> Option<f64> {
        self.inner.core.borrow().last_event().map(|s| s as f64)
    }

    /// Send a realtime frame (presence, rooms, messages, document sync) within the
    /// connection's message budget: at once while it allows, else when it does — presence
    /// last-value-wins per room, everything else in order. Returns `false` when no WebSocket
    /// is open (realtime is best effort, never queued across links) or too much already waits.
    #[wasm_bindgen(js_name = sendRealtime)]
    pub fn send_realtime(&self, frame: JsValue) -> Result<bool, JsValue> {
        let v = from_js(frame).map_err(js_err)?;
        let frame: ClientFrame = serde_json::from_value(v).map_err(js_err)?;
        if matches!(frame, ClientFrame::Push { .. } | ClientFrame::Auth { .. }) {
            return Err(js_err("push and auth frames belong to the engine"));
        }
        let inner = &self.inner;
        inner.paced_seq.set(inner.paced_seq.get() + 1);
        let slot = SyncClient::realtime_slot(&frame, inner.paced_seq.get());
        {
            let mut paced = inner.paced.borrow_mut();
            if paced.len() >= MAX_WAITING && !paced.contains_key(&slot) {
                return Ok(false);
            }
            paced.insert(slot.clone(), frame);
        }
        if !inner.core.borrow_mut().want_send(now_ms(), slot.clone()) {
            inner.paced.borrow_mut().remove(&slot);
            return Ok(false);
        }
        drive(inner);
        Ok(true)
    }

    /// While degraded, the long-poll also watches these documents (`{id: version}`, the version
    /// each replica has; versions only grow), and says `documents` `[{documentId, version}]`
    /// when one changed. An empty object stops watching.
    #[wasm_bindgen(js_name = watchDocuments)]
    pub fn watch_documents(&self, versions: JsValue) -> Result<(), JsValue> {
        let versions: BTreeMap<String, u64> = serde_wasm_bindgen::from_value(versions)
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        {
            let mut watched = self.inner.watched.borrow_mut();
            watched.retain(|id, _| versions.contains_key(id));
            for (id, v) in versions {
                let w = watched.entry(id).or_insert(v);
                *w = (*w).max(v);
            }
        }
        if let Some(tx) = self.inner.synced.borrow_mut().take() {
            let _ = tx.send(());
        }
        start_following(&self.inner);
        Ok(())
    }

    /// Before a REST request of the app's (`client.rest`): resolves when the request's budget
    /// allows it (api.md's per-user limits as sdk-core mirrors them), taking its token.
    #[wasm_bindgen(js_name = restTurn)]
    pub fn rest_turn(&self, method: String, path: String) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            rest_turn(&inner, &method, &path).await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The answer to such a request: its status and rate-limit headers correct the budget (a
    /// 429 closes its lane for `Retry-After` seconds).
    #[wasm_bindgen(js_name = restAnswered)]
    pub fn rest_answered(
        &self,
        method: String,
        path: String,
        status: u16,
        policy: Option<String>,
        remaining: Option<u32>,
        retry_after_s: Option<u32>,
    ) {
        let headers =
            RateHeaders { policy, remaining, retry_after_s: retry_after_s.map(u64::from) };
        rest_answered(&self.inner, &method, &path, status, &headers);
    }

    /// Document `id` has something to say: `build()` is called when the connection's budget
    /// allows — at once if it does — and returns the frames to send then (its sync message,
    /// from every edit so far). Wanting again before that adds nothing. `false` when no
    /// WebSocket is open.
    #[wasm_bindgen(js_name = pacedSync)]
    pub fn paced_sync(&self, id: String, build: js_sys::Function) -> bool {
        let inner = &self.inner;
        let slot = Slot::Doc(id);
        inner.builders.borrow_mut().insert(slot.clone(), build);
        if !inner.core.borrow_mut().want_send(now_ms(), slot.clone()) {
            inner.builders.borrow_mut().remove(&slot);
            return false;
        }
        drive(inner);
        true
    }

    /// A fresh token for the live socket.
    #[wasm_bindgen(js_name = refreshToken)]
    pub fn refresh_token(&self, token: String) {
        self.inner.core.borrow_mut().refresh_token(now_ms(), &token);
        drive(&self.inner);
    }

    /// Re-read the local database and rebuild the view from it (a tab that does not own the
    /// connection follows the owner's writes this way). Only for an engine that is offline.
    pub async fn reload(&self) -> Result<(), JsValue> {
        let contents = self.inner.store.contents().await.map_err(js_err)?;
        let stored = local_store::load(contents).map_err(js_err)?;
        let fresh = SyncClient::recover(self.inner.config.clone(), Default::default(), stored);
        *self.inner.core.borrow_mut() = fresh;
        Ok(())
    }

    /// Wait until every write so far is in IndexedDB.
    pub async fn flushed(&self) -> Result<(), JsValue> {
        match drive(&self.inner) {
            Some(rx) => rx.await.map_err(|_| js_err("the engine closed"))?.map_err(js_err),
            None => Ok(()),
        }
    }

    /// Disconnect and stop timers. The database stays; a new engine recovers from it.
    pub fn close(&self) {
        self.inner.core.borrow_mut().set_online(now_ms(), false);
        drive(&self.inner);
        close_socket(&self.inner);
        if let Some(t) = self.inner.timer.borrow_mut().take() {
            clear_timeout(t.id);
        }
    }
}

impl SyncEngine {
    fn key(&self, entity_type: &str, entity_id: &str) -> Result<EntityKey, JsValue> {
        Ok(EntityKey::new(
            self.inner.tenant.clone(),
            EntityType::new(entity_type).map_err(js_err)?,
            EntityId::new(entity_id).map_err(js_err)?,
        ))
    }
}

fn emit(inner: &Inner, kind: &str, payload: &Value) {
    let _ = inner.listener.call2(&JsValue::NULL, &JsValue::from_str(kind), &to_js(payload));
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Carry out everything the core asked for. Returns a receiver that resolves when the store
/// writes made so far are durable (or `None` when there were none pending).
fn drive(inner: &Rc<Inner>) -> Option<oneshot::Receiver<Result<(), String>>> {
    loop {
        // Never hold the core's borrow while calling out: listeners may call back in.
        let outputs: Vec<Output> = {
            let mut core = inner.core.borrow_mut();
            std::iter::from_fn(|| core.poll_output()).collect()
        };
        if outputs.is_empty() {
            break;
        }
        for o in outputs {
            match o {
                Output::Connect(Transport::WebSocket) => open_socket(inner),
                Output::Connect(_) => open_polling(inner),
                Output::Disconnect => {
                    close_socket(inner);
                    inner.polling.set(None);
                    inner.paced.borrow_mut().clear();
                }
                Output::Grant(slot) => grant(inner, slot),
                Output::Send(frame) => {
                    if let ClientFrame::Subscribe { event_types, .. } = &frame {
                        *inner.subscription.borrow_mut() = Some(event_types.clone());
                        start_following(inner);
                    }
                    if inner.polling.get().is_some() {
                        send_http(inner, &frame);
                    } else {
                        send(inner, &frame);
                    }
                }
                Output::Store(writes) => {
                    inner.pending.borrow_mut().extend(local_store::records(&writes));
                }
                Output::Event(e) => app_event(inner, e),
            }
        }
    }
    schedule_timer(inner);
    let queued = inner.core.borrow().queue().len();
    if queued != inner.queued_told.replace(queued) {
        emit(inner, "pending", &Value::from(queued));
    }
    if inner.pending.borrow().is_empty() && !inner.flushing.get() {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    inner.waiters.borrow_mut().push(tx);
    if !inner.flushing.get() {
        inner.flushing.set(true);
        spawn_local(flush(inner.clone()));
    }
    Some(rx)
}

/// Group commit: everything pending goes into one transaction; writes arriving meanwhile wait
/// for the next.
async fn flush(inner: Rc<Inner>) {
    loop {
        let batch = local_store::compact(std::mem::take(&mut *inner.pending.borrow_mut()));
        let waiters = std::mem::take(&mut *inner.waiters.borrow_mut());
        if batch.is_empty() && waiters.is_empty() {
            inner.flushing.set(false);
            return;
        }
        let result = inner.store.apply(&batch).await;
        if let Err(e) = &result {
            emit(&inner, "error", &json!({ "message": e }));
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn app_event(inner: &Rc<Inner>, e: AppEvent) {
    match e {
        AppEvent::Status(s) => emit(inner, "status", &Value::from(s.as_str())),
        AppEvent::Changed(keys) => {
            let keys: Vec<Value> = keys
                .iter()
                .map(|k| json!({ "entityType": k.entity_type.as_str(), "entityId": k.entity_id.as_str() }))
                .collect();
            emit(inner, "change", &Value::Array(keys));
        }
        AppEvent::Conflict { result, conflict } => emit(
            inner,
            "conflict",
            &json!({ "result": to_json(&result), "conflict": to_json(&conflict) }),
        ),
        AppEvent::Rejected(q) => emit(
            inner,
            "rejected",
            &json!({
                "operationId": q.op.id.as_str(),
                "entityType": q.op.key.entity_type.as_str(),
                "entityId": q.op.key.entity_id.as_str(),
                "code": q.code.as_str(),
                "message": q.message,
            }),
        ),
        AppEvent::Event(ev) => emit(inner, "event", &to_json(&ev)),
        AppEvent::Progress { received, total } => {
            emit(inner, "progress", &json!({ "received": received, "total": total }))
        }
        AppEvent::EventsUnavailable { after } => {
            emit(inner, "eventsUnavailable", &json!({ "after": after }))
        }
        AppEvent::AuthRequired => {
            // The server refused the token: fetch a fresh one and hand it to the live link.
            let inner = inner.clone();
            spawn_local(async move {
                if let Ok(token) = token(&inner).await {
                    inner.core.borrow_mut().refresh_token(now_ms(), &token);
                    drive(&inner);
                }
            });
        }
        AppEvent::Frame(f) => emit(inner, "frame", &to_json(&f)),
    }
}

async fn token(inner: &Inner) -> Result<String, String> {
    let p = inner.get_token.call0(&JsValue::NULL).map_err(|e| format!("{e:?}"))?;
    let v = JsFuture::from(js_sys::Promise::resolve(&p)).await.map_err(|e| format!("{e:?}"))?;
    v.as_string().ok_or_else(|| "getToken must resolve to a string".to_string())
}

/// The budget allows `slot`: send what waits for it (a document's frames are built now and
/// charged as the server charges them: each past the first spends, a reply may ride a ticket).
fn grant(inner: &Inner, slot: Slot) {
    if let Some(frame) = inner.paced.borrow_mut().remove(&slot) {
        send(inner, &frame);
        return;
    }
    let Some(build) = inner.builders.borrow_mut().remove(&slot) else { return };
    let Ok(frames) = build.call0(&JsValue::NULL) else { return };
    let frames: Vec<Value> =
        from_js(frames).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    let frames: Vec<ClientFrame> =
        frames.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
    inner.core.borrow_mut().sent_granted(now_ms(), &frames);
    for frame in &frames {
        send(inner, frame);
    }
}

fn send(inner: &Inner, frame: &ClientFrame) -> bool {
    let socket = inner.socket.borrow();
    let Some(s) = socket.as_ref() else { return false };
    if s.ws.ready_state() != WebSocket::OPEN {
        return false;
    }
    let bytes = Codec::Json.encode(frame);
    let text = String::from_utf8(bytes).expect("JSON is UTF-8");
    s.ws.send_with_str(&text).is_ok()
}

// ---- the long-polling link (degraded: WebSocket failed or is blocked) -----------------------

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with(url: &str, init: &JsValue) -> js_sys::Promise;
}

/// One REST call; `Ok((status, body))` for any HTTP answer, `Err` when the network failed.
async fn http(
    inner: &Inner,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    loop {
        rest_turn(inner, method, path).await;
        let token = token(inner).await?;
        let mut init =
            json!({ "method": method, "headers": { "authorization": format!("Bearer {token}") } });
        if let Some(b) = body {
            init["headers"]["content-type"] = json!("application/json");
            init["body"] = json!(b.to_string());
        }
        let url = format!("{}{path}", inner.http_url);
        let resp =
            JsFuture::from(fetch_with(&url, &to_js(&init))).await.map_err(|e| format!("{e:?}"))?;
        let resp: web_sys::Response =
            resp.dyn_into().map_err(|_| "fetch answered no Response".to_string())?;
        let header = |name: &str| resp.headers().get(name).ok().flatten();
        let headers = RateHeaders {
            policy: header("ratelimit-policy"),
            remaining: header("ratelimit-remaining").and_then(|v| v.trim().parse().ok()),
            retry_after_s: header("retry-after").and_then(|v| v.trim().parse().ok()),
        };
        rest_answered(inner, method, path, resp.status(), &headers);
        let text = JsFuture::from(resp.text().map_err(|e| format!("{e:?}"))?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        // Refused for the budget: sent again once the lane reopens (its Retry-After).
        if resp.status() != 429 {
            return Ok((resp.status(), text.as_string().unwrap_or_default()));
        }
    }
}

/// Wait until a REST request on its lane is within the budget (taking its token).
async fn rest_turn(inner: &Inner, method: &str, path: &str) {
    let Some(lane) = Lane::of(method, path) else { return };
    loop {
        let wait = inner.rest_pacer.borrow_mut().take(lane, now_ms());
        match wait {
            Ok(()) => return,
            Err(ms) => sleep_ms(u32::try_from(ms).unwrap_or(u32::MAX)).await,
        }
    }
}

fn rest_answered(inner: &Inner, method: &str, path: &str, status: u16, headers: &RateHeaders) {
    if let Some(lane) = Lane::of(method, path) {
        inner.rest_pacer.borrow_mut().answered(lane, now_ms(), status, headers);
    }
}

/// The long-polling link: "open" once a token is at hand; the core then pulls and pushes, and
/// each of its frames becomes a REST call (`sdk_core::rest`).
fn open_polling(inner: &Rc<Inner>) {
    close_socket(inner);
    let generation = inner.generation.get().wrapping_add(1);
    inner.generation.set(generation);
    inner.polling.set(Some(generation));
    let inner = inner.clone();
    spawn_local(async move {
        match token(&inner).await {
            Ok(t) if inner.polling.get() == Some(generation) => {
                inner.core.borrow_mut().link_opened(now_ms(), &t);
                drive(&inner);
                start_following(&inner);
            }
            Ok(_) => {}
            Err(e) => polling_failed(&inner, generation, &format!("getToken: {e}")),
        }
    });
}

/// The link failed: tell the core (once per link).
fn polling_failed(inner: &Rc<Inner>, generation: u32, why: &str) {
    if inner.polling.get() != Some(generation) {
        return;
    }
    inner.polling.set(None);
    emit(inner, "error", &json!({ "message": why }));
    inner.core.borrow_mut().link_closed(now_ms());
    drive(inner);
}

fn send_http(inner: &Rc<Inner>, frame: &ClientFrame) {
    let Some(generation) = inner.polling.get() else { return };
    let Some(req) = sdk_core::rest::request(frame, &inner.tenant, &inner.client_id) else {
        return;
    };
    let inner = inner.clone();
    spawn_local(async move {
        let answer = http(&inner, req.method, &req.path, req.body.as_ref()).await;
        if inner.polling.get() != Some(generation) {
            return;
        }
        match answer {
            Ok((status, body)) if (200..300).contains(&status) => {
                match sdk_core::rest::answer(&req.expects, body.as_bytes()) {
                    Ok(frame) => inner.core.borrow_mut().handle_frame(now_ms(), frame),
                    Err(e) => emit(&inner, "error", &json!({ "message": e.to_string() })),
                }
                drive(&inner);
            }
            // The request itself was refused: the core's request timeout sends it again (a 401
            // fetches a fresh token on the next call).
            Ok((status, body)) if status < 500 => emit(
                &inner,
                "error",
                &json!({ "message": format!("{} {}: {status} {body}", req.method, req.path) }),
            ),
            Ok((status, _)) => {
                polling_failed(&inner, generation, &format!("server answered {status}"))
            }
            Err(e) => polling_failed(&inner, generation, &format!("network: {e}")),
        }
    });
}

/// Class B over HTTP: long-poll the event log while this link lasts, feeding each event to the
/// core (which keeps the position, so the WebSocket resumes exactly where polling stopped).
/// Start the event loop of the current long-polling link, once, when something is subscribed
/// (without a subscription the core's periodic pulls carry the data).
fn start_following(inner: &Rc<Inner>) {
    let Some(generation) = inner.polling.get() else { return };
    let idle = inner.subscription.borrow().is_none() && inner.watched.borrow().is_empty();
    if inner.following.get() == Some(generation) || idle {
        return;
    }
    inner.following.set(Some(generation));
    spawn_local(follow_events(inner.clone(), generation));
}

async fn follow_events(inner: Rc<Inner>, generation: u32) {
    while inner.polling.get() == Some(generation) {
        let patterns = inner.subscription.borrow().clone();
        let documents: Vec<DocumentVersion> = inner
            .watched
            .borrow()
            .iter()
            .map(|(id, v)| DocumentVersion { document_id: id.clone(), version: *v })
            .collect();
        if patterns.is_none() && documents.is_empty() {
            inner.following.set(None);
            return;
        }
        let after = inner.core.borrow().last_event();
        let client = inner.client_id.to_string();
        let what = sdk_core::rest::PollFor {
            events: patterns.as_deref().map(|p| (after, p)),
            documents: &documents,
            client: Some(&client),
        };
        let path = sdk_core::rest::poll_request(&what, 25);
        match http(&inner, "GET", &path, None).await {
            Ok((200, body)) => match sdk_core::rest::poll_answer(body.as_bytes()) {
                Ok((frames, _, changed)) => {
                    if inner.polling.get() != Some(generation) {
                        return;
                    }
                    for f in frames {
                        inner.core.borrow_mut().handle_frame(now_ms(), f);
                    }
                    drive(&inner);
                    if !changed.is_empty() {
                        // Seen: the next poll waits past these versions while the documents
                        // module syncs them (and reports the versions it reached).
                        for d in &changed {
                            if let Some(v) = inner.watched.borrow_mut().get_mut(&d.document_id) {
                                *v = (*v).max(d.version);
                            }
                        }
                        let (tx, rx) = oneshot::channel();
                        *inner.synced.borrow_mut() = Some(tx);
                        emit(&inner, "documents", &to_json(&changed));
                        // The sync brings those changes (and any made meanwhile); poll again
                        // once it is done, or after 10 s whatever happened to it.
                        let timeout = std::pin::pin!(sleep_ms(10_000));
                        let _ = futures_util::future::select(rx, timeout).await;
                    }
                }
                Err(e) => return polling_failed(&inner, generation, &e.to_string()),
            },
            Ok((status, body)) if status < 500 => {
                emit(&inner, "error", &json!({ "message": format!("events: {status} {body}") }));
                sleep_ms(5_000).await;
            }
            Ok((status, _)) => {
                return polling_failed(&inner, generation, &format!("events: {status}"));
            }
            Err(e) => return polling_failed(&inner, generation, &format!("events: {e}")),
        }
    }
}

async fn sleep_ms(ms: u32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, f64::from(ms));
    });
    let _ = JsFuture::from(p).await;
}

fn close_socket(inner: &Inner) {
    let s = inner.socket.borrow_mut().take();
    if let Some(s) = s {
        retire(s);
    }
}

/// Detach and close a socket. Its closures are dropped on a later turn: this may run inside
/// one of them, and a closure must not be freed while it runs.
fn retire(s: Socket) {
    s.ws.set_onopen(None);
    s.ws.set_onmessage(None);
    s.ws.set_onclose(None);
    s.ws.set_onerror(None);
    let _ = s.ws.close();
    spawn_local(async move { drop(s) });
}

fn open_socket(inner: &Rc<Inner>) {
    close_socket(inner);
    // Frames that waited for the last link's budget belonged to it.
    inner.paced.borrow_mut().clear();
    inner.builders.borrow_mut().clear();
    inner.polling.set(None);
    let generation = inner.generation.get().wrapping_add(1);
    inner.generation.set(generation);
    let ws = match WebSocket::new(&inner.ws_url) {
        Ok(ws) => ws,
        Err(_) => {
            inner.core.borrow_mut().link_closed(now_ms());
            drive(inner);
            return;
        }
    };
    let current = {
        let inner = Rc::downgrade(inner);
        move || inner.upgrade().filter(|i| i.generation.get() == generation)
    };
    let on_open = {
        let current = current.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let Some(inner) = current() else { return };
            let current = current.clone();
            spawn_local(async move {
                match token(&inner).await {
                    Ok(t) if current().is_some() => {
                        inner.core.borrow_mut().link_opened(now_ms(), &t);
                    }
                    Ok(_) => return,
                    Err(e) => {
                        emit(&inner, "error", &json!({ "message": format!("getToken: {e}") }));
                        close_socket(&inner);
                        inner.core.borrow_mut().link_closed(now_ms());
                    }
                }
                drive(&inner);
            });
        })
    };
    let on_message = {
        let current = current.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let Some(inner) = current() else { return };
            let Some(text) = e.unchecked_into::<MessageEvent>().data().as_string() else { return };
            match Codec::Json.decode::<ServerFrame>(text.as_bytes(), DEFAULT_MAX_FRAME * 16) {
                Ok(frame) => inner.core.borrow_mut().handle_frame(now_ms(), frame),
                Err(err) => {
                    emit(&inner, "error", &json!({ "message": format!("bad frame: {err}") }))
                }
            }
            drive(&inner);
        })
    };
    let on_close = {
        let current = current.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let Some(inner) = current() else { return };
            let code = e.dyn_ref::<CloseEvent>().map(CloseEvent::code);
            close_socket(&inner);
            if let Some(code) = code.filter(|c| *c != 1000) {
                emit(&inner, "disconnect", &json!({ "code": code }));
            }
            inner.core.borrow_mut().link_closed(now_ms());
            drive(&inner);
        })
    };
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    *inner.socket.borrow_mut() =
        Some(Socket { ws, _handlers: vec![on_open, on_message, on_close] });
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &js_sys::Function, ms: f64) -> i32;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: i32);
}

/// One timer: at the core's next deadline.
fn schedule_timer(inner: &Rc<Inner>) {
    if let Some(t) = inner.timer.borrow_mut().take() {
        clear_timeout(t.id);
    }
    let Some(at) = inner.core.borrow().poll_timeout() else { return };
    let delay = at.saturating_sub(now_ms());
    let weak = Rc::downgrade(inner);
    let callback = Closure::<dyn FnMut()>::new(move || {
        let Some(inner) = weak.upgrade() else { return };
        inner.timer.borrow_mut().take();
        inner.core.borrow_mut().handle_timeout(now_ms());
        drive(&inner);
    });
    let id = set_timeout(callback.as_ref().unchecked_ref(), delay as f64);
    *inner.timer.borrow_mut() = Some(Timer { id, _callback: callback });
}

// Browser-only: `cargo test -p sdk-wasm --target wasm32-unknown-unknown` (headless Chromium).
#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use super::*;
    use wasm_bindgen_test::*;
    wasm_bindgen_test_configure!(run_in_browser);

    fn name(test: &str) -> String {
        format!("pf2-test-{test}-{}", random_hex())
    }

    #[wasm_bindgen_test]
    async fn records_round_trip_through_indexeddb_in_one_transaction() {
        let db = IdbStore::open(&name("roundtrip")).await.unwrap();
        let writes = vec![
            RecordWrite::Put { store: local_store::META, key: "nextSeq".into(), value: json!(7) },
            RecordWrite::Put {
                store: local_store::META,
                key: "cursor".into(),
                value: json!({"version": 3, "confirmedSeq": 2}),
            },
            RecordWrite::Put {
                store: local_store::ENTITIES,
                key: "[\"t\",\"todo\",\"1\"]".into(),
                value: json!({"nested": {"a": [1, 2]}}),
            },
        ];
        db.apply(&writes).await.unwrap();
        db.apply(&[RecordWrite::Delete {
            store: local_store::ENTITIES,
            key: "[\"t\",\"todo\",\"1\"]".into(),
        }])
        .await
        .unwrap();
        let c = db.contents().await.unwrap();
        assert!(c.entities.is_empty());
        let mut meta = c.meta.clone();
        meta.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            meta,
            vec![
                ("cursor".to_string(), json!({"version": 3, "confirmedSeq": 2})),
                ("nextSeq".to_string(), json!(7)),
            ]
        );
    }

    #[wasm_bindgen_test]
    async fn queued_mutations_survive_reopening_the_engine() {
        let db = name("reopen");
        let opts = || {
            to_js(
                &json!({"url": "http://127.0.0.1:9", "tenantId": "t", "clientId": "tab", "dbName": db}),
            )
        };
        let noop = js_sys::Function::new_no_args("");
        let token = js_sys::Function::new_no_args("return Promise.resolve('x')");
        let engine = SyncEngine::open(opts(), token.clone(), noop.clone()).await.unwrap();
        for i in 0..50 {
            engine
                .mutate("todo".into(), format!("t{i}"), to_js(&json!({"n": i})), None)
                .await
                .unwrap();
        }
        engine
            .mutate("todo".into(), "t0".into(), to_js(&json!({"done": true})), None)
            .await
            .unwrap();
        assert_eq!(engine.pending_count(), 51);
        engine.close();
        drop(engine);
        let again = SyncEngine::open(opts(), token, noop).await.unwrap();
        assert_eq!(again.pending_count(), 51);
        let t0 = from_js(again.get("todo".into(), "t0".into()).unwrap()).unwrap();
        assert_eq!(t0, json!({"n": 0, "done": true}));
    }
}
