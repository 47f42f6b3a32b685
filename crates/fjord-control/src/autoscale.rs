//! The autoscaler's and the idler's decisions: pure functions of what was observed, the
//! function's spec and the time given to them. No clock, no I/O: the ticker in lib.rs is the
//! only reader of the wall clock, and `ControlPlane::autoscale_tick` applies the decisions.
//! See docs/api.md ("Autoscaling") for the rules and their numbers.

use std::collections::VecDeque;
use std::time::Duration;

use fjord_core::{FunctionSpec, ScaleKind, ScaleRule};

/// Community rule: successful requests per second above which a function scales up
/// (OpenFaaS CE's `APIHighInvocationRate` alert).
pub const RULE_RPS: f64 = 5.0;
/// Community rule: how long the rate must stay above [`RULE_RPS`] (the alert's `for: 5s`).
pub const RULE_FOR: Duration = Duration::from_secs(5);
/// Community rule: the rate is measured over this window (the alert's `rate(...[10s])`).
pub const RULE_RATE_WINDOW: Duration = Duration::from_secs(10);
/// Community rule: while the rate stays above, another step this often (AlertManager's
/// `repeat_interval` in OpenFaaS's deployment).
pub const RULE_REPEAT: Duration = Duration::from_secs(30);

/// What the ticker read for one function at `now_ms`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation {
    /// Unix time in ms (the ticker's clock; tests pass their own).
    pub now_ms: u64,
    /// Desired replicas now.
    pub desired: u64,
    /// Invocations started so far (cumulative).
    pub started: u64,
    /// Invocations answered 2xx so far (cumulative).
    pub succeeded: u64,
    /// Requests in flight now.
    pub inflight: i64,
    /// CPU time of the ready replicas so far (ns), read only for `scale.type=cpu`.
    pub cpu_ns: Option<u64>,
    /// Unix time in ms of the last request.
    pub last_request_ms: u64,
}

/// The gateway's defaults for what labels leave unset.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Idle time before scaling to zero (`--scale-zero-duration`).
    pub zero_duration: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            zero_duration: Duration::from_secs(15 * 60),
        }
    }
}

/// A replica count to set, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub replicas: u64,
    pub reason: String,
    /// The idler's scale to zero (else the autoscaler's).
    pub idle: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    started: u64,
    succeeded: u64,
    cpu_ns: Option<u64>,
}

/// What one function's decisions remember between ticks (kept in its metrics, across
/// updates). Only the ticker and the rare scale events outside it touch it.
#[derive(Debug, Default)]
pub struct ScalerState {
    /// Recent observations: the last [`RULE_RATE_WINDOW`], and at least the last two.
    samples: VecDeque<Sample>,
    /// Target rule: recommendations (time ms, replicas) of the down window, plus scales from
    /// outside the autoscaler, so those hold for one window.
    recommendations: VecDeque<(u64, u64)>,
    /// Community rule: since when the rate has been above [`RULE_RPS`].
    above_since: Option<u64>,
    /// Community rule: the rate has stayed above long enough (the alert fires).
    firing: bool,
    last_step_ms: u64,
    /// Community rule: when replicas were last added for saturation (every replica at
    /// `max_inflight`); they go back to min one down window later, unless the rule fires.
    raised_at: Option<u64>,
}

impl ScalerState {
    /// A scale from outside the autoscaler (API, alert, a request at zero): under the target
    /// rule it counts as a recommendation, so it holds for one down window.
    pub fn hold(&mut self, now_ms: u64, replicas: u64) {
        self.recommendations.push_back((now_ms, replicas));
        // Bounded even when nothing trims (community rule, or autoscaler ticks far apart).
        while self.recommendations.len() > 1024 {
            self.recommendations.pop_front();
        }
    }

    /// Replicas added because every replica was at `max_inflight`.
    pub fn raised(&mut self, now_ms: u64, replicas: u64) {
        self.hold(now_ms, replicas);
        self.raised_at = Some(now_ms);
    }

    /// Every replica at `max_inflight` and none can be added (at max): replicas added for
    /// saturation stay one more down window.
    pub fn still_saturated(&mut self, now_ms: u64) {
        if self.raised_at.is_some() {
            self.raised_at = Some(now_ms);
        }
    }

    /// Successful requests per second over the samples kept (up to the last 10 s); `None`
    /// until they span a second.
    fn success_rate(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.at.saturating_sub(first.at);
        (span >= 1000)
            .then(|| last.succeeded.saturating_sub(first.succeeded) as f64 * 1000.0 / span as f64)
    }

