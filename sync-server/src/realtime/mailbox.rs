//! One connection's outbound queue: bounded, shared by the hub (fan-out) and the connection's own
//! session (replies, event replay), drained by the connection's writer.
//!
//! Why not a tokio `mpsc` plus `watch`es: an idle connection would carry a 32-slot block per
//! channel and a shared cell per watch (≈ 2 KB in all, measured with massif). The mailbox is one
//! allocation of ≈ 150 bytes; its queue allocates only while frames wait, and is released when it
//! drains.
//!
//! Rules:
//! - Fan-out ([`Mailbox::offer`]) never waits: when the queue is full the connection is a slow
//!   consumer, the mailbox is killed, and the writer stops at once.
//! - Replies and replay ([`Mailbox::send`]) wait for room, and only ever fill half the queue, so a
//!   connection busy replaying events still has room for fan-out and is not mistaken for a slow
//!   consumer.
//! - A close request ([`Mailbox::close`]) lets the frames already queued go out first.

use super::outbound::{Outbound, Run};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Why the server closes a connection: the WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

/// What [`Mailbox::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// The queue was full: the connection is now killed (reported once; later offers are
    /// `Closed`).
    Full,
    /// The connection is gone or going.
    Closed,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    Frame(Arc<Outbound>),
    /// Several frames queued together (an event stream's delivery round), in order.
    Run(Arc<Run>),
    /// A slow consumer: stop without writing anything more.
    Killed,
    /// Everything queued is out: send this close frame (if any) and stop.
    Close(Option<Closing>),
}

/// One item of the queue: a frame, or a run of frames shared with other connections.
#[derive(Debug)]
pub enum Queued {
    One(Arc<Outbound>),
    Run(Arc<Run>),
}

impl From<Queued> for Next {
    fn from(q: Queued) -> Self {
        match q {
            Queued::One(f) => Next::Frame(f),
            Queued::Run(r) => Next::Run(r),
        }
    }
}

impl Queued {
    fn frames(&self) -> usize {
        match self {
            Queued::One(_) => 1,
            Queued::Run(r) => r.frames.len(),
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    queue: VecDeque<Queued>,
    /// Frames waiting (a run counts each of its frames): what the capacity bounds.
    frames: usize,
    killed: bool,
    /// The session ended; with `Some` the server closes with this code.
    closing: Option<Option<Closing>>,
}

#[derive(Debug)]
pub struct Mailbox {
    slots: Mutex<Slots>,
    /// Wakes the writer (a frame, a kill, a close). One waiter: `notify_one` keeps a permit.
    ready: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    /// Wakes whoever waits for the end ([`Mailbox::ended`]): a kill or a close.
    end: Notify,
    capacity: usize,
}

/// A queue that grew this large is released once it drains.
const KEEP_CAPACITY: usize = 8;

impl Slots {
    fn push(&mut self, q: Queued) {
        self.frames += q.frames();
        self.queue.push_back(q);
    }
}

impl Mailbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
            end: Notify::new(),
            capacity: capacity.max(2),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().expect("mailbox lock")
    }

    /// Fan-out: queue without waiting; a full queue kills the connection.
    pub fn offer(&self, frame: Arc<Outbound>) -> Offered {
        let mut s = self.lock();
        if s.killed || s.closing.is_some() {
            return Offered::Closed;
        }
        if s.frames >= self.capacity {
            s.killed = true;
            drop(s);
            self.ready.notify_one();
            self.room.notify_waiters();
            self.end.notify_waiters();
            return Offered::Full;
        }
        s.push(Queued::One(frame));
        drop(s);
        self.ready.notify_one();
        Offered::Queued
    }

