//! The scenario runner behind `scripts/bench`: starts `fjord serve` in a temp data dir,
//! deploys its own functions, measures every scenario (`scenarios::*`) against a baseline
//! taken in the same run, and writes docs/BENCHMARKS.md and a JSON file. Any failed request
//! aborts the run (non-zero exit, nothing written), so a broken path never prints a pretty
//! number.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica};
use crate::scenarios::async_queue::{self, Backend};
use crate::scenarios::{
    Bench, cold_start, containers, footprint, fork, scale, soak, tls, warm_http,
};

pub struct Options {
    pub quick: bool,
    pub fjord: PathBuf,
    pub nginx: PathBuf,
    pub out_md: PathBuf,
    pub out_json: PathBuf,
    pub command: String,
    /// Run only this scenario and print its rows instead of writing the report.
    pub only: Option<String>,
    /// The fjord binary the `ab` scenario compares against (e.g. the previous release).
    pub baseline_fjord: Option<PathBuf>,
}

/// The scenarios `--only` runs alone.
pub const ONLY: [&str; 9] = [
    "async",
    "tls",
    "fork",
    "scale",
    "ab",
    "containers",
    "connectors",
    "ui",
    // The template rows of the full run (warm http first: its best throughput is their
    // warm-throughput baseline).
    "templates",
];

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut b = Bench::new(&opts)?;
    if opts.only.as_deref() == Some("containers") {
        // Its own gateway, registry and images; its section of the report is rewritten in
        // place, the rest of the report left as it is.
        let started = Instant::now();
        containers::run(&mut b).await?;
        for f in &b.figures {
            println!("{}", f.summary_line());
        }
        return crate::report::write_section(
            &opts,
            crate::report::Section::Containers,
            &b.figures,
            started.elapsed(),
        );
    }
    if opts.only.as_deref() == Some("connectors") {
        // Its own brokers and gateway; its section of the report is rewritten in place.
        let started = Instant::now();
        crate::scenarios::connectors::run(&mut b).await?;
        for f in &b.figures {
            println!("{}", f.summary_line());
        }
        return crate::report::write_section(
            &opts,
            crate::report::Section::Connectors,
            &b.figures,
            started.elapsed(),
        );
    }
    if opts.only.as_deref() == Some("ui") {
        // A gateway of its own with 1,000 functions and a browser; its section is rewritten.
        let started = Instant::now();
        let (fjord, _) = start_idle(&opts).await?;
        crate::scenarios::ui::run(&mut b, &fjord).await?;
        fjord.stop().await?;
        for f in &b.figures {
            println!("{}", f.summary_line());
        }
        return crate::report::write_section(
            &opts,
            crate::report::Section::Dashboard,
            &b.figures,
            started.elapsed(),
        );
    }
    if let Some(only) = &opts.only {
        run_only(&mut b, only).await?;
        for f in &b.figures {
            println!("{}", f.summary_line());
        }
        return Ok(());
    }
    let started = Instant::now();
    let (fjord, idle) = start_idle(&opts).await?;

    eprintln!("[1/11] warm invoke, http mode");
    let http = warm_http::run(&mut b, &fjord, idle.rss_kb).await?;
    eprintln!("[2/11] warm invoke, fork mode");
    fork::run(&mut b, &fjord).await?;
    eprintln!("[3/11] cold start per template (building the templates with `fjord up`)");
    cold_start::run(&mut b, &fjord, http.best_rps).await?;
    eprintln!("[4/11] scale-out 1 → 50");
    scale::scale_out(&mut b, &fjord).await?;
    scale::autoscaler(&mut b, &fjord).await?;
    eprintln!("[5/11] TLS: the same function through an HTTPS gateway");
    tls::run(&mut b, &fjord).await?;
    // Before the footprint step fills fjord with 1,000 functions.
    eprintln!(
        "[6/11] soak {} s at c={}",
        soak::secs(b.quick()),
        http.best_c
    );
    soak::run(&mut b, &fjord, &http).await?;
    eprintln!("[7/11] footprint: 100 and 1,000 functions at zero");
    footprint::run(&mut b, &fjord, &idle, &http).await?;
    // Last, so its backlog does not weigh on the footprint figures.
    eprintln!("[8/11] async: accept rate, drain rate, accept → start latency");
    async_queue::run(&mut b, &fjord, Backend::Embedded).await?;
    fjord.stop().await?;
    eprintln!("[8/11] async on NATS JetStream: the same figures");
    async_queue::run_on_nats(&mut b).await?;
    eprintln!(
        "[9/11] container images: pull, cold start, warm invoke, disk (a gateway of their own)"
    );
    containers::run(&mut b).await?;
    eprintln!("[10/11] event connectors: NATS, MQTT, cron (brokers and a gateway of their own)");
    crate::scenarios::connectors::run(&mut b).await?;
    eprintln!("[11/11] dashboard: 1,000 functions in a browser, 10 open pages under load");
    let (fjord, _) = start_idle(&opts).await?;
    crate::scenarios::ui::run(&mut b, &fjord).await?;
    fjord.stop().await?;

    let total = started.elapsed();
    eprintln!("done in {:.0} s", total.as_secs_f64());
    finish(&opts, &b, total)
}

