//! The last 15 minutes of each function's metrics, kept in memory for the dashboard's graphs
//! (no Prometheus needed): a ring buffer per function, sampled every few seconds from the
//! counters the invoke path already keeps. Sampling reads those counters; the invoke path
//! never touches the ring.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::metrics::{BUCKETS, FunctionMetrics};

/// How often a sample is taken.
pub const INTERVAL_MS: u64 = 5_000;
/// Samples kept: 15 minutes.
pub const CAPACITY: usize = (15 * 60 * 1000 / INTERVAL_MS) as usize;

/// One sample: what happened since the previous one, and the gauges now.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix time in ms of the sample.
    pub t: u64,
    /// Requests per second answered 1xx/2xx, 3xx, 4xx and 5xx since the previous sample.
    pub rps2xx: f64,
    pub rps3xx: f64,
    pub rps4xx: f64,
    pub rps5xx: f64,
    /// Latency percentiles (ms, until the response started) of the requests since the
    /// previous sample, estimated from the histogram buckets; absent without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Replicas ready and wanted.
    pub ready: u64,
    pub desired: u64,
    /// Requests in flight through the gateway.
    pub inflight: i64,
    /// CPU used by the replicas (cores) since the previous sample, where the runtime
    /// measures it.
    pub cpu_cores: Option<f64>,
    /// Memory used by the ready replicas now (bytes, their cgroups' usage), where the
    /// runtime measures it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// `GET /system/function/{name}/history`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionHistory {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// Oldest first, at most 15 minutes.
    pub samples: Vec<Point>,
}

/// Samples in the list's sparkline (2.5 minutes).
pub const SPARK_POINTS: usize = 30;
/// Samples the list's error rate and percentiles cover (1 minute).
const SUMMARY_SAMPLES: usize = 12;

/// One function in `GET /system/functions/history`: what the functions list shows.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSummary {
    pub name: String,
    pub namespace: String,
    /// Requests per second of the last samples (oldest first, at most 30: 2.5 minutes).
    pub rps: Vec<f64>,
    /// Share of the last minute's responses that were 5xx (absent without requests).
    pub error_rate: Option<f64>,
    /// Latency percentiles (ms) over the last minute (absent without requests).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The gauges of a function at sampling time (read by the control plane from the handle).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub ready: u64,
    pub desired: u64,
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// Cumulative counters at the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    at_ms: u64,
    classes: [u64; 4],
    buckets: [u64; BUCKETS.len() + 1],
    cpu_ns: Option<u64>,
}

/// One function's ring.
#[derive(Default)]
pub struct History {
    inner: Mutex<Ring>,
}

/// The samples, consecutive equal ones (but for their time) as one run: a function that
/// sits idle, at zero or not, keeps one run instead of 15 minutes of samples, so a thousand
/// idle functions cost kilobytes, not tens of megabytes.
#[derive(Default)]
struct Ring {
    last: Option<Totals>,
    points: VecDeque<Run>,
    /// Samples in `points`, runs expanded.
    len: usize,
    /// The totals of the last minute's samples (the list's error rate and percentiles),
    /// equal consecutive ones counted once with their number.
    recent: VecDeque<(Totals, usize)>,
    recent_len: usize,
}

/// `count` samples equal to `first` but for their times, taken from `first.t` to `last_t`
/// (at even steps: the sampler's period).
#[derive(Debug, Clone)]
struct Run {
    first: Point,
    count: usize,
    last_t: u64,
}

impl Run {
    /// The time of the `i`th sample of the run.
    fn t(&self, i: usize) -> u64 {
        if self.count <= 1 {
            return self.first.t;
        }
        let span = self.last_t.saturating_sub(self.first.t);
        self.first.t + span * i as u64 / (self.count - 1) as u64
    }

    fn points(&self) -> impl Iterator<Item = Point> + '_ {
        (0..self.count).map(|i| Point {
            t: self.t(i),
            ..self.first.clone()
        })
    }
}

