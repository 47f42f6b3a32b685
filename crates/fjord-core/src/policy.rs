//! Per-function policies read from a deployment's annotations: who may call it, how its
//! async calls are retried and how many run at once. Parsed when a deploy is validated
//! (400 naming the annotation) and again where they are applied.

use std::collections::BTreeMap;
use std::time::Duration;

/// Annotation that makes a function's calls (`/function/NAME`, `/async-function/NAME`)
/// require an API token: `token`, or `none` (the default).
pub const ANNOTATION_AUTH: &str = "com.fjord.auth";

/// Whether a deployment's annotations ask for token-protected calls; an unknown value is a
/// deploy error (a typo must not leave a function open).
pub fn requires_token(annotations: Option<&BTreeMap<String, String>>) -> Result<bool, String> {
    match annotations
        .and_then(|a| a.get(ANNOTATION_AUTH))
        .map(|v| v.trim())
    {
        None | Some("" | "none") => Ok(false),
        Some("token") => Ok(true),
        Some(other) => Err(format!(
            "annotation {ANNOTATION_AUTH}: {other:?} is not known; use \"token\" (calls need an API token) or \"none\""
        )),
    }
}

/// On a function deployed from an `openfaas.com/v1` Function object (`--runtime kubernetes`):
/// that object's uid. Set by the Function object controller only; such a function is changed
/// through its object, not the REST API.
pub const ANNOTATION_FUNCTION_OBJECT: &str = "com.fjord.function-object";

/// Whether a deployment came from a Function object (see [`ANNOTATION_FUNCTION_OBJECT`]).
pub fn from_function_object(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| a.contains_key(ANNOTATION_FUNCTION_OBJECT))
}

/// Queue annotations (OpenFaaS Pro names where they exist).
pub const ANNOTATION_QUEUE_MAX_INFLIGHT: &str = "com.openfaas.queue.max_inflight";
pub const ANNOTATION_RETRY_ATTEMPTS: &str = "com.openfaas.retry.attempts";
pub const ANNOTATION_RETRY_CODES: &str = "com.openfaas.retry.codes";
pub const ANNOTATION_RETRY_MIN_WAIT: &str = "com.openfaas.retry.min_wait";
pub const ANNOTATION_RETRY_MAX_WAIT: &str = "com.openfaas.retry.max_wait";

pub const DEFAULT_MAX_INFLIGHT: usize = 10;
const DEFAULT_ATTEMPTS: u32 = 3;
const DEFAULT_CODES: [u16; 6] = [408, 429, 500, 502, 503, 504];
const DEFAULT_MIN_WAIT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// How a function's async calls are retried, from its annotations.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub min_wait: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            codes: DEFAULT_CODES.to_vec(),
            min_wait: DEFAULT_MIN_WAIT,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl RetryPolicy {
    pub fn from_annotations(a: Option<&BTreeMap<String, String>>) -> Result<Self, String> {
        let get = |k: &str| a.and_then(|m| m.get(k)).map(|v| v.trim().to_string());
        let attempts = match get(ANNOTATION_RETRY_ATTEMPTS) {
            None => DEFAULT_ATTEMPTS,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("annotations.{ANNOTATION_RETRY_ATTEMPTS}: {v:?} must be a whole number from 1 to 1000"))?,
        };
        let codes = match get(ANNOTATION_RETRY_CODES) {
            None => DEFAULT_CODES.to_vec(),
            Some(v) => v
                .split(',')
                .map(|c| c.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c)))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| format!("annotations.{ANNOTATION_RETRY_CODES}: {v:?} must be HTTP status codes separated by commas, e.g. 429,503"))?,
        };
        let dur = |k: &str, d: Duration| -> Result<Duration, String> {
            match get(k) {
                None => Ok(d),
                Some(v) => {
                    crate::duration::parse_duration(&v).map_err(|e| format!("annotations.{k}: {e}"))
                }
            }
        };
        let min_wait = dur(ANNOTATION_RETRY_MIN_WAIT, DEFAULT_MIN_WAIT)?;
        let max_wait = dur(ANNOTATION_RETRY_MAX_WAIT, DEFAULT_MAX_WAIT)?.max(min_wait);
        Ok(Self {
            attempts,
            codes,
            min_wait,
            max_wait,
        })
    }

    /// How long before attempt `attempt + 1`: exponential backoff with equal jitter
    /// (`jitter` in 0..1, random in production), honouring `Retry-After` within the bounds.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(ra) = retry_after {
            return ra.clamp(self.min_wait, self.max_wait);
        }
        let exp = self
            .min_wait
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_wait);
        let half = exp / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Per-function concurrency of async calls; 0 pauses them (they stay queued until the
/// function is updated with a higher value), e.g. during maintenance of what it calls.
pub fn max_inflight(a: Option<&BTreeMap<String, String>>) -> Result<usize, String> {
    match a.and_then(|m| m.get(ANNOTATION_QUEUE_MAX_INFLIGHT)) {
        None => Ok(DEFAULT_MAX_INFLIGHT),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| format!("annotations.{ANNOTATION_QUEUE_MAX_INFLIGHT}: {v:?} must be a whole number from 0 (paused) to 10000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u64, max: u64) -> RetryPolicy {
        RetryPolicy {
            min_wait: Duration::from_secs(min),
            max_wait: Duration::from_secs(max),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn retry_wait_doubles_per_attempt_with_equal_jitter_and_caps() {
        let p = policy(1, 60);
        // Jitter 0 is half the exponential step, jitter 1 all of it.
        assert_eq!(p.wait(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(p.wait(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(p.wait(2, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.wait(4, None, 1.0), Duration::from_secs(8));
        assert_eq!(p.wait(3, None, 0.5), Duration::from_secs(3));
        // Capped at max_wait, however many attempts (no overflow at huge counts).
        assert_eq!(p.wait(10, None, 1.0), Duration::from_secs(60));
        assert_eq!(p.wait(u32::MAX, None, 1.0), Duration::from_secs(60));
        // Out-of-range jitter is clamped.
        assert_eq!(p.wait(1, None, 7.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_honoured_within_the_bounds() {
        let p = policy(2, 30);
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(10)), 0.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(0)), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn max_inflight_bounds() {
        let a =
            |v: &str| BTreeMap::from([(ANNOTATION_QUEUE_MAX_INFLIGHT.to_string(), v.to_string())]);
        assert_eq!(max_inflight(None), Ok(DEFAULT_MAX_INFLIGHT));
        assert_eq!(max_inflight(Some(&a("0"))), Ok(0));
        assert_eq!(max_inflight(Some(&a(" 25 "))), Ok(25));
        assert!(
            max_inflight(Some(&a("10001")))
                .unwrap_err()
                .contains(ANNOTATION_QUEUE_MAX_INFLIGHT)
        );
        assert!(max_inflight(Some(&a("-1"))).is_err());
    }
}
