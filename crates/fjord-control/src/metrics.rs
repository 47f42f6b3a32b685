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
    /// The connectors' view of this function (cron, NATS, MQTT): kept across updates like
    /// the counters above, gone with the function.
    pub triggers: TriggerBoard,
    /// The last 15 minutes, sampled every few seconds for the dashboard (never touched by
    /// the invoke path).
    pub history: crate::history::History,
}

/// How one trigger run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// The function answered 2xx.
    Ok,
    /// A non-2xx answer or no answer; the reason is shown as the last status.
    Failed(String),
    /// Not run (e.g. the previous run was still going); the reason is shown.
    Skipped(String),
}

/// Per connector source of one function: last and next run, last status, counts. Written by
/// connectors (a few times per message or run), read by the status and metrics endpoints;
/// never touched by the HTTP invoke path.
#[derive(Default)]
pub struct TriggerBoard {
    entries: std::sync::Mutex<Vec<TriggerEntry>>,
}

#[derive(Clone, Default)]
struct TriggerEntry {
    kind: &'static str,
    source: String,
    active: bool,
    last_run: Option<String>,
    next_run: Option<String>,
    last_status: Option<String>,
    fired: u64,
    failed: u64,
    skipped: u64,
    /// Messages waiting in a JetStream consumer (as of its last delivery).
    lag: Option<u64>,
}

