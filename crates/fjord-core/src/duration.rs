//! Durations as the watchdogs accept them: a bare number of seconds (`30`) or a Go duration
//! (`1m30s`, `500ms`, `1.5h`, `2h45m`).

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid duration: {reason} (use seconds like 30, or 1m30s, 500ms)")]
pub struct DurationError {
    pub value: String,
    pub reason: &'static str,
}

/// Longest duration accepted, in seconds (about 31,700 years): far beyond any timeout, and
/// small enough that `Instant::now() + d` cannot overflow.
const MAX_SECS: u64 = 1_000_000_000_000;

/// Parses `30`, `30s`, `1m30s`, `1.5h`, `250ms`, `10us`, `0`; at most 10^12 seconds.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        value: value.chars().take(64).collect(),
        reason,
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(fail("it is empty"));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().map_err(|_| fail("number out of range"))?;
        if secs > MAX_SECS {
            return Err(fail("number out of range"));
        }
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| fail("a number needs a unit (h, m, s, ms, us, ns)"))?;
        if num_end == 0 {
            return Err(fail("expected a number"));
        }
        let number: f64 = rest[..num_end]
            .parse()
            .map_err(|_| fail("expected a number"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs_per = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(fail("unknown unit")),
        };
        rest = &rest[unit_end..];
        total += number * secs_per;
    }
    if !total.is_finite() || total > MAX_SECS as f64 {
        return Err(fail("number out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("30").unwrap(), s(30));
        assert_eq!(parse_duration("0").unwrap(), s(0));
        assert_eq!(parse_duration("30s").unwrap(), s(30));
        assert_eq!(parse_duration("1m30s").unwrap(), s(90));
        assert_eq!(parse_duration("2h45m").unwrap(), s(9900));
        assert_eq!(parse_duration("1.5h").unwrap(), s(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        for bad in [
            "",
            "s",
            "10x",
            "1m30",
            "-1s",
            "1e3s",
            "abc",
            "99999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Found by `fuzz/` (quantity_duration): bare seconds had no upper bound, so
    /// `exec_timeout: "18446744073709551615"` was accepted and `Instant::now() + timeout` in
    /// the fork runtime panicked on overflow. Both spellings now share the 10^12 s limit.
    #[test]
    fn bare_seconds_have_the_same_limit_as_units() {
        let max = Duration::from_secs(1_000_000_000_000);
        assert_eq!(parse_duration("1000000000000").unwrap(), max);
        assert_eq!(parse_duration("1000000000000s").unwrap(), max);
        for bad in ["999999991999999", "18446744073709551615", "1000000000001"] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.reason, "number out of range", "{bad}");
            assert!(parse_duration(&format!("{bad}s")).is_err(), "{bad}s");
        }
    }
}
