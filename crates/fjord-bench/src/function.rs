//! The benchmark's own http-mode function: answers every request with `ok` over keep-alive
//! HTTP/1.1 on `$PORT`, on one thread, so the figures measure fjord rather than a slow
//! function. Exits on SIGTERM.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Response header with the wall-clock time (Unix ns) the function started the request:
/// the async benchmark measures accept → start with it.
pub const START_HEADER: &str = "x-bench-start-ns";

/// The cron connector's header with the run's scheduled time (RFC 3339).
const SCHEDULED_HEADER: &str = "x-scheduled-time";
/// The log line of a cron run: `<CRON_LOG> <scheduled time> <start ns>`.
pub const CRON_LOG: &str = "bench-cron-run";

pub fn serve() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .map_err(|_| anyhow::anyhow!("PORT is not set: run me as an http-mode fjord function"))?
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on 127.0.0.1:{port}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                            let started = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos() as u64);
                            // A connector's call: the answer is the start stamp (MQTT's response
                            // topic carries no headers), and a cron run logs its lateness.
                            let h = req.headers();
                            if let Some(at) = h.get(SCHEDULED_HEADER).and_then(|v| v.to_str().ok()) {
                                println!("{CRON_LOG} {at} {started}");
                            }
                            let body = if h.contains_key("x-connector") {
                                Bytes::from(started.to_string())
                            } else {
                                Bytes::from_static(b"ok")
                            };
                            let mut r = hyper::Response::new(Full::new(body));
                            r.headers_mut().insert(START_HEADER, started.into());
                            Ok::<_, Infallible>(r)
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        }
    })
}