impl TriggerBoard {
    fn with<R>(
        &self,
        kind: &'static str,
        source: &str,
        f: impl FnOnce(&mut TriggerEntry) -> R,
    ) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let i = match entries
            .iter()
            .position(|e| e.kind == kind && e.source == source)
        {
            Some(i) => i,
            None => {
                entries.push(TriggerEntry {
                    kind,
                    source: source.to_string(),
                    ..TriggerEntry::default()
                });
                entries.len() - 1
            }
        };
        f(&mut entries[i])
    }

    /// Makes `kind`'s sources exactly `sources` (a redeploy changed them): counts of the
    /// sources that stay are kept, the others go.
    pub fn set_sources(&self, kind: &'static str, sources: &[String]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|e| e.kind != kind || sources.contains(&e.source));
        for s in sources {
            if !entries.iter().any(|e| e.kind == kind && &e.source == s) {
                entries.push(TriggerEntry {
                    kind,
                    source: s.clone(),
                    ..TriggerEntry::default()
                });
            }
        }
    }

    /// Whether the source is subscribed or scheduled now.
    pub fn set_active(&self, kind: &'static str, source: &str, active: bool) {
        self.with(kind, source, |e| e.active = active);
    }

    /// Messages still waiting for this source (a JetStream consumer's pending count).
    pub fn set_lag(&self, kind: &'static str, source: &str, lag: u64) {
        self.with(kind, source, |e| e.lag = Some(lag));
    }

    /// The next scheduled run (RFC 3339), or none.
    pub fn set_next_run(&self, kind: &'static str, source: &str, next: Option<String>) {
        self.with(kind, source, |e| e.next_run = next);
    }

    /// Records one run that started at `at` (RFC 3339).
    pub fn record(&self, kind: &'static str, source: &str, at: String, outcome: TriggerOutcome) {
        self.with(kind, source, |e| {
            match &outcome {
                TriggerOutcome::Ok => e.fired += 1,
                TriggerOutcome::Failed(_) => e.failed += 1,
                TriggerOutcome::Skipped(_) => e.skipped += 1,
            }
            if !matches!(outcome, TriggerOutcome::Skipped(_)) {
                e.last_run = Some(at);
            }
            e.last_status = Some(match outcome {
                TriggerOutcome::Ok => "ok".into(),
                TriggerOutcome::Failed(why) => format!("failed: {why}"),
                TriggerOutcome::Skipped(why) => format!("skipped: {why}"),
            });
        });
    }

    /// The entries for `fjord.triggers` (none: `None`), sorted by kind and source.
    pub fn statuses(&self) -> Option<Vec<fjord_core::openfaas::TriggerStatus>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.is_empty() {
            return None;
        }
        let mut out: Vec<_> = entries
            .iter()
            .map(|e| fjord_core::openfaas::TriggerStatus {
                kind: e.kind.to_string(),
                source: e.source.clone(),
                last_run: e.last_run.clone(),
                next_run: e.next_run.clone(),
                last_status: e.last_status.clone(),
                fired: e.fired,
                failed: e.failed,
                skipped: e.skipped,
                active: e.active,
                lag: e.lag,
            })
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.source).cmp(&(&b.kind, &b.source)));
        Some(out)
    }

    /// (kind, source, lag) of the sources that report one.
    fn lags(&self) -> Vec<(&'static str, String, u64)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter_map(|e| Some((e.kind, e.source.clone(), e.lag?)))
            .collect()
    }

    /// (kind, ok, failed, skipped) summed over each kind's sources, sorted by kind.
    fn totals(&self) -> Vec<(&'static str, u64, u64, u64)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(&'static str, u64, u64, u64)> = Vec::new();
        for e in entries.iter() {
            match out.iter_mut().find(|t| t.0 == e.kind) {
                Some(t) => {
                    t.1 += e.fired;
                    t.2 += e.failed;
                    t.3 += e.skipped;
                }
                None => out.push((e.kind, e.fired, e.failed, e.skipped)),
            }
        }
        out.sort_by_key(|t| t.0);
        out
    }
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

    /// Responses per status class (1xx/2xx, 3xx, 4xx, 5xx) and per latency bucket (not
    /// cumulative; the last is above the largest bound), summed over status codes: the
    /// history's sampler reads these every few seconds.
    pub fn class_totals(&self) -> ([u64; 4], [u64; BUCKETS.len() + 1]) {
        let mut classes = [0u64; 4];
        let mut per_bucket = [0u64; BUCKETS.len() + 1];
        for (code, h) in self.codes.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let count = h.count();
            let class = match code {
                ..300 => 0,
                300..400 => 1,
                400..500 => 2,
                _ => 3,
            };
            classes[class] += count;
            let mut below = 0;
            for (i, b) in h.buckets.iter().enumerate() {
                let cumulative = b.load(Ordering::Relaxed);
                per_bucket[i] += cumulative.saturating_sub(below);
                below = cumulative;
            }
            per_bucket[BUCKETS.len()] += count.saturating_sub(below);
        }
        (classes, per_bucket)
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
        "fjord_trigger_invocations_total",
        "counter",
        "Invocations by connectors (cron, nats, mqtt) by outcome: ok, failed, skipped",
    );
    for s in samples {
        for (kind, ok, failed, skipped) in s.metrics.triggers.totals() {
            for (status, v) in [("ok", ok), ("failed", failed), ("skipped", skipped)] {
                let _ = writeln!(
                    out,
                    "fjord_trigger_invocations_total{{trigger=\"{kind}\",function=\"{}\",status=\"{status}\"}} {v}",
                    s.function_name
                );
            }
        }
    }
    family(
        &mut out,
        "fjord_trigger_consumer_lag",
        "gauge",
        "Messages waiting in a connector's JetStream consumer, by subject",
    );
    for s in samples {
        for (kind, source, lag) in s.metrics.triggers.lags() {
            let source = source.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "fjord_trigger_consumer_lag{{trigger=\"{kind}\",function=\"{}\",source=\"{source}\"}} {lag}",
                s.function_name
            );
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

    #[test]
    fn trigger_board_counts_and_follows_sources() {
        let m = FunctionMetrics::default();
        assert!(m.triggers.statuses().is_none(), "no triggers: no list");
        m.triggers
            .set_sources("nats", &["a.b".to_string(), "c".to_string()]);
        m.triggers
            .record("nats", "a.b", "t1".into(), TriggerOutcome::Ok);
        m.triggers.set_lag("nats", "a.b", 7);
        m.triggers.record(
            "nats",
            "c",
            "t2".into(),
            TriggerOutcome::Failed("500".into()),
        );
        m.triggers.record(
            "cron",
            "* * * * * (UTC)",
            "t3".into(),
            TriggerOutcome::Skipped("still running".into()),
        );
        let text = render(&[FunctionSample {
            function_name: "f.ns",
            metrics: &m,
            desired: 1,
            ready: 1,
            restarts: 0,
            oom_kills: 0,
            queue_depth: 0,
        }]);
        for line in [
            "fjord_trigger_invocations_total{trigger=\"nats\",function=\"f.ns\",status=\"ok\"} 1",
            "fjord_trigger_invocations_total{trigger=\"nats\",function=\"f.ns\",status=\"failed\"} 1",
            "fjord_trigger_invocations_total{trigger=\"cron\",function=\"f.ns\",status=\"skipped\"} 1",
            "fjord_trigger_consumer_lag{trigger=\"nats\",function=\"f.ns\",source=\"a.b\"} 7",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let cron = &m.triggers.statuses().expect("listed")[0];
        assert_eq!(cron.kind, "cron");
        assert_eq!(cron.last_run, None, "a skipped run is not a run");
        assert_eq!(cron.last_status.as_deref(), Some("skipped: still running"));
        // A redeploy drops subject c and keeps a.b's counts.
        m.triggers.set_sources("nats", &["a.b".to_string()]);
        let nats: Vec<_> = m
            .triggers
            .statuses()
            .expect("listed")
            .into_iter()
            .filter(|t| t.kind == "nats")
            .collect();
        assert_eq!(nats.len(), 1);
        assert_eq!((nats[0].source.as_str(), nats[0].fired), ("a.b", 1));
        assert_eq!(nats[0].last_run.as_deref(), Some("t1"));
    }
}
