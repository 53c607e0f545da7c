//! Shared checks of the fuzz targets.

use sdk_core::protocol::{ClientFrame, Codec, DEFAULT_MAX_FRAME, ServerFrame};

/// Decoding `data` as a client or server frame with `codec` never panics, and whatever decodes
/// re-encodes to bytes that decode to the same frame (operations also go through validation).
pub fn check_frames(codec: Codec, data: &[u8]) {
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
}
