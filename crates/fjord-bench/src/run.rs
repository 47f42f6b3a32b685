//! The scenario runner behind `scripts/bench`: starts `fjord serve` in a temp data dir,
//! deploys its own functions, measures every scenario against a baseline taken in the same
//! run, and writes docs/BENCHMARKS.md and a JSON file. Any failed request aborts the run
//! (non-zero exit, nothing written), so a broken path never prints a pretty number.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::load::{self, LoadResult, Target};
use crate::procs;

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

/// One line of the results table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<String>,
    pub baseline_value: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    pub(crate) fn new(scenario: &str, figure: &str, value: f64, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            unit: unit.into(),
            baseline: None,
            baseline_value: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }
    pub(crate) fn baseline(mut self, what: &str, v: f64) -> Self {
        self.baseline = Some(what.into());
        self.baseline_value = Some(v);
        if v != 0.0 {
            self.ratio = Some(self.value / v);
        }
        self
    }
    pub(crate) fn target(mut self, t: &str, met: bool) -> Self {
        self.target = Some(t.into());
        self.met = Some(met);
        self
    }
    /// A target only where it applies (e.g. the embedded queue's, not NATS's).
    fn target_when(self, applies: bool, t: &str, met: bool) -> Self {
        if applies { self.target(t, met) } else { self }
    }
    pub(crate) fn note(mut self, n: &str) -> Self {
        self.note = Some(n.into());
        self
    }
}

/// A CPU-use line: who used how much of the machine during one measurement.
#[derive(Debug, Serialize)]
pub struct CpuUse {
    pub measurement: String,
    pub gateway_pct: f64,
    pub replica_pct: f64,
    pub proxy_pct: f64,
    pub loadgen_pct: f64,
}

