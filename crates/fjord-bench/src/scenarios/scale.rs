//! Scaling: scale-out (1 → 50 ready replicas through the API) and the autoscaler's reaction
//! to load (from its start to the first scale-up decision).

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
                json!({"com.openfaas.scale.max": "50"}),
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
    fjord.scale("bench-scale", 0).await?;
    Ok(())
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
