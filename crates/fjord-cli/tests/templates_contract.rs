//! The handler contracts of the function templates in `templates/`, checked without fjord:
//! each test assembles a bundle as `fjord build` lays it out (template root files, the handler
//! as `function/`, `deps/` for pip), starts `fprocess` the way fjord does (split on spaces,
//! working directory = bundle, a clean environment with PORT/HOME/PATH) and talks to it over
//! real HTTP (http mode) or stdin/stdout with `Http_*` variables (fork mode).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use fjord_cli::builder;
use fjord_cli::templates::{self, Template, TemplateSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Client, StatusCode, redirect};
use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::{free_port, wait_until_blocking};

/// The PATH fjord gives functions (fjord-runtime's DEFAULT_PATH).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HOSTNAME: &str = "tmpl-contract-replica";
// Generous: the machine running the tests is shared.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a function may take to exit after SIGTERM (generous: the machine is shared).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates")
}

// --- template.yml ----------------------------------------------------------------------

/// A shipped template, found and parsed by the CLI's own code (`fjord new`/`fjord build`).
fn template(lang: &str) -> Template {
    // A stack directory without a `template/` folder: the templates built into the binary.
    let t = templates::find(lang, Path::new("/nonexistent-stack-dir"))
        .unwrap_or_else(|e| panic!("template {lang}: {e}"));
    assert_eq!(t.spec.language, lang, "{lang}: template.yml language");
    assert!(
        ["http", "fork"].contains(&t.spec.mode.as_str()),
        "{lang}: mode {:?}",
        t.spec.mode
    );
    t
}

#[test]
fn every_template_has_a_valid_spec_and_skeleton() {
    let langs = templates::names();
    assert_eq!(
        langs,
        [
            "bash",
            "dockerfile",
            "golang-http",
            "golang-middleware",
            "java",
            "node",
            "php",
            "python3",
            "python3-http",
            "ruby",
            "rust"
        ]
    );
    // The binary embeds the repository's templates/: the same set.
    let mut on_disk: Vec<String> = fs::read_dir(templates_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("template.yml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(langs, on_disk);
    for lang in &langs {
        let t = template(lang);
        assert!(!t.spec.fprocess.is_empty(), "{lang}: fprocess");
        assert!(t.spec.welcome_message.is_some(), "{lang}: welcome_message");
        let skeleton = TempDir::new().unwrap();
        let dest = skeleton.path().join("handler");
        t.write_skeleton(&dest).unwrap();
        assert!(
            fs::read_dir(&dest).unwrap().next().is_some(),
            "{lang}: function/ skeleton"
        );
    }
}

#[test]
fn upstream_template_names_find_the_shipped_templates() {
    // A faas-cli stack.yml names OpenFaaS's templates; the ones fjord ships under a shorter
    // name are found by the upstream name too.
    for (upstream, shipped) in [
        ("ruby-http", "ruby"),
        ("php8", "php"),
        ("java11", "java"),
        ("go", "golang-middleware"),
    ] {
        let t = templates::find(upstream, Path::new("/nonexistent-stack-dir"))
            .unwrap_or_else(|e| panic!("{upstream}: {e}"));
        assert_eq!(t.spec.language, shipped, "{upstream}");
    }
    // Not a general fallback: unknown names are still refused.
    assert!(templates::find("ruby-nope", Path::new("/nonexistent-stack-dir")).is_err());
}

// --- bundles ---------------------------------------------------------------------------

fn write_file(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// A handler folder as a user has it: the skeleton `fjord new` copies, with `handler`'s files
/// written over it.
fn handler_dir(t: &Template, handler: &[(&str, &str)], dest: &Path) {
    t.write_skeleton(dest).unwrap();
    for (rel, content) in handler {
        write_file(&dest.join(rel), content.as_bytes());
    }
}

/// A bundle directory, laid out by `fjord build`'s own code ([`builder::assemble`]): the
/// template's runtime files at the root and the handler as `function/`.
struct Bundle {
    tmp: TempDir,
    spec: TemplateSpec,
}

impl Bundle {
    fn new(lang: &str, handler: &[(&str, &str)]) -> Bundle {
        let t = template(lang);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("fjord-tmpl-{lang}-"))
            .tempdir_in("/var/tmp")
            .expect("temp dir under /var/tmp");
        let user = TempDir::new().unwrap();
        let src = user.path().join("handler");
        handler_dir(&t, handler, &src);
        builder::assemble(&t, &src, tmp.path()).unwrap();
        Bundle { tmp, spec: t.spec }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// What `fjord build` does after pip for python templates: byte-code, once.
    fn compile_python(&self) {
        let st = Command::new("/usr/bin/python3")
            .args([
                "-m",
                "compileall",
                "-q",
                "-f",
                "--invalidation-mode",
                "unchecked-hash",
            ])
            .arg(self.root())
            .status()
            .unwrap();
        assert!(st.success(), "compileall failed");
    }

    /// `fprocess` split on spaces, argv[0] resolved as fjord does: a path with a slash is
    /// relative to the bundle, anything else is looked up in the default PATH.
    fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        let argv: Vec<&str> = self
            .spec
            .fprocess
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        let program = if argv[0].contains('/') {
            self.root().join(argv[0])
        } else {
            DEFAULT_PATH
                .split(':')
                .map(|d| Path::new(d).join(argv[0]))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{} not found in {DEFAULT_PATH}", argv[0]))
        };
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..])
            .current_dir(self.root())
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .env("LANG", "C.UTF-8")
            .env("HOSTNAME", HOSTNAME)
            .env("fprocess", &self.spec.fprocess)
            .envs(&self.spec.env)
            .envs(extra_env.iter().copied());
        cmd
    }
}

/// Collects a child's output in the background.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    out
}

/// Waits (bounded) until both collectors have ended: they end at EOF, which follows the exit.
fn wait_collected(stdout: &Arc<Mutex<Vec<u8>>>, stderr: &Arc<Mutex<Vec<u8>>>) {
    wait_until_blocking(IO_TIMEOUT, "output pipes closed", || {
        Arc::strong_count(stdout) == 1 && Arc::strong_count(stderr) == 1
    });
}

/// A running http-mode function; killed on drop.
struct Running {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    started: Instant,
    ready_after: Duration,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(bundle: &Bundle, extra_env: &[(&str, &str)]) -> Running {
        assert_eq!(bundle.spec.mode, "http");
        let port = free_port();
        let port_s = port.to_string();
        let mut env = extra_env.to_vec();
        env.push(("PORT", &port_s));
        let started = Instant::now();
        let mut tries = 0;
        let mut child = loop {
            let spawned = bundle
                .command(&env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                // ETXTBSY: a file just written is still open in a process forked meanwhile.
                Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                r => break r.expect("start fprocess"),
            }
        };
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut run = Running {
            child,
            port,
            stdout,
            stderr,
            started,
            ready_after: Duration::ZERO,
        };
        // Ready = accepts connections (what fjord probes without a ready path).
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(st) = run.child.try_wait().unwrap() {
                panic!(
                    "fprocess exited before listening ({st}); stderr:\n{}",
                    run.stderr()
                );
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "fprocess not listening after {READY_TIMEOUT:?}; stderr:\n{}",
                run.stderr()
            );
            thread::sleep(Duration::from_millis(2));
        }
        run.ready_after = started.elapsed();
        run
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn raw(&self) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Waits (bounded) until the process wrote `needle` on stderr (read by another thread).
    fn wait_stderr(&self, needle: &str) -> String {
        self.wait_output("stderr", Self::stderr, needle)
    }

    /// Waits (bounded) until the process wrote `needle` on stdout. A shim accepts
    /// connections from its `listen()`, a moment before it says so.
    fn wait_stdout(&self, needle: &str) -> String {
        self.wait_output("stdout", Self::stdout, needle)
    }

