//! The async queue's stored records: `fjord_queue::sqlite::decode_request`, which turns the
//! `calls.request` column (JSON, body in base64) back into a `CallRequest` when a worker claims
//! a call, plus the serde forms of `CallRequest` and `CallRecord` and `CallState::parse`.
//!
//! Property: arbitrary bytes never panic; whatever decodes re-encodes and decodes to the same
//! value.

#![no_main]

use fjord_queue::sqlite::{decode_request, encode_request};
use fjord_queue::{CallRecord, CallRequest, CallState};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    // SQLite hands TEXT columns over as UTF-8; other bytes arrive as replacement characters.
    let text = String::from_utf8_lossy(data);

    if let Ok(request) = decode_request(&text) {
        let stored = encode_request(&request).expect("a decoded request encodes");
        assert_eq!(decode_request(&stored), Ok(request));
    }

    if let Ok(request) = serde_json::from_slice::<CallRequest>(data) {
        let json = serde_json::to_vec(&request).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<CallRequest>(&json).ok(),
            Some(request)
        );
    }

    if let Ok(record) = serde_json::from_slice::<CallRecord>(data) {
        let json = serde_json::to_vec(&record).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<CallRecord>(&json).ok(),
            Some(record)
        );
    }

    if let Some(state) = CallState::parse(&text) {
        assert_eq!(state.as_str(), text);
    }
}

fuzz_target!(|data: &[u8]| check(data));
