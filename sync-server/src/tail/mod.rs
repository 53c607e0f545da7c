//! The recent end of every tenant's event log, in memory, shared by every reader at the tail:
//! live subscribers on `/v1/ws` and Socket.IO, durable follows, long-polls. A new event is read
//! from the store once — by the first reader that wants it — however many readers there are,
//! and each event is one shared frame, encoded at most once per codec whatever the number of
//! sockets it goes to. Every reader evaluates its own filter in memory.
//!
//! Followers at the tail do not even wake per event: they join the window's live set and the
//! tenant's pump — one task — pushes each new event into their mailboxes (see [`live`]).
//!
//! A reader behind the window (resuming from an older position) reads the store. Readers behind
//! at the same position share one page read, and at most [`BEHIND_READS`] such reads run at once,
//! so a reconnect storm cannot take the pool from REST.
//!
//! Correctness rests on the log's order: a tenant's sequence is allocated under its row lock and
//! a notification is sent after the commit, so when a reader has been told of position `head`,
//! every event at or below it is committed and a read made now sees all of them.

mod live;

use crate::error::ApiError;
use crate::feed::{ChangeFeed, Woke};
use crate::metrics::Metrics;
use crate::realtime::mailbox::Mailbox;
use crate::realtime::outbound::Outbound;
use crate::store::{Store, StoreError};
use live::Live;
use sdk_core::ErrorCode;
use sdk_core::log_window::{Appends, LogWindow, Sequenced};
use sdk_core::protocol::{Codec, EventFilter, ServerFrame, WireEvent};
use sdk_core::rules::Grants;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{Notify, OnceCell, RwLock, Semaphore};
use tokio::time::Instant;

/// Store reads for readers behind the window that may run at once.
pub const BEHIND_READS: usize = 2;
/// Events a window keeps per tenant (and at most [`WINDOW_BYTES`] of them).
const WINDOW_EVENTS: usize = 2048;
const WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// One store read's page (or the reader's limit, if larger).
const PAGE: i64 = 500;

/// The shared tails of every tenant with a reader.
pub struct EventTail {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    feed: ChangeFeed,
    /// See [`crate::limits::Limits::event_batch_window`].
    batch_window: std::time::Duration,
    windows: Mutex<HashMap<String, Weak<Window>>>,
    behind_turns: Semaphore,
    /// Reads in flight for readers behind, by (tenant, position, head told of, page size).
    pages: Mutex<HashMap<PageKey, Weak<PageRead>>>,
}

type PageRead = OnceCell<Arc<Vec<Arc<Outbound>>>>;
/// (tenant, position, head told of, page size).
type PageKey = (String, u64, u64, i64);

/// A reader's hold on its tenant's window: the window lives while someone holds one.
#[derive(Clone)]
pub struct TailReader {
    window: Arc<Window>,
}

impl std::fmt::Debug for TailReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailReader").field("tenant", &self.window.tenant).finish()
    }
}

struct Window {
    tenant: String,
    span: RwLock<Span>,
    /// This process's appends reported while `span` was held: the next holder for writing
    /// takes them in, instead of a read of the store (locked after `span`, never before).
    appends: Mutex<Appends<Entry>>,
    /// Followers at the tail, fed by the pump.
    live: Mutex<Live>,
    /// Tells the pump its last member left.
    idle: Notify,
}

impl Window {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().expect("live lock")
    }

    fn appends(&self) -> std::sync::MutexGuard<'_, Appends<Entry>> {
        self.appends.lock().expect("appends lock")
    }
}

/// A follower's place in the live set, given up when it is dropped (the follower fell behind,
/// unsubscribed, or its connection ended).
struct Member<'a> {
    window: &'a Window,
    id: u64,
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        if self.window.live().leave(self.id) {
            self.window.idle.notify_one();
        }
    }
}

/// A tenant's window on its log (the bookkeeping is sdk-core's `LogWindow`) and when it last
/// read the store.
struct Span {
    log: LogWindow<Entry>,
    refreshed: Option<Instant>,
}

impl Default for Span {
    fn default() -> Self {
        Self { log: LogWindow::new(WINDOW_EVENTS, WINDOW_BYTES), refreshed: None }
    }
}

/// An event frame as an entry of the window (weighed by its JSON encoding, which most sockets
/// need anyway).
#[derive(Clone)]
struct Entry(Arc<Outbound>);

impl Sequenced for Entry {
    fn sequence(&self) -> u64 {
        seq_of(&self.0)
    }

    fn weight(&self) -> usize {
        self.0.encoded(Codec::Json).len()
    }
}

