//! Vector clock compact decoding and HLC timestamp parsing: no panics, exact round trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sdk_core::hlc::HlcTimestamp;
use sdk_core::vclock::VectorClock;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = VectorClock::decode_compact(data) {
        assert_eq!(c.encode_compact(), data, "the compact form is canonical");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = HlcTimestamp::parse(s) {
            assert_eq!(HlcTimestamp::parse(&t.to_string()).unwrap(), t);
        }
    }
});
