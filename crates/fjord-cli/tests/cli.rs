//! End-to-end tests of the `fjord` command line: every command is run as the real binary
//! (`CARGO_BIN_EXE_fjord`) in a project folder under /var/tmp, against a real `fjord serve`
//! started by the common harness, and checked by what it prints, its exit code and what the
//! deployed functions answer over HTTP.
//!
//! The CLI never sees the developer's own settings: every run clears the variables it reads
//! and sets `FJORD_URL`, `FJORD_CONFIG` (a temp path) and `FJORD_DATA_DIR` explicitly.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{ServeOpts, Server, TestDir, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// Commands that only talk to the gateway.
const QUICK: Duration = Duration::from_secs(60);
/// `fjord up`/`fjord build` of templates without downloads (the rust one compiles).
const BUILD: Duration = Duration::from_secs(600);

/// Variables the CLI reads: always cleared, then set explicitly per run.
const CLI_VARS: [&str; 10] = [
    "FJORD_URL",
    "OPENFAAS_URL",
    "FJORD_PASSWORD",
    "FJORD_USER",
    "FJORD_CONFIG",
    "FJORD_DATA_DIR",
    "OPENFAAS_PREFIX",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "RUST_LOG",
];

/// What one `fjord` run did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, Some(0), "{what} failed:\n{}", self.show());
        self
    }

    fn code(self, code: i32, what: &str) -> Self {
        assert_eq!(self.code, Some(code), "{what}: exit code:\n{}", self.show());
        self
    }
}

/// A project folder (under /var/tmp: functions get a private /tmp) and how the CLI run in it
/// finds its gateway and credentials.
struct Project {
    tmp: TempDir,
    url: String,
    password: Option<String>,
    data_dir: PathBuf,
    config: PathBuf,
}

impl Project {
    fn tempdir() -> TempDir {
        tempfile::Builder::new()
            .prefix("fjord-cli-test-")
            .tempdir_in("/var/tmp")
            .expect("create a temp dir under /var/tmp")
    }

    /// A project for `server`, authenticated with `FJORD_PASSWORD`.
    fn for_server(s: &Server) -> Project {
        let tmp = Self::tempdir();
        let data_dir = tmp.path().join("no-data-dir");
        let config = tmp.path().join("config/fjord.json");
        fs::create_dir_all(tmp.path().join("proj")).unwrap();
        Project {
            url: s.url(""),
            password: s.password.clone(),
            data_dir,
            config,
            tmp,
        }
    }

    /// A project whose gateway is not running (for commands that do not need one).
    fn offline() -> Project {
        let tmp = Self::tempdir();
        fs::create_dir_all(tmp.path().join("proj")).unwrap();
        Project {
            url: "http://127.0.0.1:1".into(),
            password: None,
            data_dir: tmp.path().join("no-data-dir"),
            config: tmp.path().join("config/fjord.json"),
            tmp,
        }
    }

    /// The folder the commands run in.
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("proj")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"));
        cmd.args(args).current_dir(self.dir()).kill_on_drop(true);
        for v in CLI_VARS {
            cmd.env_remove(v);
        }
        cmd.env("FJORD_URL", &self.url)
            .env("FJORD_CONFIG", &self.config)
            .env("FJORD_DATA_DIR", &self.data_dir);
        if let Some(p) = &self.password {
            cmd.env("FJORD_PASSWORD", p);
        }
        cmd
    }

    /// Runs `fjord ARGS` with `stdin` as its standard input, within `timeout`.
    async fn run_with(
        &self,
        args: &[&str],
        stdin: &[u8],
        timeout: Duration,
        tweak: impl FnOnce(&mut tokio::process::Command),
    ) -> Out {
        let mut cmd = self.command(args);
        tweak(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("fjord {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let mut input = child.stdin.take().unwrap();
        let body = stdin.to_vec();
        let writer = tokio::spawn(async move {
            let _ = input.write_all(&body).await;
            let _ = input.shutdown().await;
        });
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within {timeout:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let _ = writer.await;
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, b"", QUICK, |_| {}).await
    }

    async fn run_in(&self, args: &[&str], timeout: Duration) -> Out {
        self.run_with(args, b"", timeout, |_| {}).await
    }

    async fn invoke(&self, name: &str, body: &str) -> Out {
        self.run_with(&["invoke", name], body.as_bytes(), QUICK, |_| {})
            .await
    }
}

/// The value of a `Key:   value` line of `fjord describe`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
}