    fn wait_output(&self, stream: &str, read: fn(&Self) -> String, needle: &str) -> String {
        wait_until_blocking(IO_TIMEOUT, &format!("{needle:?} on {stream}"), || {
            let out = read(self);
            if out.contains(needle) {
                Ok(out)
            } else {
                Err(out)
            }
        })
    }

    fn sigterm(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until_blocking(timeout, "exit after SIGTERM", || {
            self.child.try_wait().unwrap()
        })
    }
}

fn client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap()
}

async fn get_text(c: &Client, url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let r = c.get(url).send().await.unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.text().await.unwrap())
}

/// A streamed body of `parts` (sent chunked: it has no length), and the bytes it adds up to.
fn chunked(parts: Vec<Vec<u8>>) -> (reqwest::Body, Vec<u8>) {
    let all = parts.concat();
    let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    (reqwest::Body::wrap_stream(stream), all)
}

/// POSTs `body` to the function's `/echo`; asserts 200 and the same bytes back. Returns the
/// answer's headers.
async fn assert_echoed(
    c: &Client,
    run: &Running,
    body: reqwest::Body,
    expected: &[u8],
) -> reqwest::header::HeaderMap {
    let r = c.post(run.url("/echo")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected);
    h
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

// --- raw HTTP/1.1 over one connection ----------------------------------------------------

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp).expect("read from the function");
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    /// Reads one response; `head_only` for HEAD and interim responses (no body follows).
    fn response(&mut self, head_only: bool) -> RawResponse {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.buf.len() < 1 << 20, "response head too large");
            assert!(self.fill(), "connection closed before a response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1."), "{status_line:?}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status < 200 || status == 204 || status == 304 {
            return r;
        }
        // Without a length, a response that closes the connection ends there (Go's net/http
        // answers malformed requests so).
        let Some(len) = r.header("content-length") else {
            assert_eq!(
                r.header("connection"),
                Some("close"),
                "responses carry Content-Length or close"
            );
            while self.fill() {}
            r.body = std::mem::take(&mut self.buf);
            return r;
        };
        let len: usize = len.parse().unwrap();
        while self.buf.len() < len {
            assert!(self.fill(), "connection closed in a response body");
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// True if the server closed the connection (bounded wait).
    fn closed(&mut self) -> bool {
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut tmp = [0u8; 16];
        matches!(self.s.read(&mut tmp), Ok(0) | Err(_))
    }
}

// --- fork mode -------------------------------------------------------------------------

struct ForkOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs a fork-mode template once: body on stdin, `Http_*` in the environment.
fn run_fork(bundle: &Bundle, stdin: &[u8], env: &[(&str, &str)]) -> ForkOutput {
    assert_eq!(bundle.spec.mode, "fork");
    let mut child = bundle
        .command(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fprocess");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut input = child.stdin.take().unwrap();
    let body = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&body);
    });
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > IO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fork process still running after {IO_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    };
    writer.join().unwrap();
    wait_collected(&stdout, &stderr);
    let stdout = stdout.lock().unwrap().clone();
    let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    ForkOutput {
        status,
        stdout,
        stderr,
    }
}

// --- python3-http ----------------------------------------------------------------------

const PY_HTTP_HANDLER: &str = r#"import sys
import time

import helper  # a sibling module of handler.py (function/ is on sys.path)
import fjorddep  # from <bundle>/deps (pip --target)
import pthmod  # from a directory a .pth file in deps/ adds


def handle(event, context):
    p = event.path
    if p == "/echo":
        return {"statusCode": 200, "body": event.body, "headers": {"Content-Type": "application/octet-stream"}}
    if p == "/json":
        return {"statusCode": 201, "body": {"a": 1}, "headers": {"X-Test": "1"}}
    if p == "/info":
        return {
            "statusCode": 200,
            "body": {
                "method": event.method,
                "path": event.path,
                "query_a": event.query.get("a"),
                "query_all": event.query.getlist("a"),
                "query_missing": event.query.get("zzz", "dflt"),
                "query_dict": dict(event.query),
                "ct": event.headers.get("content-type"),
                "ct_upper": event.headers["CONTENT-TYPE"],
                "has_custom": "x-custom" in event.headers,
                "custom": event.headers.get("X-CUSTOM"),
                "missing": event.headers.get("x-nope"),
                "hostname": context.hostname,
                "body_type": type(event.body).__name__,
                "body": event.body.decode(),
            },
        }
    if p == "/none":
        return None
    if p == "/boom":
        raise ValueError("kaboom")
    if p == "/pairs":
        return {"statusCode": 202, "body": "x", "headers": [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]}
    if p == "/list":
        return {"body": [1, "two", None, 2.5, True]}
    if p == "/html":
        return {"body": "<p>hi</p>"}
    if p == "/xml":
        return {"body": "<x/>", "headers": {"content-type": "application/xml"}}
    if p == "/number":
        return {"statusCode": 200, "body": 42}
    if p == "/imports":
        return {"body": {"helper": helper.VALUE, "dep": fjorddep.VALUE, "pth": pthmod.VALUE}}
    if p == "/slow":
        print("slow started", file=sys.stderr, flush=True)
        time.sleep(1)
        return {"body": "slow done"}
    if p == "/upstream-method":
        # The example from the OpenFaaS python3-http docs.
        if event.method == "GET":
            return {"statusCode": 200, "body": "GET request"}
        else:
            return {"statusCode": 405, "body": "Method not allowed"}
    return {"statusCode": 404, "body": "not found: " + p}
"#;

fn py_http_bundle() -> Bundle {
    let b = Bundle::new(
        "python3-http",
        &[
            ("handler.py", PY_HTTP_HANDLER),
            ("helper.py", "VALUE = 'sibling'\n"),
        ],
    );
    // What `pip install --target deps` leaves: packages, and maybe .pth files.
    write_file(
        &b.root().join("deps/fjorddep/__init__.py"),
        b"VALUE = 'from deps'\n",
    );
    write_file(&b.root().join("deps/fjordextra.pth"), b"extra\n");
    write_file(
        &b.root().join("deps/extra/pthmod.py"),
        b"VALUE = 'via .pth'\n",
    );
    b.compile_python();
    b
}

#[tokio::test]
async fn python3_http_skeleton_answers_like_upstream() {
    let b = Bundle::new("python3-http", &[]);
    let run = Running::start(&b, &[]);
    let c = client();
    let (st, h, body) = get_text(&c, &run.url("/")).await;
    eprintln!(
        "python3-http skeleton: listening {:?} after start, first response {:?} after start",
        run.ready_after,
        run.started.elapsed()
    );
    assert_eq!(st, 200);
    assert_eq!(body, "Hello from OpenFaaS!");
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    let (st, _, body) = get_text(&c, &run.url("/any/path?x=1")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "Hello from OpenFaaS!"));
}