impl Ring {
    fn push(&mut self, point: Point) {
        match self.points.back_mut() {
            Some(run)
                if Point {
                    t: run.first.t,
                    ..point.clone()
                } == run.first =>
            {
                run.count += 1;
                run.last_t = point.t;
            }
            _ => self.points.push_back(Run {
                last_t: point.t,
                first: point,
                count: 1,
            }),
        }
        self.len += 1;
        if self.len > CAPACITY {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some(run) = self.points.front_mut() else {
            return;
        };
        if run.count <= 1 {
            self.points.pop_front();
        } else {
            run.first.t = run.t(1);
            run.count -= 1;
        }
        self.len -= 1;
    }

    /// The last `n` samples (all when fewer), oldest first.
    fn last_points(&self, n: usize) -> Vec<Point> {
        let skip = self.len.saturating_sub(n);
        self.points
            .iter()
            .flat_map(Run::points)
            .skip(skip)
            .collect()
    }

    fn push_recent(&mut self, totals: Totals) {
        // Only the counters matter to the summary, not when they were read.
        let same = |a: &Totals, b: &Totals| a.classes == b.classes && a.buckets == b.buckets;
        match self.recent.back_mut() {
            Some((t, n)) if same(t, &totals) => {
                *t = totals;
                *n += 1;
            }
            _ => self.recent.push_back((totals, 1)),
        }
        self.recent_len += 1;
        while self.recent_len > SUMMARY_SAMPLES + 1 {
            let Some((_, n)) = self.recent.front_mut() else {
                break;
            };
            if *n <= 1 {
                self.recent.pop_front();
            } else {
                *n -= 1;
            }
            self.recent_len -= 1;
        }
    }
}

impl History {
    /// Takes a sample at `now_ms` (the first one only sets the baseline).
    pub fn sample(&self, metrics: &FunctionMetrics, gauges: Gauges, now_ms: u64) {
        let (classes, buckets) = metrics.class_totals();
        let totals = Totals {
            at_ms: now_ms,
            classes,
            buckets,
            cpu_ns: gauges.cpu_ns,
        };
        // Before the first sample the counters were zero (they start with the function):
        // requests made before it count in the first interval.
        let zero = Totals {
            at_ms: now_ms.saturating_sub(INTERVAL_MS),
            classes: [0; 4],
            buckets: [0; BUCKETS.len() + 1],
            cpu_ns: None,
        };
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if ring.recent.is_empty() {
            ring.push_recent(zero);
        }
        ring.push_recent(totals);
        let prev = ring.last.replace(totals).unwrap_or(zero);
        let secs = now_ms.saturating_sub(prev.at_ms) as f64 / 1000.0;
        if secs <= 0.0 {
            return;
        }
        let rate = |i: usize| classes[i].saturating_sub(prev.classes[i]) as f64 / secs;
        let mut delta = [0u64; BUCKETS.len() + 1];
        for (d, (now, before)) in delta.iter_mut().zip(buckets.iter().zip(prev.buckets)) {
            *d = now.saturating_sub(before);
        }
        let point = Point {
            t: now_ms,
            rps2xx: rate(0),
            rps3xx: rate(1),
            rps4xx: rate(2),
            rps5xx: rate(3),
            p50_ms: quantile(&delta, 0.5).map(|s| s * 1000.0),
            p99_ms: quantile(&delta, 0.99).map(|s| s * 1000.0),
            ready: gauges.ready,
            desired: gauges.desired,
            inflight: metrics.inflight.load(std::sync::atomic::Ordering::Relaxed),
            cpu_cores: match (prev.cpu_ns, gauges.cpu_ns) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9 / secs),
                _ => None,
            },
            memory_bytes: gauges.memory_bytes,
        };
        ring.push(point);
    }

    /// The samples, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ring.last_points(CAPACITY)
    }

    /// The list's view: sparkline, error rate and percentiles over the last minute.
    pub fn summary(&self, name: &str, namespace: &str) -> FunctionSummary {
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rps = ring
            .last_points(SPARK_POINTS)
            .iter()
            .map(|p| ((p.rps2xx + p.rps3xx + p.rps4xx + p.rps5xx) * 100.0).round() / 100.0)
            .collect();
        let (mut error_rate, mut p50_ms, mut p99_ms) = (None, None, None);
        if let (Some((old, _)), Some((new, _))) = (ring.recent.front(), ring.recent.back()) {
            let d = |i: usize| new.classes[i].saturating_sub(old.classes[i]);
            let total: u64 = (0..4).map(d).sum();
            if total > 0 {
                error_rate = Some(d(3) as f64 / total as f64);
            }
            let mut delta = [0u64; BUCKETS.len() + 1];
            for (x, (n, o)) in delta.iter_mut().zip(new.buckets.iter().zip(old.buckets)) {
                *x = n.saturating_sub(o);
            }
            p50_ms = quantile(&delta, 0.5).map(|s| s * 1000.0);
            p99_ms = quantile(&delta, 0.99).map(|s| s * 1000.0);
        }
        FunctionSummary {
            name: name.to_string(),
            namespace: namespace.to_string(),
            rps,
            error_rate,
            p50_ms,
            p99_ms,
        }
    }

    pub fn snapshot(&self) -> FunctionHistory {
        FunctionHistory {
            interval_seconds: INTERVAL_MS / 1000,
            samples: self.points(),
        }
    }
}