/// The names in the first column of `fjord list`.
fn listed(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `(line, column)` of the first `FILE:LINE:COLUMN` in `text`.
fn position(text: &str, file: &str) -> Option<(u32, u32)> {
    let mut rest = text;
    while let Some(i) = rest.find(file) {
        rest = &rest[i + file.len()..];
        let mut parts = rest.splitn(3, ':');
        if parts.next() == Some("")
            && let (Some(l), Some(c)) = (parts.next(), parts.next())
        {
            let digits: String = c.chars().take_while(char::is_ascii_digit).collect();
            if let (Ok(l), Ok(c)) = (l.parse(), digits.parse()) {
                return Some((l, c));
            }
        }
    }
    None
}

/// A `fjord serve` whose data dir is under /var/tmp. (The harness's default temp dir may be
/// under /tmp, which replicas see as their own private /tmp: bundles unpacked there cannot run.)
async fn start_server() -> Server {
    let tmp = tempfile::Builder::new()
        .prefix("fjord-cli-serve-")
        .tempdir_in("/var/tmp")
        .expect("create a temp dir under /var/tmp");
    fs::create_dir_all(tmp.path().join("data")).unwrap();
    Server::start_in(std::sync::Arc::new(TestDir { tmp }), ServeOpts::default()).await
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ------------------------------------------------------------------------- 1. templates

/// The skeleton handlers' answers (templates/*/function) to the body "fjord".
const TEMPLATE_CASES: [(&str, &str, &str); 10] = [
    ("python3-http", "t-py-http", "Hello from OpenFaaS!"),
    ("python3", "t-py-classic", "fjord"),
    ("node", "t-node", r#"{"status":"done"}"#),
    ("rust", "t-rust", "Hello, fjord!"),
    ("bash", "t-bash", "Hello, fjord"),
    ("ruby", "t-ruby", "Hello world from the Ruby template"),
    ("php", "t-php", "fjord"),
    ("golang-middleware", "t-go-mw", "Body: fjord"),
    ("golang-http", "t-go-http", "Body: fjord"),
    ("java", "t-java", "Hello, world!"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_from_new_to_a_live_function() {
    let s = start_server().await;
    let p = Project::for_server(&s);
    let cases = TEMPLATE_CASES;
    for (i, (lang, name, _)) in cases.iter().enumerate() {
        let out = if i == 0 {
            p.run(&["new", name, "--lang", lang]).await
        } else {
            p.run(&["new", name, "--lang", lang, "--append", "stack.yml"])
                .await
        }
        .ok(&format!("fjord new {name} --lang {lang}"));
        assert!(
            out.stdout
                .contains(&format!("Function {name} ({lang}) added to stack.yml")),
            "fjord new {name}: {}",
            out.show()
        );
        assert!(
            p.path(name).is_dir(),
            "fjord new {name} created no folder ./{name}"
        );
    }
    let stack = fs::read_to_string(p.path("stack.yml")).unwrap();
    for (lang, name, _) in &cases {
        assert!(
            stack.contains(&format!("  {name}:\n    lang: {lang}\n")),
            "stack.yml lacks {name} ({lang}):\n{stack}"
        );
    }
    assert!(
        stack.contains(&format!("gateway: {}", s.url(""))),
        "stack.yml should point at FJORD_URL:\n{stack}"
    );
    // The skeletons are the templates' function/ folders.
    assert!(p.path("t-py-http/handler.py").is_file());
    assert!(p.path("t-py-classic/handler.py").is_file());
    assert!(p.path("t-node/handler.js").is_file());
    assert!(p.path("t-rust/src/lib.rs").is_file());
    assert!(p.path("t-bash/handler.sh").is_file());
    assert!(p.path("t-ruby/handler.rb").is_file());
    assert!(p.path("t-php/src/Handler.php").is_file());
    assert!(p.path("t-go-mw/handler.go").is_file());
    assert!(p.path("t-go-http/handler.go").is_file());
    assert!(
        p.path("t-java/src/main/java/com/openfaas/function/Handler.java")
            .is_file()
    );

    let up = p
        .run_in(&["up", "--parallel", "2"], BUILD)
        .await
        .ok("fjord up");
    for (_, name, _) in &cases {
        assert!(
            up.stdout
                .contains(&format!("{name}: 1 of 1 replica(s) ready")),
            "fjord up did not report {name} ready:\n{}",
            up.show()
        );
        assert!(
            up.stdout
                .contains(&format!("URL: {}/function/{name}", s.url(""))),
            "fjord up did not print {name}'s URL:\n{}",
            up.show()
        );
    }

    for (lang, name, want) in &cases {
        let out = p
            .invoke(name, "fjord")
            .await
            .ok(&format!("fjord invoke {name}"));
        if want.starts_with('{') {
            let got: Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("{name} ({lang}): not JSON ({e}):\n{}", out.show()));
            assert_eq!(
                got,
                serde_json::from_str::<Value>(want).unwrap(),
                "{name} ({lang})"
            );
        } else {
            assert_eq!(
                out.stdout.trim_end(),
                *want,
                "{name} ({lang}):\n{}",
                out.show()
            );
        }
    }

    let list = p.run(&["list"]).await.ok("fjord list");
    let names = listed(&list.stdout);
    for (_, name, _) in &cases {
        assert!(
            names.iter().any(|n| n == name),
            "fjord list lacks {name}:\n{}",
            list.show()
        );
    }
    // Each was invoked once.
    for line in list.stdout.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols.get(1..),
            Some(&["1", "1"][..]),
            "fjord list: invocations and replicas of {line:?}"
        );
    }

    for (lang, name, _) in &cases {
        let d = p
            .run(&["describe", name])
            .await
            .ok(&format!("fjord describe {name}"));
        assert_eq!(field(&d.stdout, "Name:"), Some(*name), "{}", d.show());
        assert_eq!(field(&d.stdout, "Status:"), Some("Ready"), "{}", d.show());
        assert_eq!(
            field(&d.stdout, "Image:"),
            Some(format!("{name}:latest").as_str()),
            "{}",
            d.show()
        );
        let mode = if ["python3", "bash", "php"].contains(lang) {
            "fork"
        } else {
            "http"
        };
        assert_eq!(field(&d.stdout, "Mode:"), Some(mode), "{}", d.show());
    }
}

#[tokio::test]
async fn new_names_the_users_folder_and_handler_file() {
    let p = Project::offline();
    let out = p
        .run(&["new", "greet", "--lang", "python3-http"])
        .await
        .ok("fjord new greet");
    assert!(
        out.stdout.contains("Folder: greet/ created."),
        "{}",
        out.show()
    );
    assert!(!out.stdout.contains("./"), "no ././greet: {}", out.show());
    assert!(
        out.stdout.contains("greet/handler.py") && !out.stdout.contains("function/handler.py"),
        "the welcome message names the user's handler file: {}",
        out.show()
    );
    // --help names OPENFAAS_PREFIX once (clap adds it).
    let help = p.run(&["new", "--help"]).await.ok("fjord new --help");
    assert_eq!(
        help.stdout.matches("OPENFAAS_PREFIX").count(),
        1,
        "{}",
        help.show()
    );
}

#[tokio::test]
async fn new_refuses_existing_folders_and_unknown_templates() {
    let p = Project::offline();
    // --list: all five templates.
    let out = p.run(&["new", "--list"]).await.ok("fjord new --list");
    let mut langs: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .collect();
    langs.sort();
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
        ],
        "{}",
        out.show()
    );

    // An unknown template: usage error listing the real ones; nothing is created.
    let out = p
        .run(&["new", "fn1", "--lang", "cobol"])
        .await
        .code(2, "fjord new --lang cobol");
    assert!(out.stderr.contains("cobol"), "{}", out.show());
    for lang in [
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
        "rust",
    ] {
        assert!(
            out.stderr.contains(lang),
            "the error should list {lang}:\n{}",
            out.show()
        );
    }
    assert!(
        !p.path("stack.yml").exists(),
        "a failed new wrote stack.yml"
    );
    assert!(!p.path("fn1").exists(), "a failed new created ./fn1");

    // An existing folder is never overwritten.
    p.write("taken/keep.txt", "mine");
    let out = p
        .run(&["new", "taken", "--lang", "bash"])
        .await
        .code(2, "fjord new over an existing folder");
    assert!(
        out.stderr.contains("taken") && out.stderr.contains("already exists"),
        "{}",
        out.show()
    );
    assert_eq!(
        fs::read_to_string(p.path("taken/keep.txt")).unwrap(),
        "mine"
    );
    assert!(
        !p.path("taken/handler.sh").exists(),
        "the skeleton was written into the existing folder"
    );
    assert!(
        !p.path("stack.yml").exists(),
        "a refused new still wrote stack.yml"
    );

    // Without --append, an existing stack file is not overwritten either.
    p.run(&["new", "first", "--lang", "bash"])
        .await
        .ok("fjord new first");
    let before = fs::read_to_string(p.path("stack.yml")).unwrap();
    let out = p
        .run(&["new", "second", "--lang", "bash"])
        .await
        .code(2, "fjord new without --append next to a stack.yml");
    assert!(out.stderr.contains("--append"), "{}", out.show());
    assert_eq!(fs::read_to_string(p.path("stack.yml")).unwrap(), before);
    assert!(!p.path("second").exists());
    // A name already in the stack.
    let out = p
        .run(&[
            "new",
            "first",
            "--lang",
            "bash",
            "--append",
            "stack.yml",
            "--handler",
            "./other",
        ])
        .await
        .code(2, "fjord new of a name the stack has");
    assert!(out.stderr.contains("first"), "{}", out.show());
    assert_eq!(fs::read_to_string(p.path("stack.yml")).unwrap(), before);
}