    fn record(&mut self, o: &Observation) {
        self.samples.push_back(Sample {
            at: o.now_ms,
            started: o.started,
            succeeded: o.succeeded,
            cpu_ns: o.cpu_ns,
        });
        let window = RULE_RATE_WINDOW.as_millis() as u64;
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|s| o.now_ms.saturating_sub(s.at) > window)
        {
            self.samples.pop_front();
        }
    }

    fn reset_rule(&mut self) {
        self.above_since = None;
        self.firing = false;
        self.raised_at = None;
    }
}

/// One decision for one function: the idler first, then the autoscaler's rule. `state` is
/// updated with `o`; the result is the replica count to set, if it changes.
pub fn decide(
    state: &mut ScalerState,
    spec: &FunctionSpec,
    o: &Observation,
    defaults: &Defaults,
) -> Option<Decision> {
    state.record(o);
    let policy = &spec.scale;
    let window_ms = policy.down_window.as_millis() as u64;
    while state
        .recommendations
        .front()
        .is_some_and(|(t, _)| o.now_ms.saturating_sub(*t) > window_ms)
    {
        state.recommendations.pop_front();
    }

    // Idler: to zero after zero-duration without requests.
    if policy.zero && o.desired > 0 {
        let idle_ms = o.now_ms.saturating_sub(o.last_request_ms);
        let after = policy.zero_duration.unwrap_or(defaults.zero_duration);
        if idle_ms >= after.as_millis() as u64 && o.inflight <= 0 {
            state.reset_rule();
            return Some(Decision {
                replicas: 0,
                reason: format!(
                    "scaled to zero after {} without requests",
                    humantime::format_duration(Duration::from_secs(idle_ms / 1000))
                ),
                idle: true,
            });
        }
    }
    if spec.min_replicas == spec.max_replicas || o.desired == 0 {
        state.reset_rule();
        return None;
    }
    match policy.rule {
        ScaleRule::Community => community(state, spec, o),
        ScaleRule::Target => target(state, spec, o),
    }
}

/// OpenFaaS Community Edition's rule: more than [`RULE_RPS`] successful requests/s for
/// [`RULE_FOR`] adds `ceil(max × factor / 100)` replicas (at least one, up to max), again every
/// [`RULE_REPEAT`] while it lasts; when the rate falls back, min.
fn community(state: &mut ScalerState, spec: &FunctionSpec, o: &Observation) -> Option<Decision> {
    let factor = spec.scale.factor;
    if factor <= 0.0 {
        // scale.factor=0: automatic scaling off, as in OpenFaaS.
        state.reset_rule();
        return None;
    }
    let (now, desired, max) = (o.now_ms, o.desired, spec.max_replicas);
    let floor = spec.min_replicas.max(1);
    let rate = state.success_rate()?;
    if rate > RULE_RPS {
        let since = *state.above_since.get_or_insert(now);
        if now.saturating_sub(since) < RULE_FOR.as_millis() as u64 {
            return None;
        }
        let due = !state.firing
            || now.saturating_sub(state.last_step_ms) >= RULE_REPEAT.as_millis() as u64;
        state.firing = true;
        if !due {
            return None;
        }
        state.last_step_ms = now;
        let step = ((max as f64 * factor / 100.0).ceil() as u64).max(1);
        let to = desired.saturating_add(step).min(max);
        return (to > desired).then(|| Decision {
            replicas: to,
            reason: format!(
                "autoscaler: {rate:.1} successful req/s for {}s (above {RULE_RPS}) → {desired} to {to} (+{factor}% of max {max})",
                RULE_FOR.as_secs()
            ),
            idle: false,
        });
    }
    state.above_since = None;
    let back = if state.firing {
        true
    } else if let Some(t) = state.raised_at {
        now.saturating_sub(t) >= spec.scale.down_window.as_millis() as u64
    } else {
        false
    };
    if !back {
        return None;
    }
    let was_firing = state.firing;
    state.reset_rule();
    (desired != floor).then(|| Decision {
        replicas: floor,
        reason: if was_firing {
            format!(
                "autoscaler: {rate:.1} successful req/s, back at or below {RULE_RPS} → {desired} to {floor} (min)"
            )
        } else {
            format!(
                "autoscaler: {} since replicas were last added for max_inflight → {desired} to {floor} (min)",
                humantime::format_duration(spec.scale.down_window)
            )
        },
        idle: false,
    })
}

