//! Writes the results: docs/BENCHMARKS.md (a table people read) and a JSON file (for tools).

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use crate::figure::{CpuUse, Figure};
use crate::run::Options;
use crate::scenarios::connectors::SCENARIO_PREFIX as CONNECTOR_PREFIX;
use crate::scenarios::containers::SCENARIO_PREFIX as CONTAINER_PREFIX;
use crate::scenarios::ui::SCENARIO as DASHBOARD_PREFIX;

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

/// What the report says about the run itself.
pub struct Header {
    /// RFC 3339, seconds.
    pub measured_at: String,
    pub machine: String,
    /// `quick` or `full`.
    pub mode: &'static str,
    pub seconds: f64,
    /// The command that reproduces the run.
    pub command: String,
}

/// The "baseline (same run)" cell: value with its unit, then what it is.
fn baseline_cell(f: &Figure) -> String {
    match (&f.baseline, f.baseline_value) {
        (Some(b), Some(v)) => format!("{} ({b})", fmt_value(v, &f.unit)),
        _ => "—".into(),
    }
}

fn ratio_cell(f: &Figure) -> String {
    f.ratio.map_or("—".into(), |x| format!("{x:.2}×"))
}

fn met_cell(f: &Figure) -> &'static str {
    match f.met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// One line of the results table.
fn table_line(f: &Figure) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        f.scenario,
        f.figure,
        fmt_value(f.value, &f.unit),
        baseline_cell(f),
        ratio_cell(f),
        f.target.as_deref().unwrap_or("—"),
        met_cell(f),
        f.note.as_deref().unwrap_or("")
    )
}

/// docs/BENCHMARKS.md.
pub fn markdown(h: &Header, rows: &[Figure], cpu: &[CpuUse]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# fjord benchmarks\n");
    let _ = writeln!(
        md,
        "Measured {} on {} ({} run, {:.0} s). Reproduce with:\n\n```sh\n{}\n```\n",
        h.measured_at, h.machine, h.mode, h.seconds, h.command
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
    for r in rows.iter().filter(|r| Section::of(r).is_none()) {
        let _ = writeln!(md, "{}", table_line(r));
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
in front of the same replica. Each load first runs as a warm-up of the same shape (1 s; its \
failures fail the run), then is measured; success is exactly 200 (202 only where an async call is the \
request). Added latency = proxied percentile − direct percentile. The rows marked `(wrk -t1)` measure the \
same three paths at c=1 and 64 with wrk (Debian's 4.1, one thread, its own connections; direct and nginx \
from the replica's network namespace through `nsenter`), an independent load generator; any socket error \
or non-2xx answer fails the run.\n\
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
concurrency per function); every drained call must have answered 200 (the gateway's \
`gateway_function_invocation_total{{code=\"200\"}}` and `fjord_async_processed_total` each rose by the \
number queued, with no retry and no dead letter), or the run fails.\n\
- **Scale-out**: time from `POST /system/scale-function` with 50 replicas until `availableReplicas` is 50 \
(autoscaling off for that function: `com.openfaas.scale.factor: 0`). **Under load**: c=64 against one \
replica (the baseline's p99), then a 3 s load of the same shape with the scale call to 50 at 0.2 s; every \
request must answer 200 and its p99 spans the scale-out.\n\
- **Soak**: the best-throughput concurrency of the http scenario, through fjord; RSS sampled every 250 ms, \
slope by least squares after the first 20 %.\n\
- **Footprint**: RSS of `fjord serve` from /proc (a reading that fails fails the run); \"max under load\" \
is the largest reading every 100 ms during the warm-invoke loads through fjord; functions at zero are \
fork-mode `cat` functions deployed with `com.openfaas.scale.min: 0`, read 15 s after the last deploy \
(three samples of each function's dashboard history, which is kept per function even at zero).\n\
- **TLS**: the plain gateway's load runs right before the TLS gateway's (one after the other, same run), \
not at the same moment.\n\
- **Micro-benchmarks** of the hot-path pieces: `cargo bench -p fjord-gateway --bench hot_path`.\n\
- **What a change cost**: fjord against the binary before the change, alternating in one run (`--only ab`); results kept in [benchmarks-ab.md](benchmarks-ab.md).\n"
    );
    for section in Section::ALL {
        if !md.ends_with("\n\n") {
            md.push('\n');
        }
        md.push_str(&section.markdown(h, rows));
    }
    md
}

