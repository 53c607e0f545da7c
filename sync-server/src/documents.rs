//! Collaborative documents: a hub per `(tenant, document id)` that speaks Automerge's sync
//! protocol with every socket that has the document open (`doc_sync` frames), keeps the
//! document in memory while someone has it open, persists every change as it arrives (a
//! compacted save plus the changes appended since, folded into the save past a threshold), and
//! tells the other processes when it changed (a cluster envelope; they re-read the new changes).
//!
//! Sync states are kept per client id, so a client that reconnects exchanges only what either
//! side lacks. A message that would take the document past its size limit is refused with
//! `PAYLOAD_TOO_LARGE` and changes nothing.

use crate::access::Access;
use crate::error::ApiError;
use crate::feed::ChangeFeed;
use crate::metrics::Metrics;
use crate::realtime::mailbox::{Mailbox, Offered};
use crate::realtime::outbound::Outbound;
use crate::store::{Store, StoredDocument};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pf2_automerge::DocumentPeer;
use pf2_automerge::parts::{self, Reassembly};
use sdk_core::ErrorCode;
use sdk_core::ids::{ClientId, DocumentId, TenantId};
use sdk_core::pacing::Tickets;
use sdk_core::protocol::{ClientFrame, ServerFrame};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::limits::{DEFAULT_COMPACT_BYTES, DEFAULT_MAX_DOCUMENT_BYTES};

type Key = (TenantId, String);

struct LiveDoc {
    peer: DocumentPeer,
    /// Heads of what is stored (changes after them are not yet appended).
    persisted: Vec<pf2_automerge::automerge::ChangeHash>,
    /// Every stored change up to this number is in `peer` (the invariant a compaction relies
    /// on: it deletes the changes up to it).
    seq: i64,
    /// Bytes the stored form has (save plus appended), for the size limit.
    stored_bytes: usize,
    /// The stored save's version (compactions name the version they replace).
    save_version: i64,
    /// Sockets that have the document open, by client id.
    open: HashMap<ClientId, Arc<Mailbox>>,
    /// Sync messages arriving in parts, by client id (up to the document size limit).
    parts: Reassembly,
}

/// The reply tickets of every socket (`sdk_core::pacing`): one per whole sync message queued
/// for it, spent by an acknowledgement, which is then not charged against its rate limit.
#[derive(Default)]
struct TicketBook(Mutex<HashMap<(TenantId, ClientId), Tickets>>);

impl TicketBook {
    fn grant(&self, tenant: &TenantId, client: &ClientId, doc: &str) {
        let mut all = self.0.lock().expect("tickets lock");
        all.entry((tenant.clone(), client.clone())).or_default().grant(doc);
    }

    fn forget(&self, tenant: &TenantId, client: &ClientId, doc: &str) {
        let mut all = self.0.lock().expect("tickets lock");
        let key = (tenant.clone(), client.clone());
        if let Some(t) = all.get_mut(&key) {
            t.forget(doc);
            if *t == Tickets::default() {
                all.remove(&key);
            }
        }
    }
}

/// The last run of changes one client appended to a document (versions `first..=last`).
struct Writer {
    client: ClientId,
    first: u64,
    last: u64,
}

/// Every document open on this process.
pub struct DocumentHub {
    docs: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<LiveDoc>>>>,
    tickets: TicketBook,
    /// Who wrote each document's latest changes here (one small entry per document written).
    writers: Mutex<HashMap<Key, Writer>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    feed: ChangeFeed,
    /// Largest stored form of a document.
    max_bytes: usize,
    /// Appended change bytes after which a document's changes are folded into its save.
    compact_bytes: i64,
}

impl std::fmt::Debug for DocumentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.docs.lock().map(|d| d.len()).unwrap_or(0);
        f.debug_struct("DocumentHub").field("open_documents", &n).finish()
    }
}

/// Document ids: 1–128 of `A-Za-z0-9-_.:` ([`DocumentId`]).
pub fn valid_document_id(id: &str) -> Result<(), ApiError> {
    DocumentId::new(id).map(|_| ()).map_err(|e| ApiError::invalid(e.to_string()))
}

