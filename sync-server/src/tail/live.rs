//! The followers of one tenant's log that are at its tail, and what the pump gives them.
//!
//! A follower that has caught up joins the live set and sleeps. When the log grows, one task —
//! the tenant's pump — takes the new events from the window and pushes each to every member
//! whose filter wants it, straight into the member's mailbox: one task wakes per append, not
//! one per follower, and each follower's writer finds its frames already queued.
//!
//! A member whose mailbox cannot take an event without waiting (it is less than half free, see
//! [`Mailbox::push`]) is not a slow consumer to be cut off — the log is durable: it leaves the
//! set, is told the last position it was given, and reads the log itself from there, waiting
//! for room as a replay does, until it is at the tail again.
//!
//! Invariant: a member has been given, in order, every event up to its `after` that its filter
//! wants, and nothing else; `Live::at` is the position the pump has pushed to. A follower joins
//! only at or past `at`, so between its own reads and the pump's pushes there is no gap, and
//! since the pump pushes only events past each member's own position, no duplicate.

use super::{Interest, event_of};
use crate::realtime::mailbox::Mailbox;
use crate::realtime::outbound::{Outbound, Run};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Debug, Default)]
pub(super) struct Live {
    members: Vec<Member>,
    /// Each distinct interest once, so that members with the same one share their runs.
    filters: HashMap<String, Arc<Interest>>,
    next_id: u64,
    /// The position the pump has given every member (meaningful while `pumping`).
    at: u64,
    /// A pump task is running for this window.
    pumping: bool,
}

#[derive(Debug)]
struct Member {
    id: u64,
    after: u64,
    filter: Arc<Interest>,
    tx: Arc<Mailbox>,
    /// Where the follower resumes reading for itself when it falls behind.
    behind: oneshot::Sender<u64>,
}

/// A follower in the live set: `id` to leave with, `behind` resolves (with the position to
/// resume from) if it falls behind; `start_pump` when no pump runs yet.
#[derive(Debug)]
pub(super) struct Joined {
    pub id: u64,
    pub behind: oneshot::Receiver<u64>,
    pub start_pump: bool,
}

impl Live {
    /// A follower that has every event up to `after` joins; refused with the pump's position
    /// when the pump has pushed past `after` (the follower reads up to it first).
    pub fn join(
        &mut self,
        after: u64,
        filter: &Interest,
        tx: &Arc<Mailbox>,
    ) -> Result<Joined, u64> {
        if !self.pumping {
            // A new pump starts where the furthest-behind member is (members left by a pump
            // that stopped keep their own positions).
            self.at = self.members.iter().map(|m| m.after).fold(after, u64::min);
        } else if after < self.at {
            return Err(self.at);
        }
        let (behind_tx, behind) = oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        let filter = self.intern(filter);
        self.members.push(Member { id, after, filter, tx: tx.clone(), behind: behind_tx });
        let start_pump = !self.pumping;
        self.pumping = true;
        Ok(Joined { id, behind, start_pump })
    }

    fn intern(&mut self, filter: &Interest) -> Arc<Interest> {
        if self.filters.len() > 2 * self.members.len() + 16 {
            self.filters.retain(|_, f| Arc::strong_count(f) > 1);
        }
        let key = filter.key();
        self.filters.entry(key).or_insert_with(|| Arc::new(filter.clone())).clone()
    }

    /// `id` leaves; whether the set is now empty.
    pub fn leave(&mut self, id: u64) -> bool {
        if let Some(i) = self.members.iter().position(|m| m.id == id) {
            self.members.swap_remove(i);
        }
        self.members.is_empty()
    }

    /// The pump's position, or `None` (and the pump stops) when nobody is left.
    pub fn pump_from(&mut self) -> Option<u64> {
        if self.members.is_empty() {
            self.pumping = false;
            return None;
        }
        Some(self.at)
    }

