//! Message budgets: the server's per-connection rate limit (a token bucket) and the client's
//! mirror of it, which waits and coalesces instead of overspending.
//!
//! The server meters a connection with a [`Bucket`]: `limit` tokens, refilled continuously over
//! `window_ms`, one token per frame. The client keeps the same bucket for its side of the link,
//! started full when the link opens (as the server's is), and sends through a [`Pacer`]: what it
//! wants to send is a [`Slot`], and wanting a slot that already waits adds nothing — ten local
//! edits of one document while the budget is short become one sync message, pending operations
//! one push, presence its latest value. A slot is granted when the bucket holds a token beyond a
//! small reserve (what covers the difference between the two clocks and the network's jitter),
//! so the client never meets the server's limit and latency grows smoothly as the budget
//! tightens. Nothing that carries data is dropped: a granted slot is built at grant time from
//! everything pending, and every wanted slot is granted eventually.
//!
//! What a frame costs: one token, except a *reply*. Every whole `doc_sync` message the server
//! sends a connection gives it a ticket for that document (at most [`REPLY_TICKETS`] held); a
//! `doc_sync` that is one whole message carrying no changes — Automerge's acknowledgement of what
//! it received — spends a ticket instead of a token. So the protocol's own round trips are not
//! charged to a peer that only watches, while a client that floods empty sync messages has no
//! tickets to spend: the server sent it nothing to answer. Client and server apply the same rule
//! ([`Tickets::charge`]), so the mirror stays exact; the server grants a ticket when it queues the
//! message, the client when it receives it, so the client never believes in a ticket the server
//! does not hold.
//!
//! Exact integer arithmetic (no floats): credit is kept in token-milliseconds — a token is
//! `window_ms` of credit and the bucket gains `limit` credit per millisecond.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};

/// `limit` messages per `window_ms`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    pub limit: u32,
    pub window_ms: u64,
}

impl Rate {
    pub const fn per_minute(limit: u32) -> Self {
        Self { limit, window_ms: 60_000 }
    }

    pub const fn per_second(limit: u32) -> Self {
        Self { limit, window_ms: 1_000 }
    }

    fn capacity(self) -> u64 {
        u64::from(self.limit).saturating_mul(self.window_ms)
    }
}

/// api.md's realtime limit: 100 messages a minute per connection.
pub const WS_RATE: Rate = Rate::per_minute(100);

/// Reply tickets a connection holds per document, at most (see the module documentation).
pub const REPLY_TICKETS: u8 = 4;

