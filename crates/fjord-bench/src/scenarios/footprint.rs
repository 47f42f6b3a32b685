//! Footprint: RSS of `fjord serve` idle, under load, and with 100 and 1,000 fork-mode
//! functions deployed at zero replicas; RSS of one idle http replica.

use std::time::Duration;

use serde_json::json;

use super::Bench;
use super::warm_http::WarmHttp;
use crate::figure::Figure;
use crate::fixtures::Fjord;
use crate::procs;
use crate::run::IdleMemory;

/// How many deployments are in flight at once while filling the gateway.
const DEPLOY_BATCH: usize = 16;
/// Three samples of the dashboard history (taken every 5 s) after the last deploy.
const HISTORY_SAMPLES_WAIT: Duration = Duration::from_millis(15_500);

pub async fn run(
    b: &mut Bench<'_>,
    fjord: &Fjord,
    idle: &IdleMemory,
    http: &WarmHttp,
) -> anyhow::Result<()> {
    let idle_rss_kb = idle.rss_kb;
    b.push(
        Figure::new(
            "footprint",
            "fjord serve RSS, idle (no functions)",
            idle_rss_kb as f64 / 1024.0,
            "MiB",
        )
        .target("≤ 12 MiB", idle_rss_kb <= 12 * 1024)
        .note(&format!(
            "read {:.1} s after start; of which anonymous {:.1} MiB (the rest: pages of the binary and libraries)",
            crate::run::IDLE_SETTLE.as_secs_f64(),
            idle.anon_kb as f64 / 1024.0
        )),
    );
    b.push(
        Figure::new(
            "footprint",
            "fjord serve RSS, max under load",
            http.max_rss_kb as f64 / 1024.0,
            "MiB",
        )
        .note("largest of readings every 100 ms during the warm-invoke loads through fjord"),
    );
    let replicas = &http.replica_rss_kb;
    let per_replica = replicas.iter().sum::<u64>() as f64 / replicas.len() as f64 / 1024.0;
    b.push(Figure::new(
        "footprint",
        "RSS per idle http replica (bench function)",
        per_replica,
        "MiB",
    ));
    let mut deployed = 0usize;
    for n in [100usize, 1000] {
        let mut pending = Vec::new();
        while deployed < n {
            let body = json!({"service": format!("zero-{deployed}"), "image": "bench", "envProcess": "cat",
                "labels": {"com.openfaas.scale.min": "0"}});
            pending.push(fjord.deploy(body));
            deployed += 1;
            if pending.len() == DEPLOY_BATCH {
                for r in futures_util::future::join_all(std::mem::take(&mut pending)).await {
                    r?;
                }
            }
        }
        for r in futures_util::future::join_all(pending).await {
            r?;
        }
        // Read once the dashboard's history has sampled every function a few times (one
        // sample per 5 s): what a function at zero costs after a while, not just after its
        // deploy.
        tokio::time::sleep(HISTORY_SAMPLES_WAIT).await;
        let rss = fjord.rss_kb()?;
        let anon = procs::anon_kb_of(fjord.pid)?;
        let mut row = Figure::new(
            "footprint",
            &format!("fjord serve RSS, {n} functions at zero"),
            rss as f64 / 1024.0,
            "MiB",
        )
        .baseline("idle", idle_rss_kb as f64 / 1024.0)
        .note(&format!(
            "read 15 s after the last deploy (three dashboard-history samples of each function); of which anonymous {:.1} MiB",
            anon as f64 / 1024.0
        ));
        if n == 1000 {
            row = row.target("≤ 25 MiB", rss <= 25 * 1024);
        }
        b.push(row);
    }
    Ok(())
}
