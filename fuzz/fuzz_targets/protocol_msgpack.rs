//! MessagePack frame decoding: never panics; whatever decodes re-encodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sdk_core_fuzz::check_frames(
    sdk_core::protocol::Codec::MessagePack,
    data
));
