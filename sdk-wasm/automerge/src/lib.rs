//! # sdk-wasm-automerge — collaborative documents in the browser
//!
//! The second wasm module of `@pf2/sync`, loaded only by its `automerge` entry point (Automerge
//! is about twice the size of the base module). A thin shell over `pf2-automerge`:
//!
//! - [`DocumentStore`] is one IndexedDB database per client (`pf2-docs:<tenant>:<client>`):
//!   store `chunks` holds each document's records under `[documentId, seq]` (0: the compacted
//!   save, ≥ 1: increments), store `sync` what each document shares with the server.
//! - [`Document`] is one replica: edits by JSON path, reads as JSON, sync messages in and out as
//!   `doc_sync` frames (cut into parts past 32 KiB), and `flushed()`, which writes what
//!   `pf2_automerge::log::DocumentLog` decides (an increment, or a compacting save) together
//!   with the sync state, in one transaction. Flushes run one at a time, so records land in
//!   the order they were decided.
//!
//! The JS side (`js/src/automerge.ts`) sends the frames over the base client's socket and
//! feeds it the frames the server sends.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_channel::oneshot;
use pf2_automerge::automerge::TextEncoding;
use pf2_automerge::log::{DocumentLog, LogWrite};
use pf2_automerge::parts::{self, Reassembly};
use pf2_automerge::{DocumentPeer, json};
use rexie::{KeyRange, ObjectStore, Rexie, TransactionMode};
use serde::Serialize;
use serde_json::{Value, json as j};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;

const DB_VERSION: u32 = 1;
const CHUNKS: &str = "chunks";
const SYNC: &str = "sync";
/// The server, as a sync peer.
const SERVER: &str = "server";
/// The author of a document's genesis change: the same on every replica, so replicas that
/// create the same initial structure offline make the very same change (same hash).
const GENESIS_ACTOR: &[u8] = &[0];

fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn to_js(v: &Value) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::NULL)
}

fn from_js(v: JsValue) -> Result<Value, JsValue> {
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_wasm_bindgen::from_value(v).map_err(js_err)
}

fn path(v: JsValue) -> Result<Vec<Value>, JsValue> {
    match from_js(v)? {
        Value::Array(p) => Ok(p),
        Value::String(k) => Ok(vec![Value::String(k)]),
        Value::Null => Ok(Vec::new()),
        other => Err(js_err(format!("a path is an array of keys and indices, not {other}"))),
    }
}

fn idb(context: &str, e: impl std::fmt::Display) -> JsValue {
    js_err(format!("IndexedDB {context}: {e}"))
}

fn key(id: &str, seq: u64) -> JsValue {
    js_sys::Array::of2(&JsValue::from_str(id), &JsValue::from_f64(seq as f64)).into()
}

/// One client's documents database.
#[wasm_bindgen]
pub struct DocumentStore {
    db: Rc<Rexie>,
    actor: Vec<u8>,
}