    /// A stream's pump delivering `run` (events this connection wants, in order) under one
    /// lock: queued as one item while the queue stays within half its capacity (the share
    /// [`Mailbox::send`] uses); otherwise as many of its frames as fit there. Never waits and
    /// never kills — an event stream that cannot take more reads the durable log itself
    /// instead. Returns how many of the run's frames were queued; 0 when the connection is
    /// going.
    pub fn push_shared(&self, run: &Arc<Run>) -> usize {
        let mut s = self.lock();
        if s.killed || s.closing.is_some() {
            return 0;
        }
        let half = self.capacity / 2;
        let n = run.frames.len();
        let queued = if s.frames + n <= half {
            s.push(match n {
                1 => Queued::One(run.frames[0].clone()),
                _ => Queued::Run(run.clone()),
            });
            n
        } else {
            let fit = half.saturating_sub(s.frames).min(n);
            for f in &run.frames[..fit] {
                s.push(Queued::One(f.clone()));
            }
            fit
        };
        drop(s);
        if queued > 0 {
            self.ready.notify_one();
        }
        queued
    }

    /// A reply or a replayed event: waits until the queue is less than half full. Errs when the
    /// connection is gone.
    pub async fn send(&self, frame: Arc<Outbound>) -> Result<(), Arc<Outbound>> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut s = self.lock();
                if s.killed || s.closing.is_some() {
                    return Err(frame);
                }
                if s.frames < self.capacity / 2 {
                    s.push(Queued::One(frame));
                    drop(s);
                    self.ready.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Ask the writer to finish: queued frames first, then `closing`'s close frame (none: the
    /// peer already closed).
    pub fn close(&self, closing: Option<Closing>) {
        let mut s = self.lock();
        if s.closing.is_none() {
            s.closing = Some(closing);
        }
        drop(s);
        self.ready.notify_one();
        self.room.notify_waiters();
        self.end.notify_waiters();
    }

    /// The peer closed or went away: what is queued can no longer be sent, so drop it; the
    /// writer finishes at once (answering the peer's Close, if it sent one).
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.queue.clear();
        s.frames = 0;
        drop(s);
        self.close(None);
    }