/// Target tracking: `ceil(load / (target × target-proportion))` replicas, clamped to
/// [max(min, 1), max]; up at once, down only to the highest recommendation of the down window.
fn target(state: &mut ScalerState, spec: &FunctionSpec, o: &Observation) -> Option<Decision> {
    let policy = &spec.scale;
    let desired = o.desired;
    let per_tick = |f: fn(&Sample) -> Option<u64>| -> Option<f64> {
        let n = state.samples.len();
        let (prev, last) = (state.samples.get(n.checked_sub(2)?)?, state.samples.back()?);
        let secs = (last.at.saturating_sub(prev.at) as f64 / 1000.0).max(0.001);
        Some(f(last)?.saturating_sub(f(prev)?) as f64 / secs)
    };
    let load = match policy.kind {
        ScaleKind::Rps => per_tick(|s| Some(s.started))?,
        ScaleKind::Capacity => o.inflight.max(0) as f64,
        // Millicores over the last tick, summed over the ready replicas.
        ScaleKind::Cpu => per_tick(|s| s.cpu_ns)? / 1e6,
    };
    let per_replica = policy.target * policy.proportion;
    let raw = (load / per_replica).ceil() as u64;
    let recommended = raw.clamp(spec.min_replicas.max(1), spec.max_replicas);
    state.recommendations.push_back((o.now_ms, recommended));
    let highest = state
        .recommendations
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(recommended);
    let next = if recommended > desired {
        recommended
    } else {
        highest.min(desired)
    };
    let unit = match policy.kind {
        ScaleKind::Rps => "req/s",
        ScaleKind::Capacity => "in flight",
        ScaleKind::Cpu => "millicores",
    };
    (next != desired).then(|| Decision {
        replicas: next,
        reason: format!(
            "autoscaler: {load:.1} {unit} for target {} × {} per replica → {desired} to {next}",
            policy.target, policy.proportion
        ),
        idle: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: serde_json::Value) -> FunctionSpec {
        let d = serde_json::from_value(serde_json::json!({
            "service": "f", "image": "x", "envProcess": "cat", "labels": labels,
        }))
        .unwrap();
        FunctionSpec::from_deployment(d).unwrap()
    }

    /// A fake function: a clock in ms and counters the test drives.
    struct Sim {
        state: ScalerState,
        spec: FunctionSpec,
        o: Observation,
        defaults: Defaults,
    }

    impl Sim {
        fn new(labels: serde_json::Value, desired: u64) -> Self {
            Self {
                state: ScalerState::default(),
                spec: spec(labels),
                o: Observation {
                    now_ms: 1_000_000,
                    desired,
                    last_request_ms: 1_000_000,
                    ..Default::default()
                },
                defaults: Defaults::default(),
            }
        }

        /// One tick `ms` after the last, with `ok` successful requests in between; applies
        /// the decision like the control plane does.
        fn tick(&mut self, ms: u64, ok: u64) -> Option<Decision> {
            self.o.now_ms += ms;
            self.o.started += ok;
            self.o.succeeded += ok;
            if ok > 0 {
                self.o.last_request_ms = self.o.now_ms;
            }
            let d = decide(&mut self.state, &self.spec, &self.o, &self.defaults);
            if let Some(d) = &d {
                self.o.desired = d.replicas;
            }
            d
        }

        /// `secs` one-second ticks at `rps`; the decisions made.
        fn run(&mut self, secs: u64, rps: u64) -> Vec<(u64, Decision)> {
            let start = self.o.now_ms;
            (0..secs)
                .filter_map(|_| {
                    self.tick(1000, rps)
                        .map(|d| ((self.o.now_ms - start) / 1000, d))
                })
                .collect()
        }
    }

    #[test]
    fn community_rule_steps_up_after_five_seconds_above_five_rps() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "10"}),
            1,
        );
        assert_eq!(s.spec.scale.rule, ScaleRule::Community);
        // 5 req/s is not above 5: nothing, however long.
        assert!(s.run(20, 5).is_empty());
        // 6 req/s: the first tick above starts the 5 s; the step comes 5 s later, +2
        // (ceil(10 × 20 %)).
        let d = s.run(10, 6);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].0, 6, "first above at 1 s, step 5 s later: {d:?}");
        assert_eq!(d[0].1.replicas, 3);
        assert!(d[0].1.reason.contains("successful req/s"), "{d:?}");
        // Still above: the next step only 30 s after the first.
        let d = s.run(29, 6);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].0, d[0].1.replicas), (26, 5), "{d:?}");
    }

    #[test]
    fn community_rule_returns_to_min_when_the_rate_falls() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "4",
                               "com.openfaas.scale.factor": "50"}),
            2,
        );
        let d = s.run(8, 20);
        assert_eq!(d.last().map(|(_, d)| d.replicas), Some(4), "{d:?}");
        // The rate over the last 10 s falls under 5 within 10 s of the load stopping.
        let d = s.run(12, 0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].0 <= 10, "{d:?}");
        assert_eq!(d[0].1.replicas, 2, "back to min: {d:?}");
        assert!(d[0].1.reason.contains("min"), "{d:?}");
        // And stays there.
        assert!(s.run(60, 0).is_empty());
    }

    #[test]
    fn community_rule_leaves_a_manual_count_alone() {
        let mut s = Sim::new(serde_json::json!({"com.openfaas.scale.max": "10"}), 1);
        s.run(3, 0);
        // Set through the API: OpenFaaS CE keeps it while no alert fires.
        s.o.desired = 7;
        s.state.hold(s.o.now_ms, 7);
        assert!(s.run(120, 1).is_empty());
        assert_eq!(s.o.desired, 7);
    }

    #[test]
    fn community_rule_off_with_factor_zero() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.max": "10", "com.openfaas.scale.factor": "0"}),
            1,
        );
        assert!(s.run(60, 100).is_empty());
    }

    #[test]
    fn saturation_replicas_go_back_to_min_after_the_down_window() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.max": "3", "com.openfaas.scale.down.window": "10s"}),
            1,
        );
        s.run(2, 1);
        s.o.desired = 2;
        s.state.raised(s.o.now_ms, 2);
        let d = s.run(15, 1);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].0, d[0].1.replicas), (10, 1), "{d:?}");
    }

    #[test]
    fn target_rule_with_explicit_labels() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.target": "10", "com.openfaas.scale.max": "5",
                               "com.openfaas.scale.down.window": "5s"}),
            1,
        );
        assert_eq!(s.spec.scale.rule, ScaleRule::Target);
        s.tick(1000, 0);
        // 30 req/s for target 10 × 0.9: ceil(30 / 9) = 4, at once.
        let d = s.tick(1000, 30).expect("scale up");
        assert_eq!(d.replicas, 4);
        assert!(d.reason.contains("req/s for target 10"), "{d:?}");
        // Idle: down only once the 5 s window has no higher recommendation.
        let d = s.run(10, 0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].0, d[0].1.replicas), (6, 1), "{d:?}");
        // A scale type alone selects it too.
        let t = spec(serde_json::json!({"com.openfaas.scale.type": "capacity"}));
        assert_eq!(t.scale.rule, ScaleRule::Target);
    }

    #[test]
    fn target_rule_holds_a_manual_scale_for_the_down_window() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.type": "rps", "com.openfaas.scale.max": "5",
                               "com.openfaas.scale.down.window": "6s"}),
            1,
        );
        s.run(2, 0);
        s.o.desired = 3;
        s.state.hold(s.o.now_ms, 3);
        let d = s.run(10, 0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].0, d[0].1.replicas), (7, 1), "{d:?}");
    }

    #[test]
    fn min_equal_max_is_never_touched() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "2"}),
            2,
        );
        assert!(s.run(60, 100).is_empty());
    }

    #[test]
    fn idler_uses_the_label_else_the_gateway_default() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "3s"}),
            1,
        );
        let d = s.run(10, 0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].0, d[0].1.replicas, d[0].1.idle), (3, 0, true));
        assert!(d[0].1.reason.contains("zero after 3s"), "{d:?}");

        let mut s = Sim::new(serde_json::json!({"com.openfaas.scale.zero": "true"}), 1);
        s.defaults.zero_duration = Duration::from_secs(7);
        let d = s.run(10, 0);
        assert_eq!((d[0].0, d[0].1.replicas), (7, 0), "{d:?}");

        // Requests keep it up; without the zero label it never goes to zero.
        let mut s = Sim::new(serde_json::json!({"com.openfaas.scale.zero": "true"}), 1);
        s.defaults.zero_duration = Duration::from_secs(2);
        assert!(s.run(30, 1).is_empty());
        let mut s = Sim::new(serde_json::json!({}), 1);
        s.defaults.zero_duration = Duration::from_secs(1);
        assert!(s.run(30, 0).is_empty());
    }

    #[test]
    fn idler_waits_for_requests_in_flight() {
        let mut s = Sim::new(
            serde_json::json!({"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "2s"}),
            1,
        );
        s.o.inflight = 1;
        assert!(s.run(10, 0).is_empty());
        s.o.inflight = 0;
        assert_eq!(s.tick(1000, 0).map(|d| d.replicas), Some(0));
    }
}
