//! Event connectors (`--only connectors`, and the last step of a full run): message →
//! function start latency at low load through NATS core and MQTT, messages per second through
//! each against the same function called over HTTP at the same concurrency in the same run
//! and against the broker's own round trip (an instant responder in the bench, no fjord),
//! and the cron connector's lateness over 100 runs. The bench function answers a connector's
//! call with its start stamp and logs each cron run (see `function.rs`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica};
use crate::function::{CRON_LOG, START_HEADER};
use crate::load;
use crate::stats::percentile;

/// Every figure's scenario starts with it: the report gives them a section of their own.
pub const SCENARIO_PREFIX: &str = "event connectors";

const NATS_FUNCTION: &str = "bench-topic";
const SUBJECT: &str = "bench.in";
/// The broker-alone baselines: an instant responder in the bench answers on these.
const BARE_SUBJECT: &str = "bench.bare";
const MQTT_BARE_IN: &str = "bench/bare-in";
const MQTT_BARE_OUT: &str = "bench/bare-out";
const MQTT_FUNCTION: &str = "bench-mqtt";
const MQTT_IN: &str = "bench/in";
const MQTT_OUT: &str = "bench/out";
/// Messages in flight for the rate figures, and the HTTP baseline's concurrency.
const IN_FLIGHT: usize = 10;
const CRON_FUNCTIONS: usize = 10;
const CRON_RUNS: usize = 100;

pub async fn run(b: &mut Bench<'_>) -> anyhow::Result<()> {
    let nats = fjord_queue::nats_server::NatsServer::start();
    let mosquitto = Mosquitto::start()?;
    let fjord = Fjord::start(
        &b.opts.fjord,
        &[
            "--nats".into(),
            nats.url(),
            "--mqtt".into(),
            mosquitto.url(),
        ],
        None,
    )
    .await?;
    let (warm, dur) = (b.timing.warm, b.timing.dur);
    let n = if b.quick() { 100 } else { 300 };

    let mut f = bench_function(NATS_FUNCTION, &b.bench_bin, one_replica());
    f["annotations"] = json!({"topic": SUBJECT});
    fjord.deploy_ready(f, Duration::from_secs(20)).await?;
    let http = load::run(&fjord.function_target(NATS_FUNCTION), IN_FLIGHT, warm, dur).await?;
    http.ensure_no_errors("HTTP baseline for the connectors")?;
    nats_figures(b, &nats.url(), n, dur, http.rps()).await?;

    let mut f = bench_function(MQTT_FUNCTION, &b.bench_bin, one_replica());
    f["annotations"] = json!({
        "topic": MQTT_IN,
        "com.fjord.topic.response": MQTT_OUT,
        "com.openfaas.queue.max_inflight": IN_FLIGHT.to_string(),
    });
    fjord.deploy_ready(f, Duration::from_secs(20)).await?;
    mqtt_figures(b, &mosquitto, n, dur, http.rps()).await?;

    cron_figures(b, &fjord).await?;
    fjord.stop().await?;
    drop(nats);
    Ok(())
}