// ----------------------------------------------------------- 2. OpenFaaS handlers unchanged

/// The python3-http example of the OpenFaaS docs, verbatim.
const PY_DOCS_HELLO: &str = r#"def handle(event, context):
    return {
        "statusCode": 200,
        "body": {"message": "Hello from OpenFaaS!"},
        "headers": {
            "Content-Type": "application/json"
        }
    }
"#;

/// Reads the request the way the OpenFaaS docs show (event.query/headers/method/path).
const PY_DOCS_REQUEST: &str = r#"import json


def handle(event, context):
    if event.method != "GET":
        return {
            "statusCode": 405,
            "body": "Method not allowed",
            "headers": {"Content-Type": "text/plain"}
        }
    name = event.query.get("name", "stranger")
    return {
        "statusCode": 200,
        "body": json.dumps({
            "greeting": "Hello " + name,
            "all_names": event.query.getlist("name"),
            "method": event.method,
            "path": event.path,
            "custom": event.headers.get("X-Custom-Header"),
            "has_custom": "x-custom-header" in event.headers,
        }),
        "headers": {
            "Content-Type": "application/json",
            "X-Served-By": "python3-http"
        }
    }
"#;

/// The node20 template's documented handler, verbatim.
const NODE_DOCS: &str = r#"'use strict'

module.exports = async (event, context) => {
  const result = {
    'body': JSON.stringify(event.body),
    'content-type': event.headers["content-type"]
  }

  return context
    .status(200)
    .succeed(result)
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openfaas_handlers_run_unchanged() {
    let s = start_server().await;
    let p = Project::for_server(&s);
    for (name, lang) in [
        ("docs-hello", "python3-http"),
        ("docs-request", "python3-http"),
        ("docs-node", "node"),
    ] {
        let mut args = vec!["new", name, "--lang", lang];
        if p.path("stack.yml").exists() {
            args.extend(["--append", "stack.yml"]);
        }
        p.run(&args).await.ok(&format!("fjord new {name}"));
    }
    p.write("docs-hello/handler.py", PY_DOCS_HELLO);
    p.write("docs-request/handler.py", PY_DOCS_REQUEST);
    p.write("docs-node/handler.js", NODE_DOCS);
    p.run_in(&["up", "--parallel", "2"], BUILD)
        .await
        .ok("fjord up");

    // The docs' hello: a dict body sent as JSON with the handler's Content-Type.
    let r = s
        .invoke(Method::GET, "docs-hello")
        .send()
        .await
        .expect("GET /function/docs-hello");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        header(&r, "content-type").starts_with("application/json"),
        "content-type {:?}",
        header(&r, "content-type")
    );
    let body: Value = r.json().await.expect("docs-hello answers JSON");
    assert_eq!(body, json!({"message": "Hello from OpenFaaS!"}));
    // Any method, any sub-path reaches the handler.
    let r = s
        .invoke(Method::POST, "docs-hello/any/path")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Hello from OpenFaaS!"})
    );

    // Query, headers, method and path as the handler sees them.
    let r = s
        .invoke(
            Method::GET,
            "docs-request/users/42?name=Ada&name=Grace&x=%C3%A9",
        )
        .header("X-Custom-Header", "custom-value")
        .send()
        .await
        .expect("GET /function/docs-request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-served-by"), "python3-http");
    assert!(header(&r, "content-type").starts_with("application/json"));
    let body: Value = r.json().await.expect("docs-request answers JSON");
    assert_eq!(
        body,
        json!({
            "greeting": "Hello Ada",
            "all_names": ["Ada", "Grace"],
            "method": "GET",
            "path": "/users/42",
            "custom": "custom-value",
            "has_custom": true,
        })
    );
    let r = s.invoke(Method::GET, "docs-request").send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello stranger");
    assert_eq!(body["path"], "/");
    assert_eq!(body["custom"], Value::Null);
    // The handler's own status code and body.
    let r = s
        .invoke(Method::DELETE, "docs-request")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.text().await.unwrap(), "Method not allowed");

    // node20: event.body parsed by Content-Type, headers lower-cased, result sent as JSON.
    let r = s
        .invoke(Method::POST, "docs-node")
        .header("Content-Type", "application/json")
        .body(r#"{"hello": "world", "n": [1, 2]}"#)
        .send()
        .await
        .expect("POST /function/docs-node");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        header(&r, "content-type").starts_with("application/json"),
        "content-type {:?}",
        header(&r, "content-type")
    );
    let body: Value = r.json().await.expect("docs-node answers JSON");
    assert_eq!(
        body,
        json!({"body": r#"{"hello":"world","n":[1,2]}"#, "content-type": "application/json"})
    );
    let r = s
        .invoke(Method::POST, "docs-node")
        .header("Content-Type", "text/plain")
        .body("plain words")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"body": "\"plain words\"", "content-type": "text/plain"})
    );

    // The CLI's invoke sends the same requests.
    let out = p
        .run_with(
            &[
                "invoke",
                "docs-request",
                "-m",
                "GET",
                "--query",
                "name=Linus",
                "-H",
                "X-Custom-Header=from-cli",
                "--path",
                "/cli",
            ],
            b"",
            QUICK,
            |_| {},
        )
        .await
        .ok("fjord invoke docs-request");
    let body: Value = serde_json::from_str(&out.stdout).expect("JSON from fjord invoke");
    assert_eq!(body["greeting"], "Hello Linus");
    assert_eq!(body["custom"], "from-cli");
    assert_eq!(body["path"], "/cli");
    // A non-2xx answer is a failure of `fjord invoke` that shows the function's message.
    let out = p.invoke("docs-request", "body").await;
    assert_ne!(out.code, Some(0), "{}", out.show());
    assert!(
        out.stderr.contains("405") && out.stderr.contains("Method not allowed"),
        "{}",
        out.show()
    );
}

