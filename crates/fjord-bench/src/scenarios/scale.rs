//! Scaling: scale-out (1 → 50 ready replicas through the API, idle and while serving c=64)
//! and the autoscaler's reaction to load (from its start to the first scale-up decision).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function};
use crate::load;
use crate::stats::median;

pub async fn scale_out(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    fjord
        .deploy_ready(
            bench_function(
                "bench-scale",
                &b.bench_bin,
                // Factor 0: the autoscaler leaves it alone, so "one replica" stays one
                // under load and only the scale calls change it.
                json!({"com.openfaas.scale.max": "50", "com.openfaas.scale.factor": "0"}),
            ),
            Duration::from_secs(20),
        )
        .await?;
    let mut scale_times = Vec::new();
    for _ in 0..(if b.quick() { 1 } else { 3 }) {
        let t0 = Instant::now();
        fjord.scale("bench-scale", 50).await?;
        fjord
            .wait_available("bench-scale", 50, Duration::from_secs(60))
            .await?;
        scale_times.push(t0.elapsed().as_secs_f64() * 1e3);
        fjord.scale("bench-scale", 1).await?;
        fjord
            .wait_available("bench-scale", 1, Duration::from_secs(30))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let scale_ms = median(&mut scale_times);
    b.push(
        Figure::new(
            "scale-out",
            "1 → 50 ready replicas (median)",
            scale_ms,
            "ms",
        )
        .target("≤ 1000 ms", scale_ms <= 1000.0)
        .note(&format!(
            "{} trial(s); readiness = TCP accept",
            scale_times.len()
        )),
    );
    under_load(b, fjord).await?;
    fjord.scale("bench-scale", 0).await?;
    Ok(())
}

/// Scale-out while serving: c=64 against one replica, then (same load, not stopped) the
/// scale call to 50; every request of the load must succeed. p99 over the load that
/// spans the scale-out, against p99 of the same load at one replica just before.
async fn under_load(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    const C: usize = 64;
    let target = fjord.function_target("bench-scale");
    let (warm, dur) = (b.timing.warm, b.timing.dur);
    let before = load::run(&target, C, warm, dur).await?;
    before.ensure_no_errors("c=64 at one replica, before the scale-out")?;
    // Long enough that the scale-out (≤ 1 s idle) happens well inside it.
    let span = Duration::from_secs(3);
    let during = tokio::spawn({
        let target = target.clone();
        async move { load::run(&target, C, Duration::ZERO, span).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    fjord.scale("bench-scale", 50).await?;
    fjord
        .wait_available("bench-scale", 50, Duration::from_secs(60))
        .await?;
    let scale_ms = t0.elapsed().as_secs_f64() * 1e3;
    let during = during.await??;
    let failed = during.errors + during.warmup_errors;
    let scenario = "scale-out under load (c=64)";
    b.push(
        Figure::new(scenario, "failed requests during 1 → 50", failed as f64, "")
            .target("0", failed == 0)
            .note(&format!(
                "{} requests in {:.0} s, scale call at 0.2 s; 50 ready after {scale_ms:.0} ms{}",
                during.requests,
                span.as_secs_f64(),
                during
                    .first_error
                    .as_deref()
                    .map(|e| format!("; first failure: {e}"))
                    .unwrap_or_default()
            )),
    );
    b.push(
        Figure::new(
            scenario,
            "p99 latency across the scale-out",
            during.p(0.99),
            "µs",
        )
        .baseline("same load, one replica, just before", before.p(0.99))
        .note(&format!(
            "p50 {:.0} µs vs {:.0} µs; max {} µs",
            during.p(0.5),
            before.p(0.5),
            during.hist.max()
        )),
    );
    fjord.scale("bench-scale", 1).await?;
    fjord
        .wait_available("bench-scale", 1, Duration::from_secs(30))
        .await?;
    during.ensure_no_errors("c=64 during the scale-out 1 → 50")
}

/// Autoscaler reaction: from the start of load to the first scale-up decision.
pub async fn autoscaler(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    fjord
        .deploy_ready(
            bench_function(
                "bench-auto",
                &b.bench_bin,
                json!({"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "4",
                    "com.openfaas.scale.target": "100"}),
            ),
            Duration::from_secs(20),
        )
        .await?;
    let auto = fjord.function_target("bench-auto");
    let t0 = Instant::now();
    let loader =
        tokio::spawn(
            async move { load::run(&auto, 8, Duration::ZERO, Duration::from_secs(6)).await },
        );
    let reaction = loop {
        let st = fjord.status("bench-auto").await?;
        if st["replicas"].as_u64().unwrap_or(0) > 1 {
            break Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        if t0.elapsed() > Duration::from_secs(6) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loader.await??.ensure_no_errors("autoscaler load")?;
    let reaction = reaction.context("the autoscaler did not scale bench-auto up under load")?;
    b.push(
        Figure::new(
            "autoscaler",
            "reaction: load start → first scale-up",
            reaction,
            "ms",
        )
        .baseline("autoscale interval", 1000.0)
        .note("rps type, target 100 per replica, c=8 closed loop"),
    );
    fjord.scale("bench-auto", 0).await?;
    Ok(())
}
