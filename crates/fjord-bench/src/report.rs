//! Writes the results: docs/BENCHMARKS.md (a table people read) and a JSON file (for tools).

use std::fmt::Write;
use std::time::Duration;

use crate::run::{CpuUse, Options, Row};

fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

pub fn write(opts: &Options, rows: &[Row], cpu: &[CpuUse], total: Duration) -> anyhow::Result<()> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mode = if opts.quick { "quick" } else { "full" };
    let mut md = String::new();
    let _ = writeln!(md, "# fjord benchmarks\n");
    let _ = writeln!(
        md,
        "Measured {now} on {} ({mode} run, {:.0} s). Reproduce with:\n\n```sh\n{}\n```\n",
        machine(),
        total.as_secs_f64(),
        opts.command
    );
    let _ = writeln!(
        md,
        "Every figure has a baseline measured in the same run, so ratios hold on a noisy shared machine. \
The load generator (`fjord-bench load`, closed loop over keep-alive HTTP/1.1 connections, HDR histogram) \
runs on the same 2 cores as fjord, the function and nginx: see the CPU table below. \
`scripts/bench` exits non-zero (and writes nothing) if any request of any scenario fails.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | figure | fjord | baseline (same run) | ratio | target | met | notes |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let baseline = match (&r.baseline, r.baseline_value) {
            (Some(b), Some(v)) => format!("{} ({b})", fmt_value(v, &r.unit)),
            _ => "—".into(),
        };
        let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}×"));
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.figure,
            fmt_value(r.value, &r.unit),
            baseline,
            ratio,
            r.target.as_deref().unwrap_or("—"),
            met,
            r.note.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(md, "\n## CPU use during each measurement (% of one core)\n");
    let _ = writeln!(
        md,
        "| measurement | fjord serve | function replica | nginx | load generator |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for c in cpu {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c.measurement, c.gateway_pct, c.replica_pct, c.proxy_pct, c.loadgen_pct
        );
    }
    let _ = writeln!(
        md,
        "\n## How each figure is taken\n\n\
- **Warm invoke, http mode**: the bench's own http function (Rust, one thread, answers `ok`) runs as an \
http-mode replica. The same load runs directly against the replica's port, through `fjord serve` \
(`/function/bench-http`), and through nginx (`nginx-light`, `worker_processes auto`, upstream `keepalive 256`) \
in front of the same replica. Added latency = proxied percentile − direct percentile.\n\
- **Warm invoke, fork mode**: `cat` with a 5-byte body through fjord at c=1, against spawning `/usr/bin/cat` \
directly from the bench with the same body.\n\
- **Cold start**: scale the function to 0, wait until its replica is gone, then time `POST /system/scale-function` \
(replicas 1) plus the first `GET /function/NAME`, which waits for the replica to accept connections. \
The template functions are the skeletons of `fjord new --lang L`, built, pushed and deployed with \
`fjord up` as users do. Baseline: start and exit of the same interpreter or of a tiny binary \
(`python3 -c pass`, `node -e 0`, `fjord-bench noop`, `/bin/true` for the Rust template).\n\
- **Warm invoke per template**: c=16 through fjord to one replica of each template's skeleton, against the \
bench's own Rust function through fjord at its best concurrency.\n\
- **Autoscaler reaction**: a function with min 1, max 4, target 100 req/s per replica; time from \
the start of a c=8 load until its desired replicas exceed 1 (the autoscaler decides every second).\n\
- **Async**: `POST /async-function/bench-async` (5-byte body, embedded queue, fsync before every \
202 via group commit) from 64 connections for the run's duration: accepted/s. Then the time until the \
queue is empty: drain rate, against the same function invoked sync at c=10 (the default async \
concurrency per function).\n\
- **Scale-out**: time from `POST /system/scale-function` with 50 replicas until `availableReplicas` is 50.\n\
- **Soak**: the best-throughput concurrency of the http scenario, through fjord; RSS sampled every 250 ms, \
slope by least squares after the first 20 %.\n\
- **Footprint**: RSS of `fjord serve` from /proc; functions at zero are fork-mode `cat` functions deployed with \
`com.openfaas.scale.min: 0`.\n\
- **Micro-benchmarks** of the hot-path pieces: `cargo bench -p fjord-gateway --bench hot_path`.\n"
    );
    if let Some(dir) = opts.out_md.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out_md, md)?;
    let json = serde_json::json!({
        "measured_at": now.to_string(),
        "mode": mode,
        "machine": machine(),
        "command": opts.command,
        "seconds": total.as_secs_f64(),
        "rows": rows,
        "cpu": cpu,
    });
    std::fs::write(&opts.out_json, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!(
        "wrote {} and {}",
        opts.out_md.display(),
        opts.out_json.display()
    );
    Ok(())
}