// ---------------------------------------------------------------- 3. the image-resizer example

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode JPEG");
    out.into_inner()
}

fn png_with_alpha(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 200, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode PNG");
    out.into_inner()
}

fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_resizer_example_makes_thumbnails() {
    let s = start_server().await;
    let p = Project::for_server(&s);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    fs::copy(examples.join("stack.yml"), p.path("stack.yml")).unwrap();
    copy_tree(&examples.join("image-resizer"), &p.path("image-resizer"));
    // pip installs Pillow from PyPI.
    p.run_in(&["up", "--filter", "image-resizer"], BUILD)
        .await
        .ok("fjord up --filter image-resizer");
    assert!(
        !p.path("build/hello-python").exists(),
        "--filter image-resizer built another function too"
    );
    let list = p.run(&["list"]).await.ok("fjord list");
    assert_eq!(listed(&list.stdout), ["image-resizer"], "{}", list.show());
    // The stack's limits reached the deployment.
    let d = p
        .run(&["describe", "image-resizer"])
        .await
        .ok("fjord describe image-resizer");
    assert!(
        field(&d.stdout, "Limits:").is_some_and(|l| l.contains("memory=256Mi")),
        "{}",
        d.show()
    );

    for (what, input, want) in [
        ("JPEG 640x480", jpeg(640, 480), (128, 96)),
        (
            "PNG 300x600 with alpha",
            png_with_alpha(300, 600),
            (64, 128),
        ),
    ] {
        let r = s
            .invoke(Method::POST, "image-resizer")
            .header("Content-Type", "application/octet-stream")
            .body(input)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status();
        let ctype = header(&r, "content-type");
        let size = header(&r, "x-thumbnail-size");
        let bytes = r.bytes().await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(ctype, "image/jpeg", "{what}");
        assert_eq!(size, format!("{}x{}", want.0, want.1), "{what}");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .unwrap_or_else(|e| panic!("{what}: the answer is not a JPEG: {e}"));
        assert_eq!((img.width(), img.height()), want, "{what}: thumbnail size");
    }

    // Not an image, and a truncated JPEG: 400 with a message, never a traceback.
    let mut truncated = jpeg(640, 480);
    truncated.truncate(300);
    for (what, input) in [
        ("garbage", b"this is not an image at all".to_vec()),
        ("truncated JPEG", truncated),
    ] {
        let r = s
            .invoke(Method::POST, "image-resizer")
            .body(input)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status();
        let ctype = header(&r, "content-type");
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(ctype.starts_with("text/plain"), "{what}: {ctype}");
        assert!(
            body.contains("JPEG or PNG") && !body.contains("Traceback"),
            "{what}: the body should be a message: {body:?}"
        );
    }
    // GET is not how it is used.
    let (st, body) = s.call("image-resizer").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

// ---------------------------------------------------------------------- 4. the build cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_cache_and_push_skip_unchanged_work() {
    let s = start_server().await;
    let p = Project::for_server(&s);
    p.run(&["new", "cached", "--lang", "python3-http"])
        .await
        .ok("fjord new cached");
    let first = p.run_in(&["build"], BUILD).await.ok("first fjord build");
    assert!(
        first.stderr.contains("cached: built sha256:"),
        "{}",
        first.show()
    );
    let archive = p.path("build/cached/bundle.tar.gz");
    let digest_file = p.path("build/cached/digest");
    let digest1 = fs::read_to_string(&digest_file).unwrap();
    assert!(digest1.starts_with("sha256:"), "digest file: {digest1:?}");
    assert!(first.stderr.contains(digest1.trim()), "{}", first.show());
    let bytes1 = fs::read(&archive).unwrap();
    let mtime1 = mtime(&archive);

    // The first push uploads.
    let push = p.run(&["push"]).await.ok("first fjord push");
    assert!(push.stderr.contains("cached: uploading"), "{}", push.show());

    // Unchanged: nothing is rebuilt or rewritten. Kept: time must pass so that a rewrite
    // would show as a newer mtime.
    std::thread::sleep(Duration::from_millis(20));
    let second = p.run_in(&["build"], BUILD).await.ok("second fjord build");
    assert!(
        second.stderr.contains("unchanged"),
        "a rebuild of an unchanged function should say so:\n{}",
        second.show()
    );
    assert!(
        !second.stderr.contains("python compile"),
        "an unchanged function ran build steps:\n{}",
        second.show()
    );
    assert_eq!(fs::read_to_string(&digest_file).unwrap(), digest1);
    assert_eq!(mtime(&archive), mtime1, "bundle.tar.gz was rewritten");
    assert!(
        fs::read(&archive).unwrap() == bytes1,
        "bundle.tar.gz changed"
    );

    // The gateway has the bundle: push does not upload it again.
    let push = p.run(&["push"]).await.ok("second fjord push");
    assert!(
        push.stderr.contains("gateway already has"),
        "{}",
        push.show()
    );
    assert!(!push.stderr.contains("uploading"), "{}", push.show());

    // A changed handler is rebuilt, with a new digest, and `up` serves the new code.
    p.write(
        "cached/handler.py",
        "def handle(event, context):\n    return {\"statusCode\": 200, \"body\": \"v2\"}\n",
    );
    let third = p
        .run_in(&["build"], BUILD)
        .await
        .ok("fjord build after a change");
    assert!(
        third.stderr.contains("cached: built sha256:") && !third.stderr.contains("unchanged"),
        "{}",
        third.show()
    );
    let digest2 = fs::read_to_string(&digest_file).unwrap();
    assert!(digest2.starts_with("sha256:"));
    assert_ne!(digest2, digest1, "a changed handler kept the old digest");
    assert!(third.stderr.contains(digest2.trim()), "{}", third.show());
    assert!(fs::read(&archive).unwrap() != bytes1);

    // --no-cache rebuilds even when nothing changed; the bundle is reproducible.
    let fourth = p
        .run_in(&["build", "--no-cache"], BUILD)
        .await
        .ok("fjord build --no-cache");
    assert!(
        fourth.stderr.contains("python compile") && !fourth.stderr.contains("unchanged"),
        "{}",
        fourth.show()
    );
    assert_eq!(fs::read_to_string(&digest_file).unwrap(), digest2);

    let up = p.run_in(&["up"], BUILD).await.ok("fjord up");
    assert!(up.stderr.contains("cached: uploading"), "{}", up.show());
    let out = p.invoke("cached", "").await.ok("fjord invoke cached");
    assert_eq!(out.stdout, "v2");
}