#[tokio::test]
async fn python3_http_event_and_response_contract() {
    let b = py_http_bundle();
    let run = Running::start(&b, &[]);
    let c = client();

    // Dict body -> JSON, status and headers.
    let r = c.get(run.url("/json")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "content-type"), "application/json");
    assert_eq!(header(r.headers(), "x-test"), "1");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"a": 1}));

    // The event: method, path, multi-valued query, case-insensitive headers, context.
    let r = c
        .post(run.url("/info?a=1&a=2&b=x+y%21"))
        .header("Content-Type", "text/plain")
        .header("X-Custom", "yes")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({
            "method": "POST",
            "path": "/info",
            "query_a": "1",
            "query_all": ["1", "2"],
            "query_missing": "dflt",
            "query_dict": {"a": "1", "b": "x y!"},
            "ct": "text/plain",
            "ct_upper": "text/plain",
            "has_custom": true,
            "custom": "yes",
            "missing": null,
            "hostname": HOSTNAME,
            "body_type": "bytes",
            "body": "payload",
        })
    );

    // None -> empty 200.
    let (st, _, body) = get_text(&c, &run.url("/none")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, ""));

    // An exception -> 500 with a short message, the traceback on stderr.
    let (st, _, body) = get_text(&c, &run.url("/boom")).await;
    assert_eq!(st, 500);
    assert!(body.contains("Internal Server Error"), "{body}");
    assert!(!body.contains("kaboom"), "no details to the caller: {body}");
    run.wait_stderr("ValueError: kaboom");
    assert!(run.stderr().contains("Traceback"), "{}", run.stderr());

    // Headers as a list of pairs: repeated names kept.
    let r = c.get(run.url("/pairs")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // A list body is JSON too (Flask's jsonify: compact, trailing newline).
    let (st, h, body) = get_text(&c, &run.url("/list")).await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(body, "[1,\"two\",null,2.5,true]\n");

    // str bodies: Flask's default type, unless the handler sets one; others via str().
    let (_, h, body) = get_text(&c, &run.url("/html")).await;
    assert_eq!(
        (header(&h, "content-type"), body.as_str()),
        ("text/html; charset=utf-8", "<p>hi</p>")
    );
    let (_, h, body) = get_text(&c, &run.url("/xml")).await;
    assert_eq!(
        (header(&h, "content-type"), body.as_str()),
        ("application/xml", "<x/>")
    );
    let (_, _, body) = get_text(&c, &run.url("/number")).await;
    assert_eq!(body, "42");

    // Dependencies: deps/ (with .pth files) and siblings of handler.py import.
    let r = c.get(run.url("/imports")).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"helper": "sibling", "dep": "from deps", "pth": "via .pth"})
    );

    // The docs' example runs unchanged.
    let (st, _, body) = get_text(&c, &run.url("/upstream-method")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "GET request"));
    let r = c.delete(run.url("/upstream-method")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.text().await.unwrap(), "Method not allowed");
}

#[tokio::test]
async fn python3_http_bodies_large_and_chunked() {
    let b = py_http_bundle();
    assert_bodies_large_and_chunked(&Running::start(&b, &[])).await;
}