/// A group of figures with a section of its own at the end of the report: measured in a
/// gateway of its own, so `--only NAME` rewrites just its section and leaves the rest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    Containers,
    Connectors,
    Dashboard,
}

impl Section {
    /// In the report's order (the last sections of it).
    pub const ALL: [Section; 3] = [Section::Containers, Section::Connectors, Section::Dashboard];

    pub fn heading(self) -> &'static str {
        match self {
            Section::Containers => "## Container images",
            Section::Connectors => "## Event connectors",
            Section::Dashboard => "## Dashboard",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Section::Containers => CONTAINER_PREFIX,
            Section::Connectors => CONNECTOR_PREFIX,
            Section::Dashboard => DASHBOARD_PREFIX,
        }
    }

    /// The section a figure belongs to; `None` for the main table.
    fn of(f: &Figure) -> Option<Section> {
        Self::ALL
            .into_iter()
            .find(|s| f.scenario.starts_with(s.prefix()))
    }

    /// Its heading, run line and command, its table, and how each figure is taken.
    pub fn markdown(self, h: &Header, rows: &[Figure]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{}\n", self.heading());
        let _ = writeln!(
            md,
            "Measured {} on {} ({} run). Reproduce with:\n\n```sh\n{}\n```\n",
            h.measured_at, h.machine, h.mode, h.command
        );
        let _ = writeln!(
            md,
            "| scenario | figure | fjord | baseline (same run) | ratio | target | met | notes |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in rows.iter().filter(|r| Self::of(r) == Some(self)) {
            let _ = writeln!(md, "{}", table_line(r));
        }
        md.push('\n');
        md.push_str(match self {
            Section::Containers => CONTAINERS_HOW,
            Section::Connectors => CONNECTORS_HOW,
            Section::Dashboard => DASHBOARD_HOW,
        });
        md
    }
}

const CONTAINERS_HOW: &str = "The images are made in the run with umoci from the bench's own http function (its binary and \
the libraries `ldd` lists; entry point `fjord-bench function` on 127.0.0.1:8080): `small`, and `big` = `small` \
+ 3 layers of 34 MiB of random bytes. skopeo pushes both to a `docker-registry` on a free loopback port. \
The figures are taken in a `fjord serve` of their own (as root, `--containers auto`), started with an empty \
image store.\n\n\
- **Pull + unpack**: `POST /system/functions` of a new function (min 0 replicas) naming `big`, timed until \
its 202 (fjord resolves the tag, downloads and verifies every blob, unpacks the layers and pins the digest \
before answering); then the function is deleted and `POST /system/images/gc` empties the store. Alternating \
with `skopeo copy docker://… oci:DIR` of the same image into a new directory (download and verify, no unpack). \
Median of each; speed ratio = skopeo's time / fjord's.\n\
- **Cold start, cached image**: `small`, scale 0→1 to the first response as for the other cold starts. \
Baseline: `umoci unpack` of the same image to a runc bundle (its config changed only to join a network \
namespace made beforehand, as fjord's replicas join one made ahead of need), then `runc run` of it, timed \
from the spawn to the first HTTP 200 from inside that namespace, killed and deleted after each run.\n\
- **Warm invoke**: the same binary as a container replica of `small` and as a process replica \
(`envProcess` with `com.fjord.runtime: process`), one replica each, through fjord with the bench's load \
generator: p50 at c=1 and throughput at c=64.\n\
- **Disk**: `big` deployed with 50 replicas; once all are available, bytes allocated (st_blocks, each inode \
once) under `<data-dir>/images/layers` plus `<data-dir>/containers` (each replica's overlay upper and \
work dir), against the layers alone.\n";