// ----------------------------------------------------------------------- 5. failing builds

#[tokio::test]
async fn failing_builds_name_the_function_step_and_output() {
    let p = Project::offline();
    p.run(&["new", "broken-syntax", "--lang", "python3-http"])
        .await
        .ok("fjord new broken-syntax");
    p.write(
        "broken-syntax/handler.py",
        "def handle(event, context):\n    return {\"statusCode\": 200,, \"body\": \"x\"}\n",
    );
    let out = p.run_in(&["build"], BUILD).await;
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a syntax error must fail the build:\n{}",
        out.show()
    );
    assert!(
        out.stderr.contains("broken-syntax"),
        "the error should name the function:\n{}",
        out.show()
    );
    assert!(
        out.stderr.contains("python compile"),
        "the error should name the step:\n{}",
        out.show()
    );
    assert!(
        out.stderr
            .contains(r#"return {"statusCode": 200,, "body": "x"}"#)
            && out.stderr.contains("SyntaxError"),
        "the error should show python's output with the offending line:\n{}",
        out.show()
    );
    assert!(
        out.stderr.contains("broken-syntax/handler.py") && !out.stderr.contains("context/function"),
        "the error should point at the user's file, not its copy in the build context:\n{}",
        out.show()
    );
    assert!(
        !p.path("build/broken-syntax/bundle.tar.gz").exists(),
        "a failed build left a bundle"
    );

    // A requirement that does not exist: pip's own error.
    p.run(&[
        "new",
        "broken-deps",
        "--lang",
        "python3-http",
        "--append",
        "stack.yml",
    ])
    .await
    .ok("fjord new broken-deps");
    p.write(
        "broken-deps/requirements.txt",
        "fjord-test-no-such-package-5c1e9a==1.0\n",
    );
    let out = p.run_in(&["build", "--filter", "broken-deps"], BUILD).await;
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a missing package must fail the build:\n{}",
        out.show()
    );
    assert!(out.stderr.contains("broken-deps"), "{}", out.show());
    assert!(out.stderr.contains("pip install"), "{}", out.show());
    assert!(
        out.stderr.contains("fjord-test-no-such-package-5c1e9a")
            && out.stderr.contains("No matching distribution"),
        "pip's error should be shown:\n{}",
        out.show()
    );
    assert!(!p.path("build/broken-deps/bundle.tar.gz").exists());
    // `fjord up` fails the same way (the gateway is only checked when pushing).
    let out = p
        .run_in(&["up", "--skip-push", "--filter", "broken-syntax"], BUILD)
        .await;
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.show());
    assert!(
        out.stderr.contains("broken-syntax") && out.stderr.contains("python compile"),
        "{}",
        out.show()
    );

    // A Rust build that succeeds without producing the template's `main` binary (here a
    // `cargo` that does nothing): the error names the function and the missing file, not a
    // bare "No such file or directory".
    p.run(&[
        "new",
        "no-binary",
        "--lang",
        "rust",
        "--append",
        "stack.yml",
    ])
    .await
    .ok("fjord new no-binary");
    use std::os::unix::fs::PermissionsExt;
    let shim = p.path("shim");
    fs::create_dir_all(&shim).unwrap();
    fs::write(shim.join("cargo"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(shim.join("cargo"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p
        .run_with(&["build", "--filter", "no-binary"], b"", BUILD, |c| {
            c.env("PATH", &path);
        })
        .await;
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.show());
    assert!(
        out.stderr.contains("no-binary") && out.stderr.contains("release/main"),
        "the error should name the function and the missing binary:\n{}",
        out.show()
    );
}

#[tokio::test]
async fn go_and_java_compile_errors_fail_the_build_at_the_users_line() {
    let p = Project::offline();
    p.run(&["new", "broken-go", "--lang", "golang-middleware"])
        .await
        .ok("fjord new broken-go");
    p.write(
        "broken-go/handler.go",
        "package function\n\nimport \"net/http\"\n\nfunc Handle(w http.ResponseWriter, r *http.Request) {\n\tw.Write(undefinedThing)\n}\n",
    );
    p.run(&[
        "new",
        "broken-java",
        "--lang",
        "java",
        "--append",
        "stack.yml",
    ])
    .await
    .ok("fjord new broken-java");
    p.write(
        "broken-java/src/main/java/com/openfaas/function/Handler.java",
        "package com.openfaas.function;\n\nimport com.openfaas.model.*;\n\npublic class Handler extends AbstractHandler {\n    public IResponse Handle(IRequest req) {\n        return nope;\n    }\n}\n",
    );
    for (name, step, place) in [
        ("broken-go", "go build", "broken-go/handler.go:6:"),
        (
            "broken-java",
            "javac",
            "broken-java/src/main/java/com/openfaas/function/Handler.java:7:",
        ),
    ] {
        let out = p.run_in(&["build", "--filter", name], BUILD).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "a compile error must fail the build:\n{}",
            out.show()
        );
        assert!(
            out.stderr.contains(name) && out.stderr.contains(&format!("`{step}`")),
            "the error should name the function and the step:\n{}",
            out.show()
        );
        assert!(
            out.stderr.contains(place),
            "the error should point at the user's file and line:\n{}",
            out.show()
        );
        assert!(!out.stderr.contains("context/function"), "{}", out.show());
        assert!(!p.path(&format!("build/{name}/bundle.tar.gz")).exists());
    }

    // No Go toolchain on the PATH: the error names the package to install.
    let empty = p.path("empty-path");
    fs::create_dir_all(&empty).unwrap();
    let out = p
        .run_with(&["build", "--filter", "broken-go"], b"", BUILD, |c| {
            c.env("PATH", &empty);
        })
        .await;
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.show());
    assert!(
        out.stderr.contains("install the golang-go package"),
        "the error should say which package to install:\n{}",
        out.show()
    );

    // A dependency that is not vendored: the offline build says to vendor it.
    p.write(
        "broken-go/handler.go",
        "package function\n\nimport (\n\t\"net/http\"\n\n\t\"example.com/missing\"\n)\n\nfunc Handle(w http.ResponseWriter, r *http.Request) { missing.Do(w) }\n",
    );
    p.write(
        "broken-go/go.mod",
        "module handler/function\n\ngo 1.19\n\nrequire example.com/missing v1.0.0\n",
    );
    let out = p.run_in(&["build", "--filter", "broken-go"], BUILD).await;
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.show());
    assert!(out.stderr.contains("go mod vendor"), "{}", out.show());
}

