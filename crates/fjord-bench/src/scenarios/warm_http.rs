//! Warm invoke, http mode: the bench's http function through fjord, against the same load
//! sent directly to the replica and through nginx in front of it, at c = 1, 16 and 64; then
//! at c = 1 and 64 again with wrk, a second, independent load generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, Nginx, bench_function, one_replica};
use crate::load::Target;
use crate::measure::{Parties, measured};
use crate::procs;
use crate::wrk;

/// The function every warm-invoke figure (and the soak and TLS scenarios) calls.
pub const FUNCTION: &str = "bench-http";

/// What later scenarios reuse from this one.
pub struct WarmHttp {
    /// The concurrency with the best throughput through fjord, and that throughput.
    pub best_c: usize,
    pub best_rps: f64,
    /// fjord serve's largest RSS seen (idle or right after each load), KiB.
    pub max_rss_kb: u64,
    /// RSS of the function's replica(s), KiB.
    pub replica_rss_kb: Vec<u64>,
}

/// The network namespace fjord runs `pid` in, when it is not ours (as root, fjord gives each
/// function its own): the direct and nginx baselines run there too, on the same loopback
/// the gateway's connections use.
fn foreign_netns(pid: Option<&i32>) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/proc/{}/ns/net", pid?));
    let ino = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    (ino(&path) != ino(Path::new("/proc/self/ns/net"))).then_some(path)
}

pub async fn run(b: &mut Bench<'_>, fjord: &Fjord, idle_rss_kb: u64) -> anyhow::Result<WarmHttp> {
    // One replica: the proxy comparison needs the same single upstream for all three.
    fjord
        .deploy_ready(
            bench_function(FUNCTION, &b.bench_bin, one_replica()),
            Duration::from_secs(20),
        )
        .await?;
    let port = fjord.replica_port(FUNCTION).await?;
    let replica_pids = procs::find_by_args(&[&b.bench_bin, "function"]);
    let ns_path = foreign_netns(replica_pids.first());
    let netns = match &ns_path {
        Some(p) => Some(Arc::new(std::fs::File::open(p)?)),
        None => None,
    };
    let nginx = Nginx::start(
        &b.opts.nginx,
        port,
        ns_path.as_deref().zip(netns.as_deref()),
    )
    .await?;
    let direct = Target::new(format!("127.0.0.1:{port}").parse()?, "/").in_netns(netns.clone());
    let via_gateway = fjord.function_target(FUNCTION);
    let via_nginx = Target::new(nginx.addr, "/").in_netns(netns);
    let gw = [fjord.pid];
    let without_proxy = Parties {
        gateway: &gw,
        replica: &replica_pids,
        proxy: &[],
    };
    let mut best = (0usize, 0f64);
    let mut max_rss_kb = idle_rss_kb;
    for c in [1usize, 16, 64] {
        let t = b.timing;
        let d = measured(
            &format!("http direct c={c}"),
            &direct,
            c,
            t,
            &without_proxy,
            &mut b.cpu,
        )
        .await?;
        let rss = procs::RssSampler::start(fjord.pid, Duration::from_millis(100));
        let g = measured(
            &format!("http via fjord c={c}"),
            &via_gateway,
            c,
            t,
            &without_proxy,
            &mut b.cpu,
        )
        .await?;
        max_rss_kb = max_rss_kb.max(procs::max_kb(&rss.finish().await?));
        // nginx's workers, read each time (they may not all be up right after its start).
        let nginx_pids = nginx.pids();
        let with_proxy = Parties {
            proxy: &nginx_pids,
            ..without_proxy
        };
        let n = measured(
            &format!("http via nginx c={c}"),
            &via_nginx,
            c,
            t,
            &with_proxy,
            &mut b.cpu,
        )
        .await?;
        if g.rps() > best.1 {
            best = (c, g.rps());
        }
        let s = format!("warm invoke, http mode, c={c}");
        for (label, qv) in [("p50", 0.5), ("p99", 0.99)] {
            let added = g.p(qv) - d.p(qv);
            let nginx_added = n.p(qv) - d.p(qv);
            let mut row = Figure::new(
                &s,
                &format!("added latency {label} (fjord − direct)"),
                added,
                "µs",
            )
            .baseline("nginx − direct", nginx_added);
            if c == 1 {
                let (t, ok) = if label == "p50" {
                    ("≤ 20 µs", added <= 20.0)
                } else {
                    ("≤ 1000 µs", added <= 1000.0)
                };
                row = row.target(t, ok);
            }
            b.push(row.note(&format!(
                "direct {label} {:.0} µs, fjord {:.0} µs, nginx {:.0} µs",
                d.p(qv),
                g.p(qv),
                n.p(qv)
            )));
        }
        b.push(
            Figure::new(&s, "throughput via fjord", g.rps(), "req/s")
                .baseline("direct to replica", d.rps()),
        );
        let mut row = Figure::new(&s, "throughput via fjord", g.rps(), "req/s")
            .baseline("via nginx keep-alive proxy", n.rps());
        if c == 64 {
            let ratio = g.rps() / n.rps();
            row = row.target("≥ 1.0× nginx", ratio >= 1.0);
        }
        b.push(row.note(&format!("nginx/direct = {:.2}", n.rps() / d.rps())));
    }
    // The same three paths again with wrk, an independent load generator.
    let direct_url = format!("http://127.0.0.1:{port}/");
    let fjord_url = fjord.url(&format!("/function/{FUNCTION}"));
    let nginx_url = format!("http://{}/", nginx.addr);
    for c in [1usize, 64] {
        let dur = b.timing.dur;
        let ns = ns_path.as_deref();
        let d = wrk::run(&direct_url, ns, c, dur).await?;
        let g = wrk::run(&fjord_url, None, c, dur).await?;
        let n = wrk::run(&nginx_url, ns, c, dur).await?;
        let s = format!("warm invoke, http mode, c={c} (wrk -t1)");
        let note = format!(
            "wrk p50 direct {:.0} µs, fjord {:.0} µs, nginx {:.0} µs; {:.0} / {:.0} / {:.0} req/s",
            d.p50_us, g.p50_us, n.p50_us, d.rps, g.rps, n.rps
        );
        if c == 1 {
            let added = g.p50_us - d.p50_us;
            b.push(
                Figure::new(&s, "added latency p50 (fjord − direct)", added, "µs")
                    .baseline("nginx − direct", n.p50_us - d.p50_us)
                    .target("≤ 20 µs", added <= 20.0)
                    .note(&note),
            );
        } else {
            b.push(
                Figure::new(&s, "throughput via fjord", g.rps, "req/s")
                    .baseline("via nginx keep-alive proxy", n.rps)
                    .target("≥ 1.0× nginx", g.rps >= n.rps)
                    .note(&note),
            );
        }
    }
    nginx.stop().await;
    let replica_rss_kb = replica_pids
        .iter()
        .map(|p| procs::rss_kb_of(*p))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    ensure!(
        !replica_rss_kb.is_empty(),
        "benchmark function replica not found in /proc"
    );
    Ok(WarmHttp {
        best_c: best.0,
        best_rps: best.1,
        max_rss_kb,
        replica_rss_kb,
    })
}
