//! The client's persistent outbound operation queue.
//!
//! - Operations get contiguous `clientSeq` numbers from 1, in the order they were made.
//! - Batches are taken from the head, bounded by count and encoded bytes; one batch is in flight
//!   at a time, so the server sees each client's operations in order.
//! - `ack_up_to` drops what the server has settled. A permanent per-operation refusal (the server
//!   recorded it and consumed its sequence number) quarantines the operation at once. A batch the
//!   server refuses as a whole is retried, bisected down to its head, and after `max_attempts`
//!   refusals of the head alone that head is quarantined and the operations behind it renumbered
//!   (the server never applied any of them), so the queue never wedges.
//! - Every change is described as [`StoreWrite`]s for a [`QueueStore`]; [`OutboundQueue::recover`]
//!   rebuilds the queue from what the store holds after a restart.

use crate::error::ErrorCode;
use crate::ids::ClientId;
use crate::operation::Operation;
use crate::protocol::WireOperation;
pub use crate::storage::{
    MemoryQueueStore, QuarantinedOp, QueueStore, QueuedOp, StoreWrite, StoredState,
};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_batch_ops: usize,
    pub max_batch_bytes: usize,
    /// Refusals of an operation sent alone before it is quarantined.
    pub max_attempts: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        // A batch travels as one WebSocket frame: three quarters of the frame limit leaves room
        // for the envelope and for JSON escaping the size estimate does not see.
        Self {
            max_batch_ops: 500,
            max_batch_bytes: crate::protocol::DEFAULT_MAX_FRAME * 3 / 4,
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboundQueue {
    client_id: ClientId,
    config: QueueConfig,
    next_seq: u64,
    ops: VecDeque<QueuedOp>,
    /// How many ops from the head are in the batch in flight (0 = none).
    in_flight: usize,
    /// Current bisection bound after whole-batch refusals.
    batch_bound: usize,
    quarantined: Vec<QuarantinedOp>,
}

impl OutboundQueue {
    pub fn new(client_id: ClientId, config: QueueConfig) -> Self {
        let bound = config.max_batch_ops;
        Self {
            client_id,
            config,
            next_seq: 1,
            ops: VecDeque::new(),
            in_flight: 0,
            batch_bound: bound,
            quarantined: Vec::new(),
        }
    }

    /// Rebuild from storage: operations in sequence order, the next sequence number after both
    /// the stored counter and the highest stored operation.
    pub fn recover(client_id: ClientId, config: QueueConfig, stored: &StoredState) -> Self {
        let mut q = Self::new(client_id, config);
        let mut ops: Vec<QueuedOp> =
            stored.ops.iter().filter(|o| o.op.client_id == q.client_id).cloned().collect();
        ops.sort_by_key(QueuedOp::seq);
        let highest = ops.last().map(QueuedOp::seq).unwrap_or(0);
        q.next_seq = stored.next_seq.max(highest + 1).max(1);
        q.ops = ops.into();
        q.quarantined = stored.quarantined.clone();
        q
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn pending(&self) -> impl Iterator<Item = &QueuedOp> {
        self.ops.iter()
    }

    pub fn quarantined(&self) -> &[QuarantinedOp] {
        &self.quarantined
    }

    pub fn has_in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Append an operation made with [`Self::next_seq`].
    pub fn push(&mut self, op: Operation) -> Vec<StoreWrite> {
        assert_eq!(op.client_seq, Some(self.next_seq), "operations are queued in sequence order");
        assert_eq!(op.client_id, self.client_id, "a queue holds one client's operations");
        self.next_seq += 1;
        let q = QueuedOp { op, attempts: 0 };
        self.ops.push_back(q.clone());
        vec![StoreWrite::PutOp(q), StoreWrite::SetNextSeq(self.next_seq)]
    }

    /// The next batch to send, if none is in flight: from the head, bounded by count and bytes
    /// (always at least one operation).
    pub fn take_batch(&mut self) -> Option<Vec<Operation>> {
        if self.in_flight > 0 || self.ops.is_empty() {
            return None;
        }
        let max_ops = self.config.max_batch_ops.min(self.batch_bound).max(1);
        let mut bytes = 0;
        let mut batch = Vec::new();
        for q in self.ops.iter().take(max_ops) {
            let size = encoded_size(&q.op);
            if !batch.is_empty() && bytes + size > self.config.max_batch_bytes {
                break;
            }
            bytes += size;
            batch.push(q.op.clone());
        }
        self.in_flight = batch.len();
        Some(batch)
    }

    /// The batch in flight is lost (link down, timeout): it will be sent again.
    pub fn requeue_in_flight(&mut self) {
        self.in_flight = 0;
    }

    /// Remove every operation with `clientSeq ≤ seq`; returns them in order.
    pub fn ack_up_to(&mut self, seq: u64) -> (Vec<Operation>, Vec<StoreWrite>) {
        let mut removed = Vec::new();
        let mut writes = Vec::new();
        while self.ops.front().is_some_and(|q| q.seq() <= seq) {
            let q = self.ops.pop_front().expect("checked");
            writes.push(StoreWrite::DeleteOp(q.op.id.clone()));
            removed.push(q.op);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if !removed.is_empty() {
            self.batch_bound = self.config.max_batch_ops;
        }
        (removed, writes)
    }

    /// The batch in flight was answered; nothing more is outstanding.
    pub fn settle(&mut self) {
        self.in_flight = 0;
    }

    /// Quarantine the operation with `seq`. `consumed`: the server recorded a refusal for it (its
    /// sequence number is used up). Otherwise the operation must be the head, and every operation
    /// behind it is renumbered one down, since the server never applied any of them.
    pub fn quarantine(
        &mut self,
        seq: u64,
        code: ErrorCode,
        message: String,
        consumed: bool,
    ) -> (Option<QuarantinedOp>, Vec<StoreWrite>) {
        let Some(pos) = self.ops.iter().position(|q| q.seq() == seq) else {
            return (None, Vec::new());
        };
        let q = self.ops.remove(pos).expect("position is valid");
        if pos < self.in_flight {
            self.in_flight -= 1;
        }
        let quarantined = QuarantinedOp { op: q.op.clone(), code, message, attempts: q.attempts };
        let mut writes = vec![
            StoreWrite::DeleteOp(q.op.id.clone()),
            StoreWrite::PutQuarantined(quarantined.clone()),
        ];
        if !consumed {
            for later in self.ops.iter_mut().filter(|l| l.seq() > seq) {
                let s = later.seq() - 1;
                later.op.client_seq = Some(s);
                later.op.clock.set(self.client_id.clone(), s);
                writes.push(StoreWrite::PutOp(later.clone()));
            }
            self.next_seq -= 1;
            writes.push(StoreWrite::SetNextSeq(self.next_seq));
        }
        self.quarantined.push(quarantined.clone());
        (Some(quarantined), writes)
    }

    /// The server refused the whole batch in flight with a permanent code: count an attempt
    /// against its head, halve the next batch, and quarantine the head once it has been refused
    /// alone `max_attempts` times.
    pub fn batch_refused(
        &mut self,
        code: ErrorCode,
        message: String,
    ) -> (Option<QuarantinedOp>, Vec<StoreWrite>) {
        let sent_alone = self.in_flight == 1;
        self.in_flight = 0;
        let Some(head) = self.ops.front_mut() else { return (None, Vec::new()) };
        if sent_alone {
            head.attempts += 1;
        }
        let attempts = head.attempts;
        let seq = head.seq();
        let write = StoreWrite::PutOp(head.clone());
        self.batch_bound = (self.batch_bound / 2).max(1);
        if sent_alone && attempts >= self.config.max_attempts {
            return self.quarantine(seq, code, message, false);
        }
        (None, vec![write])
    }
}

fn encoded_size(op: &Operation) -> usize {
    serde_json::to_vec(&WireOperation::from_operation(op)).map(|v| v.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::fixtures::update;
    use serde_json::json;

    fn queue_with(n: u64) -> (OutboundQueue, MemoryQueueStore) {
        let mut q = OutboundQueue::new(ClientId::new("c1").unwrap(), QueueConfig::default());
        let mut store = MemoryQueueStore::default();
        for i in 1..=n {
            let w = q.push(update("c1", i, "e", json!({ "n": i }), i));
            store.apply(&w).unwrap();
        }
        (q, store)
    }

    fn seqs(q: &OutboundQueue) -> Vec<u64> {
        q.pending().map(QueuedOp::seq).collect()
    }

    /// Found by the browser suite: with the old 512 KiB default a 500-operation push was larger
    /// than a WebSocket frame may be, and the server closed every attempt with 1009.
    #[test]
    fn a_default_batch_fits_in_one_websocket_frame() {
        let mut q = OutboundQueue::new(ClientId::new("c1").unwrap(), QueueConfig::default());
        for i in 1..=1000 {
            q.push(update(
                "c1",
                i,
                &format!("e{i}"),
                json!({ "title": format!("item {i}"), "n": i }),
                i,
            ));
        }
        let batch = q.take_batch().unwrap();
        let frame = crate::protocol::ClientFrame::Push {
            batch_id: "b".repeat(36),
            operations: batch.iter().map(WireOperation::from_operation).collect(),
        };
        let bytes = crate::protocol::Codec::Json.encode(&frame).len();
        assert!(batch.len() > 50, "batches stay useful: {}", batch.len());
        assert!(bytes <= crate::protocol::DEFAULT_MAX_FRAME, "{bytes} bytes");
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes_and_one_is_in_flight() {
        let (mut q, _) = queue_with(10);
        q.config.max_batch_ops = 4;
        assert_eq!(q.take_batch().unwrap().len(), 4);
        assert!(q.take_batch().is_none(), "one batch in flight");
        q.requeue_in_flight();
        q.config.max_batch_bytes = 1;
        assert_eq!(q.take_batch().unwrap().len(), 1, "always at least one");
    }

    #[test]
    fn ack_removes_through_the_sequence_and_persists_it() {
        let (mut q, mut store) = queue_with(5);
        q.take_batch();
        let (removed, w) = q.ack_up_to(3);
        store.apply(&w).unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(seqs(&q), vec![4, 5]);
        let back = OutboundQueue::recover(
            ClientId::new("c1").unwrap(),
            Default::default(),
            &store.load().unwrap(),
        );
        assert_eq!(seqs(&back), vec![4, 5]);
        assert_eq!(back.next_seq(), 6);
    }

    #[test]
    fn recovery_keeps_the_sequence_counter_even_when_the_queue_is_empty() {
        let (mut q, mut store) = queue_with(3);
        store.apply(&q.ack_up_to(3).1).unwrap();
        let back = OutboundQueue::recover(
            ClientId::new("c1").unwrap(),
            Default::default(),
            &store.load().unwrap(),
        );
        assert!(back.is_empty());
        assert_eq!(back.next_seq(), 4, "sequence numbers are never reused");
    }

    #[test]
    fn a_consumed_refusal_quarantines_without_renumbering() {
        let (mut q, _) = queue_with(3);
        let (qd, _) = q.quarantine(2, ErrorCode::InvalidOperation, "bad".into(), true);
        assert_eq!(qd.unwrap().op.client_seq, Some(2));
        assert_eq!(seqs(&q), vec![1, 3]);
        assert_eq!(q.next_seq(), 4);
    }

    #[test]
    fn a_head_refused_alone_max_attempts_times_is_quarantined_and_the_rest_renumbered() {
        let (mut q, mut store) = queue_with(4);
        let mut quarantined = None;
        let mut sends = 0;
        while quarantined.is_none() {
            let batch = q.take_batch().unwrap();
            sends += 1;
            assert!(sends < 20, "the queue wedged");
            let (qd, w) =
                q.batch_refused(ErrorCode::InvalidRequest, format!("batch of {}", batch.len()));
            store.apply(&w).unwrap();
            quarantined = qd;
        }
        let qd = quarantined.unwrap();
        assert_eq!(qd.op.client_seq, Some(1));
        assert_eq!(qd.attempts, 3);
        assert_eq!(seqs(&q), vec![1, 2, 3], "renumbered to close the gap");
        let head = &q.pending().next().unwrap().op;
        assert_eq!(head.clock.get(&head.client_id), 1, "clock entry follows the sequence");
        assert_eq!(q.next_seq(), 4);
        let back = OutboundQueue::recover(
            ClientId::new("c1").unwrap(),
            Default::default(),
            &store.load().unwrap(),
        );
        assert_eq!(seqs(&back), vec![1, 2, 3]);
        assert_eq!(back.quarantined().len(), 1);
        // The bisection bound recovers after a success.
        q.take_batch();
        q.ack_up_to(1);
        assert_eq!(q.take_batch().unwrap().len(), 2);
    }
}
