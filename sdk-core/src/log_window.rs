//! The recent end of an ordered log (a tenant's events), held in memory by whoever serves many
//! readers from it, with exactly what it knows: every entry with `from < sequence <= to`. The
//! server's event tail keeps one per tenant and reads the store only when a reader needs more
//! than the window knows; this module is the bookkeeping, with no I/O and no clock.
//!
//! The one rule that makes it correct: a read of the log made after hearing of position `head`
//! holds every entry at or below `head` (positions are allocated in order and announced after
//! they are durable). So after a read that did not fill its page, the window knows everything up
//! to `head`, even where there were no entries; after a full page, only up to its last entry.

use std::collections::VecDeque;

/// An entry of the log.
pub trait Sequenced {
    /// Its position; strictly increasing along the log (gaps allowed).
    fn sequence(&self) -> u64;
    /// What it costs to keep (bytes, roughly).
    fn weight(&self) -> usize;
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct LogWindow<T> {
    known: bool,
    from: u64,
    to: u64,
    items: VecDeque<T>,
    weight: usize,
    /// The last read filled its page: the log may go on after `to`.
    more: bool,
    max_items: usize,
    max_weight: usize,
}

impl<T: Sequenced + Clone> LogWindow<T> {
    /// An empty window that will keep at most `max_items` entries and `max_weight` of them.
    pub fn new(max_items: usize, max_weight: usize) -> Self {
        Self {
            known: false,
            from: 0,
            to: 0,
            items: VecDeque::new(),
            weight: 0,
            more: false,
            max_items: max_items.max(1),
            max_weight,
        }
    }

    /// Whether the window knows anything yet (a first read starts it).
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Whether a reader at `after` can be served from here (it is not behind the window).
    pub fn covers(&self, after: u64) -> bool {
        self.known && after >= self.from
    }

    /// Whether the window holds every entry up to `head`, with nothing pending after it.
    pub fn complete_to(&self, head: u64) -> bool {
        self.known && self.to >= head && !self.more
    }

    /// Where the next read continues from.
    pub fn end(&self) -> u64 {
        self.to
    }

    /// The entries after `after`, at most `limit`, in order.
    pub fn slice(&self, after: u64, limit: usize) -> Vec<T> {
        let start = self.items.partition_point(|e| e.sequence() <= after);
        self.items.range(start..).take(limit).cloned().collect()
    }

    /// Start (or start over) at `after`, knowing nothing past it yet.
    pub fn start_at(&mut self, after: u64) {
        *self = Self {
            known: true,
            from: after,
            to: after,
            ..Self::new(self.max_items, self.max_weight)
        };
    }

    /// Take a read of the log after [`LogWindow::end`], made after hearing of `head`: `rows`
    /// in order, `full_page` when the read returned as many as it asked for. Entries beyond the
    /// window's bounds push the oldest out.
    pub fn extend(&mut self, rows: Vec<T>, full_page: bool, head: u64) {
        debug_assert!(self.known, "start_at first");
        let last = rows.last().map(Sequenced::sequence).unwrap_or(self.to);
        for e in rows {
            if e.sequence() <= self.to {
                continue;
            }
            self.weight += e.weight();
            self.items.push_back(e);
        }
        self.to = if full_page { last.max(self.to) } else { last.max(head).max(self.to) };
        self.more = full_page;
        while self.items.len() > self.max_items || self.weight > self.max_weight {
            let Some(e) = self.items.pop_front() else { break };
            self.weight -= e.weight();
            self.from = e.sequence();
        }
    }
}

impl<T: Sequenced + Clone> LogWindow<T> {
    /// Take `rows`, appended to the log right after `prev` and committed (nothing lies between):
    /// when the window holds the log up to `prev` and nothing after it, they continue it as a
    /// read would. Returns whether they were taken.
    pub fn append_after(&mut self, prev: u64, rows: Vec<T>) -> bool {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return false };
        let (first, last) = (first.sequence(), last.sequence());
        if !(self.complete_to(prev) && self.to < first) {
            return false;
        }
        self.extend(rows, false, last);
        true
    }
}

/// Appends made while their window was busy (its lock held by readers), kept until whoever
/// next holds the window for writing takes them ([`Appends::drain_into`]) instead of reading
/// the log again. Bounded: past `max_items` entries everything kept is let go — the log holds
/// it, and a read brings it.
#[derive(Debug)]
pub struct Appends<T> {
    batches: Vec<(u64, Vec<T>)>,
    items: usize,
    max_items: usize,
}

/// What [`Appends::drain_into`] did with the batches it held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Batches that continued the window.
    pub taken: usize,
    /// Batches that did not (a gap before them: another process's append, or one let go): a
    /// read of the log fills the window instead.
    pub left: usize,
}

impl<T: Sequenced + Clone> Appends<T> {
    pub fn new(max_items: usize) -> Self {
        Self { batches: Vec::new(), items: 0, max_items: max_items.max(1) }
    }