/// A sync message as frames: one, or parts of at most 32 KiB when it is larger; `ticket`: its
/// answer may be free (the message is not a reply to the recipient's own).
fn frames(id: &str, message: &[u8], ticket: bool) -> Vec<Arc<Outbound>> {
    parts::split(message, parts::PART_BYTES)
        .map(|(part, more)| {
            Outbound::new(ServerFrame::DocSync {
                document_id: id.to_string(),
                message: B64.encode(part),
                more,
                ticket: ticket && !more,
            })
        })
        .collect()
}

fn refused(e: pf2_automerge::Error) -> ApiError {
    match e {
        pf2_automerge::Error::TooLarge { .. } => {
            ApiError::new(ErrorCode::PayloadTooLarge, e.to_string())
        }
        pf2_automerge::Error::Decode(m) | pf2_automerge::Error::Edit(m) => {
            ApiError::invalid(format!("doc_sync message: {m}"))
        }
    }
}

/// A stored document as one replica: its save, then the changes appended since.
fn replica(stored: &StoredDocument) -> Result<DocumentPeer, ApiError> {
    let broken = |e: pf2_automerge::Error| ApiError::internal(e.to_string());
    let mut peer = if stored.save.is_empty() {
        DocumentPeer::new(b"server")
    } else {
        DocumentPeer::load(&stored.save, b"server").map_err(broken)?
    };
    for c in &stored.changes {
        peer.doc().load_incremental(c).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(peer)
}

impl DocumentHub {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        feed: ChangeFeed,
        max_bytes: usize,
        compact_bytes: i64,
    ) -> Self {
        let tickets = TicketBook::default();
        let writers = Mutex::default();
        Self {
            docs: Mutex::default(),
            tickets,
            writers,
            store,
            metrics,
            feed,
            max_bytes,
            compact_bytes,
        }
    }

    /// The stored document, live: a replica and what is known of its stored form.
    async fn load(&self, tenant: &TenantId, id: &str) -> Result<LiveDoc, ApiError> {
        let stored = self.store.document(tenant.as_str(), id).await?.unwrap_or_default();
        let limit = self.max_bytes;
        // Reassembled messages may be as large as a document.
        let mut peer = replica(&stored)?.with_max_message(limit);
        let stored_bytes = stored.save.len() + stored.changes_bytes.max(0) as usize;
        Ok(LiveDoc {
            persisted: peer.heads(),
            peer,
            seq: stored.seq,
            save_version: stored.save_version,
            stored_bytes,
            open: HashMap::new(),
            parts: Reassembly::new(limit),
        })
    }

    async fn live(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<LiveDoc>>, ApiError> {
        let key = (tenant.clone(), id.to_string());
        if let Some(d) = self.docs.lock().expect("documents lock").get(&key) {
            return Ok(d.clone());
        }
        let doc = Arc::new(tokio::sync::Mutex::new(self.load(tenant, id).await?));
        Ok(self.docs.lock().expect("documents lock").entry(key).or_insert(doc).clone())
    }

    /// What `frame` from `client` costs against its rate limit: `Tickets::charge`, with the
    /// tickets the document messages queued for it gave.
    pub fn charge(&self, tenant: &TenantId, client: &ClientId, frame: &ClientFrame) -> u32 {
        if !matches!(frame, ClientFrame::DocSync { more: false, .. }) {
            return 1;
        }
        let mut all = self.tickets.0.lock().expect("tickets lock");
        match all.get_mut(&(tenant.clone(), client.clone())) {
            Some(t) => t.charge(frame.reply_to()),
            None => 1,
        }
    }

    /// A `doc_sync` frame from `client` on the socket whose outbound queue is `mailbox`
    /// (`more`: a part, more follow).
    /// Under sync rules opening needs read on the document's channels, and changes need write:
    /// a read-only reader is answered, but a message of theirs that carries a change is refused
    /// and nothing of it is kept.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive(
        &self,
        access: &Access,
        tenant: &TenantId,
        client: &ClientId,
        mailbox: &Arc<Mailbox>,
        id: &str,
        message: &str,
        more: bool,
    ) -> Result<(), ApiError> {
        valid_document_id(id)?;
        let writes = access.document(id)?;
        let part = B64
            .decode(message)
            .map_err(|e| ApiError::invalid(format!("doc_sync message: not base64 ({e})")))?;
        let live = self.live(tenant, id).await?;
        let mut doc = live.lock().await;
        doc.open.insert(client.clone(), mailbox.clone());
        let Some(bytes) = doc.parts.push(client.as_str(), &part, more).map_err(refused)? else {
            return Ok(());
        };
        self.apply(tenant, id, &mut doc, client, &bytes, writes).await?;
        self.sync_open(tenant, &mut doc, id, Some(client)).await;
        Ok(())
    }

    /// One exchange over REST (the long-polling transport): apply `message` from `client`, if
    /// any, and answer with what it lacks and the version the answer brings it to (every stored
    /// change up to it is in the answer or already the client's: where its poll watches from). The server starts a session per exchange from what
    /// both sides are known to share (and keeps none after it), so a lost answer costs a round
    /// trip, never a change, and an idle document leaves memory; the client keeps its session.
    pub async fn sync_over_http(
        &self,
        access: &Access,
        tenant: &TenantId,
        client: &ClientId,
        id: &str,
        message: Option<&[u8]>,
    ) -> Result<(Vec<Vec<u8>>, u64), ApiError> {
        valid_document_id(id)?;
        let writes = access.document(id)?;
        let live = self.live(tenant, id).await?;
        let (answers, unused) = {
            let mut doc = live.lock().await;
            doc.peer.disconnected(client.as_str());
            let applied = match message {
                Some(bytes) => self.apply(tenant, id, &mut doc, client, bytes, writes).await,
                None => Ok(()),
            };
            let answers = match applied {
                Ok(()) => {
                    self.sync_open(tenant, &mut doc, id, None).await;
                    let answers = std::iter::from_fn(|| doc.peer.generate(client.as_str()));
                    Ok((answers.collect(), u64::try_from(doc.seq).unwrap_or(0)))
                }
                Err(e) => Err(e),
            };
            doc.peer.disconnected(client.as_str());
            (answers, doc.open.is_empty())
        };
        // Refused or not, a document nobody has open leaves memory.
        if unused {
            self.forget_if_unused(tenant, id, &live);
        }
        answers
    }

    /// Whether every change of document `id` after version `after` up to `version` was
    /// `client`'s own (so a poll of its need not end for them). Known for the changes this
    /// process stored; anything else is taken as someone else's.
    pub fn only_own(
        &self,
        tenant: &TenantId,
        id: &str,
        client: &ClientId,
        after: u64,
        version: u64,
    ) -> bool {
        let writers = self.writers.lock().expect("writers lock");
        let key = (tenant.clone(), id.to_string());
        writers.get(&key).is_some_and(|w| {
            w.client == *client && w.first <= after.saturating_add(1) && w.last == version
        })
    }

    /// Apply one whole sync message from `client`; persist what it added (refusing, with
    /// nothing kept, what would pass the size limit) and tell the other processes.
    async fn apply(
        &self,
        tenant: &TenantId,
        id: &str,
        doc: &mut LiveDoc,
        client: &ClientId,
        bytes: &[u8],
        writes: bool,
    ) -> Result<(), ApiError> {
        let before = doc.peer.heads();
        doc.peer.receive(client.as_str(), bytes).map_err(refused)?;
        if doc.peer.heads() == before {
            return Ok(());
        }
        if !writes {
            // A reader's change: forget it by reloading what is stored.
            let open = std::mem::take(&mut doc.open);
            *doc = self.load(tenant, id).await?;
            doc.open = open;
            self.metrics.inc("pf2_documents_refused_total", &[("reason", "read_only")]);
            return Err(ApiError::new(
                ErrorCode::AuthzFailed,
                "the sync rules let you read this document, not change it",
            ));
        }
        let persisted = std::mem::take(&mut doc.persisted);
        let increment = doc.peer.save_after(&persisted);
        doc.persisted = persisted;
        let limit = self.max_bytes;
        if doc.stored_bytes + increment.len() > limit {
            // Refused: forget the in-memory change by reloading what is stored.
            let size = doc.stored_bytes + increment.len();
            let open = std::mem::take(&mut doc.open);
            *doc = self.load(tenant, id).await?;
            doc.open = open;
            self.metrics.inc("pf2_documents_refused_total", &[("reason", "too_large")]);
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("document {id:?} would be {size} bytes; the limit is {limit}"),
            ));
        }
        let (seq, appended) =
            self.store.append_document_change(tenant.as_str(), id, &increment).await?;
        self.wrote(tenant, id, client, u64::try_from(seq).unwrap_or(0));
        doc.stored_bytes += increment.len();
        if seq == doc.seq + 1 {
            doc.seq = seq;
            doc.persisted = doc.peer.heads();
        } else {
            // Other processes appended since the last change this replica has: read them.
            self.catch_up(tenant, id, doc).await?;
        }
        self.metrics.inc("pf2_document_changes_total", &[]);
        if appended > self.compact_bytes {
            self.compact(tenant, id, doc).await?;
        }
        self.feed.document_changed(tenant, id);
        Ok(())
    }

    fn wrote(&self, tenant: &TenantId, id: &str, client: &ClientId, seq: u64) {
        let mut writers = self.writers.lock().expect("writers lock");
        let key = (tenant.clone(), id.to_string());
        match writers.get_mut(&key) {
            Some(w) if w.client == *client && w.last + 1 == seq => w.last = seq,
            _ => {
                writers.insert(key, Writer { client: client.clone(), first: seq, last: seq });
            }
        }
    }

    /// Read the changes stored after `doc.seq` into the replica. If a compaction elsewhere
    /// folded some of them into a save this replica does not have, reload from the store.
    async fn catch_up(
        &self,
        tenant: &TenantId,
        id: &str,
        doc: &mut LiveDoc,
    ) -> Result<(), ApiError> {
        let (version, changes) =
            self.store.document_changes_after(tenant.as_str(), id, doc.seq).await?;
        let gap = changes.first().is_some_and(|(s, _)| *s != doc.seq + 1);
        if version != doc.save_version || gap {
            let open = std::mem::take(&mut doc.open);
            *doc = self.load(tenant, id).await?;
            doc.open = open;
            return Ok(());
        }
        for (seq, c) in &changes {
            doc.peer.doc().load_incremental(c).map_err(|e| ApiError::internal(e.to_string()))?;
            doc.seq = *seq;
            doc.stored_bytes += c.len();
        }
        doc.persisted = doc.peer.heads();
        Ok(())
    }

    /// Fold everything stored up to `doc.seq` (all of it in the replica) into one save. If the
    /// stored save changed meanwhile (another process or the periodic compactor compacted),
    /// nothing is written and the replica reloads.
    async fn compact(
        &self,
        tenant: &TenantId,
        id: &str,
        doc: &mut LiveDoc,
    ) -> Result<(), ApiError> {
        let save = doc.peer.save();
        let compacted = self
            .store
            .compact_document(tenant.as_str(), id, &save, doc.seq, doc.save_version)
            .await?;
        match compacted {
            Some(version) => {
                doc.save_version = version;
                doc.stored_bytes = save.len();
                self.metrics.inc("pf2_document_compactions_total", &[("outcome", "size")]);
            }
            None => {
                let open = std::mem::take(&mut doc.open);
                *doc = self.load(tenant, id).await?;
                doc.open = open;
                self.metrics.inc("pf2_document_compactions_total", &[("outcome", "raced")]);
            }
        }
        Ok(())
    }

    /// Send every socket with the document open what it lacks (the sender's reply waits for
    /// room; the others are offered, never waiting, and each whole message gives them a reply
    /// ticket).
    async fn sync_open(
        &self,
        tenant: &TenantId,
        doc: &mut LiveDoc,
        id: &str,
        reply_to: Option<&ClientId>,
    ) {
        let clients: Vec<(ClientId, Arc<Mailbox>)> =
            doc.open.iter().map(|(c, m)| (c.clone(), m.clone())).collect();
        for (client, mailbox) in clients {
            // What answers the client's own message is its round trip, paid by it; what
            // others' changes caused carries a ticket for its acknowledgement.
            let ticket = Some(&client) != reply_to;
            'messages: while let Some(m) = doc.peer.generate(client.as_str()) {
                if ticket {
                    // Before the message is queued: its answer may arrive before this task
                    // runs again. (A message then not queued leaves the server a ticket the
                    // client never got — the safe side.)
                    self.tickets.grant(tenant, &client, id);
                }
                for out in frames(id, &m, ticket) {
                    if !ticket {
                        if mailbox.send(out).await.is_err() {
                            break 'messages;
                        }
                    } else if !matches!(mailbox.offer(out), Offered::Queued) {
                        // A full queue: this socket's session restarts from what both share,
                        // so its next message asks again for what it lacks.
                        doc.peer.disconnected(client.as_str());
                        break 'messages;
                    }
                }
            }
        }
    }

    /// Another process changed the document: read the new changes and pass them on.
    pub async fn refresh(&self, tenant: &TenantId, id: &str) {
        self.feed.document_changed_elsewhere(tenant, id);
        let key = (tenant.clone(), id.to_string());
        let Some(live) = self.docs.lock().expect("documents lock").get(&key).cloned() else {
            return;
        };
        let mut doc = live.lock().await;
        if let Err(e) = self.catch_up(tenant, id, &mut doc).await {
            tracing::warn!(error = %e, document = id, "reading a document's new changes");
            return;
        }
        self.sync_open(tenant, &mut doc, id, None).await;
    }

    /// `client` closed the document (or its socket): forget its socket, keep what both sides
    /// share for its next session, and drop the document from memory when nobody has it open.
    pub async fn close(&self, tenant: &TenantId, client: &ClientId, id: &str) {
        let key = (tenant.clone(), id.to_string());
        let Some(live) = self.docs.lock().expect("documents lock").get(&key).cloned() else {
            return;
        };
        let empty = {
            let mut doc = live.lock().await;
            doc.open.remove(client);
            self.tickets.forget(tenant, client, id);
            doc.parts.discard(client.as_str());
            doc.peer.disconnected(client.as_str());
            doc.open.is_empty()
        };
        if empty {
            self.forget_if_unused(tenant, id, &live);
        }
    }

    /// Drop the document from memory if nobody else holds it (no socket, no request).
    fn forget_if_unused(
        &self,
        tenant: &TenantId,
        id: &str,
        live: &Arc<tokio::sync::Mutex<LiveDoc>>,
    ) {
        let key = (tenant.clone(), id.to_string());
        let mut docs = self.docs.lock().expect("documents lock");
        if docs.get(&key).is_some_and(|d| Arc::ptr_eq(d, live) && Arc::strong_count(d) == 2) {
            docs.remove(&key);
        }
    }

    /// The document's current save and heads, and the bytes its stored form takes (the save
    /// plus the changes appended since), from memory when open here, else from the store.
    pub async fn snapshot(
        &self,
        access: &Access,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Snapshot>, ApiError> {
        valid_document_id(id)?;
        access.document(id)?;
        let key = (tenant.clone(), id.to_string());
        let live = self.docs.lock().expect("documents lock").get(&key).cloned();
        let snap = |d: &mut LiveDoc| Snapshot {
            heads: d.peer.heads().iter().map(|h| h.to_string()).collect(),
            save: d.peer.save(),
            stored_bytes: d.stored_bytes,
        };
        match live {
            // Open but never written (a client only listening): as absent as in the store.
            Some(l) => {
                let mut d = l.lock().await;
                Ok((d.stored_bytes > 0).then(|| snap(&mut d)))
            }
            None => {
                if self.store.document(tenant.as_str(), id).await?.is_none() {
                    return Ok(None);
                }
                Ok(Some(snap(&mut self.load(tenant, id).await?)))
            }
        }
    }
}