pub(crate) struct Fjord {
    child: tokio::process::Child,
    pid: i32,
    pub(crate) addr: SocketAddr,
    scheme: &'static str,
    pass: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Fjord {
    /// Starts `fjord serve` with `extra` arguments; `tls_root` (PEM) when it serves HTTPS
    /// with a certificate signed by (or being) that root.
    pub(crate) async fn start(
        bin: &Path,
        extra: &[String],
        tls_root: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Not under /tmp: functions get a private /tmp of their own.
        let data = tempfile::Builder::new()
            .prefix("fjord-bench-")
            .tempdir_in("/var/tmp")?;
        let log = std::fs::File::create(data.path().join("serve.log"))?;
        let child = tokio::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("data"))
            // The async scenario's callback receiver listens on loopback.
            .args(["--callback-allow", "127.0.0.1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("fjord pid")? as i32;
        let addr_file = data.path().join("data/gateway.addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && let Ok(a) = s.trim().parse()
            {
                break a;
            }
            ensure!(Instant::now() < deadline, "fjord serve did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pass = std::fs::read_to_string(data.path().join("data/secrets/basic-auth-password"))?
            .trim()
            .to_string();
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60));
        if let Some(pem) = tls_root {
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        let http = http.build()?;
        Ok(Self {
            child,
            pid,
            addr,
            scheme: if tls_root.is_some() { "https" } else { "http" },
            pass,
            http,
            _data: data,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        match self.scheme {
            // The certificate names localhost.
            "https" => format!("https://localhost:{}{path}", self.addr.port()),
            _ => format!("http://{}{path}", self.addr),
        }
    }

    pub(crate) async fn deploy(&self, body: Value) -> anyhow::Result<()> {
        let r = self
            .http
            .post(self.url("/system/functions"))
            .basic_auth("admin", Some(&self.pass))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        ensure!(status.is_success(), "deploy: {status} {}", r.text().await?);
        Ok(())
    }

    pub(crate) async fn scale(&self, name: &str, replicas: u64) -> anyhow::Result<()> {
        let r = self
            .http
            .post(self.url(&format!("/system/scale-function/{name}")))
            .basic_auth("admin", Some(&self.pass))
            .json(&json!({"serviceName": name, "replicas": replicas}))
            .send()
            .await?;
        let status = r.status();
        ensure!(status.is_success(), "scale: {status} {}", r.text().await?);
        Ok(())
    }

    pub(crate) async fn status(&self, name: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(self.url(&format!("/system/function/{name}")))
            .basic_auth("admin", Some(&self.pass))
            .send()
            .await?;
        ensure!(r.status().is_success(), "status of {name}: {}", r.status());
        Ok(r.json().await?)
    }

    pub(crate) async fn wait_available(
        &self,
        name: &str,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(name).await?;
            if s["availableReplicas"].as_u64() == Some(n) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{name}: {n} replicas not available in {timeout:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The replica's own port, from the line the benchmark function logs at start.
    async fn replica_port(&self, name: &str) -> anyhow::Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self
                .http
                .get(self.url(&format!("/system/logs?name={name}&tail=50")))
                .basic_auth("admin", Some(&self.pass))
                .send()
                .await?
                .text()
                .await?;
            if let Some(port) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| {
                    v["text"]
                        .as_str()?
                        .trim()
                        .strip_prefix("listening on 127.0.0.1:")?
                        .parse()
                        .ok()
                })
                .next_back()
            {
                return Ok(port);
            }
            ensure!(Instant::now() < deadline, "{name} never logged its port");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn get_ok(&self, path: &str) -> anyhow::Result<()> {
        let r = self.http.get(self.url(path)).send().await?;
        let status = r.status();
        ensure!(
            status.is_success(),
            "GET {path}: {status} {}",
            r.text().await?
        );
        Ok(())
    }

    fn rss_kb(&self) -> u64 {
        procs::rss_kb(self.pid).unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        ensure!(status.success(), "fjord serve exited with {status}");
        Ok(())
    }
}

/// nginx as a keep-alive reverse proxy to one upstream: the well-tuned proxy hop users
/// would otherwise put in front of a function.
struct Nginx {
    child: tokio::process::Child,
    pid: i32,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `127.0.0.1:upstream_port`; with `netns`, inside that network
    /// namespace (the replica's), listening on its loopback.
    async fn start(
        bin: &Path,
        upstream_port: u16,
        netns: Option<(&Path, &std::fs::File)>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fjord-bench-nginx-")
            .tempdir_in("/var/tmp")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes auto;\ndaemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
events {{ worker_connections 4096; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
  upstream fn {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 10000000; keepalive_timeout 300s; }}\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://fn;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = match netns {
            Some((path, _)) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg(bin);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        let child = cmd
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (install nginx-light)", bin.display()))?;
        let pid = child.id().context("nginx pid")? as i32;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::load::tcp_connect(addr, netns.map(|(_, f)| f))
            .await
            .is_err()
        {
            ensure!(
                Instant::now() < deadline,
                "nginx did not start: see {d}/error.log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            pid,
            addr,
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<i32> {
        let mut p = procs::children(self.pid);
        p.push(self.pid);
        p
    }

    /// SIGQUIT (graceful) to the master, which stops its workers; SIGKILL to any left.
    async fn stop(mut self) {
        let workers = procs::children(self.pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGQUIT,
        );
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        for w in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a load while measuring each party's CPU use.
/// The processes whose CPU use is reported for a measurement.
struct Parties<'a> {
    gateway: &'a [i32],
    replica: &'a [i32],
    proxy: &'a [i32],
}

async fn measured(
    what: &str,
    target: &Target,
    c: usize,
    (warmup, dur): (Duration, Duration),
    parties: &Parties<'_>,
    cpu: &mut Vec<CpuUse>,
) -> anyhow::Result<LoadResult> {
    let Parties {
        gateway,
        replica,
        proxy,
    } = *parties;
    let me = [std::process::id() as i32];
    tokio::time::sleep(warmup).await;
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// Time to start a process and see it exit, N times, in ms.
async fn bare_starts(program: &str, args: &[&str], n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let s = tokio::process::Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .await?;
        ensure!(s.success(), "{program} failed");
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// `cat` spawned directly with a small stdin body: the floor for fork mode, in ms.
async fn fork_floor(n: usize) -> anyhow::Result<Vec<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("/usr/bin/cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"hello").await?;
        drop(stdin);
        let mut buf = Vec::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_end(&mut buf)
            .await?;
        child.wait().await?;
        ensure!(buf == b"hello", "cat echoed {buf:?}");
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Templates measured: language, cold-start target (ms), and the bare start of the same
/// interpreter or binary as the baseline.
const TEMPLATES: [(&str, Option<f64>, &str, &[&str]); 3] = [
    (
        "python3-http",
        Some(30.0),
        "/usr/bin/python3",
        &["-c", "pass"],
    ),
    ("node", None, "/usr/bin/node", &["-e", "0"]),
    ("rust", Some(5.0), "/bin/true", &[]),
];

/// Creates one function per template with `fjord new` and builds, pushes and deploys them
/// with `fjord up`, the way users do. Returns the project dir (removed when dropped).
async fn build_templates(
    bin: &Path,
    fjord: &Fjord,
    templates: &[(&str, Option<f64>, &str, &[&str])],
) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("fjord-bench-templates-")
        .tempdir_in("/var/tmp")?;
    for (i, (lang, ..)) in templates.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("new")
            .arg(format!("tmpl-{lang}"))
            .arg("--lang")
            .arg(lang)
            .current_dir(dir.path());
        if i > 0 {
            cmd.args(["--append", "stack.yml"]);
        }
        let out = cmd.output().await?;
        ensure!(
            out.status.success(),
            "fjord new --lang {lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The cold-start loop scales it to zero, which the policy allows only with this label.
        let stack = dir.path().join("stack.yml");
        let mut text = std::fs::read_to_string(&stack)?;
        // One replica (no autoscaling) while its warm throughput is measured.
        text.push_str("    labels:\n      com.openfaas.scale.zero: \"true\"\n      com.openfaas.scale.max: \"1\"\n");
        std::fs::write(&stack, text)?;
    }
    let out = tokio::process::Command::new(bin)
        .args(["up", "--no-wait", "--quiet", "--parallel", "2"])
        .current_dir(dir.path())
        .env("FJORD_URL", fjord.url(""))
        .env("FJORD_PASSWORD", &fjord.pass)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "fjord up of the templates failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let q = opts.quick;
    let warm = Duration::from_millis(if q { 500 } else { 1000 });
    let dur = Duration::from_secs(if q { 2 } else { 8 });
    let bench_bin = std::env::current_exe()?
        .to_str()
        .context("bench path is not UTF-8")?
        .to_string();
    let mut rows: Vec<Row> = Vec::new();
    let mut cpu: Vec<CpuUse> = Vec::new();
    let started = Instant::now();

    let fjord = Fjord::start(&opts.fjord, &[], None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = fjord.rss_kb();
    eprintln!("fjord serve up at {} (idle RSS {idle_rss} KiB)", fjord.addr);
    if let Some(only) = &opts.only {
        match only.as_str() {
            "async" => {
                async_scenario(
                    &fjord,
                    &bench_bin,
                    (warm, dur),
                    Backend::Embedded,
                    &mut rows,
                )
                .await?;
                nats_async_scenario(&opts, &bench_bin, (warm, dur), &mut rows).await?;
            }
            "tls" => {
                let f = json!({"service": "bench-http", "image": "bench", "envProcess": format!("{bench_bin} function"),
                    "envVars": {"mode": "http"},
                    "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}});
                fjord.deploy(f).await?;
                fjord
                    .wait_available("bench-http", 1, Duration::from_secs(20))
                    .await?;
                tls_scenario(&opts, &fjord, &bench_bin, (warm, dur), &mut rows).await?;
            }
            "ab" => {
                let old = opts.baseline_fjord.as_deref().context(
                    "--only ab compares two binaries: give the other one with --baseline-fjord PATH",
                )?;
                crate::ab::scenario(old, &opts.fjord, &bench_bin, opts.quick, &mut rows).await?;
            }
            other => {
                bail!("unknown scenario {other:?}: those that run alone are async, tls and ab")
            }
        }
        fjord.stop().await?;
        for r in &rows {
            println!(
                "{} — {}: {:.1} {} (baseline {:?}, ratio {:?}, target {:?} met {:?}) {}",
                r.scenario,
                r.figure,
                r.value,
                r.unit,
                r.baseline_value,
                r.ratio,
                r.target,
                r.met,
                r.note.as_deref().unwrap_or("")
            );
        }
        return Ok(());
    }

    // 1. Warm invoke, http mode.
    eprintln!("[1/8] warm invoke, http mode");
    fjord
        .deploy(json!({"service": "bench-http", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"},
            // One replica: the proxy comparison needs the same single upstream for all three.
            "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}}))
        .await?;
    fjord
        .wait_available("bench-http", 1, Duration::from_secs(20))
        .await?;
    let port = fjord.replica_port("bench-http").await?;
    let replica_pids = procs::find_by_args(&[&bench_bin, "function"]);
    // As root, fjord runs the replica in its function's network namespace: the direct and
    // nginx baselines run there too, on the same loopback the gateway's connections use.
    let ns_path = replica_pids
        .first()
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .filter(|p| {
            let ino = |p: &Path| {
                std::fs::metadata(p)
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .ok()
            };
            ino(p) != ino(Path::new("/proc/self/ns/net"))
        });
    let netns = match &ns_path {
        Some(p) => Some(std::sync::Arc::new(std::fs::File::open(p)?)),
        None => None,
    };
    let nginx = Nginx::start(&opts.nginx, port, ns_path.as_deref().zip(netns.as_deref())).await?;
    let direct = Target {
        addr: format!("127.0.0.1:{port}").parse()?,
        path: "/".into(),
        body: None,
        tls: None,
        netns: netns.clone(),
    };
    let via_gateway = Target {
        addr: fjord.addr,
        path: "/function/bench-http".into(),
        body: None,
        tls: None,
        netns: None,
    };
    let via_nginx = Target {
        addr: nginx.addr,
        path: "/".into(),
        body: None,
        tls: None,
        netns: netns.clone(),
    };
    let gw = [fjord.pid];
    let mut best = (0usize, 0f64);
    let mut load_rss = idle_rss;
    for c in [1usize, 16, 64] {
        let d = measured(
            &format!("http direct c={c}"),
            &direct,
            c,
            (warm, dur),
            &Parties {
                gateway: &gw,
                replica: &replica_pids,
                proxy: &[],
            },
            &mut cpu,
        )
        .await?;
        let sampler = {
            let pid = fjord.pid;
            tokio::spawn(async move {
                let mut max = 0;
                for _ in 0..200 {
                    max = max.max(procs::rss_kb(pid).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                max
            })
        };
        let g = measured(
            &format!("http via fjord c={c}"),
            &via_gateway,
            c,
            (warm, dur),
            &Parties {
                gateway: &gw,
                replica: &replica_pids,
                proxy: &[],
            },
            &mut cpu,
        )
        .await?;
        sampler.abort();
        load_rss = load_rss.max(fjord.rss_kb());
        let n = measured(
            &format!("http via nginx c={c}"),
            &via_nginx,
            c,
            (warm, dur),
            &Parties {
                gateway: &gw,
                replica: &replica_pids,
                proxy: &nginx.pids(),
            },
            &mut cpu,
        )
        .await?;
        if g.rps() > best.1 {
            best = (c, g.rps());
        }
        let s = format!("warm invoke, http mode, c={c}");
        for (label, qv) in [("p50", 0.5), ("p99", 0.99)] {
            let added = g.p(qv) - d.p(qv);
            let nginx_added = n.p(qv) - d.p(qv);
            let mut row = Row::new(
                &s,
                &format!("added latency {label} (fjord − direct)"),
                added,
                "µs",
            )
            .baseline("nginx − direct", nginx_added);
            if c == 1 {
                let (t, ok) = if label == "p50" {
                    ("≤ 50 µs", added <= 50.0)
                } else {
                    ("≤ 1000 µs", added <= 1000.0)
                };
                row = row.target(t, ok);
            }
            rows.push(row.note(&format!(
                "direct {label} {:.0} µs, fjord {:.0} µs, nginx {:.0} µs",
                d.p(qv),
                g.p(qv),
                n.p(qv)
            )));
        }
        rows.push(
            Row::new(&s, "throughput via fjord", g.rps(), "req/s")
                .baseline("direct to replica", d.rps()),
        );
        let mut row = Row::new(&s, "throughput via fjord", g.rps(), "req/s")
            .baseline("via nginx keep-alive proxy", n.rps());
        if c == 64 {
            let ratio = g.rps() / n.rps();
            row = row.target("≥ 1.0× nginx", ratio >= 1.0);
        }
        rows.push(row.note(&format!("nginx/direct = {:.2}", n.rps() / d.rps())));
    }
    nginx.stop().await;
    let replica_rss: Vec<u64> = replica_pids
        .iter()
        .filter_map(|p| procs::rss_kb(*p))
        .collect();
    ensure!(
        !replica_rss.is_empty(),
        "benchmark function replica not found in /proc"
    );

    // 2. Warm invoke, fork mode.
    eprintln!("[2/8] warm invoke, fork mode");
    fjord
        .deploy(
            json!({"service": "bench-cat", "image": "bench", "envProcess": "cat",
            "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}}),
        )
        .await?;
    fjord
        .wait_available("bench-cat", 1, Duration::from_secs(10))
        .await?;
    let cat = Target {
        addr: fjord.addr,
        path: "/function/bench-cat".into(),
        body: Some(Bytes::from_static(b"hello")),
        tls: None,
        netns: None,
    };
    let f = measured(
        "fork cat via fjord c=1",
        &cat,
        1,
        (warm, dur),
        &Parties {
            gateway: &gw,
            replica: &[],
            proxy: &[],
        },
        &mut cpu,
    )
    .await?;
    let mut floor = fork_floor(if q { 200 } else { 1000 }).await?;
    let floor_p50 = median(&mut floor);
    let fork_p50 = f.p(0.5) / 1e3;
    rows.push(
        Row::new(
            "warm invoke, fork mode (`cat`), c=1",
            "end-to-end p50",
            fork_p50,
            "ms",
        )
        .baseline("spawn `cat` directly from the bench", floor_p50)
        .target("≤ 2 ms p50", fork_p50 <= 2.0)
        .note(&format!(
            "p99 {:.2} ms; {:.0} req/s",
            f.p(0.99) / 1e3,
            f.rps()
        )),
    );

    // 3. Cold start, per template, and warm throughput per template.
    eprintln!("[3/8] cold start per template (building the templates with `fjord up`)");
    let trials = if q { 20 } else { 60 };
    let project = build_templates(&opts.fjord, &fjord, &TEMPLATES).await?;
    let reference_rps = best.1;
    /// A function whose cold start is measured: name, label, target (ms), baseline command.
    type ColdTarget = (String, String, Option<f64>, String, Vec<String>);
    let mut cold: Vec<ColdTarget> = vec![(
        "cold-rust".into(),
        "compiled function (the bench's own Rust http function)".into(),
        Some(5.0),
        bench_bin.clone(),
        vec!["noop".into()],
    )];
    fjord
        .deploy(json!({"service": "cold-rust", "image": "bench", "envProcess": format!("{bench_bin} function"), "envVars": {"mode": "http"},
            "labels": {"com.openfaas.scale.zero": "true", "com.openfaas.scale.max": "1"}}))
        .await?;
    for (lang, target, base_prog, base_args) in TEMPLATES {
        cold.push((
            format!("tmpl-{lang}"),
            format!("template {lang}"),
            target,
            base_prog.to_string(),
            base_args.iter().map(|a| a.to_string()).collect(),
        ));
    }
    for (name, label, target_ms, base_prog, base_args) in &cold {
        fjord
            .wait_available(name, 1, Duration::from_secs(60))
            .await?;
        if name.starts_with("tmpl-") {
            let t = Target {
                addr: fjord.addr,
                path: format!("/function/{name}"),
                body: None,
                tls: None,
                netns: None,
            };
            let r = load::run(&t, 16, warm, dur).await?;
            r.ensure_no_errors(&format!("warm invoke {name}"))?;
            rows.push(
                Row::new(
                    &format!("warm invoke, {label}, c=16"),
                    "throughput via fjord",
                    r.rps(),
                    "req/s",
                )
                .baseline("bench's Rust function via fjord (best c)", reference_rps)
                .note(&format!(
                    "p50 {:.0} µs, p99 {:.0} µs; 1 replica",
                    r.p(0.5),
                    r.p(0.99)
                )),
            );
        }
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
            fjord.get_ok(&format!("/function/{name}")).await?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let args: Vec<&str> = base_args.iter().map(String::as_str).collect();
        let mut base = bare_starts(base_prog, &args, trials).await?;
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        let b50 = percentile(&mut base, 0.5);
        let mut row = Row::new(
            &format!("cold start: {label}"),
            &format!("scale 0→1 to first response, p50 ({trials} trials)"),
            p50,
            "ms",
        )
        .baseline(&format!("bare `{base_prog} {}`", args.join(" ")), b50);
        if let Some(t) = target_ms {
            row = row.target(&format!("≤ {t} ms p50"), p50 <= *t);
        }
        rows.push(row.note(&format!("p99 {p99:.1} ms; includes the scale API call")));
        fjord.scale(name, 0).await?;
    }
    drop(project);

    // 4. Scale-out.
    eprintln!("[4/8] scale-out 1 → 50");
    fjord
        .deploy(json!({"service": "bench-scale", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"}, "labels": {"com.openfaas.scale.max": "50"}}))
        .await?;
    fjord
        .wait_available("bench-scale", 1, Duration::from_secs(20))
        .await?;
    let mut scale_times = Vec::new();
    for _ in 0..(if q { 1 } else { 3 }) {
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
    rows.push(
        Row::new(
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

    // Autoscaler reaction: from the start of load to the first scale-up decision.
    fjord
        .deploy(json!({"service": "bench-auto", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"},
            "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "4", "com.openfaas.scale.target": "100"}}))
        .await?;
    fjord
        .wait_available("bench-auto", 1, Duration::from_secs(20))
        .await?;
    let auto = Target {
        addr: fjord.addr,
        path: "/function/bench-auto".into(),
        body: None,
        tls: None,
        netns: None,
    };
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
    rows.push(
        Row::new(
            "autoscaler",
            "reaction: load start → first scale-up",
            reaction,
            "ms",
        )
        .baseline("autoscale interval", 1000.0)
        .note("rps type, target 100 per replica, c=8 closed loop"),
    );
    fjord.scale("bench-auto", 0).await?;

    eprintln!("[5/8] TLS: the same function through an HTTPS gateway");
    tls_scenario(&opts, &fjord, &bench_bin, (warm, dur), &mut rows).await?;

    // 7. Soak (before the footprint step fills fjord with 1,000 functions).
    let soak_secs = if q { 10 } else { 60 };
    eprintln!("[6/8] soak {soak_secs} s at c={}", best.0);
    let sampler = {
        let pid = fjord.pid;
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let t0 = Instant::now();
            for _ in 0..soak_secs * 4 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                samples.push((
                    t0.elapsed().as_secs_f64(),
                    procs::rss_kb(pid).unwrap_or(0) as f64,
                ));
            }
            samples
        })
    };
    let soak = load::run(
        &via_gateway,
        best.0,
        Duration::ZERO,
        Duration::from_secs(soak_secs),
    )
    .await?;
    let samples = sampler.await?;
    let errors = soak.errors;
    let kept: Vec<(f64, f64)> = samples.iter().skip(samples.len() / 5).copied().collect();
    let slope = {
        let n = kept.len() as f64;
        let (sx, sy) = kept
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = kept.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
            (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
        });
        if den == 0.0 { 0.0 } else { num / den * 60.0 }
    };
    rows.push(
        Row::new(
            &format!("soak, {soak_secs} s at c={}", best.0),
            "errors",
            errors as f64,
            "",
        )
        .target("0", errors == 0)
        .note(&format!(
            "{} requests, {:.0} req/s",
            soak.requests,
            soak.rps()
        )),
    );
    let max_rss = kept.iter().map(|s| s.1).fold(0.0, f64::max);
    rows.push(
        Row::new(
            &format!("soak, {soak_secs} s at c={}", best.0),
            "gateway RSS slope after warm-up",
            slope,
            "KiB/min",
        )
        .target("flat (≤ 1024 KiB/min)", slope.abs() <= 1024.0)
        .note(&format!("max RSS {max_rss:.0} KiB")),
    );
    soak.ensure_no_errors("soak")?;

    // 6. Footprint.
    eprintln!("[7/8] footprint: 100 and 1,000 functions at zero");
    rows.push(
        Row::new(
            "footprint",
            "fjord serve RSS, idle (no functions)",
            idle_rss as f64 / 1024.0,
            "MiB",
        )
        .target("≤ 15 MiB", idle_rss <= 15 * 1024),
    );
    rows.push(Row::new(
        "footprint",
        "fjord serve RSS, max under load",
        load_rss as f64 / 1024.0,
        "MiB",
    ));
    let per_replica = replica_rss.iter().sum::<u64>() as f64 / replica_rss.len() as f64 / 1024.0;
    rows.push(Row::new(
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
            if pending.len() == 16 {
                for r in futures_util::future::join_all(std::mem::take(&mut pending)).await {
                    r?;
                }
            }
        }
        for r in futures_util::future::join_all(pending).await {
            r?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = fjord.rss_kb();
        let mut row = Row::new(
            "footprint",
            &format!("fjord serve RSS, {n} functions at zero"),
            rss as f64 / 1024.0,
            "MiB",
        )
        .baseline("idle", idle_rss as f64 / 1024.0);
        if n == 1000 {
            row = row.target("≤ 50 MiB", rss <= 50 * 1024);
        }
        rows.push(row);
    }

    // Last, so its backlog does not weigh on the footprint figures.
    eprintln!("[8/8] async: accept rate, drain rate, accept → start latency");
    async_scenario(
        &fjord,
        &bench_bin,
        (warm, dur),
        Backend::Embedded,
        &mut rows,
    )
    .await?;
    fjord.stop().await?;
    eprintln!("[8/8] async on NATS JetStream: the same figures");
    nats_async_scenario(&opts, &bench_bin, (warm, dur), &mut rows).await?;
    let total = started.elapsed();
    eprintln!("done in {:.0} s", total.as_secs_f64());
    finish(&opts, &rows, &cpu, total, errors)
}

/// Writes the report and says which targets were missed.
fn finish(
    opts: &Options,
    rows: &[Row],
    cpu: &[CpuUse],
    total: Duration,
    errors: u64,
) -> anyhow::Result<()> {
    crate::report::write(opts, rows, cpu, total)?;
    let missed: Vec<&Row> = rows.iter().filter(|r| r.met == Some(false)).collect();
    if !missed.is_empty() {
        eprintln!("{} target(s) not met (see the table):", missed.len());
        for r in missed {
            eprintln!("  {} — {}: {:.2} {}", r.scenario, r.figure, r.value, r.unit);
        }
    }
    if errors > 0 {
        bail!("soak had {errors} errors");
    }
    Ok(())
}

/// Which queue backend an async scenario measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Nats,
}

impl Backend {
    fn scenario(self) -> &'static str {
        match self {
            Backend::Embedded => "async invoke (embedded queue)",
            Backend::Nats => "async invoke (NATS JetStream queue)",
        }
    }
}

/// The async figures again with `fjord serve --queue nats://...` against a real nats-server
/// started for the purpose (JetStream file store in a temp dir).
async fn nats_async_scenario(
    opts: &Options,
    bench_bin: &str,
    timing: (Duration, Duration),
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let nats = fjord_queue::nats_server::NatsServer::start();
    let fjord = Fjord::start(&opts.fjord, &["--queue".into(), nats.url()], None).await?;
    async_scenario(&fjord, bench_bin, timing, Backend::Nats, rows).await?;
    fjord.stop().await?;
    drop(nats);
    Ok(())
}

/// Async invocations: durable accepts per second, the rate a backlog drains at against the
/// same function called sync, and the latency from a call's 202 to the function starting
/// it, at low load. Targets apply to the embedded queue; NATS is reported.
async fn async_scenario(
    fjord: &Fjord,
    bench_bin: &str,
    (warm, dur): (Duration, Duration),
    backend: Backend,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let scenario = backend.scenario();
    let targets = backend == Backend::Embedded;
    let async_fn = |inflight: &str| {
        json!({"service": "bench-async", "image": "bench", "envProcess": format!("{bench_bin} function"),
            "envVars": {"mode": "http"},
            "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"},
            "annotations": {"com.openfaas.queue.max_inflight": inflight}})
    };
    // While accepting, the function's async calls are paused, so they all wait in the queue...
    fjord.deploy(async_fn("0")).await?;
    fjord
        .wait_available("bench-async", 1, Duration::from_secs(20))
        .await?;
    let sync_target = Target {
        addr: fjord.addr,
        path: "/function/bench-async".into(),
        body: Some(Bytes::from_static(b"hello")),
        tls: None,
        netns: None,
    };
    let ticks0 = procs::cpu_ticks(fjord.pid).unwrap_or(0);
    let sync = load::run(&sync_target, 10, warm, dur).await?;
    // fjord's own CPU per call (the warm-up's share included: an upper bound).
    let sync_cpu_us = (procs::cpu_ticks(fjord.pid).unwrap_or(0) - ticks0) as f64
        / procs::ticks_per_second()
        * 1e6
        / (sync.requests as f64 * (1.0 + warm.as_secs_f64() / dur.as_secs_f64())).max(1.0);
    sync.ensure_no_errors("sync baseline for async")?;
    let async_target = Target {
        addr: fjord.addr,
        path: "/async-function/bench-async".into(),
        body: Some(Bytes::from_static(b"hello")),
        tls: None,
        netns: None,
    };
    let accept_dur = Duration::from_secs(2);
    let accepted = load::run(&async_target, 64, Duration::ZERO, accept_dur).await?;
    accepted.ensure_no_errors("async accept")?;
    // ...then the default concurrency of 10 drains them: that rate is compared with sync.
    fjord.deploy(async_fn("10")).await?;
    let drain_t0 = Instant::now();
    let drain_ticks0 = procs::cpu_ticks(fjord.pid).unwrap_or(0);
    let depth_at = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("fjord_queue_depth{function_name=\"bench-async.openfaas-fn\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let queued = depth_at(
        &fjord
            .http
            .get(fjord.url("/metrics"))
            .send()
            .await?
            .text()
            .await?,
    );
    let drained = loop {
        let text = fjord
            .http
            .get(fjord.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let depth = depth_at(&text);
        if depth == 0.0 {
            break drain_t0.elapsed();
        }
        ensure!(
            drain_t0.elapsed() < Duration::from_secs(600),
            "the async queue did not drain in 10 minutes ({depth} left)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain_rate = queued / drained.as_secs_f64().max(0.001);
    let drain_cpu_us = (procs::cpu_ticks(fjord.pid).unwrap_or(0) - drain_ticks0) as f64
        / procs::ticks_per_second()
        * 1e6
        / queued.max(1.0);
    rows.push(
        Row::new(
            scenario,
            "accepted requests/s (durable 202), c=64",
            accepted.rps(),
            "req/s",
        )
        .target_when(targets, "≥ 20000/s", accepted.rps() >= 20000.0)
        .note(&format!(
            "p50 {:.0} µs, p99 {:.0} µs per 202",
            accepted.p(0.5),
            accepted.p(0.99)
        )),
    );
    rows.push(
        Row::new(
            scenario,
            "drain rate: calls run per second",
            drain_rate,
            "req/s",
        )
        .baseline("same function sync, c=10", sync.rps())
        .target_when(targets, "≥ 0.8× sync", drain_rate >= 0.8 * sync.rps())
        .note(&format!(
            "{queued:.0} queued calls drained in {:.2} s at max_inflight 10; fjord CPU per call {drain_cpu_us:.0} µs (sync ≤ {sync_cpu_us:.0} µs)",
            drained.as_secs_f64()
        )),
    );

    // Accept → start at low load: one call at a time; the bench function stamps when it
    // started (wall clock, same machine) and the callback brings the stamp back.
    let (cb_addr, mut stamps) = callback_receiver().await?;
    let n = if dur < Duration::from_secs(5) {
        100
    } else {
        300
    };
    let mut after_202 = Vec::with_capacity(n);
    let mut after_send = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = wall_ns();
        let r = fjord
            .http
            .post(fjord.url("/async-function/bench-async"))
            .header("X-Callback-Url", format!("http://{cb_addr}/done"))
            .body("hello")
            .send()
            .await?;
        let acked = wall_ns();
        ensure!(r.status() == 202, "async call answered {}", r.status());
        let id = r
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .context("no X-Call-Id")?
            .to_string();
        let (cb_id, started) = tokio::time::timeout(Duration::from_secs(10), stamps.recv())
            .await
            .context("no callback within 10 s")?
            .context("callback receiver stopped")?;
        ensure!(cb_id == id, "callback for {cb_id}, expected {id}");
        after_202.push(started.saturating_sub(acked) as f64 / 1000.0);
        after_send.push(started.saturating_sub(sent) as f64 / 1000.0);
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lat, lat_send) = (p50(&mut after_202), p50(&mut after_send));
    after_202.sort_by(f64::total_cmp);
    rows.push(
        Row::new(
            scenario,
            "accept → function start, p50 (202 received → function starts), low load",
            lat,
            "µs",
        )
        .target_when(targets, "≤ 2000 µs p50", lat <= 2000.0)
        .note(&format!(
            "{n} calls one at a time; p99 {:.0} µs; request sent → function start p50 {lat_send:.0} µs (includes the durable enqueue)",
            after_202[after_202.len() * 99 / 100]
        )),
    );
    fjord.scale("bench-async", 1).await?;
    Ok(())
}

/// Nanoseconds since the Unix epoch (the clock the bench function stamps with).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A callback server on loopback: yields (X-Call-Id, the function's start stamp) per call.
async fn callback_receiver() -> anyhow::Result<(
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
)> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let h = |k: &str| {
                        req.headers()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let stamp = h(crate::function::START_HEADER).parse().unwrap_or(0);
                    let _ = tx.send((h("x-call-id"), stamp));
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::new()),
                        ))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, rx))
}

/// Invocation overhead of HTTPS: the same http-mode function through a second gateway that
/// serves TLS (`--tls-cert/--tls-key`, a self-signed certificate made here), against the
/// plain gateway in the same moment; HTTP/1.1 keep-alive on both, so the difference is the
/// TLS record layer (handshakes happen once per connection, before the measurement).
async fn tls_scenario(
    opts: &Options,
    plain: &Fjord,
    bench_bin: &str,
    (warm, dur): (Duration, Duration),
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fjord-bench-tls-")
        .tempdir_in("/var/tmp")?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert_pem)?;
    std::fs::write(&key_path, &key_pem)?;
    let args = [
        "--tls-cert".to_string(),
        cert_path.display().to_string(),
        "--tls-key".to_string(),
        key_path.display().to_string(),
    ];
    let tls = Fjord::start(&opts.fjord, &args, Some(&cert_pem)).await?;
    tls.deploy(json!({"service": "bench-http", "image": "bench", "envProcess": format!("{bench_bin} function"),
        "envVars": {"mode": "http"},
        "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}}))
        .await?;
    tls.wait_available("bench-http", 1, Duration::from_secs(20))
        .await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let via_tls = Target {
        addr: tls.addr,
        path: "/function/bench-http".into(),
        body: None,
        tls: Some(std::sync::Arc::new(client)),
        netns: None,
    };
    let via_plain = Target {
        addr: plain.addr,
        path: "/function/bench-http".into(),
        body: None,
        tls: None,
        netns: None,
    };
    for c in [1usize, 64] {
        let p = load::run(&via_plain, c, warm, dur).await?;
        p.ensure_no_errors("plain baseline for TLS")?;
        let t = load::run(&via_tls, c, warm, dur).await?;
        t.ensure_no_errors("TLS")?;
        let scenario = format!("warm invoke over TLS, c={c}");
        if c == 1 {
            rows.push(
                Row::new(&scenario, "added latency p50 (TLS − plain)", t.p(0.5) - p.p(0.5), "µs")
                    .note(&format!(
                        "plain p50 {:.0} µs, TLS p50 {:.0} µs; p99 {:.0} vs {:.0} µs (HTTP/1.1 keep-alive, TLS 1.3)",
                        p.p(0.5),
                        t.p(0.5),
                        p.p(0.99),
                        t.p(0.99)
                    )),
            );
        } else {
            rows.push(
                Row::new(&scenario, "throughput", t.rps(), "req/s")
                    .baseline("plain HTTP, same moment", p.rps())
                    .note("one connection per client, HTTP/1.1 keep-alive, TLS 1.3"),
            );
        }
    }
    tls.stop().await?;
    Ok(())
}
