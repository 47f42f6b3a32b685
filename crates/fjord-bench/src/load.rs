//! A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the next
//! request as soon as the previous answer is read, for a fixed time; latencies go into an
//! HDR histogram (µs resolution, 3 significant digits).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Path and query, e.g. `/function/bench-http`.
    pub path: String,
    pub body: Option<Bytes>,
    /// Speak HTTPS (HTTP/1.1) with this client configuration, to server name `localhost`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Connect from inside this network namespace (a replica's, for the direct baselines:
    /// fjord runs each function in its own).
    pub netns: Option<std::sync::Arc<std::fs::File>>,
    /// The one status that counts as success (200; 202 for async submissions). Anything
    /// else is a failed request.
    pub expect: hyper::StatusCode,
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`); the path is `/` when absent.
pub fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

impl Target {
    /// Plain GETs of an `http://` URL (the host resolved once, here).
    pub async fn from_url(url: &str) -> anyhow::Result<Self> {
        let (authority, path) = split_url(url)?;
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
        Ok(Self::new(addr, path))
    }

    /// Plain GETs of `path` at `addr`, from this network namespace.
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            path: path.into(),
            body: None,
            tls: None,
            netns: None,
            expect: hyper::StatusCode::OK,
        }
    }

    /// Success is `status` instead of 200 (202 for `/async-function/…`).
    pub fn expecting(mut self, status: hyper::StatusCode) -> Self {
        self.expect = status;
        self
    }

    /// POSTs of `body` instead of GETs.
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    /// Over HTTPS with this client configuration.
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connecting from inside this network namespace, when there is one.
    pub fn in_netns(mut self, netns: Option<std::sync::Arc<std::fs::File>>) -> Self {
        self.netns = netns;
        self
    }
}

/// A TCP connection to `addr`, made from inside `netns` when given: the socket is created
/// while this thread is in that namespace, and keeps it.
pub async fn tcp_connect(
    addr: SocketAddr,
    netns: Option<&std::fs::File>,
) -> std::io::Result<TcpStream> {
    let Some(ns) = netns else {
        return TcpStream::connect(addr).await;
    };
    use nix::sched::{CloneFlags, setns};
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let socket = tokio::net::TcpSocket::new_v4();
    if setns(&home, CloneFlags::CLONE_NEWNET).is_err() {
        // Every later connection of this thread would go to the wrong place.
        std::process::abort();
    }
    socket?.connect(addr).await
}