/// The number of changes an Automerge sync message carries (`None`: not a sync message). Reads
/// only the message's header — heads, needs, haves and the change count — with every length
/// checked against the input, so any bytes are safe to give it.
pub fn sync_message_changes(bytes: &[u8]) -> Option<u64> {
    fn uleb(b: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            value |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn skip(b: &mut &[u8], n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        *b = b.get(n..)?;
        Some(())
    }
    fn hashes(b: &mut &[u8]) -> Option<()> {
        let n = uleb(b)?;
        skip(b, n.checked_mul(32)?)
    }
    let (&kind, mut b) = bytes.split_first()?;
    if kind != 0x42 && kind != 0x43 {
        return None;
    }
    hashes(&mut b)?; // heads
    hashes(&mut b)?; // need
    for _ in 0..uleb(&mut b)? {
        hashes(&mut b)?; // last sync
        let bloom = uleb(&mut b)?;
        skip(&mut b, bloom)?;
    }
    uleb(&mut b)
}

/// Whether a `doc_sync` message (base64; `more`: a part) is a reply that may ride a ticket: a
/// whole message, not a part, that carries no changes (`ClientFrame::reply_to` asks this).
pub fn is_reply_message(more: bool, message: &str) -> bool {
    use base64::Engine as _;
    // An acknowledgement is a few hundred bytes; anything larger is not one.
    if more || message.len() > 4 * 1024 {
        return false;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(message);
    bytes.is_ok_and(|b| sync_message_changes(&b) == Some(0))
}

/// Reply tickets by document (see the module documentation): the server's and the client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tickets(std::collections::BTreeMap<String, u8>);

impl Tickets {
    /// A whole sync message for `doc` went to (server) or came from (client) the peer.
    pub fn grant(&mut self, doc: &str) {
        match self.0.get_mut(doc) {
            Some(n) => *n = (*n + 1).min(REPLY_TICKETS),
            None => {
                self.0.insert(doc.to_string(), 1);
            }
        }
    }

    /// Spend a ticket of `doc`, if one is held.
    pub fn take(&mut self, doc: &str) -> bool {
        let Some(n) = self.0.get_mut(doc) else { return false };
        *n -= 1;
        if *n == 0 {
            self.0.remove(doc);
        }
        true
    }

    /// Forget `doc`'s tickets (it was closed).
    pub fn forget(&mut self, doc: &str) {
        self.0.remove(doc);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// What a frame costs: 0 for a reply (`reply_to`: the document it answers, see
    /// `ClientFrame::reply_to`) on a ticket, which it spends; else 1. The server's meter and the
    /// client's mirror both ask this.
    pub fn charge(&mut self, reply_to: Option<&str>) -> u32 {
        match reply_to {
            Some(doc) if self.take(doc) => 0,
            _ => 1,
        }
    }
}

/// A token bucket (see the module documentation). The server's and the client's are this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Token-milliseconds; a token is `window_ms` of them.
    credit: u64,
    at_ms: u64,
}

impl Bucket {
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Self { credit: rate.capacity(), at_ms: now_ms }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let gained = elapsed.saturating_mul(u64::from(rate.limit));
        self.credit = self.credit.saturating_add(gained).min(rate.capacity());
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Whole tokens available at `now_ms`.
    pub fn available(&self, rate: Rate, now_ms: u64) -> u32 {
        let mut b = *self;
        b.refill(rate, now_ms);
        if rate.window_ms == 0 {
            return rate.limit;
        }
        (b.credit / rate.window_ms).min(u64::from(rate.limit)) as u32
    }

    /// Take `n` tokens at `now_ms`, or none: `Err(ms until they are there)` (`u64::MAX`:
    /// never — more than the bucket holds).
    pub fn take_n(&mut self, rate: Rate, now_ms: u64, n: u32) -> Result<(), u64> {
        self.refill(rate, now_ms);
        let cost = u64::from(n).saturating_mul(rate.window_ms);
        if rate.limit == 0 || n > rate.limit {
            return Err(u64::MAX);
        }
        if self.credit >= cost {
            self.credit -= cost;
            Ok(())
        } else {
            Err((cost - self.credit).div_ceil(u64::from(rate.limit)))
        }
    }

    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        self.take_n(rate, now_ms, 1)
    }

    /// Give back a token taken at `now_ms` (a frame that turned out to cost nothing).
    pub fn give(&mut self, rate: Rate, now_ms: u64) {
        self.refill(rate, now_ms);
        self.credit = self.credit.saturating_add(rate.window_ms).min(rate.capacity());
    }

    /// The instant at which `n` tokens will be there (`u64::MAX`: never).
    pub fn ready_at(&self, rate: Rate, now_ms: u64, n: u32) -> u64 {
        let mut b = *self;
        match b.take_n(rate, now_ms, n) {
            Ok(()) => now_ms.max(self.at_ms),
            Err(u64::MAX) => u64::MAX,
            Err(wait) => b.at_ms.saturating_add(wait),
        }
    }
}

impl Bucket {
    /// At most `tokens` whole tokens remain at `now_ms` (what the server said it has left).
    pub fn at_most(&mut self, rate: Rate, now_ms: u64, tokens: u32) {
        self.refill(rate, now_ms);
        let cap = u64::from(tokens).saturating_mul(rate.window_ms);
        self.credit = self.credit.min(cap);
    }

    fn empty(&mut self, rate: Rate, now_ms: u64) {
        self.at_most(rate, now_ms, 0);
    }
}

/// A REST budget of api.md's rate limits (per user, token buckets on the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// `POST /api/reconciliation/reconcile`: 10 a minute.
    Reconcile,
    /// The long-polling lane — the event poll, deltas, document sync: 60 a minute.
    Poll,
    /// `POST /api/transactions`: 60 a minute.
    Transactions,
}

