//! The cron connector: functions annotated `topic: cron-function` and `schedule: "…"` run on
//! schedule, as with OpenFaaS's cron-connector.
//!
//! Each run is `POST /` with an empty body and the headers `X-Connector: cron`,
//! `X-Topic: cron-function` and `X-Scheduled-Time` (RFC 3339, UTC). A run still going when
//! the next is due makes that one skipped (counted). Runs missed while no server ran the
//! schedule are not replayed, unless `com.fjord.schedule.missed: latest`: then the latest
//! one runs once at start. With several servers sharing a NATS queue, each run is claimed in
//! a JetStream key-value bucket first (`create` of function + scheduled time succeeds for one
//! server only), so it runs once across them; and a run still going on one server makes the
//! next ones skipped on all of them (a "going" key renewed while the run lasts, taken as
//! ended 20 s after its server stops renewing it).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use fjord_control::ControlPlane;
use fjord_control::metrics::TriggerOutcome;
use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use tokio_util::sync::CancellationToken;

use super::{CRON_TOPIC, MISSED, SCHEDULE, TIMEZONE, rfc3339};
use crate::invoke::Invoker;
use crate::trigger::{BoxFuture, Trigger};

/// The board kind and the store's trigger name.
pub const KIND: &str = "cron";

/// A function's schedule: when it runs, in which timezone, and what to do about missed runs.
#[derive(Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    /// As given, with the timezone: the board's source.
    pub text: String,
    pub run_latest_missed: bool,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.run_latest_missed == other.run_latest_missed
    }
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Schedule {
    /// The schedule a deployment asks for: `None` unless its `topic` lists `cron-function`.
    pub fn from_deployment(d: &FunctionDeployment) -> Result<Option<Schedule>, String> {
        let a = d.annotations.as_ref();
        let scheduled = super::topics(a)?.is_some_and(|t| t.iter().any(|t| t == CRON_TOPIC));
        if !scheduled {
            return Ok(None);
        }
        let get = |k: &str| {
            a.and_then(|a| a.get(k))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let expr = get(SCHEDULE).ok_or_else(|| {
            format!(
                "annotations.{SCHEDULE}: topic {CRON_TOPIC} needs a schedule, e.g. \"*/5 * * * *\""
            )
        })?;
        Self::parse(expr, get(TIMEZONE), get(MISSED)).map(Some)
    }

    /// `expr`: five fields (minute first) or six (seconds first); `tz`: an IANA name.
    pub fn parse(expr: &str, tz: Option<&str>, missed: Option<&str>) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !expr.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "annotations.{SCHEDULE}: {expr:?} is not a cron expression: it has {fields} fields, give 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                format!("annotations.{SCHEDULE}: {expr:?} is not a cron expression: {e}")
            })?;
        let tz = match tz {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                format!(
                    "annotations.{TIMEZONE}: {name:?} is not an IANA timezone (e.g. UTC, Europe/Oslo, America/New_York)"
                )
            })?,
        };
        let run_latest_missed = match missed {
            None | Some("none") => false,
            Some("latest") => true,
            Some(other) => {
                return Err(format!(
                    "annotations.{MISSED}: {other:?}: use none or latest"
                ));
            }
        };
        // A schedule that never fires (e.g. 30 February) is refused rather than kept idle.
        let s = Schedule {
            cron,
            tz,
            text: format!("{expr} ({})", tz.name()),
            run_latest_missed,
        };
        if s.next_after(Utc::now()).is_none() {
            return Err(format!(
                "annotations.{SCHEDULE}: {expr:?} never matches a date"
            ));
        }
        Ok(s)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&whole_second(t).with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&whole_second(t).with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

/// `t` without its fraction of a second (croner keeps it in what it finds).
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp(), 0).single().unwrap_or(t)
}

/// Wall time for the scheduler; tests use [`TokioClock`] (paused tokio time).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that moves with tokio's (paused) clock from `base`.
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base: DateTime<Utc>) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.base + elapsed
    }
}