    /// Give `frames` — the events after `at`, in order — to every member that wants them.
    /// Members at the same position with the same filter are given the same [`Run`] (made
    /// once, and encoded as a batch once). Returns how many members fell behind (and left).
    pub fn deliver(&mut self, frames: &[Arc<Outbound>]) -> usize {
        let Some(last) = frames.last() else { return 0 };
        let end = event_of(last).sequence;
        let mut runs: HashMap<(u64, *const Interest), Option<Arc<Run>>> = HashMap::new();
        let mut fell = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if m.after >= end {
                continue;
            }
            let run = runs.entry((m.after, Arc::as_ptr(&m.filter))).or_insert_with(|| {
                let new = &frames[frames.partition_point(|f| event_of(f).sequence <= m.after)..];
                let wanted: Vec<_> =
                    new.iter().filter(|f| m.filter.wants(event_of(f))).cloned().collect();
                (!wanted.is_empty()).then(|| Run::new(wanted))
            });
            let Some(run) = run else {
                m.after = end;
                continue;
            };
            match m.tx.push_shared(run) {
                n if n == run.frames.len() => m.after = end,
                0 => fell.push(i),
                n => {
                    m.after = event_of(&run.frames[n - 1]).sequence;
                    fell.push(i);
                }
            }
        }
        self.at = self.at.max(event_of(last).sequence);
        let n = fell.len();
        // Highest index first, so each swap_remove leaves the lower indices in place.
        for i in fell.into_iter().rev() {
            let m = self.members.swap_remove(i);
            let _ = m.behind.send(m.after);
        }
        n
    }

    /// The pump ends with members still in the set (the next follower to join starts one).
    pub fn stop_pump(&mut self) {
        self.pumping = false;
    }

    /// Everyone reads for themselves (the pump cannot go on: a store error, shutdown).
    pub fn disband(&mut self) {
        for m in self.members.drain(..) {
            let _ = m.behind.send(m.after);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::mailbox::Next;
    use sdk_core::protocol::EventFilter;
    use sdk_core::protocol::{ServerFrame, WireEvent};
    use serde_json::json;

    fn event(seq: u64, event_type: &str) -> Arc<Outbound> {
        let event: WireEvent = serde_json::from_value(json!({
            "sequence": seq,
            "eventId": format!("e{seq}"),
            "eventType": event_type,
            "tenantId": "t",
            "timestamp": "2026-12-01T00:00:00Z",
            "payload": {},
            "schemaVersion": "1.0",
        }))
        .unwrap();
        Outbound::new(ServerFrame::Event { event })
    }

    fn queued(tx: &Mailbox) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            match tx.try_next() {
                Some(Next::Frame(f)) => out.push(event_of(&f).sequence),
                Some(Next::Run(r)) => out.extend(r.frames.iter().map(|f| event_of(f).sequence)),
                _ => return out,
            }
        }
    }

    fn types(t: &[&str]) -> Interest {
        let types = t.iter().map(|s| s.to_string()).collect();
        Interest::all(EventFilter { event_types: types, ..Default::default() })
    }

    #[test]
    fn each_member_gets_what_its_filter_wants_once() {
        let mut live = Live::default();
        let (a, b) = (Mailbox::new(64), Mailbox::new(64));
        let ja = live.join(3, &Interest::all(EventFilter::default()), &a).unwrap();
        assert!(ja.start_pump);
        // Joined ahead of the pump (it read event 4 itself): 4 is not given again.
        let jb = live.join(4, &types(&["order.*"]), &b).unwrap();
        assert!(!jb.start_pump);
        let frames = [event(4, "order.paid"), event(5, "feed.item"), event(6, "order.sent")];
        assert_eq!(live.deliver(&frames), 0);
        assert_eq!(queued(&a), [4, 5, 6]);
        assert_eq!(queued(&b), [6]);
        // Delivering the same events again gives nothing twice.
        live.deliver(&frames);
        assert!(queued(&a).is_empty() && queued(&b).is_empty());
    }

    #[test]
    fn members_at_one_position_with_one_filter_share_one_run() {
        let mut live = Live::default();
        let boxes: Vec<_> = (0..3).map(|_| Mailbox::new(64)).collect();
        for b in &boxes {
            live.join(0, &types(&["feed.*"]), b).unwrap();
        }
        let other = Mailbox::new(64);
        live.join(0, &Interest::all(EventFilter::default()), &other).unwrap();
        live.deliver(&[event(1, "feed.item"), event(2, "order.paid"), event(3, "feed.item")]);
        let runs: Vec<_> = boxes
            .iter()
            .map(|b| match b.try_next() {
                Some(Next::Run(r)) => r,
                other => panic!("expected a run, got {other:?}"),
            })
            .collect();
        assert!(runs.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one run for all three");
        assert_eq!(runs[0].frames.iter().map(|f| event_of(f).sequence).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(queued(&other), [1, 2, 3]);
    }

    #[test]
    fn a_follower_behind_the_pump_is_sent_to_catch_up_first() {
        let mut live = Live::default();
        let a = Mailbox::new(64);
        live.join(0, &Interest::all(EventFilter::default()), &a).unwrap();
        live.deliver(&[event(1, "x"), event(2, "x")]);
        assert_eq!(live.join(1, &Interest::all(EventFilter::default()), &a).unwrap_err(), 2);
        assert!(live.join(2, &Interest::all(EventFilter::default()), &a).is_ok());
    }

    #[test]
    fn a_full_member_falls_behind_with_its_position_and_is_not_killed() {
        let mut live = Live::default();
        let (slow, fast) = (Mailbox::new(4), Mailbox::new(64));
        let mut js = live.join(0, &Interest::all(EventFilter::default()), &slow).unwrap();
        live.join(0, &Interest::all(EventFilter::default()), &fast).unwrap();
        let frames: Vec<_> = (1..=5).map(|s| event(s, "x")).collect();
        assert_eq!(live.deliver(&frames), 1);
        // Half of 4 fits: it was given 1 and 2, and resumes from 2 on its own.
        assert_eq!(js.behind.try_recv().unwrap(), 2);
        assert!(!slow.killed());
        assert_eq!(queued(&slow), [1, 2]);
        assert_eq!(queued(&fast), [1, 2, 3, 4, 5]);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn the_pump_stops_when_the_last_member_leaves() {
        let mut live = Live::default();
        let a = Mailbox::new(8);
        let j = live.join(7, &Interest::all(EventFilter::default()), &a).unwrap();
        assert_eq!(live.pump_from(), Some(7));
        assert!(live.leave(j.id));
        assert_eq!(live.pump_from(), None);
        // The next follower starts a pump again, from its own position.
        let j = live.join(3, &Interest::all(EventFilter::default()), &a).unwrap();
        assert!(j.start_pump);
        assert_eq!(live.pump_from(), Some(3));
        // A pump that stopped with members left: the next one starts at the furthest behind.
        live.stop_pump();
        let j = live.join(9, &Interest::all(EventFilter::default()), &a).unwrap();
        assert!(j.start_pump);
        assert_eq!(live.pump_from(), Some(3));
    }
}
