//! `fjord watchdog`: the OpenFaaS watchdog contract inside an image built by `fjord build
//! --image`, so the image runs on any OCI runtime as OpenFaaS images do. It is the image's
//! entrypoint and reads the same environment as OpenFaaS's watchdogs:
//!
//! - `port` (default 8080): where it listens, on every address.
//! - `fprocess`: the command (split on whitespace, as the classic watchdog does).
//! - `mode`: `fork` (default; also `streaming`/`serializing`): one process per request, body
//!   on stdin, stdout is the response, `Http_*` variables for the request's metadata, as the
//!   classic watchdog; `http`: fprocess is started once with `PORT` set to `upstream_url`'s
//!   port and requests are proxied to it, as of-watchdog's http mode.
//! - `upstream_url` (http mode; default `http://127.0.0.1:5000`).
//! - `exec_timeout` (default 10s; 0 = none): longest a request may run (504 beyond; the
//!   forked process is killed). `read_timeout` (default 10s; 0 = none): longest to receive a
//!   request body (408 beyond). `max_inflight` (default 0 = no limit): more get 429.
//! - `content_type`: the fork-mode response's Content-Type (default: the request's).
//! - `GET /_/health`: 200 once ready (http mode: once the upstream accepts connections),
//!   else 503. `/tmp/.lock` is written when ready, as the classic watchdog does.
//! - SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to exec_timeout, or
//!   10 s), SIGTERM an http-mode fprocess (SIGKILL 5 s later), exit 0. As PID 1, see `init`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt as _;

use crate::error::CliError;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Fork,
    Http { upstream: hyper::Uri, port: u16 },
}

#[derive(Debug, Clone)]
struct Config {
    port: u16,
    argv: Vec<String>,
    mode: Mode,
    exec_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    max_inflight: usize,
    content_type: Option<String>,
}

/// `10s`, `1m30s`, `500ms`, or bare seconds (`10`) as the classic watchdog accepts; `0` = none.
fn duration(name: &str, v: Option<String>, default: Duration) -> Result<Option<Duration>, String> {
    let d = match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => default,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Duration::from_secs(n),
            Err(_) => humantime::parse_duration(s).map_err(|e| format!("{name}={s:?}: {e}"))?,
        },
    };
    Ok((!d.is_zero()).then_some(d))
}

impl Config {
    fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let fprocess = get("fprocess").unwrap_or_default();
        let argv: Vec<String> = fprocess.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return Err("fprocess is not set: it names the function's command".into());
        }
        let port = match get("port") {
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("port={p:?} is not a port number"))?,
            None => 8080,
        };
        let mode = match get("mode").as_deref().unwrap_or("fork") {
            "" | "fork" | "streaming" | "serializing" => Mode::Fork,
            "http" => {
                let url = get("upstream_url").unwrap_or_else(|| "http://127.0.0.1:5000".into());
                let upstream: hyper::Uri = url
                    .parse()
                    .map_err(|e| format!("upstream_url={url:?}: {e}"))?;
                if upstream.scheme_str() != Some("http") {
                    return Err(format!("upstream_url={url:?}: only http:// is supported"));
                }
                let port = upstream.port_u16().unwrap_or(80);
                Mode::Http { upstream, port }
            }
            other => {
                return Err(format!(
                    "mode={other:?} is not supported: fork (default) or http"
                ));
            }
        };
        let max_inflight = match get("max_inflight") {
            Some(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|_| format!("max_inflight={v:?} is not a number"))?,
            _ => 0,
        };
        Ok(Self {
            port,
            argv,
            mode,
            exec_timeout: duration("exec_timeout", get("exec_timeout"), Duration::from_secs(10))?,
            read_timeout: duration("read_timeout", get("read_timeout"), Duration::from_secs(10))?,
            max_inflight,
            content_type: get("content_type").filter(|c| !c.is_empty()),
        })
    }
}

struct State {
    config: Config,
    ready: AtomicBool,
    inflight: AtomicUsize,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// `X-Forwarded-For` → `Http_X_Forwarded_For` (Go's canonical header form, as classic).
fn header_env(name: &str) -> String {
    let canon: Vec<String> = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
                None => String::new(),
            }
        })
        .collect();
    format!("Http_{}", canon.join("_"))
}

