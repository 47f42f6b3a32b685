//! Connectors (`--only connectors`, not part of the full report yet): NATS core message →
//! function start latency at low load, and messages per second through the NATS connector
//! against the same function called over HTTP at the same concurrency, in the same run.
//! The reply carries the bench function's start stamp (its response headers come along).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica};
use crate::function::START_HEADER;
use crate::load;
use crate::stats::median;

const FUNCTION: &str = "bench-topic";
const SUBJECT: &str = "bench.in";
const SCENARIO: &str = "NATS connector (core subject)";

pub async fn run(b: &mut Bench<'_>) -> anyhow::Result<()> {
    let nats = fjord_queue::nats_server::NatsServer::start();
    let fjord = Fjord::start(&b.opts.fjord, &["--nats".into(), nats.url()], None).await?;
    let mut f = bench_function(FUNCTION, &b.bench_bin, one_replica());
    f["annotations"] = json!({"topic": SUBJECT});
    fjord.deploy_ready(f, Duration::from_secs(20)).await?;
    let client = async_nats::connect(nats.url()).await?;
    // Subscribed once a request is answered.
    let t0 = Instant::now();
    while client.request(SUBJECT, "hello".into()).await.is_err() {
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the connector never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Message → function start, one at a time.
    let n = if b.quick() { 100 } else { 300 };
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
    let p50 = median(&mut lat);
    let p99 = lat[lat.len() * 99 / 100];
    b.push(
        Figure::new(
            SCENARIO,
            "message → function start, p50, low load",
            p50,
            "µs",
        )
        .target("≤ 1000 µs p50", p50 <= 1000.0)
        .note(&format!("{n} requests one at a time; p99 {p99:.0} µs")),
    );

    // Sustained rate at c=10: requests through the connector vs HTTP.
    let (warm, dur) = (b.timing.warm, b.timing.dur);
    let http = load::run(&fjord.function_target(FUNCTION), 10, warm, dur).await?;
    http.ensure_no_errors("HTTP baseline for the NATS connector")?;
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                client.request(SUBJECT, "hello".into()).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let rate = total as f64 / dur.as_secs_f64();
    b.push(
        Figure::new(
            SCENARIO,
            "messages/s (request → reply), c=10",
            rate,
            "msg/s",
        )
        .baseline("same function over HTTP, c=10", http.rps())
        .target("≥ 0.8× HTTP", rate >= 0.8 * http.rps()),
    );
    fjord.stop().await?;
    drop(nats);
    Ok(())
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
