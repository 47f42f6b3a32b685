//! Soak: the best-throughput concurrency of the warm-invoke scenario through fjord for a
//! while, with the gateway's RSS sampled every 250 ms; errors and the RSS slope.

use std::time::Duration;

use super::Bench;
use super::warm_http::{FUNCTION, WarmHttp};
use crate::figure::Figure;
use crate::fixtures::Fjord;
use crate::load;
use crate::procs;
use crate::stats::{after_warmup, slope_per_min_after_warmup};

/// How long the soak lasts, in seconds.
pub fn secs(quick: bool) -> u64 {
    if quick { 10 } else { 60 }
}

/// Fails on any failed request, after pushing the figures.
pub async fn run(b: &mut Bench<'_>, fjord: &Fjord, http: &WarmHttp) -> anyhow::Result<()> {
    let soak_secs = secs(b.quick());
    let c = http.best_c;
    let sampler = procs::RssSampler::start(fjord.pid, Duration::from_millis(250));
    let soak = load::run(
        &fjord.function_target(FUNCTION),
        c,
        Duration::ZERO,
        Duration::from_secs(soak_secs),
    )
    .await?;
    let samples = sampler.finish().await?;
    let errors = soak.errors;
    let slope = slope_per_min_after_warmup(&samples);
    let scenario = format!("soak, {soak_secs} s at c={c}");
    b.push(
        Figure::new(&scenario, "errors", errors as f64, "")
            .target("0", errors == 0)
            .note(&format!(
                "{} requests, {:.0} req/s",
                soak.requests,
                soak.rps()
            )),
    );
    let max_rss = after_warmup(&samples)
        .iter()
        .map(|s| s.1)
        .fold(0.0, f64::max);
    b.push(
        Figure::new(
            &scenario,
            "gateway RSS slope after warm-up",
            slope,
            "KiB/min",
        )
        .target("flat (≤ 1024 KiB/min)", slope.abs() <= 1024.0)
        .note(&format!("max RSS {max_rss:.0} KiB")),
    );
    soak.ensure_no_errors("soak")
}