/// Documents with changes appended and no write for this long are compacted by the workers.
pub const IDLE_COMPACTION_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl DocumentHub {
    /// Compact documents that have changes appended and no write since `idle` ago (at most 100 a
    /// pass): a later load reads one save instead of the save and every change. Safe beside live
    /// replicas here and on other processes: a compaction replaces only the save it read. Returns
    /// how many were compacted.
    pub async fn compact_idle(&self, idle: std::time::Duration) -> Result<usize, ApiError> {
        let before = crate::clock::now_ms() as i64 - idle.as_millis() as i64;
        let mut compacted = 0;
        for (tenant, id) in self.store.idle_documents_with_changes(before, 100).await? {
            let Some(stored) = self.store.document(&tenant, &id).await? else { continue };
            let save = replica(&stored)?.save();
            if self
                .store
                .compact_document(&tenant, &id, &save, stored.seq, stored.save_version)
                .await?
                .is_some()
            {
                compacted += 1;
                self.metrics.inc("pf2_document_compactions_total", &[("outcome", "idle")]);
            }
        }
        Ok(compacted)
    }
}

/// A document as `GET /api/documents/{id}/snapshot` serves it.
#[derive(Debug)]
pub struct Snapshot {
    pub save: Vec<u8>,
    pub heads: Vec<String>,
    pub stored_bytes: usize,
}