/// A 1 MB binary body, a streamed chunked one, and chunk extensions and trailers by hand
/// followed by another request on the connection: each echoed by `POST /echo`.
async fn assert_bodies_large_and_chunked(run: &Running) {
    let c = client();

    // 1 MB, binary, with Content-Length.
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let h = assert_echoed(&c, run, big.clone().into(), &big).await;
    assert_eq!(header(&h, "content-type"), "application/octet-stream");

    // Chunked (a streamed body has no length).
    let (body, expected) = chunked(vec![
        b"hello ".to_vec(),
        vec![b'x'; 100_000],
        b" bye".to_vec(),
    ]);
    assert_echoed(&c, run, body, &expected).await;

    // Chunked by hand: extensions and trailers, then another request on the connection.
    let mut raw = run.raw();
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
          GET /none HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
    let r = raw.response(false);
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn python3_http_protocol() {
    let b = py_http_bundle();
    let run = Running::start(&b, &[]);
    assert_http_protocol(&run);
}

/// HTTP/1.1 as fjord's gateway and plain clients speak it, over raw connections. The handler
/// answers `GET /json` with 201, echoes `POST /echo`, `/html` with `<p>hi</p>` and `/none` with
/// an empty 200.
fn assert_http_protocol(run: &Running) {
    // Keep-alive: two requests, one connection, in sequence.
    let mut raw = run.raw();
    raw.send(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n");
    let r1 = raw.response(false);
    raw.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    let r2 = raw.response(false);
    assert_eq!(r1.status, 201);
    assert_eq!((r2.status, r2.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(r1.header("connection"), None);

    // Pipelined, then `Connection: close` is honoured.
    raw.send(
        b"GET /html HTTP/1.1\r\nHost: x\r\n\r\nGET /html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.response(false).body, b"<p>hi</p>");
    let last = raw.response(false);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(raw.closed());

    // HEAD: headers (with the length the body would have) and no body.
    let mut raw = run.raw();
    raw.send(b"HEAD /html HTTP/1.1\r\nHost: x\r\n\r\nGET /none HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = raw.response(true);
    assert_eq!((h.status, h.header("content-length")), (200, Some("9")));
    let next = raw.response(false);
    assert_eq!((next.status, next.body.len()), (200, 0));

    // Expect: 100-continue.
    let mut raw = run.raw();
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = raw.response(true);
    assert_eq!(interim.status, 100);
    raw.send(b"data");
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"data"[..]));

    // HTTP/1.0: closes unless asked to keep alive.
    let mut raw = run.raw();
    raw.send(b"GET /html HTTP/1.0\r\n\r\n");
    assert_eq!(raw.response(false).status, 200);
    assert!(raw.closed());

    // A bounded request head.
    let mut raw = run.raw();
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let _ = raw.s.write_all(&req);
    let r = raw.response(false);
    assert_eq!(r.status, 431);

    // Garbage -> 400 and close.
    let mut raw = run.raw();
    raw.send(b"NONSENSE\r\n\r\n");
    assert_eq!(raw.response(false).status, 400);
    assert!(raw.closed());

    // Still serving.
    let mut raw = run.raw();
    raw.send(b"GET /html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).status, 200);
}

/// Starts `b`, sends `GET /slow` and, once the handler has it, SIGTERM: the request is still
/// answered, then the process exits 0. Returns the answer.
fn assert_sigterm_drains(b: &Bundle) -> RawResponse {
    let mut run = Running::start(b, &[]);
    let mut raw = run.raw();
    raw.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    run.wait_stderr("slow started");
    run.sigterm();
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow done"[..]));
    let st = run.wait_exit(EXIT_TIMEOUT);
    assert!(st.success(), "{st}");
    r
}

#[test]
fn python3_http_sigterm_drains_then_exits() {
    let b = py_http_bundle();
    let r = assert_sigterm_drains(&b);
    assert_eq!(r.header("connection"), Some("close"));

    // Idle: at once. (It says it listens first: a SIGTERM before that line would end it
    // before it printed anything.)
    let mut run = Running::start(&b, &[]);
    run.wait_stdout("listening");
    run.sigterm();
    let st = run.wait_exit(EXIT_TIMEOUT);
    assert!(st.success(), "{st}");
}

#[tokio::test]
async fn python3_http_skips_site_startup_but_keeps_host_packages() {
    let expected = host_site_packages();
    let handler = r#"import sys


def handle(event, context):
    return {"statusCode": 200, "body": "%d|%s|%s" % (sys.flags.no_site, callable(exit), "\n".join(sys.path))}
"#;
    let b = Bundle::new("python3-http", &[("handler.py", handler)]);
    let run = Running::start(&b, &[]);
    let (st, _, text) = get_text(&client(), &run.url("/")).await;
    assert_eq!(st, 200, "{text}");
    let mut parts = text.splitn(3, '|');
    assert_eq!(parts.next(), Some("1"), "{text}");
    assert_eq!(parts.next(), Some("True"), "{text}");
    let path: Vec<&str> = parts.next().unwrap().lines().collect();
    for d in &expected {
        assert!(path.contains(&d.as_str()), "{d} missing from {path:?}");
    }
}

// --- python3 (classic, fork) --------------------------------------------------------------

/// The site-packages directories a plain `python3` (with `site`) has on `sys.path`.
fn host_site_packages() -> Vec<String> {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, site; print('\\n'.join(d for d in site.getsitepackages() if d in sys.path))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Both python templates run without `site`'s start-up (`python3 -S`: no host `.pth` file
/// runs on each cold start), yet a handler still imports from the host's site-packages and
/// has exit()/quit(), as under a plain `python3`.
#[test]
fn python_templates_skip_site_startup_but_keep_host_packages() {
    let expected = host_site_packages();
    assert!(
        !expected.is_empty(),
        "this python3 has no site-packages on sys.path"
    );
    for lang in ["python3", "python3-http"] {
        let t = template(lang);
        assert!(
            t.spec.fprocess.split(' ').any(|a| a == "-S"),
            "{lang}: {}",
            t.spec.fprocess
        );
    }
    let handler = r#"import sys


def handle(req):
    return "%d|%s|%s" % (sys.flags.no_site, callable(exit), "\n".join(sys.path))
"#;
    let b = Bundle::new("python3", &[("handler.py", handler)]);
    let out = run_fork(&b, b"", &[]);
    assert!(out.status.success(), "{}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.trim_end().splitn(3, '|');
    assert_eq!(parts.next(), Some("1"), "{text}");
    assert_eq!(parts.next(), Some("True"), "{text}");
    let path: Vec<&str> = parts.next().unwrap().lines().collect();
    for d in &expected {
        assert!(path.contains(&d.as_str()), "{d} missing from {path:?}");
    }
}

#[test]
fn python3_classic_stdin_to_stdout() {
    // The skeleton echoes its input.
    let b = Bundle::new("python3", &[]);
    let out = run_fork(&b, b"hello there", &[("Http_Method", "POST")]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"hello there\n");

    // Http_* metadata through os.environ; None prints nothing; deps/ and siblings import.
    let handler = r#"import os
import helper
import fjorddep


def handle(req):
    if req == "none":
        return None
    return "%s %s %s|%s|%s|%s" % (
        os.environ.get("Http_Method"),
        os.environ.get("Http_Path"),
        os.getenv("Http_Query"),
        req,
        helper.VALUE,
        fjorddep.VALUE,
    )
"#;
    let b = Bundle::new(
        "python3",
        &[("handler.py", handler), ("helper.py", "VALUE = 'h'\n")],
    );
    write_file(
        &b.root().join("deps/fjorddep/__init__.py"),
        b"VALUE = 'd'\n",
    );
    b.compile_python();
    let env = [
        ("Http_Method", "PUT"),
        ("Http_Path", "/p"),
        ("Http_Query", "a=1"),
    ];
    let out = run_fork(&b, "multi\nline ünïcode".as_bytes(), &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "PUT /p a=1|multi\nline ünïcode|h|d\n"
    );
    let out = run_fork(&b, b"none", &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"");

    // A handler error: non-zero exit (fjord turns it into a 500), traceback on stderr.
    let b = Bundle::new(
        "python3",
        &[(
            "handler.py",
            "def handle(req):\n    raise RuntimeError('nope')\n",
        )],
    );
    let out = run_fork(&b, b"x", &[]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("RuntimeError: nope"), "{}", out.stderr);
}

// --- bash (fork) -----------------------------------------------------------------------

#[test]
fn bash_stdin_to_stdout() {
    let b = Bundle::new("bash", &[]);
    let out = run_fork(&b, b"fjord", &[("Http_Method", "POST")]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"Hello, fjord\n");
    let out = run_fork(&b, b"", &[("Http_Method", "GET")]);
    assert_eq!(out.stdout, b"Hello, world\n");

    let b = Bundle::new(
        "bash",
        &[(
            "handler.sh",
            "#!/usr/bin/env bash\nbody=$(cat)\necho \"$Http_Method $Http_Path: ${#body} bytes\"\n",
        )],
    );
    let big = vec![b'z'; 300_000];
    let out = run_fork(&b, &big, &[("Http_Method", "POST"), ("Http_Path", "/x")]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"POST /x: 300000 bytes\n");
}

// --- node --------------------------------------------------------------------------------

const NODE_HANDLER: &str = r#"'use strict'

const dep = require('fjord-dep')

module.exports = async (event, context) => {
  switch (event.path) {
    case '/obj':
      return { a: 1, list: [1, 2] }
    case '/array':
      return [1, 'two']
    case '/chain':
      return context.status(201).headers({ 'X-Test': 'yes', 'Content-Type': 'text/plain' }).succeed('x')
    case '/throw':
      throw new Error('boom')
    case '/throw400':
      context.status(400)
      throw new Error('bad input')
    case '/fail':
      return context.fail('went wrong')
    case '/reject':
      return Promise.reject(new Error('rejected'))
    case '/string':
      return 'plain string'
    case '/undef':
      return
    case '/later':
      setTimeout(() => context.succeed({ later: true }), 20)
      return new Promise((resolve) => setTimeout(resolve, 50))
    case '/echo':
      return {
        isBuffer: Buffer.isBuffer(event.body),
        length: Buffer.isBuffer(event.body) ? event.body.length : undefined,
        type: typeof event.body,
        body: Buffer.isBuffer(event.body) ? null : event.body,
      }
    case '/info':
      return {
        method: event.method,
        path: event.path,
        query: event.query,
        ct: event.headers['content-type'],
        custom: event.headers['x-custom'],
      }
    case '/dep':
      return dep()
    case '/slow':
      console.error('slow started')
      await new Promise((resolve) => setTimeout(resolve, 1000))
      return 'slow done'
  }
  return context.status(404).succeed('not found: ' + event.path)
}
"#;

fn node_bundle() -> Bundle {
    let b = Bundle::new("node", &[("handler.js", NODE_HANDLER)]);
    // What `npm install` leaves in function/node_modules.
    write_file(
        &b.root().join("function/node_modules/fjord-dep/index.js"),
        b"module.exports = () => 'from node_modules'\n",
    );
    b
}

#[tokio::test]
async fn node_skeleton_answers_like_upstream() {
    let b = Bundle::new("node", &[]);
    let run = Running::start(&b, &[]);
    let c = client();
    let r = c.get(run.url("/")).send().await.unwrap();
    eprintln!(
        "node skeleton: listening {:?} after start, first response {:?} after start",
        run.ready_after,
        run.started.elapsed()
    );
    assert_eq!(r.status(), 200);
    assert!(
        header(r.headers(), "content-type").starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "done"}));
}

#[tokio::test]
async fn node_results_status_and_errors() {
    let b = node_bundle();
    let run = Running::start(&b, &[]);
    let c = client();

    let r = c.get(run.url("/obj")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "content-type"),
        "application/json; charset=utf-8"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"a": 1, "list": [1, 2]})
    );
    let r = c.get(run.url("/array")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([1, "two"]));

    let r = c.get(run.url("/chain")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "x-test"), "yes");
    assert_eq!(
        header(r.headers(), "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(r.text().await.unwrap(), "x");

    // A thrown error keeps the current status: 200 unless the handler set one.
    let (st, _, body) = get_text(&c, &run.url("/throw")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "Error: boom"));
    let (st, _, body) = get_text(&c, &run.url("/throw400")).await;
    assert_eq!((st.as_u16(), body.as_str()), (400, "Error: bad input"));
    let (st, _, body) = get_text(&c, &run.url("/reject")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "Error: rejected"));
    // fail() bumps 200 to 500.
    let (st, _, body) = get_text(&c, &run.url("/fail")).await;
    assert_eq!((st.as_u16(), body.as_str()), (500, "went wrong"));
    run.wait_stderr("boom");

    let (st, h, body) = get_text(&c, &run.url("/string")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "plain string"));
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    let (st, _, body) = get_text(&c, &run.url("/undef")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, ""));
    // succeed() from a timer before the handler's promise resolves: that answer counts.
    let r = c.get(run.url("/later")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"later": true}));

    let (st, _, body) = get_text(&c, &run.url("/nowhere")).await;
    assert_eq!((st.as_u16(), body.as_str()), (404, "not found: /nowhere"));
    let (_, _, body) = get_text(&c, &run.url("/dep")).await;
    assert_eq!(body, "from node_modules");
}

