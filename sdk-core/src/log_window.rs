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
