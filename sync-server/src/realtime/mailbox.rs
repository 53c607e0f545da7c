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

use super::outbound::Outbound;
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
    /// A slow consumer: stop without writing anything more.
    Killed,
    /// Everything queued is out: send this close frame (if any) and stop.
    Close(Option<Closing>),
}

#[derive(Debug, Default)]
struct Slots {
    queue: VecDeque<Arc<Outbound>>,
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
        if s.queue.len() >= self.capacity {
            s.killed = true;
            drop(s);
            self.ready.notify_one();
            self.room.notify_waiters();
            self.end.notify_waiters();
            return Offered::Full;
        }
        s.queue.push_back(frame);
        drop(s);
        self.ready.notify_one();
        Offered::Queued
    }

    /// Events pushed by a stream's pump, under one lock: in order, each of `frames` that
    /// `wants` is queued while the queue is less than half full (the share [`Mailbox::send`]
    /// uses), never waiting and never killing — an event stream that cannot take more reads
    /// the durable log itself instead. Returns how many of `frames` were dealt with (queued or
    /// not wanted) before one did not fit; 0 when the connection is going.
    pub fn push_run(
        &self,
        frames: &[Arc<Outbound>],
        mut wants: impl FnMut(&Outbound) -> bool,
    ) -> usize {
        let mut s = self.lock();
        if s.killed || s.closing.is_some() {
            return 0;
        }
        let (mut done, mut queued) = (0, false);
        for f in frames {
            if wants(f) {
                if s.queue.len() >= self.capacity / 2 {
                    break;
                }
                s.queue.push_back(f.clone());
                queued = true;
            }
            done += 1;
        }
        drop(s);
        if queued {
            self.ready.notify_one();
        }
        done
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
                if s.queue.len() < self.capacity / 2 {
                    s.queue.push_back(frame);
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
        self.lock().queue.clear();
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
        if let Some(f) = s.queue.pop_front() {
            if s.queue.is_empty() && s.queue.capacity() > KEEP_CAPACITY {
                s.queue = VecDeque::new();
            }
            drop(s);
            self.room.notify_waiters();
            return Some(Next::Frame(f));
        }
        s.closing.map(Next::Close)
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

    /// Resolves when the mailbox is killed (for a writer blocked on a slow socket).
    pub async fn until_killed(&self) {
        loop {
            if self.killed() {
                return;
            }
            self.ready.notified().await;
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

    #[test]
    fn a_pushed_run_fills_half_skips_what_is_not_wanted_and_never_kills() {
        let m = Mailbox::new(8);
        let frames: Vec<_> = (1..=10).map(frame).collect();
        // Odd ones only: 1, 3, 5, 7 fill half of 8; 9 does not fit, so 1..=8 were dealt with.
        let odd =
            |f: &Outbound| matches!(f.frame, ServerFrame::Poke { version } if version % 2 == 1);
        assert_eq!(m.push_run(&frames, odd), 8);
        assert!(!m.killed());
        let got: Vec<_> = std::iter::from_fn(|| poke(m.try_next())).collect();
        assert_eq!(got, [1, 3, 5, 7]);
        m.close(None);
        assert_eq!(m.push_run(&frames, |_| true), 0);
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
