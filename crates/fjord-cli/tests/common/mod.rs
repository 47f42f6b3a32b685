//! Shared harness for fjord's integration tests: start `fjord serve` on a fresh data dir,
//! talk to it over HTTP, and always stop it (and every process it started) at the end.
#![allow(dead_code)]

pub mod registry;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const NS: &str = "openfaas-fn";
/// Time a deploy may take until its replicas are ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A python HTTP server used as the http-mode test function. It must contain no single quote:
/// it is passed to the function as `/usr/bin/python3 -c '<code>'`.
///
/// - any path: 200 JSON `{method, path, query, headers (lower-cased names), body, version, pid}`
/// - `/redirect`: 302 with `Location: http://example.invalid/elsewhere`
/// - `/crash`: the process exits at once with status 1
/// - `/hog`: allocates and touches 300 MB, then answers 200 `survived`
/// - `/log?<text>`: prints `LOGLINE <text>` on stdout, then answers as usual
/// - `/status/<code>`: answers with that status and header `X-Fn-Header: set`
/// - `/stream?<seconds>`: server-sent events, the second `<seconds>` (default 6) after the first
pub const PY_HTTP: &str = r#"
import http.server, json, os, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, code, body, ctype="application/json", extra=None):
        b = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b)
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            return self.reply(302, "", "text/plain", {"Location": "http://example.invalid/elsewhere"})
        if path == "/crash":
            os._exit(1)
        if path == "/hog":
            x = bytearray(300 * 1024 * 1024)
            for i in range(0, len(x), 4096):
                x[i] = 1
            return self.reply(200, "survived " + str(len(x)), "text/plain")
        if path == "/stream":
            # Server-sent events, chunked: the first event comes at once, the second only
            # after a long pause (?<seconds>, default 6), so a proxy that buffers cannot
            # deliver the first in time.
            pause = float(query or 6)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in (0, 1):
                data = ("data: event " + str(i) + "\n\n").encode()
                self.wfile.write(hex(len(data))[2:].encode() + b"\r\n" + data + b"\r\n")
                self.wfile.flush()
                if i == 0:
                    time.sleep(pause)
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/log":
            print("LOGLINE " + query, flush=True)
        if path.startswith("/status/"):
            return self.reply(int(path[8:]), "status " + path[8:], "text/plain", {"X-Fn-Header": "set"})
        out = {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "version": os.environ.get("VERSION", ""),
            "pid": os.getpid(),
        }
        self.reply(200, json.dumps(out))
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any
print("python test function listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `envProcess` that runs [`PY_HTTP`].
pub fn py_http_process() -> String {
    assert!(
        !PY_HTTP.contains('\''),
        "PY_HTTP must not contain single quotes"
    );
    format!("/usr/bin/python3 -c '{PY_HTTP}'")
}

/// A deployment body for an http-mode python function ([`PY_HTTP`]).
pub fn http_fn(name: &str, version: &str) -> Value {
    json!({
        "service": name,
        "image": "fjord-test/python-http:latest",
        "envProcess": py_http_process(),
        "envVars": {"mode": "http", "VERSION": version},
    })
}

/// A deployment body for a fork-mode function running `process`.
pub fn fork_fn(name: &str, process: &str) -> Value {
    json!({
        "service": name,
        "image": "fjord-test/fork:latest",
        "envProcess": process,
    })
}

/// Options for starting a server.
#[derive(Clone, Debug, Default)]
pub struct ServeOpts {
    /// Extra arguments after `serve --listen 127.0.0.1:0 --data-dir <dir>`.
    pub args: Vec<String>,
}

impl ServeOpts {
    pub fn args(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A client that trusts `ca_pem` (for servers started with [`Server::start_tls`]).
pub fn client_trusting(ca_pem: &str) -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .build()
        .expect("build https client")
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client whose connections come from another loopback address (`ip`, e.g. 127.0.0.7).
pub fn client_from(ip: &str) -> Client {
    Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Output of a CLI run.
pub struct CliOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `fjord` CLI with only the given `FJORD_*` variables (and its config file
/// at `config`), within 60 s.
pub async fn run_cli(args: &[&str], envs: &[(&str, &str)], config: &Path) -> CliOut {
    run_cli_within(args, envs, config, Duration::from_secs(60)).await
}

/// [`run_cli`] for commands whose work grows with the machine's load (image builds: a debug
/// `fjord` stripped and pushed, on 2 cores shared with the other tests).
pub async fn run_cli_within(
    args: &[&str],
    envs: &[(&str, &str)],
    config: &Path,
    bound: Duration,
) -> CliOut {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"));
    cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("FJORD_") || k.starts_with("OPENFAAS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FJORD_CONFIG", config)
        .env("FJORD_DATA_DIR", config.with_extension("no-data-dir"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let what = format!("fjord {}", args.join(" "));
    let out = tokio::time::timeout(bound, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    CliOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The temp dir shared by successive servers of one test (persistence tests restart on it).
pub struct TestDir {
    pub tmp: TempDir,
}

impl TestDir {
    pub fn new() -> Arc<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("fjord-it-")
            // Not /tmp: functions get a private /tmp, and fjord refuses a data dir there.
            .tempdir_in("/var/tmp")
            .expect("create temp dir");
        fs::create_dir_all(tmp.path().join("data")).expect("create data dir");
        Arc::new(Self { tmp })
    }
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
}

/// A running `fjord serve`. Dropping it stops the server and every process it started
/// (SIGTERM, then SIGKILL to it and all its descendants); if the test is panicking, the server
/// log is printed.
pub struct Server {
    child: Option<Child>,
    pub dir: Arc<TestDir>,
    pub addr: String,
    pub base: String,
    /// The dashboard's listener (`--ui-listen`, from `<data-dir>/ui.addr`): `scheme://host:port`,
    /// empty with `--ui-listen off`.
    pub ui_base: String,
    pub password: Option<String>,
    pub client: Client,
    pub log_path: PathBuf,
    opts: ServeOpts,
    tls_ca: Option<String>,
}

static LOG_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build http client")
}

impl Server {
    /// Starts a server on a fresh data dir.
    pub async fn start() -> Server {
        Self::start_opts(ServeOpts::default()).await
    }

    pub async fn start_opts(opts: ServeOpts) -> Server {
        Self::start_in(TestDir::new(), opts).await
    }

    /// Starts a server on `dir` (which may hold a previous server's state).
    pub async fn start_in(dir: Arc<TestDir>, opts: ServeOpts) -> Server {
        Self::start_with(dir, opts, None).await
    }

    /// Starts an HTTPS server (`--tls-cert/--tls-key` in `opts`) whose certificate `ca_pem`
    /// signed: the harness talks https and trusts that CA.
    pub async fn start_tls(dir: Arc<TestDir>, opts: ServeOpts, ca_pem: &str) -> Server {
        Self::start_with(dir, opts, Some(ca_pem.to_string())).await
    }

    async fn start_with(dir: Arc<TestDir>, opts: ServeOpts, tls_ca: Option<String>) -> Server {
        let data_dir = dir.data_dir();
        let addr_file = data_dir.join("gateway.addr");
        let _ = fs::remove_file(&addr_file);
        let _ = fs::remove_file(addr_file.with_file_name("ui.addr"));
        let seq = LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = dir.tmp.path().join(format!("fjord-{seq}.log"));
        let log = File::create(&log_path).expect("create server log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fjord"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            // Tests kill servers with SIGKILL; they must not leave the host's kernel tuned.
            .arg("--tune-kernel=false")
            .args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().expect("spawn fjord serve");
        let mut server = Server {
            child: Some(child),
            dir,
            addr: String::new(),
            base: String::new(),
            ui_base: String::new(),
            password: None,
            client: client(),
            log_path,
            opts,
            tls_ca,
        };
        server.wait_started(&addr_file).await;
        server
    }

    async fn wait_started(&mut self, addr_file: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "fjord serve exited early with {status} before writing {}",
                    addr_file.display()
                );
            }
            if let Ok(s) = fs::read_to_string(addr_file) {
                let s = s.trim();
                if !s.is_empty() && s.contains(':') {
                    self.addr = s.to_string();
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "fjord serve did not write {} within 20 s",
                    addr_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let scheme = match &self.tls_ca {
            Some(ca) => {
                self.client = client_trusting(ca);
                "https"
            }
            None => "http",
        };
        self.base = format!("{scheme}://{}", self.addr);
        // Written before gateway.addr.
        let ui_file = addr_file.with_file_name("ui.addr");
        self.ui_base = fs::read_to_string(ui_file)
            .map(|a| format!("{scheme}://{}", a.trim()))
            .unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::from("no answer");
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("fjord serve exited early with {status}; last /healthz: {last}");
            }
            match self
                .client
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => break,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = format!("error {e}"),
            }
            if Instant::now() > deadline {
                panic!("GET /healthz never answered 200 within 20 s: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pw_file = self.password_file();
        self.password = fs::read_to_string(&pw_file)
            .ok()
            .map(|s| s.trim().to_string());
        let auth_off = self.opts.args.iter().any(|a| a == "--auth=false");
        if !auth_off {
            assert!(
                self.password.as_deref().is_some_and(|p| !p.is_empty()),
                "auth is on but {} is missing or empty",
                pw_file.display()
            );
        }
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir
            .data_dir()
            .join("secrets")
            .join("basic-auth-password")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.data_dir()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server running").id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A URL on the dashboard's listener.
    pub fn ui_url(&self, path: &str) -> String {
        assert!(!self.ui_base.is_empty(), "this server has no dashboard");
        format!("{}{}", self.ui_base, path)
    }

    /// A request to the dashboard's listener, without credentials.
    pub fn ui(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.ui_url(path))
    }

    /// A request with the admin credentials (if auth is on).
    pub fn sys(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match &self.password {
            Some(p) => rb.basic_auth("admin", Some(p)),
            None => rb,
        }
    }

    /// A request without credentials.
    pub fn open(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a /system request with a JSON body; returns status and body text.
    pub async fn sys_json(&self, method: Method, path: &str, body: &Value) -> (StatusCode, String) {
        let what = format!("{method} {path}");
        let r = self
            .sys(method, path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        text(r).await
    }

    /// POST /system/functions; asserts a 2xx answer (the exact 202 is checked in the API tests).
    pub async fn deploy(&self, body: &Value) {
        let (st, txt) = self.sys_json(Method::POST, "/system/functions", body).await;
        assert!(
            st.is_success(),
            "deploy of {} answered {st}: {txt}",
            body["service"]
        );
    }

    /// PUT /system/functions; asserts a 2xx answer.
    pub async fn update(&self, body: &Value) {
        let (st, txt) = self.sys_json(Method::PUT, "/system/functions", body).await;
        assert!(
            st.is_success(),
            "update of {} answered {st}: {txt}",
            body["service"]
        );
    }

    /// DELETE /system/functions of `name`; asserts a 2xx answer (the exact 202 is checked in the
    /// API tests).
    pub async fn remove(&self, name: &str) {
        let (st, txt) = self
            .sys_json(
                Method::DELETE,
                "/system/functions",
                &json!({"functionName": name}),
            )
            .await;
        assert!(st.is_success(), "delete of {name} answered {st}: {txt}");
    }

    /// Deploys and waits until the function has ready replicas.
    pub async fn deploy_ready(&self, body: &Value) -> Value {
        self.deploy(body).await;
        self.wait_ready(body["service"].as_str().unwrap(), READY_TIMEOUT)
            .await
    }

    /// GET /system/function/{name}: `None` on 404, panics on anything else than 200/404.
    pub async fn get_function(&self, name: &str) -> Option<Value> {
        let r = self
            .sys(Method::GET, &format!("/system/function/{name}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /system/function/{name}: {e}"));
        let (st, body) = text(r).await;
        match st {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => {
                Some(serde_json::from_str(&body).unwrap_or_else(|e| {
                    panic!("GET /system/function/{name}: bad JSON {e}: {body}")
                }))
            }
            other => panic!("GET /system/function/{name} answered {other}: {body}"),
        }
    }

    /// GET /system/functions as a JSON array.
    pub async fn list_functions(&self) -> Vec<Value> {
        let r = self
            .sys(Method::GET, "/system/functions")
            .send()
            .await
            .expect("GET /system/functions");
        let (st, body) = text(r).await;
        assert_eq!(st, StatusCode::OK, "GET /system/functions: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /system/functions: not a JSON array ({e}): {body}"))
    }

    /// Polls until `availableReplicas >= max(replicas, 1)`; returns the last status.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Value {
        self.wait_status(name, timeout, "ready", |st| {
            num(st, "availableReplicas") >= num(st, "replicas").max(1)
        })
        .await
    }

    /// Polls the function status until `pred` holds; returns that status.
    pub async fn wait_status(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("function {name}: {what} (last status)");
        wait_until(timeout, &what, async || {
            match self.get_function(name).await {
                Some(st) if pred(&st) => Ok(st),
                Some(st) => Err(st.to_string()),
                None => Err("404".to_string()),
            }
        })
        .await
    }

    /// Invokes `/function/{path}` (path includes the name, e.g. `env/sub?x=1`).
    pub fn invoke(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(&format!("/function/{path}")))
    }

    /// Invokes `/function/{path}` with `method` and `body`: status and body text.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        send_text(self.invoke(method, path).body(body)).await
    }

    /// An admin (/system) request without a body: status and body text.
    pub async fn sys_text(&self, method: Method, path: &str) -> (StatusCode, String) {
        send_text(self.sys(method, path)).await
    }

    /// [`Server::sys_json`], asserting the status; returns the body.
    pub async fn sys_expect(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        status: StatusCode,
    ) -> String {
        let what = format!("{method} {path}");
        expect_status(self.sys_json(method, path, body).await, status, &what)
    }

    /// GET /function/{path}: status and body.
    pub async fn call(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .invoke(Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /function/{path}: {e}"));
        text(r).await
    }

    /// Polls GET /function/{path} until it answers 200; returns the body.
    pub async fn call_until_ok(&self, path: &str, timeout: Duration) -> String {
        let what = format!("GET /function/{path} answering 200");
        wait_until(timeout, &what, async || {
            let rb = self
                .invoke(Method::GET, path)
                .timeout(Duration::from_secs(10));
            match rb.send().await {
                Ok(r) => match text(r).await {
                    (StatusCode::OK, body) => Ok(body),
                    (st, body) => Err(format!("{st}: {body}")),
                },
                Err(e) => Err(format!("error: {e}")),
            }
        })
        .await
    }

    /// Non-following log request; returns parsed NDJSON lines.
    pub async fn logs(&self, query: &str) -> Vec<Value> {
        let path = format!("/system/logs?{query}");
        let r = self
            .sys(Method::GET, &path)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let (st, body) = text(r).await;
        assert_eq!(st, StatusCode::OK, "GET {path}: {body}");
        parse_ndjson(&body)
    }

    /// Polls the logs until a line's text contains `needle`; returns all lines of that answer.
    pub async fn wait_log(&self, query: &str, needle: &str, timeout: Duration) -> Vec<Value> {
        let what = format!("a log line containing {needle:?} for {query}");
        wait_until(timeout, &what, async || {
            let lines = self.logs(query).await;
            if lines
                .iter()
                .any(|l| l["text"].as_str().unwrap_or_default().contains(needle))
            {
                return Ok(lines);
            }
            let got: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            Err(format!("got:\n{}", got.join("\n")))
        })
        .await
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid();
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("fjord serve did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's output so far (the tail, at most 64 KiB).
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path, 64 * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let before = descendants(pid);
            if child.try_wait().ok().flatten().is_none() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            // Whatever the server started and left behind (or started after we looked).
            let mut seen: HashSet<(i32, u64)> = before.into_iter().collect();
            for p in descendants(pid) {
                seen.insert(p);
            }
            for (p, start) in seen {
                if proc_start_time(p) == Some(start) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "===== fjord serve log ({}) =====\n{}\n===== end of fjord serve log =====",
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}

fn read_tail(path: &Path, max: usize) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    let start = buf.len().saturating_sub(max);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

/// (ppid, starttime) of a process from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] = state (field 3), fields[1] = ppid (4), fields[19] = starttime (22)
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn proc_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

/// All live descendants of `root`, with their start times.
fn descendants(root: i32) -> Vec<(i32, u64)> {
    let mut table = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                && let Some((ppid, start)) = proc_stat(pid)
            {
                table.push((pid, ppid, start));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, start) in &table {
            if ppid == p && !out.iter().any(|(q, _)| *q == pid) {
                out.push((pid, start));
                frontier.push(pid);
            }
        }
    }
    out
}

/// What a condition polled by [`wait_until`] gives: done (with a value), or not yet (with what
/// was seen, for the failure message).
pub trait Check {
    type Out;
    fn check(self) -> Result<Self::Out, String>;
}

impl Check for bool {
    type Out = ();
    fn check(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Check for Option<T> {
    type Out = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: std::fmt::Display> Check for Result<T, E> {
    type Out = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// How often [`wait_until`] polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `cond` every [`POLL`] until it holds (`true`, `Some`, `Ok`), for at most `bound`;
/// returns its value, or panics naming `what` and the last thing seen. For waiting on a
/// condition instead of sleeping a fixed time before an assert.
pub async fn wait_until<C: Check>(
    bound: Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> C,
) -> C::Out {
    let deadline = Instant::now() + bound;
    loop {
        let last = match cond().await.check() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            panic!("{what}: not reached within {bound:?}; last: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for plain threads (tests that drive processes without a runtime).
pub fn wait_until_blocking<C: Check>(
    bound: Duration,
    what: &str,
    mut cond: impl FnMut() -> C,
) -> C::Out {
    let deadline = Instant::now() + bound;
    loop {
        let last = match cond().check() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            panic!("{what}: not reached within {bound:?}; last: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `rb`; status and body text. Panics (naming the request) if it could not be sent.
pub async fn send_text(rb: RequestBuilder) -> (StatusCode, String) {
    let what = describe(&rb);
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    text(r).await
}

/// Sends `rb`; status, headers and body text.
pub async fn send_reply(rb: RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let what = describe(&rb);
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let headers = r.headers().clone();
    let (st, body) = text(r).await;
    (st, headers, body)
}

fn describe(rb: &RequestBuilder) -> String {
    match rb.try_clone().and_then(|rb| rb.build().ok()) {
        Some(req) => format!("{} {}", req.method(), req.url().path()),
        None => "request".into(),
    }
}

/// A header's value as text (`None` if absent or not visible ASCII).
pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Asserts a reply's status and exact body, naming `what` on failure.
#[track_caller]
pub fn assert_reply(got: (StatusCode, String), status: StatusCode, body: &str, what: &str) {
    assert_eq!(
        (got.0, got.1.as_str()),
        (status, body),
        "{what}: unexpected reply"
    );
}

/// Asserts a reply's status, naming `what` and showing the body on failure; returns the body.
#[track_caller]
pub fn expect_status(got: (StatusCode, String), status: StatusCode, what: &str) -> String {
    let (st, body) = got;
    assert_eq!(st, status, "{what}: {body}");
    body
}

/// Status and body text of a response.
pub async fn text(r: Response) -> (StatusCode, String) {
    let st = r.status();
    let body = r
        .text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    (st, body)
}

/// A numeric field of a FunctionStatus; absent means 0 (Go `omitempty`).
pub fn num(v: &Value, field: &str) -> u64 {
    match &v[field] {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

/// A numeric field of the `fjord` extras object; absent means 0.
pub fn fjord_num(v: &Value, field: &str) -> u64 {
    num(&v["fjord"], field)
}

pub fn parse_ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// Checks the response headers every invocation carries.
pub fn assert_invocation_headers(r: &Response, what: &str) {
    let h = r.headers();
    let call_id = h.get("x-call-id").and_then(|v| v.to_str().ok());
    assert!(
        call_id.is_some_and(|c| !c.is_empty()),
        "{what}: missing X-Call-Id; headers: {h:?}"
    );
    let start = h
        .get("x-start-time")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u128>().ok());
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        start.is_some_and(|s| s > now_ns - 600_000_000_000 && s <= now_ns + 1_000_000_000),
        "{what}: X-Start-Time must be the unix time in nanoseconds; headers: {h:?}"
    );
    let dur = h
        .get("x-duration-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        dur.is_some_and(|d| d >= 0.0),
        "{what}: missing or bad X-Duration-Seconds; headers: {h:?}"
    );
}

/// Parses the JSON echo of [`PY_HTTP`].
pub fn echo(body: &str) -> Value {
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("function answer is not the python echo JSON ({e}): {body}"))
}

/// Packs a fork-mode bundle of `src` (created if needed) whose `./run.sh` is `script`, next
/// to `src` as `<name>.tar.gz`; returns the digest and the archive.
pub fn pack_script_bundle(src: &Path, name: &str, script: &str) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(src).unwrap();
    let run = src.join("run.sh");
    fs::write(&run, script).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    fjord_bundle::Manifest {
        name: name.into(),
        language: "bash".into(),
        fprocess: "./run.sh".into(),
        mode: "fork".into(),
        env: Default::default(),
        fjord_version: String::new(),
    }
    .write_dir(src)
    .unwrap();
    let out = src.with_file_name(format!("{name}.tar.gz"));
    let digest = fjord_bundle::pack(src, &out).unwrap();
    (digest.as_str().to_string(), out)
}

impl Server {
    /// Packs and uploads a fork-mode bundle running `script` ([`pack_script_bundle`]).
    pub async fn upload_script_bundle(&self, name: &str, script: &str) -> String {
        let (digest, out) =
            pack_script_bundle(&self.dir.tmp.path().join("bundle-src"), name, script);
        let r = self
            .sys(Method::PUT, &format!("/system/bundles/{digest}"))
            .body(fs::read(&out).unwrap())
            .send()
            .await
            .unwrap();
        let (st, body) = text(r).await;
        assert!(st.is_success(), "upload: {st} {body}");
        digest
    }
}