impl Lane {
    /// The budget a request spends, if any.
    pub fn of(method: &str, path: &str) -> Option<Lane> {
        let path = path.split('?').next().unwrap_or(path);
        match (method, path) {
            ("POST", "/api/reconciliation/reconcile") => Some(Lane::Reconcile),
            ("POST", "/api/transactions") => Some(Lane::Transactions),
            ("GET", "/api/reconciliation/delta" | "/api/events/poll") => Some(Lane::Poll),
            ("POST", p) if p.starts_with("/api/documents/") && p.ends_with("/sync") => {
                Some(Lane::Poll)
            }
            _ => None,
        }
    }

    /// api.md's limit, until the server's headers say otherwise.
    pub fn default_rate(self) -> Rate {
        match self {
            Lane::Reconcile => Rate::per_minute(10),
            Lane::Poll | Lane::Transactions => Rate::per_minute(60),
        }
    }
}

/// What an answer said about its lane: `RateLimit-Policy` (`10;w=60`), `RateLimit-Remaining`,
/// and a 429's `Retry-After` seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub policy: Option<String>,
    pub remaining: Option<u32>,
    pub retry_after_s: Option<u64>,
}

#[derive(Debug, Clone)]
struct LaneBudget {
    rate: Rate,
    bucket: Bucket,
    /// A 429 said: nothing before this.
    closed_until: u64,
}

/// The client's mirror of its REST budgets: a request waits until its lane has a token, every
/// answer's headers correct the mirror (the server's bucket is per user — every tab and device
/// of the user spends it), and a 429 closes the lane for its `Retry-After`, so a refused request
/// is sent again once, when the server said, never in a storm.
#[derive(Debug, Clone, Default)]
pub struct RestPacer {
    lanes: std::collections::BTreeMap<Lane, LaneBudget>,
}

impl RestPacer {
    fn lane(&mut self, lane: Lane, now_ms: u64) -> &mut LaneBudget {
        self.lanes.entry(lane).or_insert_with(|| LaneBudget {
            rate: lane.default_rate(),
            bucket: Bucket::full(lane.default_rate(), now_ms),
            closed_until: 0,
        })
    }

    /// A request on `lane` at `now_ms`: its token is taken, or `Err(ms to wait)`.
    pub fn take(&mut self, lane: Lane, now_ms: u64) -> Result<(), u64> {
        let l = self.lane(lane, now_ms);
        if now_ms < l.closed_until {
            return Err(l.closed_until - now_ms);
        }
        l.bucket.take(l.rate, now_ms)
    }

    /// The answer to a request on `lane` arrived at `now_ms` with `status` and `headers`.
    pub fn answered(&mut self, lane: Lane, now_ms: u64, status: u16, headers: &RateHeaders) {
        let l = self.lane(lane, now_ms);
        let announced = headers.policy.as_deref().and_then(parse_policy);
        if let Some(rate) = announced.filter(|r| *r != l.rate && r.limit > 0 && r.window_ms > 0) {
            l.rate = rate;
            l.bucket = Bucket::full(rate, now_ms);
        }
        if let Some(n) = headers.remaining {
            l.bucket.at_most(l.rate, now_ms, n);
        }
        if status == 429 {
            l.bucket.empty(l.rate, now_ms);
            let wait = headers.retry_after_s.unwrap_or(1).clamp(1, 3_600) * 1_000;
            l.closed_until = now_ms.saturating_add(wait);
        }
    }
}

/// `10;w=60` → 10 per 60 s.
fn parse_policy(p: &str) -> Option<Rate> {
    let (limit, rest) = p.split_once(';')?;
    let window = rest.trim().strip_prefix("w=")?;
    let window_s: u64 = window.trim().parse().ok()?;
    Some(Rate { limit: limit.trim().parse().ok()?, window_ms: window_s.checked_mul(1_000)? })
}

