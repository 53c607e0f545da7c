//! The four interaction classes and their transport policy (INV-010: realtime loss degrades the
//! experience, never correctness).
//!
//! | class | realtime | fallback |
//! | --- | --- | --- |
//! | A presence | WebSocket / Socket.IO, fire-and-forget, TTL | none: presence disappears |
//! | B event streams | pushed from the event log | long-poll, resume from the last event id |
//! | C low-latency ops | WebSocket / Socket.IO | persistent queue, REST reconcile |
//! | D critical transactions | **refused** | REST with an `Idempotency-Key` only |

use crate::error::Error;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InteractionClass {
    /// Live presence: online status, typing, cursors.
    A,
    /// Event streaming: feeds, notifications, status changes.
    B,
    /// Low-latency operations: chat, collaborative edits.
    C,
    /// Critical transactions: payments, orders.
    D,
}

/// Every way a message can travel between a client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The native PF-2 WebSocket protocol (`/v1/ws`).
    WebSocket,
    /// The Socket.IO v4 endpoint.
    SocketIo,
    /// `GET /api/events/poll` long-polling.
    LongPoll,
    /// Plain request/response REST.
    Rest,
}

impl Transport {
    pub fn is_realtime(self) -> bool {
        matches!(self, Transport::WebSocket | Transport::SocketIo)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::SocketIo => "socket.io",
            Transport::LongPoll => "long-poll",
            Transport::Rest => "rest",
        }
    }
}

/// What a class does when realtime is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: the data is ephemeral and simply vanishes (presence).
    Vanish,
    /// Long-poll the event log from the last seen event id.
    LongPoll,
    /// Queue durably and reconcile over REST.
    QueueAndReconcile,
    /// Never realtime in the first place: REST with an idempotency key.
    RestOnly,
}

impl InteractionClass {
    pub const ALL: [InteractionClass; 4] =
        [InteractionClass::A, InteractionClass::B, InteractionClass::C, InteractionClass::D];

    /// Wire name as api.md's `InteractionClass` (`CLASS_A` …).
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionClass::A => "CLASS_A",
            InteractionClass::B => "CLASS_B",
            InteractionClass::C => "CLASS_C",
            InteractionClass::D => "CLASS_D",
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            InteractionClass::A => "A",
            InteractionClass::B => "B",
            InteractionClass::C => "C",
            InteractionClass::D => "D",
        }
    }

    /// Accepts `CLASS_C`, `C`, `c`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("CLASS_").unwrap_or(s);
        match s {
            "A" | "a" => Some(InteractionClass::A),
            "B" | "b" => Some(InteractionClass::B),
            "C" | "c" => Some(InteractionClass::C),
            "D" | "d" => Some(InteractionClass::D),
            _ => None,
        }
    }

    pub fn fallback(self) -> Fallback {
        match self {
            InteractionClass::A => Fallback::Vanish,
            InteractionClass::B => Fallback::LongPoll,
            InteractionClass::C => Fallback::QueueAndReconcile,
            InteractionClass::D => Fallback::RestOnly,
        }
    }

    /// Whether messages of this class are persisted before they are acknowledged.
    pub fn is_durable(self) -> bool {
        !matches!(self, InteractionClass::A)
    }

    pub fn allows(self, transport: Transport) -> bool {
        match self {
            InteractionClass::A => transport.is_realtime(),
            InteractionClass::B | InteractionClass::C => true,
            InteractionClass::D => !transport.is_realtime(),
        }
    }

    /// The gate every shell calls before handling a message: Class D on a realtime transport is
    /// refused with `CLASS_D_REALTIME_FORBIDDEN`.
    pub fn check_transport(self, transport: Transport) -> Result<(), Error> {
        if self.allows(transport) {
            Ok(())
        } else {
            Err(Error::TransportForbidden { class: self.letter(), transport: transport.as_str() })
        }
    }
}

impl fmt::Display for InteractionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for InteractionClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for InteractionClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        InteractionClass::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown interaction class {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const TRANSPORTS: [Transport; 4] =
        [Transport::WebSocket, Transport::SocketIo, Transport::LongPoll, Transport::Rest];

    #[test]
    fn class_d_is_refused_on_every_realtime_transport_and_only_there() {
        for t in TRANSPORTS {
            let r = InteractionClass::D.check_transport(t);
            if t.is_realtime() {
                assert_eq!(r.unwrap_err().code(), ErrorCode::ClassDRealtimeForbidden, "{t:?}");
            } else {
                assert!(r.is_ok(), "{t:?}");
            }
        }
    }

    #[test]
    fn presence_only_travels_realtime_and_vanishes_without_it() {
        assert!(InteractionClass::A.check_transport(Transport::WebSocket).is_ok());
        assert!(InteractionClass::A.check_transport(Transport::Rest).is_err());
        assert_eq!(InteractionClass::A.fallback(), Fallback::Vanish);
        assert!(!InteractionClass::A.is_durable());
    }

    #[test]
    fn streams_and_ops_work_on_every_transport() {
        for t in TRANSPORTS {
            assert!(InteractionClass::B.allows(t));
            assert!(InteractionClass::C.allows(t));
        }
        assert_eq!(InteractionClass::B.fallback(), Fallback::LongPoll);
        assert_eq!(InteractionClass::C.fallback(), Fallback::QueueAndReconcile);
        assert_eq!(InteractionClass::D.fallback(), Fallback::RestOnly);
    }

    #[test]
    fn names_parse_in_every_spelling() {
        for c in InteractionClass::ALL {
            assert_eq!(InteractionClass::parse(c.as_str()), Some(c));
            assert_eq!(InteractionClass::parse(c.letter()), Some(c));
        }
        assert_eq!(InteractionClass::parse("CLASS_E"), None);
    }
}
