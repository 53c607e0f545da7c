//! A frame on its way to one or many connections: shared, and encoded at most once per codec
//! however many recipients it has. Bytes only: which transport writes them is not its business.

use bytes::Bytes;
use sdk_core::protocol::{Codec, ServerFrame};
use std::sync::{Arc, OnceLock};

#[derive(Debug)]
pub struct Outbound {
    pub frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl Outbound {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self { frame, json: OnceLock::new(), msgpack: OnceLock::new() })
    }

    /// The frame encoded with `codec`, encoding on first use only (JSON bytes are UTF-8).
    pub fn encoded(&self, codec: Codec) -> Bytes {
        let cell = match codec {
            Codec::Json => &self.json,
            Codec::MessagePack => &self.msgpack,
        };
        cell.get_or_init(|| codec.encode(&self.frame).into()).clone()
    }
}
