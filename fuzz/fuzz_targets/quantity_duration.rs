//! `fjord_core::quantity` (Kubernetes memory and CPU quantities: `128Mi`, `1e6`, `500m`, `0.5`)
//! and `fjord_core::duration` (watchdog durations: `30`, `1m30s`, `1.5h`, `250ms`).
//!
//! Property: no input panics. fjord-core has no formatter for these, so the round trip is
//! through the plainest spelling of each parsed value, which must parse back to the same
//! value: bytes as a bare integer, millicores as `<n>m` (and whole cores as `<n>`), whole
//! seconds as `<n>` and `<n>s`. Accepted values respect the documented bounds.

#![no_main]

use std::time::Duration;

use fjord_core::duration::parse_duration;
use fjord_core::quantity::{parse_cpu, parse_memory};
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    match parse_memory(s) {
        Ok(bytes) => {
            assert!(bytes >= 1, "{s:?}");
            assert_eq!(parse_memory(&bytes.to_string()), Ok(bytes), "{s:?}");
        }
        Err(e) => assert!(e.value.chars().count() <= 64),
    }

    match parse_cpu(s) {
        Ok(millis) => {
            assert!((1..1_000_000_000_000).contains(&millis), "{s:?}");
            assert_eq!(parse_cpu(&format!("{millis}m")), Ok(millis), "{s:?}");
            if millis % 1000 == 0 {
                assert_eq!(parse_cpu(&(millis / 1000).to_string()), Ok(millis), "{s:?}");
            }
        }
        Err(e) => assert!(e.value.chars().count() <= 64),
    }

    match parse_duration(s) {
        Ok(d) => {
            assert!(d <= Duration::from_secs(1_000_000_000_000), "{s:?}");
            if d.subsec_nanos() == 0 {
                let secs = d.as_secs();
                assert_eq!(parse_duration(&secs.to_string()), Ok(d), "{s:?}");
                assert_eq!(parse_duration(&format!("{secs}s")), Ok(d), "{s:?}");
            }
        }
        Err(e) => assert!(e.value.chars().count() <= 64),
    }
}

fuzz_target!(|data: &[u8]| {
    // The parsers take text; other bytes reach them only as replacement characters.
    check(&String::from_utf8_lossy(data));
});
