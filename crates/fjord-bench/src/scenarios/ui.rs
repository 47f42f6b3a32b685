//! The dashboard: the functions list with 1,000 functions (server time of the API calls it
//! makes, and headless Chromium's time from navigation to the table's 1,000 rows), the cost of
//! 10 open function pages on invoke throughput at c=64 (the same load without and with
//! them), and the bytes the dashboard adds to the binary.
//!
//! The browser is driven over WebDriver (chromedriver, from the distribution's packages) with
//! plain HTTP requests: no WebDriver client crate for a handful of commands.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use super::Bench;
use super::warm_http::FUNCTION;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica};
use crate::measure::{Parties, Timing, measured};
use crate::procs;

/// Every figure's scenario: the report gives them a section of their own.
pub const SCENARIO: &str = "dashboard";
/// Functions in the list.
const FUNCTIONS: usize = 1000;
/// Open function pages.
const PAGES: usize = 10;
/// How often the function page polls (`REFRESH_MS` in ui/function.js).
const PAGE_POLL: Duration = Duration::from_secs(5);
/// How many deployments are in flight at once while filling the gateway.
const DEPLOY_BATCH: usize = 16;

/// A stop flag shared by the page tasks.
#[derive(Clone, Default)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub async fn run(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    let ui = ui_base(fjord)?;
    open_pages_cost(b, fjord, &ui).await?;
    fill(fjord).await?;
    list_server_time(b, fjord).await?;
    list_in_browser(b, fjord, &ui).await?;
    size(b)?;
    Ok(())
}

/// `http://host:port` of the dashboard's listener (`<data-dir>/ui.addr`).
fn ui_base(fjord: &Fjord) -> anyhow::Result<String> {
    let addr = std::fs::read_to_string(fjord.data_dir().join("ui.addr"))
        .context("the dashboard's address (ui.addr): a fjord with --ui-listen")?;
    Ok(format!("http://{}", addr.trim()))
}