    /// Resolves once the connection is killed or asked to close (for tasks that live as long
    /// as the connection, beside its writer).
    pub async fn ended(&self) {
        loop {
            let notified = self.end.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ending() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the connection was killed or asked to close.
    pub fn ending(&self) -> bool {
        let s = self.lock();
        s.killed || s.closing.is_some()
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Whether the hub killed this connection as a slow consumer.
    pub fn killed(&self) -> bool {
        self.lock().killed
    }

    /// The next thing to write, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut s = self.lock();
        if s.killed {
            return Some(Next::Killed);
        }
        let Some(q) = self.pop(&mut s) else { return s.closing.map(Next::Close) };
        Some(q.into())
    }

    /// Frames ready to write after the one [`Mailbox::next`] gave, up to `max` frames (a run
    /// counts each of its frames, and is taken whole even past `max`), in order, under one lock:
    /// what a writer hands the socket in one write. Empty when the connection was killed or
    /// nothing is queued; a kill or a close request is for [`Mailbox::next`] to report.
    pub fn take_ready(&self, max: usize) -> Vec<Queued> {
        let mut s = self.lock();
        let mut ready = Vec::new();
        let mut taken = 0;
        while !s.killed && taken < max {
            let Some(q) = self.pop(&mut s) else { break };
            taken += q.frames();
            ready.push(q);
        }
        ready
    }

    /// Take the oldest item. Senders wait only while the queue is at least half full, so only a
    /// pop from there can give one of them room.
    fn pop(&self, s: &mut Slots) -> Option<Queued> {
        let q = s.queue.pop_front()?;
        let was = s.frames;
        s.frames -= q.frames();
        if s.queue.is_empty() && s.queue.capacity() > KEEP_CAPACITY {
            s.queue = VecDeque::new();
        }
        if was >= self.capacity / 2 {
            self.room.notify_waiters();
        }
        Some(q)
    }

    /// The next thing to write, waiting for it. Only the connection's writer calls this.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(n) = self.try_next() {
                return n;
            }
            self.ready.notified().await;
        }
    }

    /// Resolves when the mailbox is killed (for a writer blocked on a slow socket). Waits on
    /// the end signal, not the writer's: frames offered during a write must not wake it.
    pub async fn until_killed(&self) {
        loop {
            let notified = self.end.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.killed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdk_core::protocol::ServerFrame;

    fn frame(n: u64) -> Arc<Outbound> {
        Outbound::new(ServerFrame::Poke { version: n })
    }

    fn poke(n: Option<Next>) -> Option<u64> {
        match n {
            Some(Next::Frame(f)) => match f.frame {
                ServerFrame::Poke { version } => Some(version),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn a_full_queue_kills_once_and_the_writer_stops() {
        let m = Mailbox::new(4);
        for i in 0..4 {
            assert_eq!(m.offer(frame(i)), Offered::Queued);
        }
        assert_eq!(m.offer(frame(9)), Offered::Full);
        assert_eq!(m.offer(frame(10)), Offered::Closed);
        assert!(matches!(m.try_next(), Some(Next::Killed)));
    }

    #[tokio::test]
    async fn replies_wait_for_room_and_leave_half_for_fan_out() {
        let m = Mailbox::new(4);
        m.send(frame(1)).await.unwrap();
        m.send(frame(2)).await.unwrap();
        // Half full: a third reply waits, fan-out still gets in.
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.send(frame(3)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(m.offer(frame(100)), Offered::Queued);
        assert_eq!(poke(m.try_next()), Some(1));
        assert_eq!(poke(m.try_next()), Some(2));
        waiting.await.unwrap().unwrap();
        assert_eq!(poke(m.try_next()), Some(100));
        assert_eq!(poke(m.try_next()), Some(3));
        assert!(m.try_next().is_none());
    }

    #[tokio::test]
    async fn close_lets_queued_frames_out_first_and_refuses_new_ones() {
        let m = Mailbox::new(8);
        m.offer(frame(1));
        m.close(Some(Closing { code: 1008, reason: "rate limit exceeded" }));
        assert_eq!(m.offer(frame(2)), Offered::Closed);
        assert!(m.send(frame(3)).await.is_err());
        assert_eq!(poke(Some(m.next().await)), Some(1));
        assert!(matches!(m.next().await, Next::Close(Some(Closing { code: 1008, .. }))));
    }

    #[tokio::test]
    async fn a_waiting_sender_is_released_when_the_connection_closes() {
        let m = Mailbox::new(2);
        m.send(frame(1)).await.unwrap();
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.send(frame(2)).await })
        };
        tokio::task::yield_now().await;
        m.close(None);
        assert!(waiting.await.unwrap().is_err());
    }

    fn run(range: std::ops::RangeInclusive<u64>) -> Arc<Run> {
        Run::new(range.map(frame).collect())
    }

    #[test]
    fn a_pushed_run_is_one_item_within_half_then_what_fits_and_never_kills() {
        let m = Mailbox::new(8);
        assert_eq!(m.push_shared(&run(1..=3)), 3);
        assert!(matches!(m.try_next(), Some(Next::Run(r)) if r.frames.len() == 3));
        m.offer(frame(0));
        // 1 waiting, half of 8 is 4: a run of 5 does not fit whole, 3 of its frames do.
        assert_eq!(m.push_shared(&run(1..=5)), 3);
        assert!(!m.killed());
        let got: Vec<_> = std::iter::from_fn(|| poke(m.try_next())).collect();
        assert_eq!(got, [0, 1, 2, 3]);
        // A run of one is queued as its frame.
        assert_eq!(m.push_shared(&run(7..=7)), 1);
        assert_eq!(poke(m.try_next()), Some(7));
        m.close(None);
        assert_eq!(m.push_shared(&run(1..=2)), 0);
    }

    #[test]
    fn a_run_counts_each_of_its_frames_against_the_capacity() {
        let m = Mailbox::new(8);
        assert_eq!(m.push_shared(&run(1..=4)), 4);
        for i in 0..4 {
            assert_eq!(m.offer(frame(i)), Offered::Queued);
        }
        assert_eq!(m.offer(frame(9)), Offered::Full);
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let m = Mailbox::new(64);
        for i in 0..40 {
            m.offer(frame(i));
        }
        while m.try_next().is_some() {}
        assert_eq!(m.lock().queue.capacity(), 0);
    }
}