#[tokio::test]
async fn node_event_body_query_and_path() {
    let b = node_bundle();
    let run = Running::start(&b, &[]);
    let c = client();
    let echo = |ct: Option<&str>, body: &'static str| {
        let mut req = c.post(run.url("/echo")).body(body);
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };

    let v = echo(Some("application/json"), r#"{"k":"v","n":[1,2]}"#).await;
    assert_eq!(v["type"], "object");
    assert_eq!(v["body"], json!({"k": "v", "n": [1, 2]}));
    let v = echo(Some("text/plain"), "hello").await;
    assert_eq!(
        (v["type"].as_str(), &v["body"]),
        (Some("string"), &json!("hello"))
    );
    let v = echo(None, "no type").await;
    assert_eq!(
        (v["type"].as_str(), &v["body"]),
        (Some("string"), &json!("no type"))
    );
    let v = echo(
        Some("application/x-www-form-urlencoded"),
        "a=1&b=x+y%21&a=2&c[d]=e&arr[]=p&arr[]=q",
    )
    .await;
    assert_eq!(
        v["body"],
        json!({"a": ["1", "2"], "b": "x y!", "c": {"d": "e"}, "arr": ["p", "q"]})
    );
    let v = echo(Some("application/octet-stream"), "bin").await;
    assert_eq!(
        (v["isBuffer"].as_bool(), v["length"].as_u64()),
        (Some(true), Some(3))
    );

    // Invalid JSON -> 400; no body at all -> {} (as upstream's body-parser).
    let r = c
        .post(run.url("/echo"))
        .header("Content-Type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = c
        .get(run.url("/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), &v["body"]),
        (Some("object"), &json!({}))
    );

    let r = c
        .put(run.url("/info?x=1&x=2&y=z%20z&o[k]=v"))
        .header("X-Custom", "hdr")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({
            "method": "PUT",
            "path": "/info",
            "query": {"x": ["1", "2"], "y": "z z", "o": {"k": "v"}},
            "ct": "text/plain",
            "custom": "hdr",
        })
    );

    // JSON over the default limit (100kb) -> 413.
    let big = format!("{{\"k\":\"{}\"}}", "x".repeat(200 * 1024));
    let r = c
        .post(run.url("/echo"))
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Keep-alive and HEAD on one connection.
    let mut raw = run.raw();
    raw.send(b"GET /obj HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).status, 200);
    raw.send(b"HEAD /string HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = raw.response(true);
    assert_eq!((h.status, h.header("content-length")), (200, Some("12")));
    raw.send(b"GET /string HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).body, b"plain string");
}

#[tokio::test]
async fn node_raw_body_and_limits() {
    let b = node_bundle();
    let run = Running::start(&b, &[("RAW_BODY", "true"), ("MAX_RAW_SIZE", "1kb")]);
    let c = client();
    for ct in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ] {
        let r = c
            .post(run.url("/echo"))
            .header("Content-Type", ct)
            .body(r#"{"k":1}"#)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["isBuffer"].as_bool(), v["length"].as_u64()),
            (Some(true), Some(7)),
            "{ct}"
        );
    }
    let r = c
        .post(run.url("/echo"))
        .body(vec![b'a'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Chunked over the limit too.
    let (body, _) = chunked(vec![vec![b'a'; 600], vec![b'b'; 600]]);
    let r = c.post(run.url("/echo")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 413);
}

#[test]
fn node_sigterm_drains_then_exits() {
    assert_sigterm_drains(&node_bundle());
}

// --- rust --------------------------------------------------------------------------------

/// The test's handler: the skeleton's own code (types, helpers, greeting) plus routes.
fn rust_handler_source() -> String {
    let skeleton = template("rust")
        .files()
        .into_iter()
        .find(|(p, _)| p == Path::new("function/src/lib.rs"))
        .map(|(_, bytes)| String::from_utf8(bytes).unwrap())
        .expect("the rust skeleton's function/src/lib.rs");
    let skeleton = skeleton.replace("pub fn handle(req: Request)", "pub fn greet(req: Request)");
    assert!(skeleton.contains("pub fn greet(req: Request)"));
    let skeleton = skeleton.replace("let res = handle(req);", "let res = greet(req);");
    format!(
        "{skeleton}\n{}",
        r#"
pub fn handle(req: Request) -> Response {
    match req.path.as_str() {
        "/echo" => Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: req.body,
        },
        "/status" => Response::new(201, "created")
            .with_header("X-Test", "1")
            .with_header("Set-Cookie", "a=1")
            .with_header("Set-Cookie", "b=2"),
        "/info" => Response::new(
            200,
            format!(
                "{} {} {} {}",
                req.method,
                req.path,
                req.query,
                req.header("X-CUSTOM").unwrap_or("-")
            ),
        ),
        "/panic" => panic!("handler panicked on purpose"),
        "/bad-header" => Response::new(200, "x").with_header("X-Bad", "a\r\nInjected: 1"),
        "/slow" => {
            eprintln!("slow started");
            std::thread::sleep(std::time::Duration::from_millis(1000));
            Response::new(200, "slow done")
        }
        _ => greet(req),
    }
}
"#
    )
}

/// Builds the rust template with a handler (cargo, offline, target dir kept under
/// /var/tmp/fjord-target-tmpl so reruns are quick) and returns a bundle holding only `main`.
/// Built once per test process.
fn rust_bundle() -> Bundle {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    let binary = BINARY.get_or_init(build_rust_template);
    // The bundle: only the binary, at the root.
    let spec = template("rust").spec;
    assert_eq!(spec.fprocess, "./main");
    let tmp = tempfile::Builder::new()
        .prefix("fjord-tmpl-rust-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // A hard link, not a copy: a copy's write descriptor, inherited by a child another test
    // forks meanwhile, would make exec fail with ETXTBSY.
    if fs::hard_link(binary, tmp.path().join("main")).is_err() {
        fs::copy(binary, tmp.path().join("main")).unwrap();
    }
    Bundle { tmp, spec }
}

fn build_rust_template() -> PathBuf {
    let cache = Path::new("/var/tmp/fjord-target-tmpl/templates-contract");
    let src = cache.join("rust-workspace");
    let _ = fs::remove_dir_all(&src);
    // Laid out as `fjord build` does before it runs cargo.
    let t = template("rust");
    let handler = cache.join("rust-handler");
    let _ = fs::remove_dir_all(&handler);
    handler_dir(&t, &[("src/lib.rs", &rust_handler_source())], &handler);
    fs::create_dir_all(&src).unwrap();
    builder::assemble(&t, &handler, &src).unwrap();
    let target = cache.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--offline",
            "--manifest-path",
        ])
        .arg(src.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cargo");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo build of the rust template took over 300 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    wait_collected(&out, &err);
    assert!(
        st.success(),
        "cargo build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.lock().unwrap()),
        String::from_utf8_lossy(&err.lock().unwrap())
    );
    target.join("release/main")
}

#[tokio::test]
async fn rust_template_builds_and_serves() {
    let b = rust_bundle();
    let run = Running::start(&b, &[]);
    let c = client();

    // The skeleton's greeting.
    let (st, h, body) = get_text(&c, &run.url("/")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "Hello, world!"));
    assert_eq!(header(&h, "content-type"), "text/plain; charset=utf-8");
    let r = c.post(run.url("/")).body("fjord").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello, fjord!");
    // `echo Ada | fjord invoke` sends a trailing newline: the skeleton trims it.
    let r = c.post(run.url("/")).body("Ada\n").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello, Ada!");

    // Echo of a 1 MB body, and a chunked one.
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    assert_echoed(&c, &run, big.clone().into(), &big).await;
    let (body, expected) = chunked(vec![b"ab".to_vec(), vec![b'c'; 70_000], b"d".to_vec()]);
    assert_echoed(&c, &run, body, &expected).await;

    // Status and headers.
    let r = c.get(run.url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "x-test"), "1");
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(r.text().await.unwrap(), "created");

    // The request as the handler sees it.
    let r = c
        .delete(run.url("/info?a=1&b=x%20y"))
        .header("X-Custom", "c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "DELETE /info a=1&b=x%20y c");

    // A panic -> 500, the server lives on; an invalid header -> 500, no injection.
    let (st, _, _) = get_text(&c, &run.url("/panic")).await;
    assert_eq!(st, 500);
    // stderr is read by another thread: wait for it rather than race it.
    run.wait_stderr("handler panicked on purpose");
    let r = c.get(run.url("/bad-header")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("injected").is_none());
    let (st, _, _) = get_text(&c, &run.url("/")).await;
    assert_eq!(st, 200);

    // Keep-alive, HEAD, 100-continue on one connection.
    let mut raw = run.raw();
    raw.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).status, 201);
    raw.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = raw.response(true);
    assert_eq!((h.status, h.header("content-length")), (200, Some("13")));
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(raw.response(true).status, 100);
    raw.send(b"ok");
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(raw.response(false).status, 200);
    assert!(raw.closed());
}

#[test]
fn rust_sigterm_drains_then_exits() {
    assert_sigterm_drains(&rust_bundle());
}

// --- ruby (ruby-http contract) ------------------------------------------------------------

const RUBY_HANDLER: &str = r##"require 'json'
require 'helper' # a sibling of handler.rb (function/ is on the load path)

class Handler
  def run(body, headers)
    case headers['PATH_INFO']
    when '/echo'
      [body.read, { 'Content-Type' => 'application/octet-stream' }]
    when '/json'
      [JSON.generate({ a: 1 }), { 'content-type': 'application/json', 'X-Test': '1' }, 201]
    when '/info'
      info = {
        method: headers['REQUEST_METHOD'], path: headers['PATH_INFO'],
        query: headers['QUERY_STRING'], ct: headers['CONTENT_TYPE'],
        custom: headers['HTTP_X_CUSTOM'], repeated: headers['HTTP_X_REP'],
        missing: headers['HTTP_X_NOPE'], io: body.respond_to?(:read),
        as_string: "#{body}", parsed: JSON.parse(body)['k'], helper: Helper::VALUE
      }
      [JSON.generate(info), { 'Content-Type' => 'application/json' }]
    when '/html' then '<p>hi</p>'
    when '/none' then [nil, nil, 200]
    when '/array' then [['a', 1, 'b'], { 'Content-Type' => 'text/plain' }, '202']
    when '/cookies' then ['x', { 'Set-Cookie' => ['a=1', 'b=2'] }, 202]
    when '/boom' then raise ArgumentError, 'kaboom'
    when '/bad-header' then ['x', { 'X-A' => "a\r\nInjected: 1" }]
    when '/slow'
      $stderr.puts 'slow started'
      sleep 1
      'slow done'
    else [body.read, {}]
    end
  end
end
"##;

fn ruby_bundle() -> Bundle {
    Bundle::new(
        "ruby",
        &[
            ("handler.rb", RUBY_HANDLER),
            ("helper.rb", "module Helper\n  VALUE = 'sibling'\nend\n"),
        ],
    )
}

#[tokio::test]
async fn ruby_loads_standalone_bundled_gems() {
    // What `bundle install --standalone` leaves in vendor/bundle: a setup.rb that puts each
    // gem's lib folder on the load path (no RubyGems at run time).
    let setup = "path = File.expand_path('../ruby/3.1.0/gems/fakegem-1.0/lib', __dir__)\n\
                 $LOAD_PATH.unshift(path)\n";
    let b = Bundle::new(
        "ruby",
        &[
            ("vendor/bundle/bundler/setup.rb", setup),
            (
                "vendor/bundle/ruby/3.1.0/gems/fakegem-1.0/lib/fakegem.rb",
                "module Fakegem\n  VALUE = 'from a vendored gem'\nend\n",
            ),
            (
                "handler.rb",
                "require 'fakegem'\nclass Handler\n  def run(body, headers)\n    Fakegem::VALUE\n  end\nend\n",
            ),
        ],
    );
    let run = Running::start(&b, &[]);
    let (st, _, body) = get_text(&client(), &run.url("/")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "from a vendored gem"));
}

