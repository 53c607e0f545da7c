//! MessagePack frame decoding: never panics; whatever decodes re-encodes to something that decodes to
//! the same frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sdk_core::protocol::{ClientFrame, Codec, DEFAULT_MAX_FRAME, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let codec = Codec::MessagePack;
    if let Ok(f) = codec.decode::<ClientFrame>(data, DEFAULT_MAX_FRAME) {
        let again = codec.decode::<ClientFrame>(&codec.encode(&f), usize::MAX).unwrap();
        assert_eq!(again, f);
        if let ClientFrame::Push { operations, .. } = f {
            for op in operations {
                let _ = op.into_submitted();
            }
        }
    }
    if let Ok(f) = codec.decode::<ServerFrame>(data, DEFAULT_MAX_FRAME) {
        let again = codec.decode::<ServerFrame>(&codec.encode(&f), usize::MAX).unwrap();
        assert_eq!(again, f);
    }
});
