//! `wrk` (Debian's 4.1) as a second, independent load generator: the same targets as the
//! bench's own (`load.rs`), so a figure that only one of them shows is visible. wrk keeps
//! one thread (`-t1`, as the independent measurement in issue 17 did) and its own
//! connections; direct and nginx baselines run it inside the replica's network namespace
//! (`nsenter --net`), as the bench's generator connects from there.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
}

/// Runs `wrk -t1 -c{connections} -d{duration} --latency URL`, from `netns` when given.
/// Any socket error or non-2xx/3xx answer fails the run (wrk itself counts them apart).
pub async fn run(
    url: &str,
    netns: Option<&Path>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("wrk");
            c
        }
        None => tokio::process::Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--latency", url])
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run wrk (scripts/bench installs it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("wrk {url}: {text}"))
}

/// `12.5us`, `1.03ms`, `2.00s` → µs.
fn duration_us(s: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("not a wrk duration: {s}");
    };
    let us = num
        .parse::<f64>()
        .with_context(|| format!("not a number: {s}"))?
        * scale;
    // wrk prints two decimals: keep no more than that (1.03ms is 1030 µs, not 1030.0000001).
    Ok((us * 100.0).round() / 100.0)
}

/// wrk's report, from `--latency` output; errors when a failed request is reported.
fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut p50 = None;
    let mut p99 = None;
    let mut rps = None;
    let mut requests = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => p50 = Some(duration_us(v)?),
            (Some("99%"), Some(v)) => p99 = Some(duration_us(v)?),
            (Some("Requests/sec:"), Some(v)) => rps = Some(v.parse::<f64>()?),
            (Some(n), Some("requests")) => requests = Some(n.parse::<u64>()?),
            _ => {}
        }
        if line.starts_with("Socket errors:") || line.starts_with("Non-2xx or 3xx responses:") {
            bail!("requests failed: {line}");
        }
    }
    let requests = requests.context("no request count")?;
    if requests == 0 {
        bail!("no request completed");
    }
    Ok(WrkResult {
        rps: rps.context("no Requests/sec")?,
        p50_us: p50.context("no 50% latency")?,
        p99_us: p99.context("no 99% latency")?,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "Running 8s test @ http://127.0.0.1:8080/function/bench-http
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.09ms  245.01us   9.92ms   88.16%
    Req/Sec    58.91k     2.03k   62.10k    71.25%
  Latency Distribution
     50%    1.03ms
     75%    1.17ms
     90%    1.33ms
     99%    2.01ms
  469040 requests in 8.00s, 41.15MB read
Requests/sec:  58622.47
Transfer/sec:      5.14MB
";

    #[test]
    fn reads_rate_percentiles_and_count() {
        let r = parse(OK).unwrap();
        assert_eq!(
            r,
            WrkResult {
                rps: 58622.47,
                p50_us: 1030.0,
                p99_us: 2010.0,
                requests: 469040
            }
        );
        assert_eq!(duration_us("81.00us").unwrap(), 81.0);
        assert_eq!(duration_us("1.50s").unwrap(), 1.5e6);
        assert!(duration_us("12").is_err());
    }

    #[test]
    fn failed_requests_or_missing_figures_fail_the_run() {
        let non2xx = OK.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 12\nRequests/sec:",
        );
        let e = parse(&non2xx).unwrap_err().to_string();
        assert!(e.contains("Non-2xx or 3xx responses: 12"), "{e}");
        let socket = OK.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:",
        );
        assert!(parse(&socket).is_err());
        assert!(parse(&OK.replace("     99%    2.01ms\n", "")).is_err());
        assert!(parse("").is_err());
    }

    /// The real wrk against a real server on loopback.
    #[tokio::test]
    async fn wrk_measures_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let r = run(&format!("http://{addr}/"), None, 2, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(r.requests > 0 && r.rps > 0.0 && r.p50_us > 0.0, "{r:?}");
        assert!(r.p99_us >= r.p50_us, "{r:?}");
    }
}