impl std::fmt::Debug for DocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentStore").finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl DocumentStore {
    /// Open (or create) the database. `actor` (hex) authors this session's changes: fresh per
    /// session, so two sessions can never reuse a change sequence.
    pub async fn open(db_name: String, actor: String) -> Result<DocumentStore, JsValue> {
        let actor = (0..actor.len() / 2)
            .map(|i| u8::from_str_radix(actor.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| js_err("the actor is hex"))?;
        if actor.is_empty() {
            return Err(js_err("the actor is hex, at least one byte"));
        }
        let db = Rexie::builder(&db_name)
            .version(DB_VERSION)
            .add_object_store(ObjectStore::new(CHUNKS))
            .add_object_store(ObjectStore::new(SYNC))
            .build()
            .await
            .map_err(|e| idb("open", e))?;
        Ok(DocumentStore { db: Rc::new(db), actor })
    }

    /// A document from what is stored of it (nothing: a new, empty one). `compact_bytes`:
    /// appended bytes past which the next flush writes one compacted save.
    pub async fn document(&self, id: String, compact_bytes: usize) -> Result<Document, JsValue> {
        let tx = self
            .db
            .transaction(&[CHUNKS, SYNC], TransactionMode::ReadOnly)
            .map_err(|e| idb("tx", e))?;
        let chunks = tx.store(CHUNKS).map_err(|e| idb(CHUNKS, e))?;
        let range = KeyRange::bound(&key(&id, 0), &key(&id, u64::MAX >> 11), None, None)
            .map_err(|e| idb("range", e))?;
        let keys =
            chunks.get_all_keys(Some(range.clone()), None).await.map_err(|e| idb(CHUNKS, e))?;
        let values = chunks.get_all(Some(range), None).await.map_err(|e| idb(CHUNKS, e))?;
        let sync = tx.store(SYNC).map_err(|e| idb(SYNC, e))?;
        let shared = sync.get(JsValue::from_str(&id)).await.map_err(|e| idb(SYNC, e))?;
        let mut records = Vec::with_capacity(keys.len());
        for (k, v) in keys.into_iter().zip(values) {
            let seq = js_sys::Reflect::get(&k, &JsValue::from(1)).ok().and_then(|s| s.as_f64());
            let seq = seq.ok_or_else(|| idb(CHUNKS, "a key that is not [id, seq]"))? as u64;
            records.push((seq, js_sys::Uint8Array::new(&v).to_vec()));
        }
        let (mut peer, log) =
            DocumentLog::restore(records, &self.actor, TextEncoding::Utf16CodeUnit, compact_bytes)
                .map_err(js_err)?;
        if let Some(s) = shared.filter(|s| !s.is_undefined() && !s.is_null()) {
            peer.restore_peer(SERVER, &js_sys::Uint8Array::new(&s).to_vec());
        }
        Ok(Document {
            inner: Rc::new(Inner {
                actor: self.actor.clone(),
                id,
                db: self.db.clone(),
                peer: RefCell::new(peer),
                log: RefCell::new(log),
                incoming: RefCell::new(Reassembly::new(pf2_automerge::DEFAULT_MAX_DOCUMENT_BYTES)),
                flushing: Cell::new(false),
                waiters: RefCell::new(Vec::new()),
            }),
        })
    }

    pub fn close(self) {
        if let Ok(db) = Rc::try_unwrap(self.db) {
            db.close();
        }
    }
}

struct Inner {
    /// This session's actor (the genesis change is authored by [`GENESIS_ACTOR`] instead).
    actor: Vec<u8>,
    id: String,
    db: Rc<Rexie>,
    peer: RefCell<DocumentPeer>,
    log: RefCell<DocumentLog>,
    incoming: RefCell<Reassembly>,
    flushing: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<Result<(), String>>>>,
}

/// One document replica.
#[wasm_bindgen]
pub struct Document {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl Document {
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        self.inner.id.clone()
    }

    // ---- edits: they gather into one change until `commit` (or are undone by `rollback`) ----

    /// Set a map key or list index to a JSON value (objects and arrays nest).
    pub fn put(&self, at: JsValue, value: JsValue) -> Result<(), JsValue> {
        let (at, value) = (path(at)?, from_js(value)?);
        json::put(self.inner.peer.borrow_mut().doc(), &at, &value).map_err(js_err)
    }

    /// Make `at` a collaborative text holding `text`.
    #[wasm_bindgen(js_name = putText)]
    pub fn put_text(&self, at: JsValue, text: String) -> Result<(), JsValue> {
        json::put_text(self.inner.peer.borrow_mut().doc(), &path(at)?, &text).map_err(js_err)
    }

    /// In the text at `at`: delete `delete` UTF-16 code units at `index`, insert `insert`.
    pub fn splice(
        &self,
        at: JsValue,
        index: usize,
        delete: usize,
        insert: String,
    ) -> Result<(), JsValue> {
        let at = path(at)?;
        json::splice(self.inner.peer.borrow_mut().doc(), &at, index, delete, &insert)
            .map_err(js_err)
    }

    /// Insert into the list at `at`, before `index`.
    pub fn insert(&self, at: JsValue, index: usize, value: JsValue) -> Result<(), JsValue> {
        let (at, value) = (path(at)?, from_js(value)?);
        json::insert(self.inner.peer.borrow_mut().doc(), &at, index, &value).map_err(js_err)
    }

    /// Delete a map key or list element.
    pub fn delete(&self, at: JsValue) -> Result<(), JsValue> {
        json::delete(self.inner.peer.borrow_mut().doc(), &path(at)?).map_err(js_err)
    }