/// Who runs a scheduled time: this server alone, or the first of several to claim it; and
/// whether a run of the function is still going on another server.
pub trait Claims: Send + Sync + 'static {
    /// `Ok(true)`: run it here; `Ok(false)`: another server has.
    fn claim<'a>(
        &'a self,
        key: &'a FunctionKey,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, String>>;

    /// Before a claimed run starts: `Ok(false)` when a run of the function is still going
    /// on another server (the claimed one is then skipped), else marks this run as going.
    fn begin<'a>(
        &'a self,
        _key: &'a FunctionKey,
        _at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(true) })
    }

    /// While the run goes, every [`RENEW_EVERY`]: it is still going.
    fn renew<'a>(&'a self, _key: &'a FunctionKey, _at: DateTime<Utc>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The run has ended.
    fn end<'a>(&'a self, _key: &'a FunctionKey, _at: DateTime<Utc>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// How often a server running a scheduled run says so to the others.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A run not renewed for this long is taken as ended (its server died).
pub const RUN_LEASE_MS: i64 = 20_000;

/// One server: every run is its own (its own runs are kept apart by the scheduler).
pub struct Alone;

impl Claims for Alone {
    fn claim<'a>(
        &'a self,
        _key: &'a FunctionKey,
        _at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(true) })
    }
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
/// The value of a function's "run going" key: `<scheduled ms> <renewed ms>`, empty when none.
fn run_going(value: &[u8], now_ms: i64) -> Option<i64> {
    let s = std::str::from_utf8(value).ok()?;
    let mut w = s.split_whitespace();
    let at: i64 = w.next()?.parse().ok()?;
    let renewed: i64 = w.next()?.parse().ok()?;
    (now_ms - renewed < RUN_LEASE_MS).then_some(at)
}

/// Servers sharing a NATS queue: a run is claimed by creating its key in a JetStream
/// key-value bucket (`create` fails for every server but the first); keys expire after a day.
#[cfg(feature = "nats")]
pub struct NatsClaims {
    kv: async_nats::jetstream::kv::Store,
}

#[cfg(feature = "nats")]
impl NatsClaims {
    /// Opens (or creates) `<prefix>_CRON_RUNS` on the queue's JetStream.
    pub async fn open(js: &async_nats::jetstream::Context, prefix: &str) -> Result<Self, String> {
        use async_nats::jetstream::stream;
        let bucket = format!("{prefix}_CRON_RUNS");
        // The bucket's stream, as create_key_value would make it (which first reads the
        // account info, which async-nats 0.51 cannot parse from nats-server 2.9; the queue
        // does the same). One message per key; keys expire after a day.
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("fjord: which server ran each scheduled function run".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: std::time::Duration::from_secs(24 * 3600),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot set up the JetStream bucket {bucket}: {e}"))?;
        let kv = js
            .get_key_value(bucket.as_str())
            .await
            .map_err(|e| format!("cannot open the JetStream bucket {bucket}: {e}"))?;
        Ok(Self { kv })
    }
}

#[cfg(feature = "nats")]
impl Claims for NatsClaims {
    fn claim<'a>(
        &'a self,
        key: &'a FunctionKey,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            // Key tokens: [A-Za-z0-9_-] (names are DNS labels, no dots).
            let k = format!("{}.{}.{}", key.namespace, key.name, at.timestamp_millis());
            match self.kv.create(&k, bytes::Bytes::new()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    Ok(false)
                }
                Err(e) => Err(format!("cannot claim the run in JetStream: {e}")),
            }
        })
    }

    fn begin<'a>(
        &'a self,
        key: &'a FunctionKey,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let k = going_key(key);
            let now = Utc::now().timestamp_millis();
            let value = bytes::Bytes::from(format!("{} {now}", at.timestamp_millis()));
            let e = |e: &dyn std::fmt::Display| format!("cannot mark the run in JetStream: {e}");
            let taken = match self.kv.entry(&k).await.map_err(|x| e(&x))? {
                Some(entry) if run_going(&entry.value, now).is_some() => return Ok(false),
                // Compare-and-set: of two servers starting at once, one wins.
                Some(entry) => self.kv.update(&k, value, entry.revision).await.is_ok(),
                None => self.kv.create(&k, value).await.is_ok(),
            };
            Ok(taken)
        })
    }

    fn renew<'a>(&'a self, key: &'a FunctionKey, at: DateTime<Utc>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let now = Utc::now().timestamp_millis();
            let value = format!("{} {now}", at.timestamp_millis());
            let _ = self.kv.put(going_key(key), value.into()).await;
        })
    }

    fn end<'a>(&'a self, key: &'a FunctionKey, at: DateTime<Utc>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let k = going_key(key);
            // Only this run's mark (a lease taken over after a stall is another's).
            if let Ok(Some(entry)) = self.kv.entry(&k).await
                && std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| v.split_whitespace().next())
                    == Some(at.timestamp_millis().to_string().as_str())
            {
                let _ = self
                    .kv
                    .update(&k, bytes::Bytes::new(), entry.revision)
                    .await;
            }
        })
    }
}