#[tokio::test]
async fn ruby_skeleton_answers_like_upstream() {
    let b = Bundle::new("ruby", &[]);
    let run = Running::start(&b, &[]);
    let c = client();
    for path in ["/", "/any/path?x=1"] {
        let (st, h, body) = get_text(&c, &run.url(path)).await;
        assert_eq!(
            (st.as_u16(), body.as_str()),
            (200, "Hello world from the Ruby template")
        );
        assert_eq!(header(&h, "content-type"), "text/plain");
    }
    let r = c.post(run.url("/")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // OPTIONS defaults to 204, as upstream's `options '/*'` route.
    let r = c
        .request(reqwest::Method::OPTIONS, run.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("content-type").is_none());
}

#[tokio::test]
async fn ruby_request_and_response_contract() {
    let b = ruby_bundle();
    let run = Running::start(&b, &[]);
    let c = client();

    // The Rack environment and the body, as an IO and as a String.
    let r = c
        .put(run.url("/info?a=1&b=x%20y"))
        .header("Content-Type", "application/json")
        .header("X-Custom", "c")
        .header("X-Rep", "1")
        .header("X-Rep", "2")
        .body(r#"{"k":"ünï"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({
            "method": "PUT", "path": "/info", "query": "a=1&b=x%20y",
            "ct": "application/json", "custom": "c", "repeated": "1, 2", "missing": null,
            "io": true, "as_string": r#"{"k":"ünï"}"#, "parsed": "ünï", "helper": "sibling",
        })
    );

    // [body, headers, status]: symbol keys, a status as a string, Array bodies and values.
    let r = c.get(run.url("/json")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "content-type"), "application/json");
    assert_eq!(header(r.headers(), "x-test"), "1");
    assert_eq!(r.text().await.unwrap(), r#"{"a":1}"#);
    let r = c.get(run.url("/array")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.text().await.unwrap(), "a1b");
    let r = c.get(run.url("/cookies")).send().await.unwrap();
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // A lone body: Sinatra's default type; nil: an empty 200.
    let (st, h, body) = get_text(&c, &run.url("/html")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "<p>hi</p>"));
    assert_eq!(header(&h, "content-type"), "text/html;charset=utf-8");
    let (st, _, body) = get_text(&c, &run.url("/none")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, ""));

    // An exception -> 500 without details, the error on stderr; the server lives on.
    let (st, _, body) = get_text(&c, &run.url("/boom")).await;
    assert_eq!(st, 500);
    assert!(body.contains("Internal Server Error"), "{body}");
    assert!(!body.contains("kaboom"), "no details to the caller: {body}");
    let err = run.wait_stderr("kaboom");
    assert!(
        err.contains("ArgumentError") && err.contains("handler.rb"),
        "{err}"
    );
    // A header value with CR/LF -> 500, nothing injected.
    let r = c.get(run.url("/bad-header")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("injected").is_none());
    let (st, _, _) = get_text(&c, &run.url("/html")).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn ruby_bodies_large_and_chunked() {
    let b = ruby_bundle();
    assert_bodies_large_and_chunked(&Running::start(&b, &[])).await;
}

#[test]
fn ruby_http_protocol() {
    let b = ruby_bundle();
    let run = Running::start(&b, &[]);
    assert_http_protocol(&run);
}

#[test]
fn ruby_sigterm_drains_then_exits() {
    let b = ruby_bundle();
    let r = assert_sigterm_drains(&b);
    assert_eq!(r.header("connection"), Some("close"));
    let mut run = Running::start(&b, &[]);
    run.wait_stdout("listening");
    run.sigterm();
    let st = run.wait_exit(EXIT_TIMEOUT);
    assert!(st.success(), "{st}");
}

// --- php (php8 contract, fork) --------------------------------------------------------------