    /// Keep `rows`, appended right after `prev`. Returns `false` when the bound let everything
    /// kept go (this batch too).
    pub fn push(&mut self, prev: u64, rows: Vec<T>) -> bool {
        self.items += rows.len();
        self.batches.push((prev, rows));
        if self.items > self.max_items {
            self.batches.clear();
            self.items = 0;
            return false;
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Take every kept batch into `window`, in log order (appends may be reported out of
    /// order); batches it already holds are passed over, and the others are let go.
    pub fn drain_into(&mut self, window: &mut LogWindow<T>) -> Drained {
        let mut batches = std::mem::take(&mut self.batches);
        self.items = 0;
        batches.sort_unstable_by_key(|(prev, _)| *prev);
        let mut out = Drained::default();
        for (prev, rows) in batches {
            let last = rows.last().map(Sequenced::sequence).unwrap_or(prev);
            if window.append_after(prev, rows) {
                out.taken += 1;
            } else if !(window.is_known() && last <= window.end()) {
                out.left += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct E(u64);

    impl Sequenced for E {
        fn sequence(&self) -> u64 {
            self.0
        }
        fn weight(&self) -> usize {
            10
        }
    }

    /// A read of `log` after `after`, at most `page` entries: (rows, full).
    fn read(log: &[E], after: u64, page: usize) -> (Vec<E>, bool) {
        let rows: Vec<E> = log.iter().filter(|e| e.0 > after).take(page).cloned().collect();
        let full = rows.len() == page;
        (rows, full)
    }

    /// Appends reported while the window was busy go in when it is free, in log order, without
    /// a read; one after a gap is let go (a read fills it), one already held is passed over.
    #[test]
    fn appends_kept_while_busy_continue_the_window() {
        let mut w = LogWindow::new(100, usize::MAX);
        w.start_at(0);
        w.extend((1..=4).map(E).collect(), false, 4);
        let mut kept = Appends::new(100);
        // Reported out of order: 7 after 5–6.
        assert!(kept.push(6, vec![E(7)]));
        assert!(kept.push(4, vec![E(5), E(6)]));
        assert!(kept.push(3, vec![E(4)]));
        assert_eq!(kept.drain_into(&mut w), Drained { taken: 2, left: 0 });
        assert!(kept.is_empty());
        assert!(w.complete_to(7));
        assert_eq!(w.slice(4, 10), vec![E(5), E(6), E(7)]);
        // After a gap (8 is another process's): let go, and the window is not complete to 9.
        kept.push(8, vec![E(9)]);
        assert_eq!(kept.drain_into(&mut w), Drained { taken: 0, left: 1 });
        assert!(!w.complete_to(9));
        // A window that read past a batch already holds it.
        w.extend(vec![E(8), E(9)], false, 9);
        kept.push(8, vec![E(9)]);
        assert_eq!(kept.drain_into(&mut w), Drained { taken: 0, left: 0 });
        // A window that does not know the log yet takes nothing.
        let mut cold = LogWindow::new(100, usize::MAX);
        kept.push(9, vec![E(10)]);
        assert_eq!(kept.drain_into(&mut cold), Drained { taken: 0, left: 1 });
    }

    #[test]
    fn appends_kept_are_bounded() {
        let mut kept = Appends::new(3);
        assert!(kept.push(0, vec![E(1), E(2)]));
        assert!(!kept.push(2, vec![E(3), E(4)]), "past the bound, everything is let go");
        assert!(kept.is_empty());
        let mut w = LogWindow::new(100, usize::MAX);
        w.start_at(0);
        assert_eq!(kept.drain_into(&mut w), Drained::default());
        assert!(w.complete_to(0) && !w.complete_to(1));
    }

    #[test]
    fn a_full_page_is_not_the_end_of_the_log() {
        let log: Vec<E> = (1..=10).map(E).collect();
        let mut w = LogWindow::new(100, usize::MAX);
        w.start_at(0);
        let (rows, full) = read(&log, 0, 4);
        w.extend(rows, full, 0);
        assert!(!w.complete_to(0), "after a restart nobody was told of anything: read on");
        let (rows, full) = read(&log, w.end(), 100);
        w.extend(rows, full, 0);
        assert!(w.complete_to(10));
        assert_eq!(w.slice(0, 100), log);
    }

    #[test]
    fn a_quiet_stretch_up_to_head_is_known_without_entries() {
        let mut w = LogWindow::new(100, usize::MAX);
        w.start_at(5);
        w.extend(vec![E(7)], false, 20);
        assert!(w.complete_to(20) && !w.complete_to(21));
        assert_eq!(w.slice(5, 10), vec![E(7)]);
        assert_eq!(w.slice(7, 10), vec![]);
    }

    proptest! {
        /// Whatever the appends, reads, page sizes and bounds: the window holds exactly the
        /// log's entries within (from, to], and a reader it covers and that is complete up to
        /// what it was told of gets exactly the log's next entries.
        #[test]
        fn the_window_holds_exactly_the_log_between_its_bounds(
            steps in proptest::collection::vec((1u64..4, 0usize..4, 1usize..6), 1..60),
            max_items in 1usize..12,
            start in 0u64..3,
        ) {
            let mut log: Vec<E> = Vec::new();
            let mut next = 1u64;
            let mut w = LogWindow::new(max_items, usize::MAX);
            w.start_at(start);
            for (gap, appends, page) in steps {
                for _ in 0..appends {
                    next += gap;
                    log.push(E(next));
                }
                // Told of the end of the log (announced after it was durable).
                let head = log.last().map(|e| e.0).unwrap_or(0);
                let (rows, full) = read(&log, w.end(), page);
                w.extend(rows, full, head);
                let inside: Vec<E> =
                    log.iter().filter(|e| e.0 > w.from && e.0 <= w.to).cloned().collect();
                prop_assert_eq!(w.slice(w.from, usize::MAX), inside);
                for after in [w.from, w.to.saturating_sub(1), w.to] {
                    if w.covers(after) && w.complete_to(head) {
                        let want: Vec<E> = log.iter().filter(|e| e.0 > after).take(3).cloned().collect();
                        prop_assert_eq!(w.slice(after, 3), want);
                    }
                }
            }
        }
    }
}