/// A dashboard session's cookie, signed in with the admin password.
async fn session(fjord: &Fjord, ui: &str) -> anyhow::Result<String> {
    let r = fjord
        .http
        .post(format!("{ui}/ui/session"))
        .json(&json!({"password": fjord.pass}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "sign-in: {}", r.status());
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?;
    Ok(cookie.to_string())
}

/// What one open function page does: follows the logs (one streamed request) and every 5 s
/// reads the function and its history, with the session cookie.
async fn function_page(
    http: reqwest::Client,
    ui: String,
    cookie: String,
    name: &str,
    start_after: Duration,
    stop: Stop,
) -> anyhow::Result<u64> {
    tokio::time::sleep(start_after).await;
    let ns = "openfaas-fn";
    let logs = {
        let (http, url, cookie, stop) = (
            http.clone(),
            format!("{ui}/system/logs?name={name}&namespace={ns}&tail=100&follow=true"),
            cookie.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let Ok(mut r) = http
                .get(url)
                .header("cookie", cookie)
                .timeout(Duration::from_secs(3600))
                .send()
                .await
            else {
                return;
            };
            while !stop.is_set() {
                match tokio::time::timeout(Duration::from_millis(200), r.chunk()).await {
                    Ok(Ok(Some(_))) | Err(_) => {}
                    _ => return,
                }
            }
        })
    };
    let mut polls = 0u64;
    while !stop.is_set() {
        let get = |path: String| {
            http.get(format!("{ui}{path}"))
                .header("cookie", &cookie)
                .send()
        };
        let (f, h) = tokio::join!(
            get(format!("/system/function/{name}?namespace={ns}")),
            get(format!("/system/function/{name}/history?namespace={ns}")),
        );
        for r in [f, h] {
            let r = r?;
            ensure!(r.status().is_success(), "a page's poll: {}", r.status());
            r.bytes().await?;
        }
        polls += 1;
        let next = Instant::now() + PAGE_POLL;
        while !stop.is_set() && Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    logs.abort();
    Ok(polls)
}

/// Rounds of the with/without comparison.
const ROUNDS: usize = 3;

/// Invoke throughput at c=64, without and with 10 open function pages, alternating (three
/// rounds) so that drift on a shared machine weighs on both: the figure is the median of the
/// rounds' ratios (each round's two loads run back to back).
async fn open_pages_cost(b: &mut Bench<'_>, fjord: &Fjord, ui: &str) -> anyhow::Result<()> {
    fjord
        .deploy_ready(
            bench_function(FUNCTION, &b.bench_bin, one_replica()),
            Duration::from_secs(20),
        )
        .await?;
    let target = fjord.function_target(FUNCTION);
    let replica = procs::find_by_args(&[&b.bench_bin, "function"]);
    let gw = [fjord.pid];
    let parties = Parties {
        gateway: &gw,
        replica: &replica,
        proxy: &[],
    };
    // At least two polling rounds per measurement.
    let timing = Timing {
        warm: b.timing.warm,
        dur: b.timing.dur.max(Duration::from_secs(10)),
    };
    let cookie = session(fjord, ui).await?;
    let (mut without, mut with, mut ratios, mut polls) = (0f64, 0f64, Vec::new(), 0u64);
    for round in 0..ROUNDS {
        let r = measured(
            &format!("dashboard: c=64 without pages ({})", round + 1),
            &target,
            64,
            timing,
            &parties,
            &mut b.cpu,
        )
        .await?;
        let alone = r.rps();
        without += alone;
        let stop = Stop::default();
        let pages: Vec<_> = (0..PAGES)
            .map(|i| {
                tokio::spawn(function_page(
                    fjord.http.clone(),
                    ui.to_string(),
                    cookie.clone(),
                    FUNCTION,
                    // Tabs opened at different moments poll at different moments.
                    PAGE_POLL * i as u32 / PAGES as u32,
                    stop.clone(),
                ))
            })
            .collect();
        let r = measured(
            &format!(
                "dashboard: c=64 with {PAGES} function pages ({})",
                round + 1
            ),
            &target,
            64,
            timing,
            &parties,
            &mut b.cpu,
        )
        .await;
        stop.set();
        for p in pages {
            polls += p.await??;
        }
        let r = r?.rps();
        with += r;
        ratios.push(r / alone);
    }
    let (without, with) = (without / ROUNDS as f64, with / ROUNDS as f64);
    ratios.sort_by(f64::total_cmp);
    let lower = (1.0 - ratios[ROUNDS / 2]) * 100.0;
    let each: Vec<String> = ratios
        .iter()
        .map(|r| format!("{:+.1} %", (r - 1.0) * 100.0))
        .collect();
    b.push(
        Figure::new(
            SCENARIO,
            &format!("invoke throughput c=64 with {PAGES} open function pages"),
            with,
            "req/s",
        )
        .baseline("without", without)
        .target("≤ 3 % lower", lower <= 3.0)
        .note(&format!(
            "median of {ROUNDS} rounds' ratios: {lower:.1} % lower (rounds: {}); means over the rounds; each page follows the logs and reads the function and its history every 5 s ({polls} polls in all)",
            each.join(", ")
        )),
    );
    Ok(())
}

/// 1,000 fork-mode functions at zero replicas (cheap), as the footprint scenario deploys.
async fn fill(fjord: &Fjord) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for i in 0..FUNCTIONS - 1 {
        let body = json!({"service": format!("list-{i:04}"), "image": "bench", "envProcess": "cat",
            "labels": {"com.openfaas.scale.min": "0", "team": "bench"}});
        pending.push(fjord.deploy(body));
        if pending.len() == DEPLOY_BATCH {
            for r in futures_util::future::join_all(std::mem::take(&mut pending)).await {
                r?;
            }
        }
    }
    for r in futures_util::future::join_all(pending).await {
        r?;
    }
    Ok(())
}

/// The median time of the list's API calls (the functions, their history summaries, the
/// namespaces), each alone, 20 times, on loopback.
async fn list_server_time(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    let calls = [
        "/system/functions?namespace=openfaas-fn",
        "/system/functions/history?namespace=openfaas-fn",
        "/system/namespaces",
    ];
    let mut total = 0.0;
    let mut notes = Vec::new();
    for path in calls {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let t0 = Instant::now();
            let r = fjord
                .http
                .get(fjord.url(path))
                .basic_auth("admin", Some(&fjord.pass))
                .send()
                .await?;
            ensure!(r.status().is_success(), "{path}: {}", r.status());
            bytes = r.bytes().await?.len();
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let median = ms[ms.len() / 2];
        total += median;
        notes.push(format!("{path} {median:.1} ms ({} KB)", bytes / 1000));
    }
    b.push(
        Figure::new(
            SCENARIO,
            &format!("functions list, {FUNCTIONS} functions: server time of its API calls"),
            total,
            "ms",
        )
        .note(&format!(
            "medians of 20, one after another: {}",
            notes.join("; ")
        )),
    );
    Ok(())
}