/// The key marking a function's scheduled run as going (on whichever server).
#[cfg(feature = "nats")]
fn going_key(key: &FunctionKey) -> String {
    format!("{}.{}.going", key.namespace, key.name)
}

/// The cron trigger: one scheduler task per scheduled function.
pub struct CronTrigger {
    pub control: Arc<ControlPlane>,
    pub claims: Arc<dyn Claims>,
    pub clock: Arc<dyn Clock>,
}

impl Trigger for CronTrigger {
    fn name(&self) -> &'static str {
        "cron"
    }

    fn run(
        self: Box<Self>,
        invoker: Invoker,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut watch = self.control.watch_routes();
            let mut tasks = super::Tasks::new();
            loop {
                watch.borrow_and_update();
                let desired: HashMap<FunctionKey, Schedule> = super::deployed(&self.control)
                    .into_iter()
                    .filter_map(|d| {
                        let s = Schedule::from_deployment(&d.deployment).ok().flatten();
                        if s.is_none() {
                            // No longer scheduled: its board entry goes.
                            d.route.metrics.triggers.set_sources(KIND, &[]);
                        }
                        Some((d.key, s?))
                    })
                    .collect();
                tasks.sync(desired, |key, schedule, stop| {
                    let s = Scheduler {
                        key: key.clone(),
                        schedule: schedule.clone(),
                        runner: Arc::new(InvokerRunner {
                            invoker: invoker.clone(),
                            control: self.control.clone(),
                        }),
                        claims: self.claims.clone(),
                        clock: self.clock.clone(),
                    };
                    tokio::spawn(s.run(stop))
                });
                if !super::changed(&mut watch, &shutdown).await {
                    break;
                }
            }
            tasks.stop_all().await;
        })
    }
}

/// What a due run does, behind a trait so the scheduler is tested without functions.
pub trait Runner: Send + Sync + 'static {
    /// Runs `key` for the scheduled time `at`.
    fn run<'a>(&'a self, key: &'a FunctionKey, at: DateTime<Utc>) -> BoxFuture<'a, TriggerOutcome>;
    /// Records a run's outcome (or a skip) where status and metrics read it.
    fn record(&self, key: &FunctionKey, source: &str, at: DateTime<Utc>, outcome: TriggerOutcome);
    fn set_next(&self, key: &FunctionKey, source: &str, next: Option<DateTime<Utc>>);
    /// The last scheduled time run (persisted), and storing a new one.
    fn last_run(&self, key: &FunctionKey) -> Option<DateTime<Utc>>;
    fn set_last_run(&self, key: &FunctionKey, at: DateTime<Utc>);
}

struct InvokerRunner {
    invoker: Invoker,
    control: Arc<ControlPlane>,
}

impl Runner for InvokerRunner {
    fn run<'a>(&'a self, key: &'a FunctionKey, at: DateTime<Utc>) -> BoxFuture<'a, TriggerOutcome> {
        Box::pin(async move {
            let headers = [
                (super::HEADER_CONNECTOR, KIND.to_string()),
                (super::HEADER_TOPIC, CRON_TOPIC.to_string()),
                ("x-scheduled-time", rfc3339(at)),
            ];
            match super::call(&self.invoker, key, &headers, bytes::Bytes::new()).await {
                Ok(a) => a.outcome(),
                Err(e) => TriggerOutcome::Failed(e),
            }
        })
    }