/// Something the client wants to send, coalesced with everything of its kind that waits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The pending operations: one push carries all of them (up to a batch).
    Push,
    /// A pull of what changed since the cursor.
    Pull,
    /// The event subscription (re-sent on a new link).
    Subscribe,
    /// One document's sync message: all its local edits so far.
    Doc(String),
    /// One room's presence: the latest value wins.
    Presence(String),
    /// A frame that merges with nothing (a room message, a join): each is sent, in order.
    /// The caller numbers them.
    Frame(u64),
    /// A heartbeat; only when nothing else proves the link alive.
    Ping,
}

/// The client's side of a connection's budget (see the module documentation).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Rate,
    reserve: u32,
    bucket: Bucket,
    /// Waiting slots, oldest first; each at most once.
    order: VecDeque<Slot>,
    waiting: BTreeSet<Slot>,
    sent: u64,
    /// Reply tickets the server's messages gave this link.
    tickets: Tickets,
    /// Grants in a row that went to data while a presence update waited ahead of it.
    presence_yields: u32,
}

/// A waiting presence update lets this many data frames (a document's edits, a push) go first,
/// then goes: while the budget is short, typing reaches the others sooner, and presence — whose
/// latest value is all that counts — is late by at most this many grants.
pub const PRESENCE_YIELDS: u32 = 6;

impl Pacer {
    /// A budget of `rate`, spending at most `rate.limit - reserve` in a burst (the reserve is
    /// clamped to leave at least one token).
    pub fn new(rate: Rate, now_ms: u64) -> Self {
        Self {
            rate,
            reserve: Self::reserve_for(rate),
            bucket: Bucket::full(rate, now_ms),
            order: VecDeque::new(),
            waiting: BTreeSet::new(),
            sent: 0,
            tickets: Tickets::default(),
            presence_yields: 0,
        }
    }