/// How long after its start an idle `fjord serve` is measured: start-up has settled (the
/// server releases its start-up pages right away and again 2 s later).
pub const IDLE_SETTLE: Duration = Duration::from_millis(2500);

/// What an idle `fjord serve` holds, in KiB.
pub struct IdleMemory {
    pub rss_kb: u64,
    /// Of which anonymous (see [`procs::anon_kb_of`]).
    pub anon_kb: u64,
}

/// `fjord serve` started and settled, and its idle memory.
async fn start_idle(opts: &Options) -> anyhow::Result<(Fjord, IdleMemory)> {
    let fjord = Fjord::start(&opts.fjord, &[], None).await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle = IdleMemory {
        rss_kb: fjord.rss_kb()?,
        anon_kb: crate::procs::anon_kb_of(fjord.pid)?,
    };
    eprintln!(
        "fjord serve up at {} (idle RSS {} KiB, of which anonymous {} KiB)",
        fjord.addr, idle.rss_kb, idle.anon_kb
    );
    Ok((fjord, idle))
}

/// One scenario (or group) alone, its figures left in `b`.
async fn run_only(b: &mut Bench<'_>, only: &str) -> anyhow::Result<()> {
    if only == "ab" {
        let old = b.opts.baseline_fjord.as_deref().context(
            "--only ab compares two binaries: give the other one with --baseline-fjord PATH",
        )?;
        // The two binaries are started in turn inside; no other gateway runs meanwhile.
        return crate::ab::scenario(old, &b.opts.fjord, &b.bench_bin, b.quick(), &mut b.figures)
            .await;
    }
    if !ONLY.contains(&only) {
        bail!(
            "unknown scenario {only:?}: those that run alone are {}",
            ONLY.join(", ")
        );
    }
    let (fjord, idle) = start_idle(b.opts).await?;
    let idle_rss_kb = idle.rss_kb;
    match only {
        "templates" => {
            let http = warm_http::run(b, &fjord, idle_rss_kb).await?;
            cold_start::run(b, &fjord, http.best_rps).await?;
        }
        "async" => {
            async_queue::run(b, &fjord, Backend::Embedded).await?;
            async_queue::run_on_nats(b).await?;
        }
        "tls" => {
            fjord
                .deploy_ready(
                    bench_function(warm_http::FUNCTION, &b.bench_bin, one_replica()),
                    Duration::from_secs(20),
                )
                .await?;
            tls::run(b, &fjord).await?;
        }
        "fork" => fork::run(b, &fjord).await?,
        "scale" => {
            scale::scale_out(b, &fjord).await?;
            scale::autoscaler(b, &fjord).await?;
        }
        _ => unreachable!("checked against ONLY above"),
    }
    fjord.stop().await
}

/// Writes the report and says which targets were missed.
fn finish(opts: &Options, b: &Bench<'_>, total: Duration) -> anyhow::Result<()> {
    crate::report::write(opts, &b.figures, &b.cpu, total)?;
    let missed: Vec<&Figure> = b.figures.iter().filter(|r| r.met == Some(false)).collect();
    if !missed.is_empty() {
        eprintln!("{} target(s) not met (see the table):", missed.len());
        for r in missed {
            eprintln!("  {} — {}: {:.2} {}", r.scenario, r.figure, r.value, r.unit);
        }
    }
    Ok(())
}
