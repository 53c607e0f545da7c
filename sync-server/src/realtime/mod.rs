//! Realtime primitives, transport-free: a frame on its way ([`outbound`]), one connection's
//! bounded queue ([`mailbox`]), who is connected and in which rooms ([`hub`]), what crosses
//! processes ([`fanout`]), and the runtime sessions run on ([`runtime`]). No axum, no Redis, no session logic: the socket transports
//! (the `socket` module) and the cluster (the `cluster` module) are built on these.

pub mod fanout;
pub mod hub;
pub mod mailbox;
pub mod outbound;
pub mod runtime;