    /// Close the edits since the last commit into one change (`time_ms`: its timestamp).
    /// Returns whether there was anything to commit.
    pub fn commit(&self, time_ms: f64) -> bool {
        let options = pf2_automerge::automerge::transaction::CommitOptions::default()
            .with_time((time_ms / 1000.0) as i64);
        self.inner.peer.borrow_mut().doc().commit_with(options).is_some()
    }

    /// Start the document's genesis change, when it has no history yet (returns whether it
    /// started): the edits until [`Self::end_genesis`] are authored by a fixed actor at time 0,
    /// so every replica running the same edits makes the identical change.
    #[wasm_bindgen(js_name = beginGenesis)]
    pub fn begin_genesis(&self) -> bool {
        let mut peer = self.inner.peer.borrow_mut();
        if !peer.heads().is_empty() {
            return false;
        }
        peer.doc().set_actor(pf2_automerge::automerge::ActorId::from(GENESIS_ACTOR));
        true
    }

    /// Commit the genesis change (`commit`: keep the edits, else roll them back) and return to
    /// this session's actor.
    #[wasm_bindgen(js_name = endGenesis)]
    pub fn end_genesis(&self, commit: bool) {
        let mut peer = self.inner.peer.borrow_mut();
        if commit {
            let at_zero =
                pf2_automerge::automerge::transaction::CommitOptions::default().with_time(0);
            peer.doc().commit_with(at_zero);
        } else {
            peer.doc().rollback();
        }
        peer.doc().set_actor(pf2_automerge::automerge::ActorId::from(self.inner.actor.as_slice()));
    }

    /// Undo the edits since the last commit.
    pub fn rollback(&self) {
        self.inner.peer.borrow_mut().doc().rollback();
    }

    // ---- reads ----

    /// The value at `at` as JSON (`undefined`: nothing there; `[]`: the whole document).
    pub fn get(&self, at: JsValue) -> Result<JsValue, JsValue> {
        let at = path(at)?;
        let mut peer = self.inner.peer.borrow_mut();
        Ok(match json::get(peer.doc(), &at).map_err(js_err)? {
            Some(v) => to_js(&v),
            None => JsValue::UNDEFINED,
        })
    }

    /// The document's heads (hex change hashes).
    pub fn heads(&self) -> Vec<String> {
        self.inner.peer.borrow_mut().heads().iter().map(|h| h.to_string()).collect()
    }

    /// The whole document as one Automerge save (for a stock Automerge, or an export).
    pub fn save(&self) -> Vec<u8> {
        self.inner.peer.borrow_mut().save()
    }

    // ---- sync with the server ----

    /// The `doc_sync` frames to send now (empty: the server has everything we know it lacks).
    #[wasm_bindgen(js_name = syncFrames)]
    pub fn sync_frames(&self) -> JsValue {
        let mut frames = Vec::new();
        let mut peer = self.inner.peer.borrow_mut();
        while let Some(m) = peer.generate(SERVER) {
            for (part, more) in parts::split(&m, parts::PART_BYTES) {
                frames.push(j!({
                    "type": "doc_sync",
                    "documentId": self.inner.id,
                    "message": B64.encode(part),
                    "more": more,
                }));
            }
        }
        to_js(&Value::Array(frames))
    }

    /// The sync message for a REST round (`POST /api/documents/sync`), or `undefined`: one
    /// carrying local changes or asking for changes we lack a dependency of (it also says what
    /// we have, so the answer brings the server's changes in the same round); else, with `ask` (the server has changes for us), a fresh
    /// session's first message, which says what we have; else none — a bare acknowledgement
    /// waits for the next round that carries something, which says the same (every round
    /// spends the polling budget).
    #[wasm_bindgen(js_name = httpMessage)]
    pub fn http_message(&self, ask: bool) -> Option<String> {
        let mut peer = self.inner.peer.borrow_mut();
        // Local changes (or a change we need) say what we have too: the answer brings the
        // server's in the same round.
        if let Some(m) = peer.generate(SERVER).filter(|m| pf2_automerge::carries_something(m)) {
            return Some(B64.encode(m));
        }
        if !ask {
            return None;
        }
        peer.disconnected(SERVER);
        peer.generate(SERVER).map(|m| B64.encode(m))
    }