    /// A tenth of the limit, at least one token when the limit allows, and never all of it.
    fn reserve_for(rate: Rate) -> u32 {
        (rate.limit / 10).max(1).min(rate.limit.saturating_sub(1))
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// A new link (the server's bucket starts full), possibly with the limit it announced.
    /// What was waiting still waits.
    pub fn reset(&mut self, rate: Rate, now_ms: u64) {
        self.rate = rate;
        self.reserve = Self::reserve_for(rate);
        self.bucket = Bucket::full(rate, now_ms);
        self.tickets.clear();
    }

    /// A whole `doc_sync` message for `doc` arrived: one reply to it may be free.
    pub fn ticket(&mut self, doc: &str) {
        self.tickets.grant(doc);
    }

    /// The frames built for a slot just granted at `now_ms` (its grant paid one token), each
    /// as the document it answers if it is a reply (`ClientFrame::reply_to`): each one after
    /// the first is spent, and a reply on a ticket gives its token back — the same
    /// [`Tickets::charge`] the server applies. `false` if the budget was short of a frame.
    pub fn sent(&mut self, now_ms: u64, replies: &[Option<&str>]) -> bool {
        let mut within = true;
        for (i, reply) in replies.iter().enumerate() {
            match (i, self.tickets.charge(*reply)) {
                (0, 0) => self.bucket.give(self.rate, now_ms),
                (0, _) | (_, 0) => {}
                _ => within &= self.spend(now_ms),
            }
        }
        within
    }

    /// The server announced its limit (in `connected`): adopt it, keeping what this link has
    /// already spent.
    pub fn set_rate(&mut self, rate: Rate, now_ms: u64) {
        if rate == self.rate {
            return;
        }
        let spent = self.rate.limit.saturating_sub(self.bucket.available(self.rate, now_ms));
        self.rate = rate;
        self.reserve = Self::reserve_for(rate);
        self.bucket = Bucket::full(rate, now_ms);
        let _ = self.bucket.take_n(rate, now_ms, spent.min(rate.limit));
    }

    /// Ask to send `slot`; `false` when it was already waiting (coalesced).
    pub fn want(&mut self, slot: Slot) -> bool {
        if !self.waiting.insert(slot.clone()) {
            return false;
        }
        self.order.push_back(slot);
        true
    }

    /// Whether `slot` waits.
    pub fn is_waiting(&self, slot: &Slot) -> bool {
        self.waiting.contains(slot)
    }

    /// Nothing waits.
    pub fn is_idle(&self) -> bool {
        self.order.is_empty()
    }

    /// Forget a waiting slot (what it would carry is gone, or the link is).
    pub fn cancel(&mut self, slot: &Slot) {
        if self.waiting.remove(slot) {
            self.order.retain(|s| s != slot);
        }
    }

    /// Forget everything waiting (the link went down: what is still needed is wanted again
    /// on the next one).
    pub fn clear(&mut self) {
        self.order.clear();
        self.waiting.clear();
    }

    /// The next slot to send now, its token taken, if the budget allows: the oldest waiting
    /// (a presence update yielding to data up to [`PRESENCE_YIELDS`] times), a heartbeat only
    /// when nothing else waits. The caller builds its frame at once.
    pub fn poll_grant(&mut self, now_ms: u64) -> Option<Slot> {
        let presence = self.order.iter().position(|s| matches!(s, Slot::Presence(_)));
        let data = self.order.iter().position(|s| !matches!(s, Slot::Ping | Slot::Presence(_)));
        // Presence (best effort, its latest value wins) yields to data a few times in a row.
        let yields = matches!((presence, data), (Some(p), Some(d)) if p < d)
            && self.presence_yields < PRESENCE_YIELDS;
        let i = match (presence, data) {
            (Some(_), Some(d)) if yields => d,
            (Some(p), Some(d)) => p.min(d),
            (Some(i), None) | (None, Some(i)) => i,
            (None, None) if self.order.is_empty() => return None,
            (None, None) => 0,
        };
        if self.bucket.available(self.rate, now_ms) <= self.reserve {
            return None;
        }
        self.bucket.take(self.rate, now_ms).ok()?;
        let slot = self.order.remove(i).expect("in range");
        match &slot {
            Slot::Presence(_) => self.presence_yields = 0,
            _ if yields => self.presence_yields += 1,
            _ => {}
        }
        self.waiting.remove(&slot);
        if slot != Slot::Ping {
            // Other traffic proves the link alive.
            self.cancel(&Slot::Ping);
        }
        self.sent += 1;
        Some(slot)
    }

    /// A frame that had to go out without asking (it cannot wait, e.g. a reply the protocol
    /// requires): counted, so the mirror stays true. `false` if the budget was already spent.
    pub fn spend(&mut self, now_ms: u64) -> bool {
        self.sent += 1;
        self.bucket.take(self.rate, now_ms).is_ok()
    }

    /// When [`Pacer::poll_grant`] will next grant something (`None`: nothing waits). The
    /// instant is at or after the last one the pacer was given.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.order.is_empty() {
            return None;
        }
        Some(self.bucket.ready_at(self.rate, self.bucket.at_ms, self.reserve + 1))
    }

    /// Frames sent through this pacer (granted or spent).
    pub fn frames_sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bucket_refills_continuously_and_says_how_long_to_wait() {
        let rate = Rate::per_minute(100);
        let mut b = Bucket::full(rate, 0);
        for _ in 0..100 {
            b.take(rate, 0).unwrap();
        }
        // One token every 600 ms.
        assert_eq!(b.take(rate, 0), Err(600));
        assert_eq!(b.take(rate, 599), Err(1));
        assert_eq!(b.take(rate, 600), Ok(()));
        assert_eq!(b.available(rate, 600 + 6_000), 10);
        assert_eq!(b.take_n(rate, 0, 101), Err(u64::MAX));
        assert_eq!(b.ready_at(rate, 600, 2), 1_800);
    }

    #[test]
    fn wanting_what_already_waits_coalesces_and_a_ping_yields_to_traffic() {
        let mut p = Pacer::new(Rate::per_minute(20), 0);
        // Spend the burst (20 less the reserve of 2).
        for n in 0..18 {
            p.want(Slot::Frame(n));
            assert_eq!(p.poll_grant(0), Some(Slot::Frame(n)));
        }
        assert!(p.want(Slot::Ping));
        assert!(p.want(Slot::Doc("notes".into())));
        for _ in 0..10 {
            assert!(!p.want(Slot::Doc("notes".into())), "ten edits, one message");
        }
        assert_eq!(p.poll_grant(0), None, "only the reserve is left");
        let at = p.poll_timeout().unwrap();
        assert_eq!(at, 3_000, "a token every 3 s");
        assert_eq!(p.poll_grant(at), Some(Slot::Doc("notes".into())));
        assert!(p.is_idle(), "the document's message proved the link: no ping");
    }

    #[test]
    fn presence_yields_to_data_a_few_times_then_goes() {
        let mut p = Pacer::new(Rate::per_minute(100), 0);
        p.want(Slot::Presence("room".into()));
        for n in 0..10 {
            p.want(Slot::Frame(n));
        }
        let order: Vec<Slot> = std::iter::from_fn(|| p.poll_grant(0)).collect();
        let at = order.iter().position(|s| matches!(s, Slot::Presence(_)));
        assert_eq!(at, Some(PRESENCE_YIELDS as usize), "{order:?}");
        assert_eq!(order.len(), 11, "everything goes");
    }

    #[test]
    fn rest_lanes_wait_for_tokens_follow_the_headers_and_honour_retry_after() {
        assert_eq!(Lane::of("POST", "/api/reconciliation/reconcile"), Some(Lane::Reconcile));
        assert_eq!(Lane::of("GET", "/api/events/poll?wait=25&documents=a@1"), Some(Lane::Poll));
        assert_eq!(Lane::of("POST", "/api/documents/sync"), Some(Lane::Poll));
        assert_eq!(Lane::of("POST", "/api/documents/notes/sync"), Some(Lane::Poll));
        assert_eq!(Lane::of("GET", "/api/documents/notes/snapshot"), None);
        let mut p = RestPacer::default();
        for _ in 0..10 {
            p.take(Lane::Reconcile, 0).unwrap();
        }
        assert_eq!(p.take(Lane::Reconcile, 0), Err(6_000), "10 a minute: one every 6 s");
        // Another tab of the user spent the poll lane: the server's headers say so.
        let spent =
            RateHeaders { policy: Some("60;w=60".into()), remaining: Some(0), retry_after_s: None };
        p.answered(Lane::Poll, 0, 200, &spent);
        assert_eq!(p.take(Lane::Poll, 0), Err(1_000));
        // A 429 closes the lane for its Retry-After, whatever the mirror believed.
        let refused = RateHeaders { retry_after_s: Some(7), ..RateHeaders::default() };
        p.answered(Lane::Transactions, 0, 429, &refused);
        assert_eq!(p.take(Lane::Transactions, 6_999), Err(1));
        assert_eq!(p.take(Lane::Transactions, 7_000), Ok(()));
        // An operator's limit, announced in the policy header, is adopted.
        let tight =
            RateHeaders { policy: Some("2;w=60".into()), remaining: Some(1), ..Default::default() };
        p.answered(Lane::Transactions, 7_000, 200, &tight);
        assert_eq!(p.take(Lane::Transactions, 7_000), Ok(()));
        assert_eq!(p.take(Lane::Transactions, 7_000), Err(30_000));
        assert_eq!(parse_policy("garbage"), None);
        assert_eq!(parse_policy("10;w=x"), None);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A local edit that needs this slot sent.
        Edit(u8),
        /// Time passes.
        Wait(u16),
        /// Others' change reached this document: the server sends a message with a ticket.
        Heard(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..6).prop_map(Step::Edit),
            1 => (0u16..5_000).prop_map(Step::Wait),
            1 => any::<bool>().prop_map(Step::Heard),
        ]
    }

    fn slot(n: u8) -> Slot {
        match n {
            0 => Slot::Push,
            1 => Slot::Pull,
            2 => Slot::Doc("a".into()),
            3 => Slot::Doc("b".into()),
            4 => Slot::Presence("room".into()),
            _ => Slot::Ping,
        }
    }

    proptest! {
        /// For any schedule of local edits and any limit: the server's bucket (the same rule,
        /// the frames arriving up to `jitter` ms late, within what the reserve covers) never
        /// refuses a frame, and every edit
        /// reaches the server — carried by a frame of its slot granted after it was made.
        /// Documents' acknowledgements that ride the server's tickets are free on both sides.
        #[test]
        fn the_client_never_exceeds_the_budget_and_every_edit_reaches_the_server(
            limit in 2u32..200,
            window_s in 1u64..120,
            steps in proptest::collection::vec(step(), 1..300),
            jitter in 0u64..500,
            seed in any::<u64>(),
        ) {
            let rate = Rate { limit, window_ms: window_s * 1_000 };
            let mut pacer = Pacer::new(rate, 0);
            // The reserve covers this much compression of the frames' spacing on the way.
            let covered = u64::from(Pacer::reserve_for(rate)) * rate.window_ms / u64::from(limit);
            let jitter = jitter.min(covered);
            // The server's bucket and reply tickets.
            let mut server = (Bucket::full(rate, 0), Tickets::default());
            let mut now = 0u64;
            let mut rng = crate::rng::SplitMix64::new(seed);
            // Edits not yet carried by a granted frame, per slot.
            let mut unsent: std::collections::BTreeMap<Slot, u32> = Default::default();
            // The frame arrives and is charged as the server charges it.
            let arrive = |now: u64, rng: &mut crate::rng::SplitMix64, server: &mut (Bucket, Tickets), reply: Option<&str>| {
                // Never earlier than the previous frame (one ordered link).
                let at = (now + rng.range(0, jitter)).max(server.0.at_ms);
                match server.1.charge(reply) {
                    0 => true,
                    n => server.0.take_n(rate, at, n).is_ok(),
                }
            };
            let grant_all = |now: u64, pacer: &mut Pacer, unsent: &mut std::collections::BTreeMap<Slot, u32>, rng: &mut crate::rng::SplitMix64, server: &mut (Bucket, Tickets)| -> Result<(), TestCaseError> {
                while let Some(s) = pacer.poll_grant(now) {
                    // A document's message is built now: an acknowledgement when no local
                    // edit waits in it (or, at random, anyway: the shell may answer with one).
                    let reply = match &s {
                        Slot::Doc(d) if !(unsent.contains_key(&s) && rng.range(0, 4) > 0) => Some(d.as_str()),
                        _ => None,
                    };
                    prop_assert!(pacer.sent(now, &[reply]));
                    prop_assert!(arrive(now, rng, server, reply), "the server refused a paced frame");
                    unsent.remove(&s);
                    if s != Slot::Ping {
                        unsent.remove(&Slot::Ping);
                    }
                }
                Ok(())
            };
            for s in &steps {
                match s {
                    Step::Edit(n) => {
                        let sl = slot(*n);
                        pacer.want(sl.clone());
                        *unsent.entry(sl).or_default() += 1;
                    }
                    Step::Wait(ms) => now += u64::from(*ms),
                    Step::Heard(b) => {
                        // The server grants its ticket as it queues the message; the client
                        // receives it and answers (wanting the document's slot).
                        let doc = if *b { "a" } else { "b" };
                        server.1.grant(doc);
                        pacer.ticket(doc);
                        pacer.want(Slot::Doc(doc.into()));
                    }
                }
                grant_all(now, &mut pacer, &mut unsent, &mut rng, &mut server)?;
            }
            // Afterwards, following the pacer's own timer, everything goes out.
            let mut rounds = 0;
            while let Some(at) = pacer.poll_timeout() {
                prop_assert!(at != u64::MAX);
                let at = at.max(now);
                now = at;
                grant_all(now, &mut pacer, &mut unsent, &mut rng, &mut server)?;
                rounds += 1;
                prop_assert!(rounds < 10_000);
            }
            prop_assert!(unsent.is_empty(), "edits never sent: {unsent:?}");
        }
    }
}