const CONNECTORS_HOW: &str = "The figures are taken in a `fjord serve` of their own, started with `--nats` \
(a `nats-server` with JetStream on a free loopback port) and `--mqtt` (a `mosquitto` on a free loopback \
port), serving the bench's own http function (its answer to a connector call is the wall-clock time it \
started the request, in ns).\n\n\
- **Message → function start**: one message at a time; the sender's wall clock when it sent the message \
against the function's start stamp. NATS core: a request on the function's subject, the stamp read from the \
reply. MQTT: a QoS 1 publish to the function's topic, the stamp read from the function's response \
published to `com.fjord.topic.response` (a topic the bench subscribes to).\n\
- **Messages/s**: 10 messages in flight (NATS: 10 requesters; MQTT: 10 outstanding QoS 1 publishes, \
`com.openfaas.queue.max_inflight: 10`), for the run's duration, counted when the function's answer comes \
back; baseline: the same function called over HTTP through fjord at c=10 in the same run. The second row \
puts the same figure against the broker alone, measured right before with the same load: an instant \
responder in the bench (NATS: a queue subscriber replying with the payload; MQTT: a client republishing \
each QoS 1 message at QoS 1, as the connector does), no fjord, no function. The broker is a third process \
on the same cores and every message crosses it twice, so its own round trip bounds what a connector can \
reach.\n\
- **Cron jitter**: 10 functions on the schedule `* * * * * *` (every second) for ~11 s; each run's lateness \
= the function's start stamp − the run's `X-Scheduled-Time`, read from the function's log lines; the first \
100 runs.\n";

/// The dashboard section's notes (its figures come from `--only ui`: a browser is needed).
const DASHBOARD_HOW: &str = "- **Browser time to content**: 999 fork-mode `cat` functions at zero replicas (as in the footprint scenario) plus the bench's http function; chromedriver drives headless Chromium (`--headless=new`, 1280×1000) to the dashboard's port, signs in with the admin password, then loads `/ui/?load=N#/` six times (the first, which warms Chromium's caches, is not counted). The list marks `performance.mark('fjord:list-rendered')` when its first full table is in the page; the figure is that mark's time from navigation start.\n- **Server time**: each API call the list makes, alone, 20 times over one keep-alive connection on loopback (Basic auth), median; the sum is the row's value.\n- **10 open pages**: 10 clients doing what one function page does — follow the logs (`/system/logs?follow=true`, one streamed request each) and read the function and its history every 5 s, with the dashboard session's cookie on the dashboard's port, started 0.5 s apart — while the bench's load generator sends c=64 to the http function; three rounds of 10 s without, then 10 s with, the figure being the median of the rounds' ratios.\n- **Size**: the bytes of `crates/fjord-gateway/ui/` (every file is embedded, `include_bytes!`) against the release `fjord` binary.\n";

/// `md` with `heading`'s section replaced by `section` (appended when it has none); the
/// rest of the report is left as it is.
pub fn splice(md: &str, heading: &str, section: &str) -> String {
    let Some(start) = md.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || md[..i].ends_with('\n')) && md[i + heading.len()..].starts_with('\n')
    }) else {
        let mut out = md.trim_end_matches('\n').to_string();
        out.push_str("\n\n");
        out.push_str(section);
        return out;
    };
    let after = start + heading.len();
    let end = md[after..]
        .find("\n## ")
        .map_or(md.len(), |i| after + i + 1);
    let mut out = md[..start].to_string();
    out.push_str(section);
    if end < md.len() {
        out.push('\n');
        out.push_str(&md[end..]);
    }
    out
}