    /// A `doc_sync` from the server (`more`: a part, more follow). Returns whether the document
    /// changed. Bad bytes are refused with nothing changed.
    pub fn receive(&self, message: String, more: bool) -> Result<bool, JsValue> {
        let part = B64.decode(message).map_err(|e| js_err(format!("doc_sync: not base64: {e}")))?;
        let whole = self.inner.incoming.borrow_mut().push(SERVER, &part, more).map_err(js_err)?;
        let Some(m) = whole else { return Ok(false) };
        let mut peer = self.inner.peer.borrow_mut();
        let before = peer.heads();
        peer.receive(SERVER, &m).map_err(js_err)?;
        Ok(peer.heads() != before)
    }

    /// The link to the server went away: the next session starts from what both share.
    pub fn disconnected(&self) {
        self.inner.incoming.borrow_mut().discard(SERVER);
        self.inner.peer.borrow_mut().disconnected(SERVER);
    }

    // ---- local persistence ----

    /// Resolves once everything so far (edits, received changes, the sync state) is in
    /// IndexedDB. Writes made meanwhile share the next transaction.
    pub async fn flushed(&self) -> Result<(), JsValue> {
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.borrow_mut().push(tx);
        if !self.inner.flushing.get() {
            self.inner.flushing.set(true);
            spawn_local(flush(self.inner.clone()));
        }
        rx.await.map_err(|_| js_err("the document closed"))?.map_err(js_err)
    }
}

/// Write what the log decides, and the sync state, until nothing new is left.
async fn flush(inner: Rc<Inner>) {
    loop {
        let waiters = std::mem::take(&mut *inner.waiters.borrow_mut());
        let write = {
            let mut peer = inner.peer.borrow_mut();
            inner.log.borrow_mut().flush(&mut peer)
        };
        if write.is_none() && waiters.is_empty() {
            inner.flushing.set(false);
            return;
        }
        let shared = inner.peer.borrow().peer_state(SERVER);
        let result = match &write {
            Some(w) => store(&inner, w, shared.as_deref()).await,
            None => Ok(()),
        };
        if result.is_err() {
            inner.log.borrow_mut().failed();
        }
        for w in waiters {
            let _ = w.send(result.clone().map_err(|e| format!("{e:?}")));
        }
    }
}

async fn store(inner: &Inner, w: &LogWrite, shared: Option<&[u8]>) -> Result<(), JsValue> {
    let tx = inner
        .db
        .transaction(&[CHUNKS, SYNC], TransactionMode::ReadWrite)
        .map_err(|e| idb("tx", e))?;
    let chunks = tx.store(CHUNKS).map_err(|e| idb(CHUNKS, e))?;
    let sync = tx.store(SYNC).map_err(|e| idb(SYNC, e))?;
    let bytes = |b: &[u8]| JsValue::from(js_sys::Uint8Array::from(b));
    let id = &inner.id;
    let (record, seq, below) = match w {
        LogWrite::Append { seq, bytes: b } => (bytes(b), *seq, None),
        LogWrite::Compact { save, below } => (bytes(save), 0, Some(*below).filter(|b| *b > 1)),
    };
    let old = match below {
        Some(below) => Some(
            KeyRange::bound(&key(id, 1), &key(id, below), None, Some(true))
                .map_err(|e| idb("range", e))?,
        ),
        None => None,
    };
    let (record_key, shared_key) = (key(id, seq), JsValue::from_str(id));
    let shared = shared.map(bytes);
    // Every request is issued in the same turn and awaited together: inside a rexie
    // transaction await only its own requests (rexie issue 36).
    type Request<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = rexie::Result<()>> + 'a>>;
    let mut requests: Vec<Request<'_>> = Vec::new();
    if let Some(old) = old {
        requests.push(Box::pin(chunks.delete(old.into())));
    }
    requests.push(Box::pin(async { chunks.put(&record, Some(&record_key)).await.map(drop) }));
    if let Some(s) = &shared {
        requests.push(Box::pin(async { sync.put(s, Some(&shared_key)).await.map(drop) }));
    }
    futures_util::future::try_join_all(requests).await.map_err(|e| idb("write", e))?;
    let done = tx.done().await.map_err(|e| idb("commit", e))?;
    if done.is_committed() { Ok(()) } else { Err(idb("commit", "the transaction aborted")) }
}
