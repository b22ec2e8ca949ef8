//! Fuzzes the control-socket request parser,
//! `cdrhook::control::protocol::parse`.
//!
//! Invariants: it never panics, and every request it accepts survives a
//! serde_json round trip (encode, then parse again) unchanged.
#![no_main]

use cdrhook::control::protocol::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = protocol::parse(data) else {
        return;
    };
    let line = serde_json::to_vec(&request).expect("a parsed request encodes");
    let again = protocol::parse(&line).unwrap_or_else(|e| {
        panic!(
            "re-parse of {:?} failed: {e}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(again, request, "round trip changed the request");
    // The serde_json::from_slice path directly, too (no size guard).
    let direct: Request = serde_json::from_slice(&line).expect("decodes");
    assert_eq!(direct, request);
});