async fn fork(state: &State, req: Request<Incoming>) -> Response<Body> {
    let c = &state.config;
    let (parts, body) = req.into_parts();
    let collected = match c.read_timeout {
        Some(t) => match tokio::time::timeout(t, body.collect()).await {
            Ok(r) => r,
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "read_timeout exceeded\n"),
        },
        None => body.collect().await,
    };
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
    };
    let mut cmd = tokio::process::Command::new(&c.argv[0]);
    cmd.args(&c.argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .env("Http_Method", parts.method.as_str())
        .env("Http_Path", parts.uri.path())
        .env("Http_Query", parts.uri.query().unwrap_or(""))
        // Set from the header below when there is one; -1 for a chunked body, as classic.
        .env("Http_Content_Length", "-1");
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            cmd.env(header_env(k.as_str()), v);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start {:?}: {e}\n", c.argv[0]),
            );
        }
    };
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        // A function that does not read its input closes the pipe: not an error.
        let _ = stdin.write_all(&body).await;
    });
    let run = child.wait_with_output();
    let out = match c.exec_timeout {
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(g) = pgid {
                    let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
                }
                return text(StatusCode::GATEWAY_TIMEOUT, "exec_timeout exceeded\n");
            }
        },
        None => run.await,
    };
    let _ = writer.await;
    let out = match out {
        Ok(o) => o,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    if !out.stderr.is_empty() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        let mut msg = out.stdout;
        msg.extend_from_slice(&out.stderr);
        msg.extend_from_slice(format!("{}\n", out.status).as_bytes());
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            String::from_utf8_lossy(&msg),
        );
    }
    let mut r = Response::new(
        Full::new(Bytes::from(out.stdout))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    let ct = c.content_type.clone().or_else(|| {
        parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    if let Some(ct) = ct
        && let Ok(v) = ct.parse()
    {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn proxy(state: &State, upstream: &hyper::Uri, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = match format!(
        "http://{}{pq}",
        upstream
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("127.0.0.1")
    )
    .parse()
    {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    parts.uri = uri;
    let req = Request::from_parts(parts, body.boxed());
    let send = state.client.request(req);
    let res = match state.config.exec_timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "exec_timeout exceeded\n"),
        },
        None => send.await,
    };
    match res {
        Ok(r) => r.map(|b| b.boxed()),
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("the function's server did not answer: {e}\n"),
        ),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/_/health" {
        return Ok(if state.ready.load(Ordering::Acquire) {
            text(StatusCode::OK, "OK")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        });
    }
    let max = state.config.max_inflight;
    let n = state.inflight.fetch_add(1, Ordering::AcqRel);
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done(&state.inflight);
    if max > 0 && n >= max {
        return Ok(text(
            StatusCode::TOO_MANY_REQUESTS,
            "max_inflight reached\n",
        ));
    }
    Ok(match &state.config.mode {
        Mode::Fork => fork(&state, req).await,
        Mode::Http { upstream, .. } => proxy(&state, upstream, req).await,
    })
}

fn mark_ready(state: &State) {
    state.ready.store(true, Ordering::Release);
    // The classic watchdog's readiness file; /tmp may be read-only or absent.
    let _ = std::fs::write(std::env::temp_dir().join(".lock"), b"");
}

async fn serve(config: Config) -> Result<(), CliError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Other(format!("watchdog: cannot listen on {addr}: {e}")))?;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let state = Arc::new(State {
        config: config.clone(),
        ready: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        client,
    });
    // http mode: the function's own server, started once; its exit ends the watchdog.
    let mut child = match &config.mode {
        Mode::Fork => {
            mark_ready(&state);
            None
        }
        Mode::Http { port, .. } => {
            let ch = tokio::process::Command::new(&config.argv[0])
                .args(&config.argv[1..])
                .env("PORT", port.to_string())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    CliError::Other(format!("watchdog: cannot start {:?}: {e}", config.argv[0]))
                })?;
            let st = state.clone();
            let port = *port;
            tokio::spawn(async move {
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                    {
                        mark_ready(&st);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            Some(ch)
        }
    };
    eprintln!(
        "fjord watchdog: listening on {addr}, mode {}, fprocess {:?}",
        match config.mode {
            Mode::Fork => "fork",
            Mode::Http { .. } => "http",
        },
        config.argv.join(" ")
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Other(e.to_string()))?;
    let exit = {
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(child_exit);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let st = state.clone();
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = term.recv() => break None,
                _ = tokio::signal::ctrl_c() => break None,
                status = &mut child_exit => break Some(status),
            }
        }
    };
    if let Some(status) = exit {
        return Err(CliError::Other(format!(
            "watchdog: the function's process exited ({})",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string())
        )));
    }
    drop(listener);
    state.ready.store(false, Ordering::Release);
    let grace = config.exec_timeout.unwrap_or(Duration::from_secs(10));
    eprintln!("fjord watchdog: draining in-flight requests (up to {grace:?})");
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    if let Some(mut c) = child {
        // The function's server may have cleanup to do: SIGTERM first.
        if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    Ok(())
}