#[derive(Debug)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    /// Requests that failed during the warm-up (not in `errors`, but they fail the
    /// measurement just the same).
    pub warmup_errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub hist: Histogram<u64>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Percentile in microseconds.
    pub fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64
    }

    /// The line `fjord-bench load` prints.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s, {} ok, {} errors; latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.rps(),
            self.requests,
            self.errors,
            self.p(0.5),
            self.p(0.9),
            self.p(0.99),
            self.p(0.999),
            self.hist.max()
        )
    }

    pub fn ensure_no_errors(&self, what: &str) -> anyhow::Result<()> {
        if self.errors > 0 {
            bail!(
                "{what}: {} of {} requests failed (first: {})",
                self.errors,
                self.requests + self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        if self.warmup_errors > 0 {
            bail!(
                "{what}: {} requests failed during the warm-up (first: {})",
                self.warmup_errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        if self.requests == 0 {
            bail!("{what}: no request completed");
        }
        Ok(())
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn connect(target: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let addr = target.addr;
    let stream = tcp_connect(addr, target.netns.as_deref())
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let Some(tls) = &target.tls else {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(sender);
    };
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    target: &Target,
    host: &str,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let builder = hyper::Request::builder()
        .uri(&target.path)
        .header(hyper::header::HOST, host);
    let req = match &target.body {
        Some(b) => builder
            .method(hyper::Method::POST)
            .body(Full::new(b.clone())),
        None => builder
            .method(hyper::Method::GET)
            .body(Full::new(Bytes::new())),
    }
    .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != target.expect {
        return Err(format!(
            "status {status} (expected {}): {}",
            target.expect,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(())
}

/// Runs `connections` closed loops for `duration` after `warmup`.
pub async fn run(
    target: &Target,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let host = target.addr.to_string();
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let target = target.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let (mut ok, mut errors, mut warmup_errors) = (0u64, 0u64, 0u64);
            let mut first_error = None::<String>;
            let mut sender = connect(&target).await?;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = one(&mut sender, &target, &host).await;
                let t1 = Instant::now();
                if t0 < start {
                    if let Err(e) = r {
                        warmup_errors += 1;
                        first_error.get_or_insert(e);
                        sender = connect(&target).await?;
                    }
                    continue;
                }
                match r {
                    Ok(()) => {
                        ok += 1;
                        let _ = hist.record((t1 - t0).as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        sender = connect(&target).await?;
                    }
                }
            }
            anyhow::Ok((hist, ok, errors, warmup_errors, first_error))
        }));
    }
    let mut hist = new_hist();
    let (mut requests, mut errors, mut warmup_errors, mut first_error) = (0, 0, 0, None);
    for t in tasks {
        let (h, ok, e, we, fe) = t.await??;
        hist.add(&h)?;
        requests += ok;
        errors += e;
        warmup_errors += we;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    Ok(LoadResult {
        requests,
        errors,
        warmup_errors,
        first_error,
        elapsed: duration,
        hist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_url_separates_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/function/f?x=1").unwrap(),
            ("127.0.0.1:8080", "/function/f?x=1")
        );
        assert_eq!(
            split_url("http://localhost:8080").unwrap(),
            ("localhost:8080", "/")
        );
        assert!(split_url("https://localhost:8080/").is_err());
        assert!(split_url("localhost:8080/").is_err());
    }

    fn result(latencies_us: &[u64], errors: u64) -> LoadResult {
        let mut hist = new_hist();
        for l in latencies_us {
            hist.record(*l).unwrap();
        }
        LoadResult {
            requests: latencies_us.len() as u64,
            errors,
            warmup_errors: 0,
            first_error: (errors > 0).then(|| "status 502".to_string()),
            elapsed: Duration::from_secs(2),
            hist,
        }
    }

    #[test]
    fn summary_reports_rate_counts_and_percentiles() {
        let r = result(&[100; 10], 0);
        assert_eq!(
            r.summary(),
            "5 req/s, 10 ok, 0 errors; latency µs p50 100 p90 100 p99 100 p99.9 100 max 100"
        );
    }

    /// A server on loopback: `/accepted` answers 202, `/flaky` 500 to its first three
    /// requests and then 200, anything else 200.
    async fn server() -> SocketAddr {
        use std::sync::atomic::{AtomicU32, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flaky = std::sync::Arc::new(AtomicU32::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let flaky = flaky.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let status = match req.uri().path() {
                            "/accepted" => 202,
                            "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 3 => 500,
                            _ => 200,
                        };
                        let resp = hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()));
                        async move { resp }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_the_expected_status_is_a_success() {
        let addr = server().await;
        let ms = Duration::from_millis;
        let r = run(&Target::new(addr, "/accepted"), 2, ms(0), ms(100))
            .await
            .unwrap();
        assert_eq!(r.requests, 0, "202 is not the 200 this target expects");
        assert!(r.errors > 0);
        let e = r.ensure_no_errors("x").unwrap_err().to_string();
        assert!(e.contains("status 202 Accepted (expected 200 OK)"), "{e}");
        let async_target = Target::new(addr, "/accepted").expecting(hyper::StatusCode::ACCEPTED);
        let r = run(&async_target, 2, ms(0), ms(100)).await.unwrap();
        assert!(r.requests > 0 && r.errors == 0, "{}", r.summary());
        assert!(r.ensure_no_errors("x").is_ok());
    }

    #[tokio::test]
    async fn failures_during_the_warm_up_fail_the_measurement() {
        let addr = server().await;
        let ms = Duration::from_millis;
        let r = run(&Target::new(addr, "/flaky"), 1, ms(200), ms(100))
            .await
            .unwrap();
        assert_eq!((r.warmup_errors, r.errors), (3, 0));
        assert!(r.requests > 0);
        let e = r.ensure_no_errors("x").unwrap_err().to_string();
        assert!(e.contains("3 requests failed during the warm-up"), "{e}");
    }

    #[test]
    fn any_error_or_no_request_fails_the_measurement() {
        assert!(result(&[100; 10], 0).ensure_no_errors("x").is_ok());
        let e = result(&[100; 10], 1).ensure_no_errors("x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x: 1 of 11 requests failed (first: status 502)"
        );
        let e = result(&[], 0).ensure_no_errors("x").unwrap_err();
        assert_eq!(e.to_string(), "x: no request completed");
        let mut warm = result(&[100; 10], 0);
        (warm.warmup_errors, warm.first_error) = (2, Some("connection reset".into()));
        let e = warm.ensure_no_errors("x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x: 2 requests failed during the warm-up (first: connection reset)"
        );
    }
}
