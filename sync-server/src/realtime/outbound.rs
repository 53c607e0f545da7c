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
        once(&self.json, &self.msgpack, codec, || codec.encode(&self.frame))
    }
}

/// Frames that go together to many connections (an event stream's delivery round for every
/// subscriber at the same position with the same filter): queued as one item, and their `batch`
/// frame built at most once per codec for all the connections that take batches.
#[derive(Debug)]
pub struct Run {
    pub frames: Vec<Arc<Outbound>>,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl Run {
    pub fn new(frames: Vec<Arc<Outbound>>) -> Arc<Self> {
        Arc::new(Self { frames, json: OnceLock::new(), msgpack: OnceLock::new() })
    }

    /// The frames as one `batch` frame (see [`Codec::encode_batch`]).
    pub fn encoded_batch(&self, codec: Codec) -> Bytes {
        once(&self.json, &self.msgpack, codec, || {
            let parts: Vec<Bytes> = self.frames.iter().map(|f| f.encoded(codec)).collect();
            codec.encode_batch(&parts)
        })
    }
}

fn once(
    json: &OnceLock<Bytes>,
    msgpack: &OnceLock<Bytes>,
    codec: Codec,
    encode: impl FnOnce() -> Vec<u8>,
) -> Bytes {
    let cell = match codec {
        Codec::Json => json,
        Codec::MessagePack => msgpack,
    };
    cell.get_or_init(|| encode().into()).clone()
}
