//! `--only ab`: what a change costs, as an A/B of two fjord binaries in one run. The two are
//! started alternately (old, new, new, old, ...) with the same deployments, so drift of a
//! shared, noisy machine falls on both: warm invoke through the gateway (http mode, one
//! replica, c=64) and cold start (scale 0→1 to the first response).

use std::path::Path;
use std::time::Duration;

use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica, scales_to_zero};
use crate::load;
use crate::measure::cold_starts;
use crate::stats::{median_of, percentile};

#[derive(Default)]
struct Side {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// Warm invoke at c=1, p50 (µs).
    c1_p50: Vec<f64>,
    /// RSS [`IDLE_SETTLE`](crate::run::IDLE_SETTLE) after start, before any deploy (KiB).
    idle_rss_kb: Vec<f64>,
    cold: Vec<f64>,
}

async fn measure(bin: &Path, bench_bin: &str, quick: bool, side: &mut Side) -> anyhow::Result<()> {
    let (warm, dur) = if quick {
        (Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    };
    let fjord = Fjord::start(bin, &[], None).await?;
    tokio::time::sleep(crate::run::IDLE_SETTLE).await;
    side.idle_rss_kb.push(fjord.rss_kb()? as f64);
    fjord
        .deploy_ready(
            bench_function("ab-http", bench_bin, one_replica()),
            Duration::from_secs(20),
        )
        .await?;
    let r = load::run(&fjord.function_target("ab-http"), 64, warm, dur).await?;
    r.ensure_no_errors(&format!("warm invoke via {}", bin.display()))?;
    side.rps.push(r.rps());
    side.p50.push(r.p(0.5));
    side.p99.push(r.p(0.99));
    let r = load::run(&fjord.function_target("ab-http"), 1, warm, dur).await?;
    r.ensure_no_errors(&format!("warm invoke c=1 via {}", bin.display()))?;
    side.c1_p50.push(r.p(0.5));

    fjord
        .deploy_ready(
            bench_function("ab-cold", bench_bin, scales_to_zero()),
            Duration::from_secs(20),
        )
        .await?;
    let trials = if quick { 10 } else { 30 };
    side.cold
        .extend(cold_starts(&fjord, "ab-cold", trials).await?);
    fjord.stop().await
}

pub(crate) async fn scenario(
    old: &Path,
    new: &Path,
    bench_bin: &str,
    quick: bool,
    rows: &mut Vec<Figure>,
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
        Figure::new(
            s,
            "warm invoke c=64, throughput (median of runs)",
            median_of(&b.rps),
            "req/s",
        )
        .baseline(&old_label, median_of(&a.rps))
        .note(&format!("new {}; old {}", spread(&b.rps), spread(&a.rps))),
    );
    rows.push(
        Figure::new(
            s,
            "warm invoke c=64, p50 latency (median of runs)",
            median_of(&b.p50),
            "µs",
        )
        .baseline(&old_label, median_of(&a.p50))
        .note(&format!(
            "p99 new {:.0} µs, old {:.0} µs",
            median_of(&b.p99),
            median_of(&a.p99)
        )),
    );
    rows.push(
        Figure::new(
            s,
            "warm invoke c=1, p50 latency (median of runs)",
            median_of(&b.c1_p50),
            "µs",
        )
        .baseline(&old_label, median_of(&a.c1_p50))
        .note(&format!(
            "new {}; old {}",
            spread(&b.c1_p50),
            spread(&a.c1_p50)
        )),
    );
    rows.push(
        Figure::new(
            s,
            &format!(
                "fjord serve RSS idle, {:.1} s after start (median of runs)",
                crate::run::IDLE_SETTLE.as_secs_f64()
            ),
            median_of(&b.idle_rss_kb) / 1024.0,
            "MiB",
        )
        .baseline(&old_label, median_of(&a.idle_rss_kb) / 1024.0),
    );
    let n = b.cold.len();
    rows.push(
        Figure::new(
            s,
            &format!("cold start 0→1 to first response, p50 ({n} trials each)"),
            median_of(&b.cold),
            "ms",
        )
        .baseline(&old_label, median_of(&a.cold))
        .note(&format!(
            "p99 new {:.1} ms, old {:.1} ms",
            percentile(&mut b.cold, 0.99),
            percentile(&mut a.cold, 0.99)
        )),
    );
    Ok(())
}