#[tokio::test]
async fn ruby_and_php_syntax_errors_fail_the_build_at_the_users_line() {
    let p = Project::offline();
    p.run(&["new", "broken-rb", "--lang", "ruby"])
        .await
        .ok("fjord new broken-rb");
    p.write(
        "broken-rb/handler.rb",
        "class Handler\n  def run(body, headers)\n    x = 1 2\n  end\nend\n",
    );
    p.run(&[
        "new",
        "broken-php",
        "--lang",
        "php",
        "--append",
        "stack.yml",
    ])
    .await
    .ok("fjord new broken-php");
    p.write(
        "broken-php/src/Handler.php",
        "<?php\nnamespace App;\nclass Handler {\n    public function handle($data) {\n        return $data\n    }\n}\n",
    );
    for (name, step, place) in [
        ("broken-rb", "ruby syntax check", "broken-rb/handler.rb:3"),
        (
            "broken-php",
            "php syntax check",
            "broken-php/src/Handler.php on line 6",
        ),
    ] {
        let out = p.run_in(&["build", "--filter", name], BUILD).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "a syntax error must fail the build:\n{}",
            out.show()
        );
        assert!(
            out.stderr.contains(name) && out.stderr.contains(step),
            "the error should name the function and the step:\n{}",
            out.show()
        );
        assert!(
            out.stderr.contains(place) && out.stderr.contains("syntax error"),
            "the error should point at the user's file and line:\n{}",
            out.show()
        );
        assert!(!out.stderr.contains("context/function"), "{}", out.show());
        assert!(!p.path(&format!("build/{name}/bundle.tar.gz")).exists());
    }

    // No interpreter on the PATH: the error names the package to install.
    p.write(
        "broken-rb/handler.rb",
        "class Handler\n  def run(body, headers)\n    'ok'\n  end\nend\n",
    );
    let empty = p.path("empty-path");
    fs::create_dir_all(&empty).unwrap();
    let out = p
        .run_with(&["build", "--filter", "broken-rb"], b"", BUILD, |c| {
            c.env("PATH", &empty);
        })
        .await;
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.show());
    assert!(
        out.stderr.contains("install the ruby package"),
        "the error should say which package to install:\n{}",
        out.show()
    );
    // With it, the fixed handler builds; gems or Composer packages that were not vendored
    // are named (fjord fetches neither).
    p.write(
        "broken-rb/Gemfile",
        "source 'https://rubygems.org'\ngem 'sinatra'\n",
    );
    p.write(
        "broken-php/src/Handler.php",
        "<?php\nnamespace App;\nclass Handler { public function handle($d) { return $d; } }\n",
    );
    p.write(
        "broken-php/composer.json",
        r#"{"require": {"php": ">=8.0", "ext-json": "*", "monolog/monolog": "^3"}}"#,
    );
    let out = p
        .run_in(&["build"], BUILD)
        .await
        .ok("fjord build of the fixed handlers");
    assert!(p.path("build/broken-rb/bundle.tar.gz").exists());
    assert!(p.path("build/broken-php/bundle.tar.gz").exists());
    assert!(
        out.stderr
            .contains("Gemfile lists gems but they are not vendored")
            && out
                .stderr
                .contains("composer.json requires monolog/monolog but"),
        "{}",
        out.show()
    );
}