#[test]
fn php_stdin_to_stdout() {
    // The skeleton echoes its input.
    let b = Bundle::new("php", &[]);
    let out = run_fork(&b, b"hello there", &[("Http_Method", "POST")]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"hello there");

    // Http_* metadata through getenv(); other App\ classes load from src/ (PSR-4).
    let handler = r#"<?php

declare(strict_types=1);

namespace App;

use App\Util\Greeter;

class Handler
{
    public function handle(string $data): string
    {
        return sprintf(
            "%s %s %s|%s|%s",
            getenv('Http_Method'),
            getenv('Http_Path'),
            getenv('Http_Query'),
            (new Greeter())->greet($data),
            strlen($data)
        );
    }
}
"#;
    let greeter = "<?php\nnamespace App\\Util;\nclass Greeter { public function greet(string $n): string { return \"hi $n\"; } }\n";
    let b = Bundle::new(
        "php",
        &[
            ("src/Handler.php", handler),
            ("src/Util/Greeter.php", greeter),
        ],
    );
    let env = [
        ("Http_Method", "PUT"),
        ("Http_Path", "/p"),
        ("Http_Query", "a=1"),
    ];
    let out = run_fork(&b, "multi\nline ünï".as_bytes(), &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "PUT /p a=1|hi multi\nline ünï|16"
    );

    // A vendor/autoload.php (`composer install`) is loaded when present.
    let b = Bundle::new(
        "php",
        &[
            (
                "vendor/autoload.php",
                "<?php\nspl_autoload_register(function ($c) { if ($c === 'Dep\\\\Lib') { eval('namespace Dep; class Lib { const V = \"vendored\"; }'); } });\n",
            ),
            (
                "src/Handler.php",
                "<?php\nnamespace App;\nclass Handler { public function handle($d) { return \\Dep\\Lib::V; } }\n",
            ),
        ],
    );
    let out = run_fork(&b, b"", &[]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"vendored");

    // An uncaught exception: non-zero exit (fjord turns it into a 500), the message on stderr
    // and nothing of it in the response body.
    let b = Bundle::new(
        "php",
        &[(
            "src/Handler.php",
            "<?php\nnamespace App;\nclass Handler { public function handle($d) { throw new \\RuntimeException('nope'); } }\n",
        )],
    );
    let out = run_fork(&b, b"x", &[]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("RuntimeException: nope"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// --- go and java (compiled: built by `fjord build` itself) ---------------------------------

/// Builds `handler` (files over the `lang` skeleton) with the real `fjord build` in a stack
/// under /var/tmp and returns its bundle (the files of `build/fn/bundle`, hard-linked: the
/// jars keep the mtime the java build gave them).
fn built_bundle(lang: &str, handler: &[(&str, &[u8])]) -> Bundle {
    let stack = tempfile::Builder::new()
        .prefix(&format!("fjord-tmpl-build-{lang}-"))
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = template(lang);
    handler_dir(&t, &[], &stack.path().join("fn"));
    for (rel, content) in handler {
        write_file(&stack.path().join("fn").join(rel), content);
    }
    write_file(
        &stack.path().join("stack.yml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  fn:\n    lang: {lang}\n    handler: ./fn\n    image: fn:latest\n"
        )
        .as_bytes(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["build", "--no-cache"])
        .current_dir(stack.path())
        .env("HOME", stack.path())
        .output()
        .expect("run fjord build");
    assert!(
        out.status.success(),
        "fjord build ({lang}) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::Builder::new()
        .prefix(&format!("fjord-tmpl-{lang}-"))
        .tempdir_in("/var/tmp")
        .unwrap();
    link_tree(&stack.path().join("build/fn/bundle"), tmp.path());
    Bundle { tmp, spec: t.spec }
}

fn link_tree(src: &Path, dest: &Path) {
    for e in fs::read_dir(src).unwrap().flatten() {
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            fs::create_dir_all(&to).unwrap();
            link_tree(&e.path(), &to);
        } else {
            fs::hard_link(e.path(), &to).unwrap();
        }
    }
}

/// A golang-middleware handler with the routes the shared protocol checks use, and a
/// dependency vendored as `go mod vendor` leaves it (vendor/modules.txt).
const GO_MIDDLEWARE_HANDLER: &str = r#"package function

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"example.com/greeting"
)

func Handle(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/echo":
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
	case "/json":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		w.Write([]byte(`{"ok":true}`))
	case "/html":
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<p>hi</p>"))
	case "/none":
	case "/slow":
		fmt.Fprintln(os.Stderr, "slow started")
		time.Sleep(time.Second)
		w.Write([]byte("slow done"))
	case "/panic":
		panic("handler panicked on purpose")
	case "/info":
		fmt.Fprintf(w, "%s %s %s %s", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("X-Custom"))
	default:
		b, _ := io.ReadAll(r.Body)
		w.Write([]byte(greeting.Hello(string(b))))
	}
}
"#;

fn go_middleware_bundle() -> Bundle {
    built_bundle(
        "golang-middleware",
        &[
            ("handler.go", GO_MIDDLEWARE_HANDLER.as_bytes()),
            (
                "go.mod",
                b"module handler/function\n\ngo 1.19\n\nrequire example.com/greeting v1.2.3\n",
            ),
            (
                "vendor/modules.txt",
                b"# example.com/greeting v1.2.3\n## explicit; go 1.19\nexample.com/greeting\n",
            ),
            (
                "vendor/example.com/greeting/greeting.go",
                b"package greeting\n\nfunc Hello(name string) string { return \"Hello, \" + name + \" (vendored)\" }\n",
            ),
        ],
    )
}

#[tokio::test]
async fn golang_middleware_builds_vendored_and_serves() {
    let b = go_middleware_bundle();
    // Only the static binary (and fjord's manifest) is in the bundle.
    let mut files: Vec<String> = fs::read_dir(b.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["handler", "manifest.json"]);
    let run = Running::start(&b, &[]);
    let c = client();
    // The vendored module answers.
    let r = c.post(run.url("/")).body("fjord").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Hello, fjord (vendored)");
    let r = c
        .delete(run.url("/info?a=1&b=x%20y"))
        .header("X-Custom", "c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "DELETE /info a=1&b=x%20y c");
    // A panic -> 500, the server lives on.
    let (st, _, _) = get_text(&c, &run.url("/panic")).await;
    assert_eq!(st, 500);
    run.wait_stderr("handler panicked on purpose");
    let (st, _, _) = get_text(&c, &run.url("/html")).await;
    assert_eq!(st, 200);
    assert_bodies_large_and_chunked(&run).await;
    assert_http_protocol(&run);
    drop(run);
    assert_sigterm_drains(&b);
}

#[tokio::test]
async fn golang_middleware_skeleton_answers_like_upstream() {
    let b = built_bundle("golang-middleware", &[]);
    let run = Running::start(&b, &[]);
    let r = client()
        .post(run.url("/"))
        .body("fjord")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Body: fjord");
}

const GO_HTTP_HANDLER: &str = r#"package function

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	handler "github.com/openfaas/templates-sdk/go-http"
)

func Handle(req handler.Request) (handler.Response, error) {
	switch {
	case req.Method == "PUT":
		h := http.Header{}
		h.Set("X-Test", "1")
		h.Add("Set-Cookie", "a=1")
		h.Add("Set-Cookie", "b=2")
		return handler.Response{Body: []byte("created"), StatusCode: 201, Header: h}, nil
	case req.QueryString == "fail":
		return handler.Response{}, errors.New("it went wrong")
	case req.QueryString == "slow":
		fmt.Fprintln(os.Stderr, "slow started")
		time.Sleep(time.Second)
		return handler.Response{Body: []byte("slow done")}, nil
	case req.QueryString == "echo":
		return handler.Response{Body: req.Body, Header: http.Header{"Content-Type": {"application/octet-stream"}}}, nil
	}
	if req.Context().Err() != nil {
		return handler.Response{}, req.Context().Err()
	}
	return handler.Response{
		Body: []byte(fmt.Sprintf("%s %s %s %s [%s]", req.Method, req.QueryString, req.Host, req.Header.Get("X-Custom"), req.Body)),
	}, nil
}
"#;

#[tokio::test]
async fn golang_http_request_and_response_contract() {
    let b = built_bundle("golang-http", &[("handler.go", GO_HTTP_HANDLER.as_bytes())]);
    let run = Running::start(&b, &[]);
    let c = client();
    let r = c
        .post(run.url("/any/path?a=1&b=x%20y"))
        .header("X-Custom", "c")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("POST a=1&b=x%20y 127.0.0.1:{} c [hi]", run.port)
    );
    let r = c.put(run.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "x-test"), "1");
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(r.text().await.unwrap(), "created");
    // An error: 500 with its text, as upstream.
    let (st, _, body) = get_text(&c, &run.url("/?fail")).await;
    assert_eq!((st.as_u16(), body.trim_end()), (500, "it went wrong"));
    // Bodies: 1 MB and chunked.
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let r = c
        .post(run.url("/?echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());
    let (body, expected) = chunked(vec![b"ab".to_vec(), vec![b'c'; 70_000], b"d".to_vec()]);
    let r = c.post(run.url("/?echo")).body(body).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected.as_slice());
    drop(run);

    // SIGTERM: the request in progress is answered, then exit 0.
    let mut run = Running::start(&b, &[]);
    let mut raw = run.raw();
    raw.send(b"GET /?slow HTTP/1.1\r\nHost: x\r\n\r\n");
    run.wait_stderr("slow started");
    run.sigterm();
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow done"[..]));
    let st = run.wait_exit(EXIT_TIMEOUT);
    assert!(st.success(), "{st}");

    // The skeleton, as upstream's.
    let b = built_bundle("golang-http", &[]);
    let run = Running::start(&b, &[]);
    let r = c.post(run.url("/")).body("fjord").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Body: fjord");
}

/// A java11 handler using a class from a jar in libs/ (made here with javac and jar).
const JAVA_HANDLER: &str = r#"package com.openfaas.function;

import com.openfaas.model.IRequest;
import com.openfaas.model.IResponse;
import com.openfaas.model.Response;
import greet.Greeter;

public class Handler extends com.openfaas.model.AbstractHandler {
    public IResponse Handle(IRequest req) {
        Response res = new Response();
        switch (req.getPathRaw()) {
            case "/echo":
                res.setBodyBytes(req.getBodyBytes());
                res.setContentType("application/octet-stream");
                break;
            case "/json":
                res.setStatusCode(201);
                res.setContentType("application/json");
                res.setBody("{\"ok\":true}");
                break;
            case "/html":
                res.setContentType("text/html");
                res.setBody("<p>hi</p>");
                break;
            case "/none":
                break;
            case "/slow":
                System.err.println("slow started");
                try { Thread.sleep(1000); } catch (InterruptedException e) { }
                res.setBody("slow done");
                break;
            case "/throw":
                throw new IllegalStateException("handler threw on purpose");
            default:
                res.setHeader("X-Test", "1");
                res.setBody(Greeter.hello(req.getBody()) + " " + req.getPathRaw() + " "
                    + req.getQueryRaw() + " " + req.getQuery().get("b") + " "
                    + req.getHeader("X-Custom") + " " + req.getPath().get("a"));
        }
        return res;
    }
}
"#;

/// `libs/greet.jar`, compiled here.
fn greet_jar() -> Vec<u8> {
    let tmp = TempDir::new().unwrap();
    write_file(
        &tmp.path().join("src/greet/Greeter.java"),
        b"package greet;\npublic class Greeter { public static String hello(String n) { return \"Hello, \" + n + \" (from libs)\"; } }\n",
    );
    let st = Command::new("javac")
        .arg("-d")
        .arg(tmp.path().join("classes"))
        .arg(tmp.path().join("src/greet/Greeter.java"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("jar")
        .arg("--create")
        .arg("--file")
        .arg(tmp.path().join("greet.jar"))
        .arg("-C")
        .arg(tmp.path().join("classes"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    fs::read(tmp.path().join("greet.jar")).unwrap()
}

#[tokio::test]
async fn java_builds_with_libs_and_serves_the_java11_contract() {
    let jar = greet_jar();
    let b = built_bundle(
        "java",
        &[
            (
                "src/main/java/com/openfaas/function/Handler.java",
                JAVA_HANDLER.as_bytes(),
            ),
            ("libs/greet.jar", &jar),
        ],
    );
    // The class data sharing archive was made at build, inside the bundle.
    assert!(b.root().join("app.jsa").is_file());
    assert!(b.root().join("libs/greet.jar").is_file());
    let run = Running::start(&b, &[]);
    let c = client();
    let r = c
        .post(run.url("/a/1/b?a=1&b=x%20y"))
        .header("X-Custom", "c")
        .body("fjord")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "x-test"), "1");
    assert_eq!(
        r.text().await.unwrap(),
        "Hello, fjord (from libs) /a/1/b a=1&b=x%20y x y c 1"
    );
    let (st, h, body) = get_text(&c, &run.url("/json")).await;
    assert_eq!((st.as_u16(), body.as_str()), (201, r#"{"ok":true}"#));
    assert_eq!(header(&h, "content-type"), "application/json");
    // An exception -> 500, the server lives on.
    let (st, _, _) = get_text(&c, &run.url("/throw")).await;
    assert_eq!(st, 500);
    run.wait_stderr("handler threw on purpose");
    let (st, _, body) = get_text(&c, &run.url("/html")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "<p>hi</p>"));
    // Bodies: 1 MB, streamed chunked, chunk extensions; trailers are refused with a 400 (the
    // JDK's server cannot read them) rather than a dropped connection.
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let h = assert_echoed(&c, &run, big.clone().into(), &big).await;
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    let (body, expected) = chunked(vec![b"hello ".to_vec(), vec![b'x'; 100_000]]);
    assert_echoed(&c, &run, body, &expected).await;
    let mut raw = run.raw();
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /none HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
    assert_eq!(raw.response(false).status, 200);
    let mut raw = run.raw();
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(raw.response(false).status, 400);

    // Keep-alive, HEAD and 100-continue on one connection.
    let mut raw = run.raw();
    raw.send(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw.response(false).status, 201);
    raw.send(b"HEAD /html HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = raw.response(true);
    assert_eq!((h.status, h.header("content-length")), (200, Some("9")));
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(raw.response(true).status, 100);
    raw.send(b"ok");
    let r = raw.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    drop(run);
    assert_sigterm_drains(&b);
}

#[tokio::test]
async fn java_skeleton_answers_like_upstream() {
    let b = built_bundle("java", &[]);
    let run = Running::start(&b, &[]);
    let (st, _, body) = get_text(&client(), &run.url("/")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "Hello, world!"));
}

#[tokio::test]
async fn golang_http_with_a_vendor_folder_gets_fjords_sdk_vendored_in() {
    // The handler vendored its own dependency but not the SDK (which cannot be fetched here):
    // the build adds fjord's copy to vendor/ and modules.txt.
    let b = built_bundle(
        "golang-http",
        &[
            (
                "handler.go",
                b"package function\n\nimport (\n\t\"example.com/greeting\"\n\thandler \"github.com/openfaas/templates-sdk/go-http\"\n)\n\nfunc Handle(req handler.Request) (handler.Response, error) {\n\treturn handler.Response{Body: []byte(greeting.Hello(string(req.Body)))}, nil\n}\n",
            ),
            (
                "go.mod",
                b"module handler/function\n\ngo 1.19\n\nrequire example.com/greeting v1.2.3\n",
            ),
            (
                "vendor/modules.txt",
                b"# example.com/greeting v1.2.3\n## explicit; go 1.19\nexample.com/greeting\n",
            ),
            (
                "vendor/example.com/greeting/greeting.go",
                b"package greeting\n\nfunc Hello(n string) string { return \"hi \" + n }\n",
            ),
        ],
    );
    let run = Running::start(&b, &[]);
    let r = client()
        .post(run.url("/"))
        .body("fjord")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hi fjord");
}
