//! `--only ab`: what a change costs, as an A/B of two fjord binaries in one run. The two are
//! started alternately (old, new, new, old, ...) with the same deployments, so drift of a
//! shared, noisy machine falls on both: warm invoke through the gateway (http mode, one
//! replica, c=64) and cold start (scale 0→1 to the first response).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::load::{self, Target};
use crate::run::{Fjord, Row, percentile};

#[derive(Default)]
struct Side {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cold: Vec<f64>,
}

async fn measure(bin: &Path, bench_bin: &str, quick: bool, side: &mut Side) -> anyhow::Result<()> {
    let (warm, dur) = if quick {
        (Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    };
    let fjord = Fjord::start(bin, &[], None).await?;
    fjord
        .deploy(json!({"service": "ab-http", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"},
            "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}}))
        .await?;
    fjord
        .wait_available("ab-http", 1, Duration::from_secs(20))
        .await?;
    let t = Target {
        addr: fjord.addr,
        path: "/function/ab-http".into(),
        body: None,
        tls: None,
        netns: None,
    };
    let r = load::run(&t, 64, warm, dur).await?;
    r.ensure_no_errors(&format!("warm invoke via {}", bin.display()))?;
    side.rps.push(r.rps());
    side.p50.push(r.p(0.5));
    side.p99.push(r.p(0.99));

    fjord
        .deploy(json!({"service": "ab-cold", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"},
            "labels": {"com.openfaas.scale.zero": "true", "com.openfaas.scale.max": "1"}}))
        .await?;
    fjord
        .wait_available("ab-cold", 1, Duration::from_secs(20))
        .await?;
    for _ in 0..(if quick { 10 } else { 30 }) {
        fjord.scale("ab-cold", 0).await?;
        fjord
            .wait_available("ab-cold", 0, Duration::from_secs(10))
            .await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        fjord.scale("ab-cold", 1).await?;
        fjord.get_ok("/function/ab-cold").await?;
        side.cold.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    fjord.stop().await
}

pub(crate) async fn scenario(
    old: &Path,
    new: &Path,
    bench_bin: &str,
    quick: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let rounds = if quick { 2 } else { 4 };
    let (mut a, mut b) = (Side::default(), Side::default());
    for round in 0..rounds {
        eprintln!("[ab] round {}/{rounds}", round + 1);
        // Alternate which goes first, so neither always runs on a warmer machine.
        if round % 2 == 0 {
            measure(old, bench_bin, quick, &mut a).await?;
            measure(new, bench_bin, quick, &mut b).await?;
        } else {
            measure(new, bench_bin, quick, &mut b).await?;
            measure(old, bench_bin, quick, &mut a).await?;
        }
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("runs {lo:.0}–{hi:.0}")
    };
    let old_label = format!("baseline binary {}", old.display());
    let s = "A/B: this binary vs the baseline binary, alternating in one run";
    rows.push(
        Row::new(
            s,
            "warm invoke c=64, throughput (median of runs)",
            percentile(&mut b.rps.clone(), 0.5),
            "req/s",
        )
        .baseline(&old_label, percentile(&mut a.rps.clone(), 0.5))
        .note(&format!("new {}; old {}", spread(&b.rps), spread(&a.rps))),
    );
    rows.push(
        Row::new(
            s,
            "warm invoke c=64, p50 latency (median of runs)",
            percentile(&mut b.p50.clone(), 0.5),
            "µs",
        )
        .baseline(&old_label, percentile(&mut a.p50.clone(), 0.5))
        .note(&format!(
            "p99 new {:.0} µs, old {:.0} µs",
            percentile(&mut b.p99, 0.5),
            percentile(&mut a.p99, 0.5)
        )),
    );
    let n = b.cold.len();
    rows.push(
        Row::new(
            s,
            &format!("cold start 0→1 to first response, p50 ({n} trials each)"),
            percentile(&mut b.cold.clone(), 0.5),
            "ms",
        )
        .baseline(&old_label, percentile(&mut a.cold.clone(), 0.5))
        .note(&format!(
            "p99 new {:.1} ms, old {:.1} ms",
            percentile(&mut b.cold, 0.99),
            percentile(&mut a.cold, 0.99)
        )),
    );
    Ok(())
}