// ---------------------------------------------------------------------- 6. CLI error paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_have_documented_exit_codes_and_hints() {
    let s = start_server().await;
    let p = Project::for_server(&s);

    // Gateway down: 3, and how to start it.
    for args in [
        &["list", "-g", "http://127.0.0.1:1"][..],
        &["describe", "x", "-g", "http://127.0.0.1:1"],
        &[
            "deploy",
            "--name",
            "x",
            "--image",
            "x",
            "-g",
            "http://127.0.0.1:1",
        ],
    ] {
        let out = p.run(args).await.code(3, &args.join(" "));
        assert!(out.stderr.contains("fjord serve"), "{}", out.show());
        assert!(out.stderr.contains("http://127.0.0.1:1"), "{}", out.show());
    }
    let out = p
        .run_with(&["list"], b"", QUICK, |c| {
            c.env("FJORD_URL", "http://127.0.0.1:1");
        })
        .await
        .code(3, "FJORD_URL of a stopped gateway");
    assert!(out.stderr.contains("fjord serve"), "{}", out.show());

    // Wrong password: 4, and how to log in.
    let out = p
        .run_with(&["list"], b"", QUICK, |c| {
            c.env("FJORD_PASSWORD", "not-the-password");
        })
        .await
        .code(4, "list with a wrong password");
    assert!(out.stderr.contains("fjord login"), "{}", out.show());
    // No credentials at all (nothing saved, no local data dir): 4 as well.
    let out = p
        .run_with(&["list"], b"", QUICK, |c| {
            c.env_remove("FJORD_PASSWORD");
        })
        .await
        .code(4, "list without credentials");
    assert!(out.stderr.contains("fjord login"), "{}", out.show());
    // The local data dir's password file is found without any setting.
    let out = p
        .run_with(&["list"], b"", QUICK, |c| {
            c.env_remove("FJORD_PASSWORD")
                .env("FJORD_DATA_DIR", s.data_dir());
        })
        .await
        .ok("list with the local password file");
    assert!(out.stdout.starts_with("Function"), "{}", out.show());

    // Unknown functions: 5.
    let out = p.run(&["describe", "nope"]).await.code(5, "describe nope");
    assert!(out.stderr.contains("nope"), "{}", out.show());
    let out = p.invoke("nope", "x").await.code(5, "invoke nope");
    assert!(out.stderr.contains("nope"), "{}", out.show());
    p.run(&["remove", "nope"]).await.code(5, "remove nope");
    p.run(&["scale", "nope", "--replicas", "2"])
        .await
        .code(5, "scale nope");

    // No stack file: 2 with a hint to create one.
    for cmd in ["build", "up", "deploy", "push"] {
        let out = p
            .run(&[cmd])
            .await
            .code(2, &format!("{cmd} without a stack"));
        assert!(
            out.stderr.contains("fjord new"),
            "{cmd}: should hint at fjord new:\n{}",
            out.show()
        );
    }
    let out = p
        .run(&["build", "-f", "missing.yml"])
        .await
        .code(2, "build -f missing.yml");
    assert!(out.stderr.contains("missing.yml"), "{}", out.show());

    // Bad stack files: the position of the problem.
    let bad_value = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  f1:\n    lang: bash\n    handler: ./f1\n    image: f1:latest\n    limits:\n      memory: lots\n";
    p.write("stack.yml", bad_value);
    p.write("f1/handler.sh", "echo hi\n");
    for cmd in ["build", "deploy", "up"] {
        let out = p.run(&[cmd]).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "{cmd} with memory: lots:\n{}",
            out.show()
        );
        assert_eq!(
            position(&out.stderr, "stack.yml"),
            Some((10, 15)),
            "{cmd}: the error should point at stack.yml:10:15 (the value of memory):\n{}",
            out.show()
        );
        assert!(
            out.stderr.contains("lots") && out.stderr.contains("memory"),
            "{}",
            out.show()
        );
    }
    assert!(!p.path("build").exists(), "a bad stack was built");
    let bad_syntax = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  f1:\n    lang: bash\n   handler: [./f1\n    image: f1:latest\n";
    p.write("stack.yml", bad_syntax);
    for cmd in ["build", "deploy"] {
        let out = p.run(&[cmd]).await;
        assert!(
            out.code.is_some_and(|c| c != 0),
            "{cmd} with a YAML syntax error:\n{}",
            out.show()
        );
        let pos = position(&out.stderr, "stack.yml");
        assert!(
            pos.is_some_and(|(l, c)| (6..=8).contains(&l) && c > 0),
            "{cmd}: the error should give stack.yml:LINE:COLUMN near line 7:\n{}",
            out.show()
        );
    }
    fs::remove_file(p.path("stack.yml")).unwrap();

    // Usage errors: 2.
    let out = p
        .run(&["deploy", "--name", "x", "--image", "x", "-e", "novalue"])
        .await
        .code(2, "deploy -e novalue");
    assert!(
        out.stderr.contains("novalue") && out.stderr.contains("KEY=VALUE"),
        "{}",
        out.show()
    );
    p.run(&["deploy", "--name", "x"])
        .await
        .code(2, "deploy --name without --image");
    p.run(&["invoke", "x", "-m", "NOT A METHOD"])
        .await
        .code(2, "invoke with a bad method");
    p.run(&["frobnicate"]).await.code(2, "an unknown command");
    // Nothing was deployed by any of these.
    assert!(s.list_functions().await.is_empty());
}