/// The `q` quantile (seconds) of observations counted per bucket (non-cumulative counts, the
/// last one above the largest bound), interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without observations. Beyond the largest bound: that
/// bound.
pub fn quantile(per_bucket: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = per_bucket.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in per_bucket.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else {
                return Some(BUCKETS[BUCKETS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += n;
    }
    Some(BUCKETS[BUCKETS.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(ready: u64) -> Gauges {
        Gauges {
            ready,
            desired: ready,
            cpu_ns: None,
            memory_bytes: None,
        }
    }

    #[test]
    fn rates_by_status_class_and_percentiles_between_samples() {
        let m = FunctionMetrics::new();
        let h = History::default();
        // Requests before the first sample count in its interval.
        m.observe(200, 0.003);
        h.sample(&m, gauges(1), 10_000);
        let first = h.points();
        assert_eq!(first.len(), 1);
        assert!((first[0].rps2xx - 0.2).abs() < 1e-9, "{first:?}");
        for _ in 0..98 {
            m.observe(200, 0.003);
        }
        m.observe(404, 0.003);
        m.observe(502, 2.0);
        h.sample(&m, gauges(2), 15_000);
        let p = h.points();
        assert_eq!(p.len(), 2);
        let p = &p[1];
        assert_eq!(p.t, 15_000);
        assert!((p.rps2xx - 98.0 / 5.0).abs() < 1e-9, "{p:?}");
        assert!((p.rps4xx - 0.2).abs() < 1e-9, "{p:?}");
        assert!((p.rps5xx - 0.2).abs() < 1e-9, "{p:?}");
        assert_eq!(p.rps3xx, 0.0);
        // 99 of 100 in the first bucket (≤ 5 ms), one in (1 s, 2.5 s].
        let p50 = p.p50_ms.unwrap();
        assert!(p50 > 0.0 && p50 <= 5.0, "{p50}");
        assert!(p.p99_ms.unwrap() <= 5.0, "{p:?}");
        assert_eq!((p.ready, p.desired), (2, 2));
        // Nothing since: zero rates, no percentiles.
        h.sample(&m, gauges(2), 20_000);
        let last = h.points().pop().unwrap();
        assert_eq!(last.rps2xx, 0.0);
        assert_eq!(last.p50_ms, None);
    }

    #[test]
    fn the_lists_summary_covers_the_last_minute() {
        let m = FunctionMetrics::new();
        let h = History::default();
        let empty = h.summary("f", "ns");
        assert_eq!((empty.error_rate, empty.p50_ms), (None, None));
        h.sample(&m, gauges(1), 5_000);
        for _ in 0..3 {
            m.observe(200, 0.02);
        }
        m.observe(500, 0.02);
        h.sample(&m, gauges(1), 10_000);
        let s = h.summary("f", "ns");
        assert_eq!(s.rps, vec![0.0, 0.8]);
        assert_eq!(s.error_rate, Some(0.25));
        let p50 = s.p50_ms.unwrap();
        assert!(p50 > 10.0 && p50 <= 25.0, "{p50}");
        // A minute later without requests, the old ones no longer count.
        for i in 2..=(SUMMARY_SAMPLES as u64 + 2) {
            h.sample(&m, gauges(1), i * INTERVAL_MS);
        }
        let s = h.summary("f", "ns");
        assert_eq!(s.error_rate, None);
        assert_eq!(s.p99_ms, None);
        assert!(s.rps.len() <= SPARK_POINTS);
    }

    #[test]
    fn keeps_fifteen_minutes() {
        let m = FunctionMetrics::new();
        let h = History::default();
        for i in 0..(CAPACITY as u64 + 50) {
            h.sample(&m, gauges(1), i * INTERVAL_MS);
        }
        let p = h.points();
        assert_eq!(p.len(), CAPACITY);
        assert_eq!(p.last().unwrap().t, (CAPACITY as u64 + 49) * INTERVAL_MS);
        assert_eq!(p[0].t, 50 * INTERVAL_MS, "the oldest were dropped first");
    }

    #[test]
    fn an_idle_function_keeps_one_run_not_fifteen_minutes_of_samples() {
        let m = FunctionMetrics::new();
        let h = History::default();
        // At zero: every sample the same but for its time (with a little jitter).
        for i in 0..(CAPACITY as u64 + 20) {
            h.sample(&m, gauges(0), i * INTERVAL_MS + i % 3);
        }
        {
            let ring = h.inner.lock().unwrap();
            assert_eq!(ring.points.len(), 1, "one run");
            assert_eq!(ring.recent.len(), 1, "one run of equal totals");
        }
        let p = h.points();
        assert_eq!(p.len(), CAPACITY);
        let last = CAPACITY as u64 + 19;
        assert_eq!(p.last().unwrap().t, last * INTERVAL_MS + last % 3);
        // The others spread evenly between the oldest kept and the last: within the jitter.
        assert!(p[0].t.abs_diff(20 * INTERVAL_MS) <= 3, "{}", p[0].t);
        assert!(p.windows(2).all(|w| w[0].t < w[1].t));
        assert!(p.iter().all(|x| x.rps2xx == 0.0 && x.ready == 0));

        // A request breaks the run: the sample with it stands alone, then a new run.
        m.observe(200, 0.003);
        let t = (CAPACITY as u64 + 20) * INTERVAL_MS;
        h.sample(&m, gauges(0), t);
        h.sample(&m, gauges(0), t + INTERVAL_MS);
        h.sample(&m, gauges(0), t + 2 * INTERVAL_MS);
        assert_eq!(h.inner.lock().unwrap().points.len(), 3);
        let p = h.points();
        assert_eq!(p.len(), CAPACITY);
        assert!(p[CAPACITY - 3].rps2xx > 0.0);
        assert_eq!(p[CAPACITY - 1].t, t + 2 * INTERVAL_MS);
        let s = h.summary("f", "ns");
        assert_eq!(s.rps.len(), SPARK_POINTS);
        assert_eq!(s.error_rate, Some(0.0));
    }

    #[test]
    fn cpu_is_a_rate_where_measured_and_memory_a_gauge() {
        let m = FunctionMetrics::new();
        let h = History::default();
        let g = |ns, mem| Gauges {
            ready: 1,
            desired: 1,
            cpu_ns: Some(ns),
            memory_bytes: mem,
        };
        h.sample(&m, g(1_000_000_000, Some(10 << 20)), 5_000);
        h.sample(&m, g(3_500_000_000, Some(12 << 20)), 10_000);
        h.sample(&m, g(3_500_000_000, None), 15_000);
        let p = h.points();
        assert_eq!(p[0].cpu_cores, None, "nothing to compare the first with");
        assert!((p[1].cpu_cores.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(p[0].memory_bytes, Some(10 << 20));
        assert_eq!(
            p[1].memory_bytes,
            Some(12 << 20),
            "what it is now, not a rate"
        );
        assert_eq!(p[2].memory_bytes, None);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut b = [0u64; BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        b[1] = 10; // (5 ms, 10 ms]
        let q = quantile(&b, 0.5).unwrap();
        assert!((q - 0.0075).abs() < 1e-9, "{q}");
        b[BUCKETS.len()] = 1000; // above 10 s
        assert_eq!(quantile(&b, 0.99), Some(10.0));
    }
}