/// chromedriver on a free loopback port with one headless Chromium session.
struct Browser {
    driver: tokio::process::Child,
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("chromedriver (apt-get install chromium chromium-driver)")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !http
            .get(format!("{base}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ensure!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-proxy-server", "--window-size=1280,1000", "--disable-extensions"],
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = r["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no WebDriver session: {r}"))?;
        Ok(Self {
            driver,
            http,
            session: format!("{base}/session/{session}"),
        })
    }

    async fn cmd(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r: Value = self
            .http
            .post(format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if r["value"].get("error").is_some() {
            bail!("WebDriver {path}: {}", r["value"]);
        }
        Ok(r["value"].clone())
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("/url", json!({"url": url})).await.map(|_| ())
    }

    /// Runs `script` (a function body whose last argument is the callback).
    async fn run_async(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd("/execute/async", json!({"script": script, "args": []}))
            .await
    }

    async fn stop(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill().await;
    }
}

/// Headless Chromium's time from navigation to the list's 1,000 rows in the page (the
/// dashboard marks it with `performance.mark('fjord:list-rendered')`), median of 5 loads.
async fn list_in_browser(b: &mut Bench<'_>, fjord: &Fjord, ui: &str) -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let result = async {
        browser.goto(&format!("{ui}/ui/")).await?;
        let signed = browser
            .run_async(&format!(
                "const done = arguments[arguments.length - 1];\
                 fetch('/ui/session', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},\
                   body: JSON.stringify({{password: {}}})}}).then(r => done(r.status), e => done(String(e)));",
                serde_json::to_string(&fjord.pass)?
            ))
            .await?;
        ensure!(signed == json!(200), "browser sign-in: {signed}");
        let mut ms = Vec::new();
        // The first load warms Chromium's caches; not counted.
        for i in 0..6 {
            browser.goto(&format!("{ui}/ui/?load={i}#/")).await?;
            let got = browser
                .run_async(
                    "const done = arguments[arguments.length - 1];\
                     const t0 = Date.now();\
                     (function wait() {\
                       const m = performance.getEntriesByName('fjord:list-rendered')[0];\
                       const rows = document.querySelectorAll('#functions tbody tr').length;\
                       if (m) return done([m.startTime, rows]);\
                       if (Date.now() - t0 > 25000) return done(['timeout', rows]);\
                       setTimeout(wait, 20);\
                     })();",
                )
                .await?;
            let (Some(t), Some(rows)) = (got[0].as_f64(), got[1].as_u64()) else {
                bail!("the list did not render: {got}");
            };
            ensure!(
                rows as usize == FUNCTIONS,
                "the list has {rows} rows, not {FUNCTIONS}"
            );
            if i > 0 {
                ms.push(t);
            }
        }
        ms.sort_by(f64::total_cmp);
        anyhow::Ok(ms)
    }
    .await;
    browser.stop().await;
    let ms = result?;
    let median = ms[ms.len() / 2];
    b.push(
        Figure::new(
            SCENARIO,
            &format!("functions list, {FUNCTIONS} functions: browser time to content"),
            median,
            "ms",
        )
        .target("≤ 300 ms", median <= 300.0)
        .note(&format!(
            "headless Chromium, navigation start → the table's {FUNCTIONS} rows in the page, median of {} loads ({:.0}–{:.0} ms)",
            ms.len(),
            ms[0],
            ms[ms.len() - 1]
        )),
    );
    Ok(())
}

/// The dashboard's embedded files (`crates/fjord-gateway/ui`) and the `fjord` binary.
fn size(b: &mut Bench<'_>) -> anyhow::Result<()> {
    fn bytes_under(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => bytes_under(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    }
    let assets = bytes_under(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../fjord-gateway/ui"));
    let binary = std::fs::metadata(&b.opts.fjord)
        .with_context(|| format!("{}", b.opts.fjord.display()))?
        .len();
    b.push(
        Figure::new(
            SCENARIO,
            "embedded dashboard files",
            assets as f64 / 1000.0,
            "KB",
        )
        .baseline("the fjord binary", binary as f64 / 1000.0)
        .note(&format!(
            "{:.1} % of {}",
            assets as f64 / binary.max(1) as f64 * 100.0,
            b.opts.fjord.display()
        )),
    );
    Ok(())
}