// ---------------------------------------------------------------------------- 7. login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_saves_credentials_only_when_they_work() {
    let s = start_server().await;
    let mut p = Project::for_server(&s);
    // Only what `fjord login` saves: no FJORD_PASSWORD, no local data dir.
    p.password = None;
    p.run(&["list"]).await.code(4, "list before login");

    let out = p
        .run_with(
            &["login", "--password-stdin"],
            b"definitely-wrong\n",
            QUICK,
            |_| {},
        )
        .await
        .code(4, "login with a wrong password");
    assert!(out.stderr.contains("401"), "{}", out.show());
    assert!(
        !p.config.exists(),
        "a failed login saved {}",
        p.config.display()
    );
    p.run(&["list"]).await.code(4, "list after a failed login");

    let password = s.password.clone().unwrap();
    let out = p
        .run_with(
            &["login", "--password-stdin"],
            format!("{password}\n").as_bytes(),
            QUICK,
            |_| {},
        )
        .await
        .ok("login with the right password");
    assert!(
        out.stdout.contains(&p.config.display().to_string()),
        "login should say where it saved the credentials:\n{}",
        out.show()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&p.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config file mode {mode:o}");
    let saved: Value = serde_json::from_str(&fs::read_to_string(&p.config).unwrap()).unwrap();
    assert_eq!(
        saved["gateways"][s.url("")],
        json!({"user": "admin", "password": password}),
        "saved config: {saved}"
    );

    // Now every command works without FJORD_PASSWORD.
    let out = p.run(&["list"]).await.ok("list after login");
    assert!(out.stdout.starts_with("Function"), "{}", out.show());
    p.run(&[
        "deploy",
        "--name",
        "after-login",
        "--image",
        "after-login",
        "--fprocess",
        "cat",
    ])
    .await
    .ok("deploy after login");
    let out = p.run(&["list"]).await.ok("list after login");
    assert_eq!(listed(&out.stdout), ["after-login"], "{}", out.show());
    // Credentials are per gateway: another URL does not get them.
    let other = format!("http://localhost:{}", s.addr.rsplit(':').next().unwrap());
    p.run(&["list", "-g", &other])
        .await
        .code(4, "list on another gateway URL");

    // A wrong login afterwards keeps the saved working credentials.
    p.run_with(&["login", "-p", "wrong-again"], b"", QUICK, |_| {})
        .await
        .code(4, "second wrong login");
    p.run(&["list"]).await.ok("list after a second wrong login");
    // An empty password is a usage error.
    p.run_with(&["login", "--password-stdin"], b"\n", QUICK, |_| {})
        .await
        .code(2, "login with an empty password");
}

// ------------------------------------------------------- 8. deploy, scale, logs, remove

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_scale_logs_and_remove_from_flags() {
    let s = start_server().await;
    let p = Project::for_server(&s);
    let out = p
        .run(&[
            "deploy",
            "--name",
            "env",
            "--image",
            "env",
            "--fprocess",
            "env",
            "-e",
            "GREETING=hi",
            "-l",
            "team=core",
        ])
        .await
        .ok("fjord deploy --name env");
    assert!(
        out.stdout.contains("env: 1 of 1 replica(s) ready"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout
            .contains(&format!("URL: {}/function/env", s.url(""))),
        "{}",
        out.show()
    );

    let out = p.invoke("env", "").await.ok("fjord invoke env");
    assert!(
        out.stdout.lines().any(|l| l == "GREETING=hi"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout.lines().any(|l| l == "Http_Method=POST"),
        "{}",
        out.show()
    );

    let d = p.run(&["describe", "env"]).await.ok("describe env");
    assert_eq!(field(&d.stdout, "Status:"), Some("Ready"), "{}", d.show());
    assert_eq!(field(&d.stdout, "Function process:"), Some("env"));
    assert!(
        field(&d.stdout, "Environment:").is_some_and(|e| e.contains("GREETING=hi")),
        "{}",
        d.show()
    );
    assert!(
        field(&d.stdout, "Labels:").is_some_and(|e| e.contains("team=core")),
        "{}",
        d.show()
    );
    let j = p
        .run(&["describe", "env", "--json"])
        .await
        .ok("describe --json");
    let j: Value = serde_json::from_str(&j.stdout).expect("describe --json prints JSON");
    assert_eq!(j["name"], "env");
    assert_eq!(j["envVars"]["GREETING"], "hi");

    let out = p
        .run(&["scale", "env", "--replicas", "2"])
        .await
        .ok("scale env");
    assert!(out.stdout.contains("2 replica"), "{}", out.show());
    wait_until(
        Duration::from_secs(60),
        "env with 2 available replicas",
        async || {
            let d = p.run(&["describe", "env"]).await.ok("describe env");
            assert_eq!(field(&d.stdout, "Replicas:"), Some("2"), "{}", d.show());
            if field(&d.stdout, "Available replicas:") == Some("2") {
                Ok(())
            } else {
                Err(d.show())
            }
        },
    )
    .await;
    let out = p.run(&["list", "-v"]).await.ok("list -v");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("env "))
        .unwrap_or_else(|| panic!("list -v lacks env:\n{}", out.show()));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, ["env", "env", "1", "2", "2", "fork"], "{line:?}");

    // Logs: the watchdog's line for the call above.
    wait_until(
        Duration::from_secs(60),
        "'Forking fprocess.' in the logs",
        async || {
            let out = p
                .run(&["logs", "env", "--tail", "5"])
                .await
                .ok("logs env --tail 5");
            let lines: Vec<&str> = out.stdout.lines().collect();
            assert!(
                lines.len() <= 5,
                "--tail 5 gave {} lines:\n{}",
                lines.len(),
                out.show()
            );
            if lines.iter().any(|l| l.contains("Forking fprocess.")) {
                Ok(())
            } else {
                Err(out.show())
            }
        },
    )
    .await;
    p.run(&["logs", "nope"]).await.code(5, "logs nope");

    let out = p.run(&["remove", "env"]).await.ok("remove env");
    assert!(out.stdout.contains("Removed env."), "{}", out.show());
    p.run(&["describe", "env"])
        .await
        .code(5, "describe env after remove");
    p.invoke("env", "").await.code(5, "invoke env after remove");
    let out = p.run(&["list"]).await.ok("list");
    assert!(listed(&out.stdout).is_empty(), "{}", out.show());
}