/// What a reader knows of the log when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Told {
    /// The highest position it has been notified of.
    pub head: u64,
    /// Set when the reader woke from its re-check timer rather than a notification (another
    /// process may have written without a wake-up reaching us): the window must have read the
    /// store after this instant.
    pub unsure_since: Option<Instant>,
}

/// What one reader of the log wants: the events its filter matches that it may see (under sync
/// rules an event whose metadata names channels goes only to their readers; `reader: None`
/// sees every event).
#[derive(Debug, Clone)]
pub struct Interest {
    pub filter: EventFilter,
    pub reader: Option<Arc<Reader>>,
}

/// A stream reader's grants, shared with its session: when the session learns that they
/// changed (every pull refreshes them), the stream filters by the new ones from its next event
/// on — a revoked channel's events stop.
#[derive(Debug, Default)]
pub struct Reader(std::sync::RwLock<Grants>);

impl Reader {
    pub fn new(grants: Grants) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(grants)))
    }

    pub fn set(&self, grants: Grants) {
        *self.0.write().expect("reader lock") = grants;
    }

    fn may_read_event(&self, metadata: &serde_json::Value) -> bool {
        self.0.read().expect("reader lock").may_read_event(metadata)
    }
}

impl Interest {
    /// Every event `filter` matches (no rules, or a tenant-wide reader).
    pub fn all(filter: EventFilter) -> Self {
        Self { filter, reader: None }
    }

    pub fn wants(&self, event: &WireEvent) -> bool {
        self.filter.matches(&event.event_type, &event.payload)
            && self.reader.as_ref().is_none_or(|g| g.may_read_event(&event.metadata))
    }

    /// The same key for the same interest: followers with equal ones share their runs. A
    /// reader under rules is its own (its grants may change alone).
    fn key(&self) -> String {
        let mut key = serde_json::to_string(&self.filter).expect("a filter serializes");
        if let Some(r) = &self.reader {
            key.push_str(&format!("\u{0}{:p}", Arc::as_ptr(r)));
        }
        key
    }
}

/// The event inside a frame the tail produced.
pub fn event_of(frame: &Outbound) -> &WireEvent {
    match &frame.frame {
        ServerFrame::Event { event } => event,
        _ => unreachable!("the tail holds event frames only"),
    }
}

fn seq_of(frame: &Outbound) -> u64 {
    event_of(frame).sequence
}

impl Span {
    /// Events after `after` (at most `limit`) if the window can answer without the store.
    fn serve(&self, after: u64, limit: usize, told: Told) -> Option<Vec<Arc<Outbound>>> {
        let fresh = match (told.unsure_since, self.refreshed) {
            (Some(since), Some(at)) => at >= since,
            (Some(_), None) => false,
            (None, _) => true,
        };
        (self.log.covers(after) && self.log.complete_to(told.head) && fresh)
            .then(|| self.slice(after, limit))
    }

    fn slice(&self, after: u64, limit: usize) -> Vec<Arc<Outbound>> {
        self.log.slice(after, limit).into_iter().map(|e| e.0).collect()
    }

    /// A read of the store made after the reader was told of `head`.
    fn extend(&mut self, rows: Vec<Arc<Outbound>>, full_page: bool, head: u64) {
        self.log.extend(rows.into_iter().map(Entry).collect(), full_page, head);
        self.refreshed = Some(Instant::now());
    }

    /// Take in the appends kept while the span was busy. One that continues the window is as
    /// good as a read made when it was committed (its `prev` was the log's end under the
    /// tenant's lock, whichever process wrote before it).
    fn absorb(&mut self, appends: &mut Appends<Entry>, metrics: &Metrics) {
        if appends.is_empty() {
            return;
        }
        let drained = appends.drain_into(&mut self.log);
        if drained.taken > 0 {
            self.refreshed = Some(Instant::now());
            metrics.add("pf2_event_log_appends_from_memory_total", &[], drained.taken as u64);
        }
        if drained.left > 0 {
            metrics.add("pf2_event_log_appends_left_to_read_total", &[], drained.left as u64);
        }
    }
}

impl std::fmt::Debug for EventTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows = self.windows.lock().expect("tail lock").len();
        f.debug_struct("EventTail").field("windows", &windows).finish_non_exhaustive()
    }
}