async fn nats_figures(
    b: &mut Bench<'_>,
    url: &str,
    n: usize,
    dur: Duration,
    http_rps: f64,
) -> anyhow::Result<()> {
    let scenario = format!("{SCENARIO_PREFIX}: NATS core subject");
    let client = async_nats::connect(url).await?;
    // Subscribed once a request is answered.
    let t0 = Instant::now();
    while client.request(SUBJECT, "hello".into()).await.is_err() {
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the NATS connector never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Message → function start, one at a time.
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = wall_ns();
        let m = client.request(SUBJECT, "hello".into()).await?;
        let started: u64 = m
            .headers
            .as_ref()
            .and_then(|h| h.get(START_HEADER))
            .context("the reply has no start stamp")?
            .as_str()
            .parse()?;
        lat.push(started.saturating_sub(sent) as f64 / 1000.0);
    }
    push_latency(b, &scenario, &mut lat, 1000.0);

    // Sustained rate: the broker alone first (an instant responder here), then the function.
    let responder = client.clone();
    let mut bare = client.queue_subscribe(BARE_SUBJECT, "bare".into()).await?;
    let echo = tokio::spawn(async move {
        while let Some(m) = bare.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    client.flush().await?;
    let broker = nats_rate(&client, BARE_SUBJECT, dur).await?;
    echo.abort();
    let rate = nats_rate(&client, SUBJECT, dur).await?;
    push_rate(b, &scenario, "request → reply", rate, http_rps, broker);
    Ok(())
}

/// Messages/s of IN_FLIGHT requesters on `subject` for `dur`.
async fn nats_rate(
    client: &async_nats::Client,
    subject: &str,
    dur: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, subject) = (client.clone(), subject.to_string());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                client.request(subject.clone(), "hello".into()).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

async fn mqtt_figures(
    b: &mut Bench<'_>,
    mosquitto: &Mosquitto,
    n: usize,
    dur: Duration,
    http_rps: f64,
) -> anyhow::Result<()> {
    let scenario = format!("{SCENARIO_PREFIX}: MQTT topic (QoS 1)");
    let (client, mut events) = mqtt_client("fjord-bench", mosquitto.port);
    // The function's answers (its start stamps), as they come back on the response topic.
    // None: an answer that is not a stamp (the function failed): never counted as one.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    // The broker-alone baseline's answers (the echo client's).
    let (bare_tx, mut bare_answers) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == MQTT_OUT => {
                    let stamp = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    if tx.send(stamp).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == MQTT_BARE_OUT => {
                    if bare_tx.send(None).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("bench MQTT client: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    client.subscribe(MQTT_OUT, QoS::AtLeastOnce).await?;
    client.subscribe(MQTT_BARE_OUT, QoS::AtLeastOnce).await?;
    // Subscribed (both ends) once a message gets an answer.
    let t0 = Instant::now();
    loop {
        client
            .publish(MQTT_IN, QoS::AtLeastOnce, false, "hello")
            .await?;
        if tokio::time::timeout(Duration::from_millis(500), answers.recv())
            .await
            .is_ok()
        {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the MQTT connector never answered"
        );
    }
    // Probes answered late must not count as answers below.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while answers.try_recv().is_ok() {}

    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = wall_ns();
        client
            .publish(MQTT_IN, QoS::AtLeastOnce, false, "hello")
            .await?;
        let started = tokio::time::timeout(Duration::from_secs(10), answers.recv())
            .await
            .context("no answer from the MQTT connector in 10 s")?
            .context("the MQTT client stopped")?
            .context("an answer without a start stamp")?;
        lat.push(started.saturating_sub(sent) as f64 / 1000.0);
    }
    push_latency(b, &scenario, &mut lat, f64::INFINITY);

    // Sustained rate: the broker alone first (an echo client here: QoS 1 in, QoS 1 out, as
    // the connector), then the function.
    let echo = mqtt_echo(mosquitto.port).await?;
    let broker = mqtt_rate(&client, MQTT_BARE_IN, &mut bare_answers, false, dur)
        .await
        .context("the broker-alone baseline")?;
    echo.abort();
    let rate = mqtt_rate(&client, MQTT_IN, &mut answers, true, dur).await?;
    push_rate(b, &scenario, "publish → answer", rate, http_rps, broker);
    let _ = client.disconnect().await;
    poller.abort();
    Ok(())
}

/// Messages/s for `dur` with IN_FLIGHT QoS 1 messages to `topic` outstanding, one more
/// published per answer (`stamped`: each answer must be a start stamp).
async fn mqtt_rate(
    client: &AsyncClient,
    topic: &str,
    answers: &mut tokio::sync::mpsc::UnboundedReceiver<Option<u64>>,
    stamped: bool,
    dur: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + dur;
    for _ in 0..IN_FLIGHT {
        client
            .publish(topic, QoS::AtLeastOnce, false, "hello")
            .await?;
    }
    let mut total = 0u64;
    while Instant::now() < deadline {
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.recv())
            .await
            .context("no answers under load for 10 s")?
            .context("the MQTT client stopped")?;
        ensure!(
            !stamped || answer.is_some(),
            "an answer without a start stamp under load"
        );
        total += 1;
        client
            .publish(topic, QoS::AtLeastOnce, false, "hello")
            .await?;
    }
    // The last ones in flight are answered before the next measurement.
    for _ in 0..IN_FLIGHT {
        let _ = tokio::time::timeout(Duration::from_secs(5), answers.recv()).await;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

/// A client of the bench's mosquitto, `TCP_NODELAY` as fjord's (Nagle would add a delayed
/// ACK to messages sent back to back).
fn mqtt_client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 256);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (client, events)
}

/// An MQTT client of its own that republishes every message on MQTT_BARE_IN to
/// MQTT_BARE_OUT (QoS 1 both ways), until aborted; returns once it is subscribed.
async fn mqtt_echo(port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (client, mut events) = mqtt_client("fjord-bench-echo", port);
    client.subscribe(MQTT_BARE_IN, QoS::AtLeastOnce).await?;
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = client.try_publish(MQTT_BARE_OUT, QoS::AtLeastOnce, false, p.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("bench MQTT echo client: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .context("the echo client was not subscribed in 10 s")??;
    Ok(task)
}

async fn cron_figures(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    for i in 0..CRON_FUNCTIONS {
        let mut f = bench_function(&format!("bench-cron-{i}"), &b.bench_bin, one_replica());
        f["annotations"] = json!({"topic": "cron-function", "schedule": "* * * * * *"});
        fjord.deploy_ready(f, Duration::from_secs(20)).await?;
    }
    // Runs scheduled once every function is up: no replica start in the way.
    let from_ms = wall_ns() / 1_000_000 + 1000;
    let per_function = CRON_RUNS.div_ceil(CRON_FUNCTIONS);
    let t0 = Instant::now();
    let late_ms = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut runs: Vec<(i64, f64)> = Vec::new();
        for i in 0..CRON_FUNCTIONS {
            for line in fjord.log_lines(&format!("bench-cron-{i}"), 1000).await? {
                if let Some(run) = cron_run(&line)
                    && run.0 >= from_ms as i64
                {
                    runs.push(run);
                }
            }
        }
        if runs.len() >= CRON_FUNCTIONS * per_function {
            runs.sort_by_key(|r| r.0);
            break runs
                .into_iter()
                .take(CRON_RUNS)
                .map(|r| r.1)
                .collect::<Vec<_>>();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} cron runs logged in 60 s, expected {}",
                runs.len(),
                CRON_RUNS
            );
        }
    };
    let mut late = late_ms;
    let p50 = percentile(&mut late, 0.5);
    let p99 = percentile(&mut late, 0.99);
    let max = late.iter().cloned().fold(f64::MIN, f64::max);
    b.push(
        Figure::new(
            &format!("{SCENARIO_PREFIX}: cron, every second"),
            &format!("lateness p99 over {CRON_RUNS} runs ({CRON_FUNCTIONS} functions)"),
            p99,
            "ms",
        )
        .target("≤ 10 ms p99", p99 <= 10.0)
        .note(&format!("p50 {p50:.2} ms, max {max:.2} ms")),
    );
    Ok(())
}

/// `(scheduled time in ms, lateness in ms)` of one cron run's log line.
fn cron_run(line: &str) -> Option<(i64, f64)> {
    let mut w = line.split_whitespace();
    (w.next()? == CRON_LOG).then_some(())?;
    let scheduled = chrono::DateTime::parse_from_rfc3339(w.next()?).ok()?;
    let started_ns: i64 = w.next()?.parse().ok()?;
    let scheduled_ms = scheduled.timestamp_millis();
    Some((scheduled_ms, started_ns as f64 / 1e6 - scheduled_ms as f64))
}

fn push_latency(b: &mut Bench<'_>, scenario: &str, lat: &mut [f64], goal_us: f64) {
    let p50 = percentile(lat, 0.5);
    let p99 = percentile(lat, 0.99);
    let mut f = Figure::new(
        scenario,
        "message → function start, p50, low load",
        p50,
        "µs",
    )
    .note(&format!(
        "{} messages one at a time; p99 {p99:.0} µs",
        lat.len()
    ));
    if goal_us.is_finite() {
        f = f.target(&format!("≤ {goal_us:.0} µs p50"), p50 <= goal_us);
    }
    b.push(f);
}

/// Two rows: the rate against HTTP (the goal) and against the broker alone (what the broker
/// itself allows on this machine: fjord cannot be faster).
fn push_rate(b: &mut Bench<'_>, scenario: &str, what: &str, rate: f64, http: f64, broker: f64) {
    b.push(
        Figure::new(
            scenario,
            &format!("messages/s ({what}), {IN_FLIGHT} in flight"),
            rate,
            "msg/s",
        )
        .baseline(&format!("same function over HTTP, c={IN_FLIGHT}"), http)
        .target("≥ 0.8× HTTP", rate >= 0.8 * http)
        .note(&format!(
            "the broker alone: {broker:.0} msg/s = {:.2}× HTTP",
            broker / http
        )),
    );
    b.push(
        Figure::new(
            scenario,
            &format!("messages/s ({what}) vs the broker alone"),
            rate,
            "msg/s",
        )
        .baseline(
            "the broker's round trip with an instant responder in the bench",
            broker,
        ),
    );
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A `mosquitto` on a free loopback port in a temp dir, killed on drop.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            ),
        )?;
        let mut child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting mosquitto (scripts/bench installs it)")?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("mosquitto did not listen on 127.0.0.1:{port} in 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