/// `--only containers|connectors`: rewrites that section of the report in place.
pub fn write_section(
    opts: &Options,
    section: Section,
    rows: &[Figure],
    total: Duration,
) -> anyhow::Result<()> {
    let header = header(opts, total);
    let md = std::fs::read_to_string(&opts.out_md).unwrap_or_default();
    std::fs::write(
        &opts.out_md,
        splice(&md, section.heading(), &section.markdown(&header, rows)),
    )?;
    eprintln!(
        "rewrote the section {:?} of {}",
        section.heading().trim_start_matches("## "),
        opts.out_md.display()
    );
    Ok(())
}

fn header(opts: &Options, total: Duration) -> Header {
    Header {
        measured_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: machine(),
        mode: if opts.quick { "quick" } else { "full" },
        seconds: total.as_secs_f64(),
        command: opts.command.clone(),
    }
}

/// docs/benchmarks.json.
pub fn json(h: &Header, rows: &[Figure], cpu: &[CpuUse]) -> Value {
    serde_json::json!({
        "measured_at": h.measured_at,
        "mode": h.mode,
        "machine": h.machine,
        "command": h.command,
        "seconds": h.seconds,
        "rows": rows,
        "cpu": cpu,
    })
}

pub fn write(
    opts: &Options,
    rows: &[Figure],
    cpu: &[CpuUse],
    total: Duration,
) -> anyhow::Result<()> {
    let header = header(opts, total);
    if let Some(dir) = opts.out_md.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out_md, markdown(&header, rows, cpu))?;
    let json = json(&header, rows, cpu);
    std::fs::write(&opts.out_json, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!(
        "wrote {} and {}",
        opts.out_md.display(),
        opts.out_json.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            measured_at: "2026-11-24T12:41:41Z".into(),
            machine: "2 cores (AMD EPYC), Linux 6.18".into(),
            mode: "full",
            seconds: 268.4,
            command: "scripts/bench".into(),
        }
    }

    fn cpu_line() -> CpuUse {
        CpuUse {
            measurement: "http via fjord c=1".into(),
            gateway_pct: 61.4,
            replica_pct: 38.6,
            proxy_pct: 0.0,
            loadgen_pct: 99.6,
        }
    }

    /// Figures as the scenarios build them, with values of a past report.
    fn figures() -> Vec<Figure> {
        vec![
            Figure::new(
                "warm invoke, fork mode (`cat`), c=1",
                "end-to-end p50",
                1.59,
                "ms",
            )
            .baseline("spawn `cat` directly from the bench", 0.81)
            .target("≤ 2 ms p50", true)
            .note("p99 2.27 ms; 608 req/s"),
            Figure::new(
                "warm invoke, http mode, c=64",
                "throughput via fjord",
                53706.0,
                "req/s",
            )
            .baseline("via nginx keep-alive proxy", 68278.0)
            .target("≥ 1.0× nginx", false)
            .note("nginx/direct = 0.48"),
            Figure::new("soak, 60 s at c=64", "errors", 0.0, "")
                .target("0", true)
                .note("3311074 requests, 55185 req/s"),
            Figure::new("footprint", "fjord serve RSS, max under load", 20.2, "MiB"),
        ]
    }

    #[test]
    fn values_keep_three_significant_digits_or_so() {
        assert_eq!(fmt_value(12358.0, "req/s"), "12358 req/s");
        assert_eq!(fmt_value(100.0, "ms"), "100 ms");
        assert_eq!(fmt_value(14.4, "MiB"), "14.4 MiB");
        assert_eq!(fmt_value(10.0, "ms"), "10.0 ms");
        assert_eq!(fmt_value(1.0, "µs"), "1.00 µs");
        assert_eq!(fmt_value(-196.0, "µs"), "-196 µs");
        assert_eq!(fmt_value(-12.34, "µs"), "-12.3 µs");
        assert_eq!(fmt_value(0.0, ""), "0.00", "no unit, no trailing space");
    }

    #[test]
    fn cells_for_missing_baseline_ratio_and_target_are_dashes() {
        let f = Figure::new("s", "f", 1.0, "ms");
        assert_eq!(baseline_cell(&f), "—");
        assert_eq!(ratio_cell(&f), "—");
        assert_eq!(met_cell(&f), "—");
        assert_eq!(table_line(&f), "| s | f | 1.00 ms | — | — | — | — |  |");
    }

    #[test]
    fn a_missed_target_is_bold_no() {
        assert_eq!(
            met_cell(&Figure::new("s", "f", 1.0, "").target("0", false)),
            "**no**"
        );
        assert_eq!(
            met_cell(&Figure::new("s", "f", 0.0, "").target("0", true)),
            "yes"
        );
    }

    #[test]
    fn table_lines_are_those_of_the_report() {
        // Lines of docs/BENCHMARKS.md as the runner wrote them before the split (its values
        // change with every run; this pins the format).
        let lines: Vec<String> = figures().iter().map(table_line).collect();
        assert_eq!(
            lines,
            [
                "| warm invoke, fork mode (`cat`), c=1 | end-to-end p50 | 1.59 ms | 0.81 ms (spawn `cat` directly from the bench) | 1.96× | ≤ 2 ms p50 | yes | p99 2.27 ms; 608 req/s |",
                "| warm invoke, http mode, c=64 | throughput via fjord | 53706 req/s | 68278 req/s (via nginx keep-alive proxy) | 0.79× | ≥ 1.0× nginx | **no** | nginx/direct = 0.48 |",
                "| soak, 60 s at c=64 | errors | 0.00 | — | — | 0 | yes | 3311074 requests, 55185 req/s |",
                "| footprint | fjord serve RSS, max under load | 20.2 MiB | — | — | — | — |  |",
            ]
        );
    }

    fn committed_report() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/BENCHMARKS.md");
        std::fs::read_to_string(path).expect("docs/BENCHMARKS.md")
    }

    /// Headings, table header rows and the "Reproduce with" block: the parts of the report
    /// that do not depend on the figures.
    fn skeleton(md: &str) -> Vec<&str> {
        md.lines()
            .filter(|l| {
                l.starts_with('#')
                    || l.starts_with("| scenario |")
                    || l.starts_with("| measurement |")
                    || l.starts_with("|---")
                    || l.starts_with("```")
            })
            .collect()
    }

    #[test]
    fn markdown_has_the_committed_report_s_structure() {
        let md = markdown(&header(), &figures(), &[cpu_line()]);
        let committed = committed_report();
        assert_eq!(skeleton(&md), skeleton(&committed));
        assert_eq!(
            skeleton(&md)
                .iter()
                .filter(|l| l.starts_with('#'))
                .copied()
                .collect::<Vec<_>>(),
            [
                "# fjord benchmarks",
                "## CPU use during each measurement (% of one core)",
                "## How each figure is taken",
                "## Container images",
                "## Event connectors",
                "## Dashboard"
            ]
        );
    }

    #[test]
    fn markdown_header_names_the_run() {
        let md = markdown(&header(), &[], &[]);
        assert!(md.starts_with(
            "# fjord benchmarks\n\nMeasured 2026-11-24T12:41:41Z on 2 cores (AMD EPYC), Linux 6.18 \
             (full run, 268 s). Reproduce with:\n\n```sh\nscripts/bench\n```\n"
        ));
    }

    #[test]
    fn markdown_has_one_table_line_per_figure_in_order_then_the_cpu_lines() {
        let figures = figures();
        let md = markdown(&header(), &figures, &[cpu_line()]);
        let lines: Vec<&str> = md.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("| scenario |"))
            .unwrap();
        let table: Vec<&str> = lines[at + 2..]
            .iter()
            .take_while(|l| l.starts_with('|'))
            .copied()
            .collect();
        let want: Vec<String> = figures.iter().map(table_line).collect();
        assert_eq!(table, want);
        let cpu_at = lines
            .iter()
            .position(|l| l.starts_with("| measurement |"))
            .unwrap();
        assert_eq!(
            lines[cpu_at + 2],
            "| http via fjord c=1 | 61 | 39 | 0 | 100 |"
        );
        assert_eq!(lines[cpu_at + 3], "");
    }

    #[test]
    fn json_has_the_committed_keys_and_rows() {
        let v = json(&header(), &figures(), &[cpu_line()]);
        let committed: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/benchmarks.json"
            ))
            .expect("docs/benchmarks.json"),
        )
        .expect("valid JSON");
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), keys(&committed));
        assert_eq!(keys(&v["rows"][0]), keys(&committed["rows"][0]));
        assert_eq!(keys(&v["cpu"][0]), keys(&committed["cpu"][0]));
        assert_eq!(v["mode"], "full");
        assert_eq!(v["seconds"], 268.4);
        assert_eq!(v["rows"].as_array().unwrap().len(), 4);
        assert_eq!(v["rows"][1]["met"], false);
        assert_eq!(v["rows"][3]["baseline"], Value::Null);
    }

    fn container_figure() -> Figure {
        Figure::new(
            &format!("{CONTAINER_PREFIX}: cold start, cached image"),
            "scale 0→1 to first response, p50 (20 trials)",
            30.0,
            "ms",
        )
        .baseline("`runc run`", 25.0)
    }

    fn connector_figure() -> Figure {
        Figure::new(
            &format!("{CONNECTOR_PREFIX}: cron"),
            "lateness p99",
            2.0,
            "ms",
        )
    }

    #[test]
    fn container_figures_get_their_own_section_not_the_main_table() {
        let mut rows = figures();
        rows.push(container_figure());
        let md = markdown(&header(), &rows, &[cpu_line()]);
        let line = table_line(&container_figure());
        assert_eq!(md.matches(&line).count(), 1, "once: {md}");
        let section_at = md.find("\n## Container images\n").expect("section");
        assert!(md.find(&line).unwrap() > section_at);
        assert!(md[section_at..].contains("```sh\nscripts/bench\n```"));
        assert!(!md[section_at..].contains(&table_line(&figures()[0])));
        assert!(md.ends_with('\n'));
    }

    #[test]
    fn splice_replaces_only_the_container_section() {
        let before =
            "# r\n\n| a |\n\n## How each figure is taken\n\n- x\n\n## Container images\n\nold\n";
        let out = splice(
            before,
            "## Container images",
            "## Container images\n\nnew\n",
        );
        assert_eq!(
            out,
            "# r\n\n| a |\n\n## How each figure is taken\n\n- x\n\n## Container images\n\nnew\n"
        );
        // A section after it is kept.
        let with_next = "# r\n## Container images\nold\n## Later\nkept\n";
        assert_eq!(
            splice(
                with_next,
                "## Container images",
                "## Container images\nnew\n"
            ),
            "# r\n## Container images\nnew\n\n## Later\nkept\n"
        );
        // None yet: appended after a blank line.
        assert_eq!(
            splice(
                "# r\n\nbody\n",
                "## Container images",
                "## Container images\nnew\n"
            ),
            "# r\n\nbody\n\n## Container images\nnew\n"
        );
    }

    #[test]
    fn splicing_a_fresh_section_into_the_full_report_gives_the_full_report() {
        let mut rows = figures();
        rows.push(container_figure());
        rows.push(connector_figure());
        let full = markdown(&header(), &rows, &[cpu_line()]);
        let mut spliced = markdown(&header(), &figures(), &[cpu_line()]);
        for s in Section::ALL {
            spliced = splice(&spliced, s.heading(), &s.markdown(&header(), &rows));
        }
        assert_eq!(spliced, full);
        let connectors_at = full.find("\n## Event connectors\n").expect("its section");
        assert!(full.find(&table_line(&connector_figure())).unwrap() > connectors_at);
        assert!(full.find("\n## Container images\n").unwrap() < connectors_at);
    }
}
