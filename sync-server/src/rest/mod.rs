//! The REST transport, by resource. Each handler checks its input's shape, calls one service
//! and translates the answer; it decides nothing the sockets would have to decide again.

pub mod audit;
pub mod bus;
pub mod conflicts;
pub mod documents;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod reconcile;
pub mod snapshots;
pub mod transactions;