    fn record(&self, key: &FunctionKey, source: &str, at: DateTime<Utc>, outcome: TriggerOutcome) {
        if let Some(r) = self.invoker.lookup(key) {
            r.metrics
                .triggers
                .record(KIND, source, rfc3339(at), outcome);
        }
    }

    fn set_next(&self, key: &FunctionKey, source: &str, next: Option<DateTime<Utc>>) {
        if let Some(r) = self.invoker.lookup(key) {
            r.metrics.triggers.set_sources(KIND, &[source.to_string()]);
            r.metrics.triggers.set_active(KIND, source, next.is_some());
            r.metrics
                .triggers
                .set_next_run(KIND, source, next.map(rfc3339));
        }
    }

    fn last_run(&self, key: &FunctionKey) -> Option<DateTime<Utc>> {
        let ms = self
            .control
            .store()
            .trigger_run(&key.namespace, &key.name, KIND)
            .ok()??;
        Utc.timestamp_millis_opt(ms as i64).single()
    }

    fn set_last_run(&self, key: &FunctionKey, at: DateTime<Utc>) {
        let ms = at.timestamp_millis().max(0) as u64;
        if let Err(e) = self
            .control
            .store()
            .set_trigger_run(&key.namespace, &key.name, KIND, ms)
        {
            tracing::warn!(function = %key, error = %e, "cron: cannot record the last run");
        }
    }
}

/// One function's schedule.
pub struct Scheduler {
    pub key: FunctionKey,
    pub schedule: Schedule,
    pub runner: Arc<dyn Runner>,
    pub claims: Arc<dyn Claims>,
    pub clock: Arc<dyn Clock>,
}

impl Scheduler {
    /// Fires each scheduled time until `stop`; a run in progress finishes on its own.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let busy = Arc::new(AtomicBool::new(false));
        let start = this.clock.now();
        if this.schedule.run_latest_missed
            && let Some(last) = this.runner.last_run(&this.key)
            && let Some(missed) = this.schedule.latest_until(start)
            && missed > last
        {
            tracing::info!(function = %this.key, scheduled = %rfc3339(missed), "cron: running the latest missed run");
            this.clone().fire(missed, &busy).await;
        } else if this.runner.last_run(&this.key).is_none() {
            // Where a later restart counts missed runs from.
            this.runner.set_last_run(&this.key, start);
        }
        let mut after = start;
        loop {
            let next = this.schedule.next_after(after);
            this.runner.set_next(&this.key, &this.schedule.text, next);
            let Some(next) = next else {
                stop.cancelled().await;
                return;
            };
            let wait = (next - this.clock.now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            // Never before its time (a sleep may end a hair early by the wall clock).
            while this.clock.now() < next {
                let rest = (next - this.clock.now()).to_std().unwrap_or_default();
                tokio::time::sleep(rest.max(std::time::Duration::from_millis(1))).await;
            }
            this.clone().fire(next, &busy).await;
            after = next;
        }
    }

