//! Taking one measurement: a load while each party's CPU use is read, and the cold-start
//! loop (scale 0→1 to the first response) that the report and the A/B mode share.

use std::time::{Duration, Instant};

use crate::figure::CpuUse;
use crate::fixtures::Fjord;
use crate::load::{self, LoadResult, Target};
use crate::procs;

/// How long each load warms up, then is measured.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warm: Duration,
    pub dur: Duration,
}

impl Timing {
    /// The report's timings: quick (day-to-day) or full.
    pub fn new(quick: bool) -> Self {
        Self {
            warm: Duration::from_millis(if quick { 500 } else { 1000 }),
            dur: Duration::from_secs(if quick { 2 } else { 8 }),
        }
    }
}

/// The processes whose CPU use is reported for a measurement.
pub struct Parties<'a> {
    pub gateway: &'a [i32],
    pub replica: &'a [i32],
    pub proxy: &'a [i32],
}

/// Runs a load (after the same load for the warm-up) while measuring each party's CPU use, which is
/// pushed to `cpu` under `what`; fails if any request failed.
pub async fn measured(
    what: &str,
    target: &Target,
    c: usize,
    Timing { warm, dur }: Timing,
    parties: &Parties<'_>,
    cpu: &mut Vec<CpuUse>,
) -> anyhow::Result<LoadResult> {
    let Parties {
        gateway,
        replica,
        proxy,
    } = *parties;
    let me = [std::process::id() as i32];
    // The warm-up is the same load (pools and allocators grow there), not counted but
    // checked: a failure while warming is a failure of the measurement.
    load::run(target, c, Duration::ZERO, warm)
        .await?
        .ensure_no_errors(&format!("{what} (warm-up)"))?;
    let before = [
        procs::ticks_of(gateway),
        procs::ticks_of(replica),
        procs::ticks_of(proxy),
        procs::ticks_of(&me),
    ];
    let r = load::run(target, c, Duration::ZERO, dur).await?;
    let after = [
        procs::ticks_of(gateway),
        procs::ticks_of(replica),
        procs::ticks_of(proxy),
        procs::ticks_of(&me),
    ];
    let pct = |i: usize| {
        (after[i].saturating_sub(before[i])) as f64 / procs::ticks_per_second() / dur.as_secs_f64()
            * 100.0
    };
    cpu.push(CpuUse {
        measurement: what.into(),
        gateway_pct: pct(0),
        replica_pct: pct(1),
        proxy_pct: pct(2),
        loadgen_pct: pct(3),
    });
    r.ensure_no_errors(what)?;
    Ok(r)
}

/// `trials` cold starts of `name` (deployed with scale-to-zero allowed), in ms each: scale
/// to 0, wait until the replica is gone, then time the scale to 1 plus the first response.
/// Leaves the function at one replica.
pub async fn cold_starts(fjord: &Fjord, name: &str, trials: usize) -> anyhow::Result<Vec<f64>> {
    cold_starts_with(fjord, name, trials, None).await
}

/// As [`cold_starts`]; with `post`, the first request posts that body and must get a 200
/// with a non-empty answer (a function that does real work before it can answer).
pub async fn cold_starts_with(
    fjord: &Fjord,
    name: &str,
    trials: usize,
    post: Option<&'static [u8]>,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(trials);
    for _ in 0..trials {
        fjord.scale(name, 0).await?;
        fjord
            .wait_available(name, 0, Duration::from_secs(10))
            .await?;
        // Let the old replica exit so it does not compete with the new one.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        fjord.scale(name, 1).await?;
        match post {
            None => fjord.get_ok(&format!("/function/{name}")).await?,
            Some(body) => {
                let r = fjord
                    .http
                    .post(fjord.url(&format!("/function/{name}")))
                    .body(body)
                    .send()
                    .await?;
                let status = r.status();
                let answer = r.bytes().await?;
                anyhow::ensure!(
                    status == reqwest::StatusCode::OK && !answer.is_empty(),
                    "POST /function/{name}: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_timings_are_shorter() {
        let (q, f) = (Timing::new(true), Timing::new(false));
        assert_eq!(
            (q.warm, q.dur),
            (Duration::from_millis(500), Duration::from_secs(2))
        );
        assert_eq!(
            (f.warm, f.dur),
            (Duration::from_secs(1), Duration::from_secs(8))
        );
    }
}
