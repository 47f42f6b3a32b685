//! Per-function invocation metrics, kept with atomics in each function's routing entry (no
//! global lock on the invoke path) and rendered in the Prometheus text format under the
//! OpenFaaS gateway's names, so existing dashboards and alert rules keep working.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Prometheus' default histogram buckets, as the OpenFaaS gateway uses.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with a count and a sum.
#[derive(Default)]
pub struct Histogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; 11],
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// One function's counters.
#[derive(Default)]
pub struct FunctionMetrics {
    /// `gateway_function_invocation_started`.
    pub started: AtomicU64,
    /// Requests in flight through the gateway.
    pub inflight: AtomicI64,
    /// Per status code: `gateway_function_invocation_total` and `gateway_functions_seconds`.
    /// A short list behind a per-function lock, read-locked per request (uncontended).
    codes: RwLock<Vec<(u16, Arc<Histogram>)>>,
    /// Requests that arrived when no replica was running and waited for one.
    pub cold_starts: AtomicU64,
    pub cold_start_seconds: Histogram,
    /// Requests turned away: 429 (saturated at max scale) or 503 (nothing became ready).
    pub rejected: AtomicU64,
    /// Requests waiting for a replica right now (bounded).
    pub held: AtomicU64,
    /// Fork-mode processes running now (bounded by `--max-forks-per-function`).
    pub forks: AtomicU64,
    /// Unix time in ms of the last request (sync or async): the idler's clock.
    pub last_request_ms: AtomicU64,
    /// Async calls running now, and their outcomes.
    pub async_inflight: AtomicI64,
    pub async_processed: AtomicU64,
    pub async_retried: AtomicU64,
    pub async_dead: AtomicU64,
    pub async_callback_failures: AtomicU64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FunctionMetrics {
    pub fn new() -> Self {
        let m = Self::default();
        m.last_request_ms.store(now_ms(), Ordering::Relaxed);
        m
    }

    fn code(&self, code: u16) -> Arc<Histogram> {
        if let Some((_, h)) = self
            .codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(c, _)| *c == code)
        {
            return h.clone();
        }
        let mut codes = self.codes.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, h)) = codes.iter().find(|(c, _)| *c == code) {
            return h.clone();
        }
        let h = Arc::new(Histogram::default());
        codes.push((code, h.clone()));
        codes.sort_by_key(|(c, _)| *c);
        h
    }

    /// Records a finished invocation (status, seconds until the response started).
    pub fn observe(&self, code: u16, seconds: f64) {
        self.code(code).observe(seconds);
    }

    /// Invocations answered 2xx (the autoscaler's community rule counts these).
    pub fn successes(&self) -> u64 {
        self.codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(c, _)| (200..300).contains(c))
            .map(|(_, h)| h.count())
            .sum()
    }

    /// All invocations with a response (the function list's `invocationCount`).
    pub fn invocations(&self) -> u64 {
        self.codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, h)| h.count())
            .sum()
    }

    fn codes(&self) -> Vec<(u16, Arc<Histogram>)> {
        self.codes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What is known of one function when rendering.
pub struct FunctionSample<'a> {
    /// `name.namespace`.
    pub function_name: &'a str,
    pub metrics: &'a FunctionMetrics,
    pub desired: u64,
    pub ready: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    /// Async calls waiting (queued, retrying or running).
    pub queue_depth: u64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every function's metrics, one family at a time.
pub fn render(samples: &[FunctionSample<'_>]) -> String {
    let mut out = String::with_capacity(1024 + samples.len() * 2048);
    family(
        &mut out,
        "gateway_function_invocation_total",
        "counter",
        "Function invocations by status code",
    );
    for s in samples {
        for (code, h) in s.metrics.codes() {
            let _ = writeln!(
                out,
                "gateway_function_invocation_total{{code=\"{code}\",function_name=\"{}\"}} {}",
                s.function_name,
                h.count()
            );
        }
    }
    family(
        &mut out,
        "gateway_functions_seconds",
        "histogram",
        "Function time taken, until the response started",
    );
    for s in samples {
        for (code, h) in s.metrics.codes() {
            h.render(
                &mut out,
                "gateway_functions_seconds",
                &format!("code=\"{code}\",function_name=\"{}\"", s.function_name),
            );
        }
    }
    let gauge_or_counter = [
        (
            "gateway_function_invocation_started",
            "counter",
            "Function invocations started",
        ),
        (
            "gateway_service_count",
            "gauge",
            "Desired replicas of the function",
        ),
        (
            "fjord_function_ready_replicas",
            "gauge",
            "Replicas ready to serve",
        ),
        (
            "fjord_function_inflight_requests",
            "gauge",
            "Requests in flight through the gateway",
        ),
        (
            "fjord_function_cold_starts_total",
            "counter",
            "Requests that waited for a replica to start",
        ),
        (
            "fjord_function_rejected_total",
            "counter",
            "Requests turned away with 429 or 503",
        ),
        (
            "fjord_function_replica_restarts_total",
            "counter",
            "Replica restarts after a crash",
        ),
        (
            "fjord_function_oom_kills_total",
            "counter",
            "Replicas killed for exceeding limits.memory",
        ),
        (
            "fjord_queue_depth",
            "gauge",
            "Async calls queued, retrying or running",
        ),
        ("fjord_async_inflight", "gauge", "Async calls running now"),
        (
            "fjord_async_processed_total",
            "counter",
            "Async calls completed",
        ),
        (
            "fjord_async_retried_total",
            "counter",
            "Async call attempts that will be retried",
        ),
        (
            "fjord_async_dead_lettered_total",
            "counter",
            "Async calls given up after their last attempt",
        ),
        (
            "fjord_async_callback_failures_total",
            "counter",
            "Callbacks that could not be delivered",
        ),
    ];
    for (name, kind, help) in gauge_or_counter {
        family(&mut out, name, kind, help);
        for s in samples {
            let m = s.metrics;
            let v: i64 = match name {
                "gateway_function_invocation_started" => m.started.load(Ordering::Relaxed) as i64,
                "gateway_service_count" => s.desired as i64,
                "fjord_function_ready_replicas" => s.ready as i64,
                "fjord_function_inflight_requests" => m.inflight.load(Ordering::Relaxed),
                "fjord_function_cold_starts_total" => m.cold_starts.load(Ordering::Relaxed) as i64,
                "fjord_function_rejected_total" => m.rejected.load(Ordering::Relaxed) as i64,
                "fjord_function_replica_restarts_total" => s.restarts as i64,
                "fjord_function_oom_kills_total" => s.oom_kills as i64,
                "fjord_queue_depth" => s.queue_depth as i64,
                "fjord_async_inflight" => m.async_inflight.load(Ordering::Relaxed),
                "fjord_async_processed_total" => m.async_processed.load(Ordering::Relaxed) as i64,
                "fjord_async_retried_total" => m.async_retried.load(Ordering::Relaxed) as i64,
                "fjord_async_dead_lettered_total" => m.async_dead.load(Ordering::Relaxed) as i64,
                _ => m.async_callback_failures.load(Ordering::Relaxed) as i64,
            };
            let _ = writeln!(out, "{name}{{function_name=\"{}\"}} {v}", s.function_name);
        }
    }
    family(
        &mut out,
        "fjord_function_cold_start_seconds",
        "histogram",
        "Time requests waited for a replica to start",
    );
    for s in samples {
        s.metrics.cold_start_seconds.render(
            &mut out,
            "fjord_function_cold_start_seconds",
            &format!("function_name=\"{}\"", s.function_name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openfaas_names() {
        let m = FunctionMetrics::default();
        m.started.fetch_add(3, Ordering::Relaxed);
        m.observe(200, 0.003);
        m.observe(200, 0.2);
        m.observe(500, 1.5);
        assert_eq!(m.invocations(), 3);
        let text = render(&[FunctionSample {
            function_name: "env.openfaas-fn",
            metrics: &m,
            desired: 2,
            ready: 1,
            restarts: 0,
            oom_kills: 0,
            queue_depth: 0,
        }]);
        assert!(text.contains("gateway_function_invocation_total{code=\"200\",function_name=\"env.openfaas-fn\"} 2"), "{text}");
        assert!(text.contains("gateway_functions_seconds_bucket{code=\"200\",function_name=\"env.openfaas-fn\",le=\"0.005\"} 1"), "{text}");
        assert!(
            text.contains(
                "gateway_functions_seconds_count{code=\"500\",function_name=\"env.openfaas-fn\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_function_invocation_started{function_name=\"env.openfaas-fn\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("gateway_service_count{function_name=\"env.openfaas-fn\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fjord_queue_depth{function_name=\"env.openfaas-fn\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("fjord_async_dead_lettered_total{function_name=\"env.openfaas-fn\"} 0"),
            "{text}"
        );
    }
}