impl EventTail {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        feed: ChangeFeed,
        batch_window: std::time::Duration,
    ) -> Self {
        Self {
            store,
            metrics,
            feed,
            batch_window,
            windows: Mutex::default(),
            behind_turns: Semaphore::new(BEHIND_READS),
            pages: Mutex::default(),
        }
    }

    /// A hold on `tenant`'s window (made on first use, dropped with its last reader).
    pub fn reader(&self, tenant: &str) -> TailReader {
        let mut windows = self.windows.lock().expect("tail lock");
        if let Some(window) = windows.get(tenant).and_then(Weak::upgrade) {
            return TailReader { window };
        }
        windows.retain(|_, w| w.strong_count() > 0);
        let window = Arc::new(Window {
            tenant: tenant.to_string(),
            span: RwLock::default(),
            appends: Mutex::new(Appends::new(WINDOW_EVENTS)),
            live: Mutex::default(),
            idle: Notify::new(),
        });
        windows.insert(tenant.to_string(), Arc::downgrade(&window));
        TailReader { window }
    }

    /// Class B: send `tenant`'s events after `after` that `filter` wants into `tx`, then every
    /// new one, until the connection ends. Behind, the follower reads the log itself (in pages,
    /// waiting for room in its mailbox as any replay does); at the tail it joins the live set
    /// and the pump pushes to it. Both read the log by sequence (`seq > last given`), so the
    /// switches between them have no gap and no duplicate. A store error is sent as an
    /// `error` frame and ends the stream.
    pub async fn follow(
        self: Arc<Self>,
        tenant: String,
        mut after: u64,
        interest: Interest,
        tx: Arc<Mailbox>,
    ) {
        let reader = self.reader(&tenant);
        let window = &reader.window;
        let mut wake = self.feed.subscribe(&tenant);
        // The pump's position when it refused us: we are told of at least that much.
        let mut floor = 0;
        loop {
            // Woken by the pump, not the feed: its read was fresh.
            let told = Told { head: (*wake.borrow_and_update()).max(floor), unsure_since: None };
            let frames = match self.after(&reader, after, PAGE as usize, told).await {
                Ok(f) => f,
                Err(e) => {
                    let e = ApiError::from(e);
                    let _ =
                        tx.send(Outbound::new(ServerFrame::error(e.code, e.message, None))).await;
                    return;
                }
            };
            if frames.is_empty() {
                let joined = window.live().join(after, &interest, &tx);
                let joined = match joined {
                    Ok(j) => j,
                    Err(at) => {
                        floor = at;
                        continue;
                    }
                };
                let _member = Member { window, id: joined.id };
                if joined.start_pump {
                    tokio::spawn(self.clone().pump(reader.clone()));
                }
                tokio::select! {
                    resume = joined.behind => match resume {
                        Ok(at) => after = at,
                        Err(_) => return,
                    },
                    _ = tx.ended() => return,
                }
                continue;
            }
            for f in frames {
                let event = event_of(&f);
                after = event.sequence;
                if interest.wants(event) && tx.send(f).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The tenant's pump: while the live set has members, read what is new (once, for all of
    /// them) and push it to each; stops when the last member leaves. After a delivery it
    /// gathers for the batch window before the next, so each member's writer wakes once per
    /// window with everything new (one socket write), not once per event; a page that came
    /// back full (a burst) is delivered on at once.
    async fn pump(self: Arc<Self>, reader: TailReader) {
        let window = &reader.window;
        let mut wake = self.feed.subscribe(&window.tenant);
        let mut unsure_since = None;
        let mut gather_until = None;
        loop {
            if let Some(until) = gather_until.take() {
                tokio::time::sleep_until(until).await;
            }
            let Some(at) = window.live().pump_from() else { return };
            let told = Told { head: *wake.borrow_and_update(), unsure_since };
            match self.after(&reader, at, PAGE as usize, told).await {
                Ok(frames) if !frames.is_empty() => {
                    let fell = window.live().deliver(&frames);
                    if fell > 0 {
                        let n = fell as u64;
                        self.metrics.add("pf2_event_stream_fell_behind_total", &[], n);
                    }
                    if frames.len() < PAGE as usize && !self.batch_window.is_zero() {
                        gather_until = Some(Instant::now() + self.batch_window);
                    }
                    continue;
                }
                Ok(_) => {}
                // Each member reads for itself, and sees the error.
                Err(_) => {
                    window.live().disband();
                    continue;
                }
            }
            let waited = Instant::now();
            tokio::select! {
                woke = self.feed.wait(&mut wake, None) => match woke {
                    // Shutting down: the members sleep until their connections end (sent to
                    // read for themselves they would find the feed gone too, and spin).
                    Woke::Gone => return window.live().stop_pump(),
                    woke => unsure_since = (woke == Woke::Timer).then_some(waited),
                },
                _ = window.idle.notified() => {}
            }
        }
    }

    /// Events after `after`, at most `limit`, in order, as shared `event` frames; fewer than
    /// `limit` only when there are no more up to the position the reader was told of. From
    /// memory when the window holds them; otherwise one store read that every reader at the
    /// tail shares. Below retention: `SNAPSHOT_REQUIRED`.
    pub async fn after(
        &self,
        reader: &TailReader,
        after: u64,
        limit: usize,
        told: Told,
    ) -> Result<Vec<Arc<Outbound>>, StoreError> {
        let window = &reader.window;
        if let Some(out) = window.span.read().await.serve(after, limit, told) {
            return Ok(out);
        }
        let page = (limit as i64).max(PAGE);
        let mut span = window.span.write().await;
        if !span.log.is_known() {
            // A cold window starts where its first reader is.
            let rows = self.behind(&window.tenant, after, told, page).await?;
            let full = rows.len() as i64 == page;
            span.log.start_at(after);
            span.extend(rows.to_vec(), full, told.head);
        }
        // At the tail, behind the news: take in what this process appended meanwhile, and read
        // the rest, once, for everyone — until the window holds what this reader was told of,
        // or a full answer for it.
        while span.log.covers(after) {
            span.absorb(&mut window.appends(), &self.metrics);
            if let Some(out) = span.serve(after, limit, told) {
                return Ok(out);
            }
            let out = span.slice(after, limit);
            if out.len() >= limit {
                return Ok(out);
            }
            let rows = self.read(&window.tenant, span.log.end(), page, "tail").await?;
            let full = rows.len() as i64 == page;
            span.extend(rows, full, told.head);
        }
        // The window moved past this reader while growing (a burst larger than it).
        drop(span);
        let rows = self.behind(&window.tenant, after, told, page).await?;
        Ok(rows.iter().take(limit).cloned().collect())
    }

    /// A page after `after` for readers behind the window, refused below retention. Readers
    /// behind at the same position that were told of the same head share one read (it started
    /// after they were told, so it holds everything they were told of); at most
    /// [`BEHIND_READS`] such reads run at a time.
    async fn behind(
        &self,
        tenant: &str,
        after: u64,
        told: Told,
        page: i64,
    ) -> Result<Arc<Vec<Arc<Outbound>>>, StoreError> {
        let read = async {
            let _turn = self.behind_turns.acquire().await.expect("never closed");
            let (_, pruned) = self.store.tenant_seq(tenant).await?;
            if after < pruned {
                return Err(StoreError::new(
                    ErrorCode::SnapshotRequired,
                    format!(
                        "events up to {pruned} are past retention; take a snapshot and resume from its version"
                    ),
                ));
            }
            Ok(Arc::new(self.read(tenant, after, page, "behind").await?))
        };
        if told.unsure_since.is_some() {
            // It must see a read made after it woke: no sharing.
            return read.await;
        }
        let key = (tenant.to_string(), after, told.head, page);
        let cell = {
            let mut pages = self.pages.lock().expect("tail lock");
            match pages.get(&key).and_then(Weak::upgrade) {
                Some(cell) => cell,
                None => {
                    pages.retain(|_, c| c.strong_count() > 0);
                    let cell = Arc::new(PageRead::new());
                    pages.insert(key, Arc::downgrade(&cell));
                    cell
                }
            }
        };
        Ok(cell.get_or_try_init(|| read).await?.clone())
    }

    /// Events this process just appended to `tenant`'s log, committed, with `prev` the last
    /// event before them (none lies between). A window that holds the log up to `prev` takes
    /// them as if it had read them — a live subscriber's next event costs no store read. Never
    /// waits: while readers hold the window, the events are kept for the next one that holds
    /// it for writing (which takes them instead of reading), so the publisher is not queued
    /// behind readers and a busy window does not turn into a store read per append.
    pub fn appended(&self, tenant: &str, prev: u64, events: Vec<WireEvent>) {
        let Some(window) =
            self.windows.lock().expect("tail lock").get(tenant).and_then(Weak::upgrade)
        else {
            return;
        };
        let frames: Vec<Entry> = events
            .into_iter()
            .map(|event| Entry(Outbound::new(ServerFrame::Event { event })))
            .collect();
        if frames.is_empty() {
            return;
        }
        match window.span.try_write() {
            Ok(mut span) => {
                let mut appends = window.appends();
                appends.push(prev, frames);
                span.absorb(&mut appends, &self.metrics);
            }
            Err(_) => {
                if !window.appends().push(prev, frames) {
                    self.metrics.inc("pf2_event_log_appends_left_to_read_total", &[]);
                }
                self.metrics.inc("pf2_event_log_appends_kept_while_busy_total", &[]);
            }
        }
    }

    async fn read(
        &self,
        tenant: &str,
        after: u64,
        page: i64,
        why: &'static str,
    ) -> Result<Vec<Arc<Outbound>>, StoreError> {
        self.metrics.inc("pf2_event_log_reads_total", &[("reader", why)]);
        let rows = self.store.events_after(tenant, after, page).await?;
        Ok(rows.into_iter().map(|e| Outbound::new(ServerFrame::Event { event: e.event })).collect())
    }
}