    /// Starts the run for `at` unless the previous one is still going (skipped) or another
    /// server claimed it; does not wait for it.
    async fn fire(self: Arc<Self>, at: DateTime<Utc>, busy: &Arc<AtomicBool>) {
        let source = self.schedule.text.as_str();
        if busy.swap(true, Ordering::AcqRel) {
            tracing::debug!(function = %self.key, scheduled = %rfc3339(at), "cron: skipped, the previous run is still going");
            self.runner.record(
                &self.key,
                source,
                at,
                TriggerOutcome::Skipped("the previous run was still going".into()),
            );
            return;
        }
        match self.claims.claim(&self.key, at).await {
            Ok(true) => {}
            Ok(false) => {
                busy.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                busy.store(false, Ordering::Release);
                tracing::warn!(function = %self.key, scheduled = %rfc3339(at), error = %e, "cron: run not made");
                self.runner
                    .record(&self.key, source, at, TriggerOutcome::Failed(e));
                return;
            }
        }
        match self.claims.begin(&self.key, at).await {
            Ok(true) => {}
            Ok(false) => {
                busy.store(false, Ordering::Release);
                tracing::debug!(function = %self.key, scheduled = %rfc3339(at), "cron: skipped, the previous run is still going on another server");
                self.runner.record(
                    &self.key,
                    source,
                    at,
                    TriggerOutcome::Skipped(
                        "the previous run was still going on another server".into(),
                    ),
                );
                return;
            }
            // The claim itself went through: run rather than lose the run.
            Err(e) => {
                tracing::warn!(function = %self.key, scheduled = %rfc3339(at), error = %e, "cron: running without marking the run")
            }
        }
        self.runner.set_last_run(&self.key, at);
        let busy = busy.clone();
        tokio::spawn(async move {
            let run = self.runner.run(&self.key, at);
            tokio::pin!(run);
            let mut renew =
                tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
            let outcome = loop {
                tokio::select! {
                    o = &mut run => break o,
                    _ = renew.tick() => self.claims.renew(&self.key, at).await,
                }
            };
            self.claims.end(&self.key, at).await;
            if let TriggerOutcome::Failed(why) = &outcome {
                tracing::warn!(function = %self.key, scheduled = %rfc3339(at), reason = %why, "cron: run failed");
            }
            self.runner
                .record(&self.key, &self.schedule.text, at, outcome);
            busy.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn schedules_with_seconds_and_timezones() {
        let s = Schedule::parse("*/5 * * * *", None, None).expect("five fields");
        assert_eq!(
            s.next_after(t("2026-03-01T10:02:30Z")),
            Some(t("2026-03-01T10:05:00Z"))
        );
        assert_eq!(s.text, "*/5 * * * * (UTC)");
        let s = Schedule::parse("*/10 * * * * *", None, None).expect("seconds first");
        assert_eq!(
            s.next_after(t("2026-03-01T10:02:30Z")),
            Some(t("2026-03-01T10:02:40Z"))
        );
        assert_eq!(
            s.latest_until(t("2026-03-01T10:02:35Z")),
            Some(t("2026-03-01T10:02:30Z"))
        );
        // 09:00 in Oslo is 08:00 UTC in winter, 07:00 UTC in summer.
        let s = Schedule::parse("0 9 * * *", Some("Europe/Oslo"), None).expect("tz");
        assert_eq!(
            s.next_after(t("2026-01-10T12:00:00Z")),
            Some(t("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-07-10T12:00:00Z")),
            Some(t("2026-07-11T07:00:00Z"))
        );
        for bad in [
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "not cron at all",
            "0 0 30 2 *",
        ] {
            assert!(Schedule::parse(bad, None, None).is_err(), "{bad}");
        }
    }

    /// Records what the scheduler did; runs block until released when `hold` is set.
    #[derive(Default)]
    struct Recorder {
        runs: Mutex<Vec<DateTime<Utc>>>,
        records: Mutex<Vec<(DateTime<Utc>, TriggerOutcome)>>,
        next: Mutex<Option<DateTime<Utc>>>,
        last: Mutex<Option<DateTime<Utc>>>,
        hold: Mutex<Option<Arc<tokio::sync::Notify>>>,
    }

    impl Runner for Recorder {
        fn run<'a>(
            &'a self,
            _key: &'a FunctionKey,
            at: DateTime<Utc>,
        ) -> BoxFuture<'a, TriggerOutcome> {
            Box::pin(async move {
                self.runs.lock().unwrap().push(at);
                let hold = self.hold.lock().unwrap().clone();
                if let Some(h) = hold {
                    h.notified().await;
                }
                TriggerOutcome::Ok
            })
        }
        fn record(
            &self,
            _key: &FunctionKey,
            _source: &str,
            at: DateTime<Utc>,
            outcome: TriggerOutcome,
        ) {
            self.records.lock().unwrap().push((at, outcome));
        }
        fn set_next(&self, _key: &FunctionKey, _source: &str, next: Option<DateTime<Utc>>) {
            *self.next.lock().unwrap() = next;
        }
        fn last_run(&self, _key: &FunctionKey) -> Option<DateTime<Utc>> {
            *self.last.lock().unwrap()
        }
        fn set_last_run(&self, _key: &FunctionKey, at: DateTime<Utc>) {
            *self.last.lock().unwrap() = Some(at);
        }
    }

    fn scheduler(
        expr: &str,
        missed: Option<&str>,
        rec: &Arc<Recorder>,
        claims: Arc<dyn Claims>,
        base: &str,
    ) -> Scheduler {
        Scheduler {
            key: FunctionKey::new("tick", None).expect("key"),
            schedule: Schedule::parse(expr, None, missed).expect("schedule"),
            runner: rec.clone(),
            claims,
            clock: Arc::new(TokioClock::new(t(base))),
        }
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if what() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("condition not met on the paused clock");
    }

    #[tokio::test(start_paused = true)]
    async fn fires_on_each_second_schedule_on_time() {
        let rec = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let h = tokio::spawn(
            scheduler(
                "*/2 * * * * *",
                None,
                &rec,
                Arc::new(Alone),
                "2026-01-01T00:00:00.500Z",
            )
            .run(stop.clone()),
        );
        until(|| rec.records.lock().unwrap().len() >= 3).await;
        stop.cancel();
        h.await.expect("stopped");
        let runs = rec.runs.lock().unwrap().clone();
        assert_eq!(
            &runs[..3],
            &[
                t("2026-01-01T00:00:02Z"),
                t("2026-01-01T00:00:04Z"),
                t("2026-01-01T00:00:06Z")
            ]
        );
        assert!(
            rec.records
                .lock()
                .unwrap()
                .iter()
                .all(|(_, o)| *o == TriggerOutcome::Ok)
        );
        assert_eq!(*rec.last.lock().unwrap(), Some(runs[runs.len() - 1]));
        assert!(rec.next.lock().unwrap().expect("a next run") > runs[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_still_going_makes_the_next_skipped() {
        let rec = Arc::new(Recorder::default());
        let release = Arc::new(tokio::sync::Notify::new());
        *rec.hold.lock().unwrap() = Some(release.clone());
        let stop = CancellationToken::new();
        let h = tokio::spawn(
            scheduler(
                "* * * * * *",
                None,
                &rec,
                Arc::new(Alone),
                "2026-01-01T00:00:00Z",
            )
            .run(stop.clone()),
        );
        // The first run (00:01) hangs: 00:02 and 00:03 are skipped.
        until(|| rec.records.lock().unwrap().len() >= 2).await;
        *rec.hold.lock().unwrap() = None;
        release.notify_one();
        until(|| {
            rec.records
                .lock()
                .unwrap()
                .iter()
                .any(|(_, o)| *o == TriggerOutcome::Ok)
        })
        .await;
        until(|| rec.runs.lock().unwrap().len() >= 2).await;
        stop.cancel();
        h.await.expect("stopped");
        let records = rec.records.lock().unwrap().clone();
        assert!(
            matches!(&records[0], (at, TriggerOutcome::Skipped(_)) if *at == t("2026-01-01T00:00:02Z")),
            "{records:?}"
        );
        assert!(
            matches!(&records[1], (_, TriggerOutcome::Skipped(_))),
            "{records:?}"
        );
        let runs = rec.runs.lock().unwrap().clone();
        assert_eq!(runs[0], t("2026-01-01T00:00:01Z"));
        assert!(
            runs[1] > records[1].0,
            "the next run after the release: {runs:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn missed_runs_none_by_default_latest_once_when_asked() {
        for (missed, expect_replay) in [(None, false), (Some("latest"), true)] {
            let rec = Arc::new(Recorder::default());
            // Last ran 10:00; the server comes back at 10:07:30 (runs 10:05 was missed).
            *rec.last.lock().unwrap() = Some(t("2026-01-01T10:00:00Z"));
            let stop = CancellationToken::new();
            let h = tokio::spawn(
                scheduler(
                    "*/5 * * * *",
                    missed,
                    &rec,
                    Arc::new(Alone),
                    "2026-01-01T10:07:30Z",
                )
                .run(stop.clone()),
            );
            until(|| rec.next.lock().unwrap().is_some()).await;
            if expect_replay {
                until(|| !rec.records.lock().unwrap().is_empty()).await;
            } else {
                // Give it the time it would need to replay (paused: instant).
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
            stop.cancel();
            h.await.expect("stopped");
            let runs = rec.runs.lock().unwrap().clone();
            if expect_replay {
                assert_eq!(
                    runs,
                    vec![t("2026-01-01T10:05:00Z")],
                    "only the latest missed, once"
                );
            } else {
                assert!(runs.is_empty(), "{runs:?}");
            }
            assert_eq!(*rec.next.lock().unwrap(), Some(t("2026-01-01T10:10:00Z")));
        }
    }

    /// Claims shared by two schedulers, like the JetStream bucket: the first create wins;
    /// the run going, as its key.
    #[derive(Default)]
    struct SharedClaims(
        Mutex<std::collections::HashSet<i64>>,
        Mutex<Option<DateTime<Utc>>>,
    );

    impl Claims for SharedClaims {
        fn claim<'a>(
            &'a self,
            _key: &'a FunctionKey,
            at: DateTime<Utc>,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(self.0.lock().unwrap().insert(at.timestamp_millis())) })
        }
        fn begin<'a>(
            &'a self,
            _key: &'a FunctionKey,
            at: DateTime<Utc>,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move {
                let mut going = self.1.lock().unwrap();
                if going.is_some() {
                    return Ok(false);
                }
                *going = Some(at);
                Ok(true)
            })
        }
        fn end<'a>(&'a self, _key: &'a FunctionKey, at: DateTime<Utc>) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                let mut going = self.1.lock().unwrap();
                if *going == Some(at) {
                    *going = None;
                }
            })
        }
    }

    /// Two servers' schedulers of one every-second function sharing their claims.
    fn every_second_sharing_claims(
        recorders: [&Arc<Recorder>; 2],
        stop: &CancellationToken,
    ) -> [tokio::task::JoinHandle<()>; 2] {
        let claims: Arc<dyn Claims> = Arc::new(SharedClaims::default());
        recorders.map(|r| {
            tokio::spawn(
                scheduler(
                    "* * * * * *",
                    None,
                    r,
                    claims.clone(),
                    "2026-01-01T00:00:00Z",
                )
                .run(stop.clone()),
            )
        })
    }

    #[test]
    fn a_run_mark_is_going_until_its_lease_ends() {
        assert_eq!(run_going(b"1000 5000", 5000 + RUN_LEASE_MS - 1), Some(1000));
        assert_eq!(run_going(b"1000 5000", 5000 + RUN_LEASE_MS), None);
        assert_eq!(run_going(b"", 0), None);
        assert_eq!(run_going(b"garbage", 0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_still_going_on_one_server_makes_the_next_skipped_on_the_other() {
        let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let release = Arc::new(tokio::sync::Notify::new());
        for r in [&a, &b] {
            *r.hold.lock().unwrap() = Some(release.clone());
        }
        let stop = CancellationToken::new();
        let [ha, hb] = every_second_sharing_claims([&a, &b], &stop);
        let runs = || a.runs.lock().unwrap().len() + b.runs.lock().unwrap().len();
        let skips = || {
            [&a, &b]
                .iter()
                .flat_map(|r| r.records.lock().unwrap().clone())
                .filter(|(_, o)| matches!(o, TriggerOutcome::Skipped(_)))
                .count()
        };
        // The first run hangs: the next four scheduled times are skipped, wherever claimed.
        until(|| skips() >= 4).await;
        assert_eq!(runs(), 1, "a run started while another was going");
        for r in [&a, &b] {
            *r.hold.lock().unwrap() = None;
        }
        release.notify_waiters();
        until(|| runs() >= 3).await;
        stop.cancel();
        ha.await.expect("a");
        hb.await.expect("b");
    }

    #[tokio::test(start_paused = true)]
    async fn two_schedulers_sharing_claims_run_each_time_once() {
        let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let stop = CancellationToken::new();
        let [ha, hb] = every_second_sharing_claims([&a, &b], &stop);
        until(|| a.runs.lock().unwrap().len() + b.runs.lock().unwrap().len() >= 10).await;
        stop.cancel();
        ha.await.expect("a");
        hb.await.expect("b");
        let mut all: Vec<_> = a
            .runs
            .lock()
            .unwrap()
            .iter()
            .chain(b.runs.lock().unwrap().iter())
            .copied()
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "a scheduled time ran twice");
    }
}