/// Runs the watchdog until SIGTERM.
pub fn run() -> Result<(), CliError> {
    let config = Config::from_env(|k| std::env::var(k).ok())
        .map_err(|e| CliError::Usage(format!("watchdog: {e}")))?;
    if nix::unistd::getpid().as_raw() == 1 {
        return init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(e.to_string()))?
        .block_on(serve(config))
}

/// As a container's PID 1 the watchdog would inherit every orphaned process (a function's
/// background children) and never reap them, and signals without a handler are ignored. So
/// PID 1 only starts the watchdog again as its child, forwards SIGTERM/SIGINT to it, reaps
/// every zombie, and exits with the watchdog's status, as tini does.
fn init() -> Result<(), CliError> {
    use nix::sys::signal::{SigSet, Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    let exe = std::env::current_exe().map_err(|e| CliError::Other(e.to_string()))?;
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let mut cmd = std::process::Command::new(&exe);
    // In an image fjord runs through its own loader (the entrypoint): so does the child.
    if exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
    {
        cmd.arg("--library-path")
            .arg(exe.parent().unwrap_or(std::path::Path::new("/")))
            .arg(&argv0);
    }
    cmd.args(argv);
    let child = cmd
        .spawn()
        .map_err(|e| CliError::Other(format!("watchdog: cannot start itself: {e}")))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    // Blocked, then taken with sigwait: no handler runs. (A SIGCHLD blocked is kept pending
    // although its default action is to ignore it.)
    set.thread_block()
        .map_err(|e| CliError::Other(format!("watchdog: {e}")))?;
    loop {
        // Reap first: the child may have exited before the signals were blocked.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => std::process::exit(code),
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                    std::process::exit(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        match set.wait() {
            Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                let _ = kill(pid, s);
            }
            Ok(_) => {}
            Err(e) => return Err(CliError::Other(format!("watchdog: sigwait: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn reads_the_openfaas_environment() {
        let c = cfg(&[("fprocess", "python3 index.py")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.argv, ["python3", "index.py"]);
        assert_eq!(c.mode, Mode::Fork);
        assert_eq!(c.exec_timeout, Some(Duration::from_secs(10)));
        let c = cfg(&[
            ("fprocess", "node index.js"),
            ("mode", "http"),
            ("upstream_url", "http://127.0.0.1:3000"),
            ("port", "9090"),
            ("exec_timeout", "1m30s"),
            ("read_timeout", "0"),
            ("max_inflight", "4"),
        ])
        .unwrap();
        assert_eq!(c.port, 9090);
        assert!(matches!(c.mode, Mode::Http { port: 3000, .. }));
        assert_eq!(c.exec_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.read_timeout, None);
        assert_eq!(c.max_inflight, 4);
        assert!(cfg(&[]).unwrap_err().contains("fprocess"));
        assert!(cfg(&[("fprocess", "x"), ("mode", "static")]).is_err());
        assert!(cfg(&[("fprocess", "x"), ("port", "http")]).is_err());
    }

    #[test]
    fn header_names_as_the_classic_watchdog() {
        assert_eq!(header_env("x-forwarded-for"), "Http_X_Forwarded_For");
        assert_eq!(header_env("content-type"), "Http_Content_Type");
    }
}
