//! A deployment runs exactly the code that was deployed (issue 12, section 2), through the
//! real binaries: `fjord up` builds, pushes and deploys a python3-http function against a
//! real `fjord serve`, which is then restarted on the same data dir.
//!
//! - a rolled-back update stays rolled back after a restart (the tag still names the broken
//!   bundle);
//! - a bundle pushed under the deployed tag but never deployed does not go live at restart;
//! - `fjord up` waits for the new version, fails fast (crash loop) with the replica's output,
//!   and reports the replica count of the version it deployed.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{READY_TIMEOUT, ServeOpts, Server, TestDir};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// Longer than `fjord up`'s own 90 s wait, so a CLI that waits it out fails an assertion
/// with its output rather than a timeout here.
const CLI_TIMEOUT: Duration = Duration::from_secs(300);

const V1: &str =
    "def handle(event, context):\n    return {\"statusCode\": 200, \"body\": \"v1\"}\n";
const V2: &str =
    "def handle(event, context):\n    return {\"statusCode\": 200, \"body\": \"v2\"}\n";
/// A handler whose module exits at import, before the server listens.
const BROKEN: &str =
    "import sys\nsys.stderr.write(\"v2 cannot start: DATABASE_URL is not set\\n\")\nsys.exit(1)\n";

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Out {
    fn show(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// A stack folder with one python3-http function `name` (image `<name>:latest`).
struct Project {
    tmp: TempDir,
    name: String,
}

impl Project {
    fn new(name: &str, labels: &[(&str, &str)]) -> Project {
        let tmp = tempfile::Builder::new()
            .prefix("fjord-pin-test-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let p = Project {
            tmp,
            name: name.to_string(),
        };
        p.stack(labels);
        p.handler(V1);
        p
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    fn stack(&self, labels: &[(&str, &str)]) {
        let name = &self.name;
        let mut text = format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  {name}:\n    lang: python3-http\n    handler: ./{name}\n    image: {name}:latest\n"
        );
        if !labels.is_empty() {
            text.push_str("    labels:\n");
            for (k, v) in labels {
                text.push_str(&format!("      {k}: \"{v}\"\n"));
            }
        }
        fs::write(self.dir().join("stack.yml"), text).unwrap();
    }

    fn handler(&self, code: &str) {
        let d = self.dir().join(&self.name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("handler.py"), code).unwrap();
    }

    /// The digest of the last build.
    fn digest(&self) -> String {
        fs::read_to_string(self.dir().join("build").join(&self.name).join("digest"))
            .expect("build/<name>/digest")
            .trim()
            .to_string()
    }

    async fn fjord(&self, s: &Server, args: &[&str]) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"));
        cmd.args(args)
            .current_dir(self.dir())
            .kill_on_drop(true)
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FJORD_") || k.starts_with("OPENFAAS_") || k.starts_with("XDG_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("FJORD_URL", s.url(""))
            .env("FJORD_CONFIG", self.dir().join("config.json"))
            .env("FJORD_DATA_DIR", self.dir().join("no-data-dir"));
        if let Some(p) = &s.password {
            cmd.env("FJORD_PASSWORD", p);
        }
        let what = format!("fjord {}", args.join(" "));
        let t0 = Instant::now();
        let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within {CLI_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: t0.elapsed(),
        }
    }

    async fn up_ok(&self, s: &Server, args: &[&str]) -> Out {
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        let out = self.fjord(s, &all).await;
        assert_eq!(out.code, Some(0), "fjord {all:?} failed:\n{}", out.show());
        out
    }
}

fn fjord_str<'a>(st: &'a Value, path: &[&str]) -> &'a str {
    let mut v = &st["fjord"];
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

/// Stops the server (SIGTERM) and starts a new one on the same data dir.
async fn restart(s: &mut Server, dir: &Arc<TestDir>) -> Server {
    let status = s.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "fjord serve exited with {status}");
    Server::start_in(dir.clone(), ServeOpts::default()).await
}

/// Answers of `/function/<name>` until one is 200 (replicas start after a restart).
async fn serves(s: &Server, name: &str) -> String {
    s.call_until_ok(name, READY_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_update_stays_rolled_back_after_a_restart() {
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    let p = Project::new("greet", &[]);
    p.up_ok(&s, &[]).await;
    let v1 = p.digest();
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v1".into()));
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(st["image"], "greet:latest", "image stays the tag as given");
    assert_eq!(fjord_str(&st, &["digest"]), v1, "{st}");

    // v2 exits at start: the update is rolled back, and `fjord up` says so with the
    // replica's own output, without waiting for --rollout-timeout (60 s).
    p.handler(BROKEN);
    let out = p.fjord(&s, &["up"]).await;
    assert!(
        out.code.is_some_and(|c| c != 0),
        "fjord up of a version that cannot start must fail:\n{}",
        out.show()
    );
    assert!(
        out.stderr
            .contains("v2 cannot start: DATABASE_URL is not set"),
        "the replica's stderr line should be printed:\n{}",
        out.show()
    );
    assert!(
        out.stderr.contains("crashed 3 times") && out.stderr.contains("exited with status 1"),
        "the error should say why:\n{}",
        out.show()
    );
    assert!(
        out.took < Duration::from_secs(30),
        "a crash loop should fail the rollout at once, not after the timeout:\n{}",
        out.show()
    );
    let v2 = p.digest();
    assert_ne!(v1, v2);
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v1".into()));
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(fjord_str(&st, &["rollout", "state"]), "failed", "{st}");
    assert_eq!(fjord_str(&st, &["digest"]), v1, "{st}");
    let err = fjord_str(&st, &["lastError"]);
    assert!(
        err.contains("crashed 3 times before becoming ready") && err.contains("status 1"),
        "{st}"
    );

    // The tag now names the broken bundle; the restart runs the version that served.
    let mut s = restart(&mut s, &dir).await;
    assert_eq!(serves(&s, "greet").await, "v1");
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(fjord_str(&st, &["digest"]), v1, "{st}");
    assert_eq!(st["image"], "greet:latest");

    // And once more, so the restored state is itself stored right.
    let s = restart(&mut s, &dir).await;
    assert_eq!(serves(&s, "greet").await, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_pushed_but_never_deployed_does_not_go_live_at_restart() {
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    let p = Project::new("greet", &[]);
    p.up_ok(&s, &[]).await;
    let v1 = p.digest();

    // Pushed under the same tag, not deployed.
    p.handler(V2);
    p.up_ok(&s, &["--skip-deploy"]).await;
    let v2 = p.digest();
    assert_ne!(v1, v2);
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v1".into()));

    let mut s = restart(&mut s, &dir).await;
    assert_eq!(
        serves(&s, "greet").await,
        "v1",
        "the restart ran code that was pushed but never deployed"
    );
    let listed = s.list_functions().await;
    let f = listed.iter().find(|f| f["name"] == "greet").unwrap();
    assert_eq!(fjord_str(f, &["digest"]), v1, "{f}");
    assert_eq!(f["image"], "greet:latest");

    // Deploying it is what makes it live (and the digest shown follows).
    let out = p.up_ok(&s, &[]).await;
    assert!(
        out.stdout.contains("greet: 1 of 1 replica(s) ready"),
        "{}",
        out.show()
    );
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v2".into()));
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(fjord_str(&st, &["digest"]), v2, "{st}");
    let s = restart(&mut s, &dir).await;
    assert_eq!(serves(&s, "greet").await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_crashes_at_start_fails_fjord_up_quickly() {
    let s = Server::start_opts(ServeOpts::default()).await;
    let p = Project::new("crashy", &[]);
    p.handler(BROKEN);
    let out = p.fjord(&s, &["up"]).await;
    assert!(
        out.code.is_some_and(|c| c != 0),
        "fjord up of a function that cannot start must fail:\n{}",
        out.show()
    );
    assert!(
        out.took < Duration::from_secs(30),
        "expected a quick failure (crash loop), not the wait for readiness:\n{}",
        out.show()
    );
    assert!(
        out.stderr
            .contains("v2 cannot start: DATABASE_URL is not set"),
        "{}",
        out.show()
    );
    let st = s.get_function("crashy").await.unwrap();
    assert_eq!(fjord_str(&st, &["rollout", "state"]), "failed", "{st}");
    let err = fjord_str(&st, &["lastError"]);
    assert!(
        err.contains("crashed 3 times before becoming ready")
            && err.contains("exited with status 1"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjord_up_waits_for_the_new_version_and_reports_its_replicas() {
    let s = Server::start_opts(ServeOpts::default()).await;
    let p = Project::new("greet", &[("com.openfaas.scale.min", "3")]);
    let out = p.up_ok(&s, &[]).await;
    assert!(
        out.stdout.contains("greet: 3 of 3 replica(s) ready"),
        "{}",
        out.show()
    );
    // The update runs one replica (stored 3, clamped to max 1) while the old version still
    // has 3 ready: the old CLI printed "3 of 1 replica(s) ready" before v2 was up.
    p.stack(&[
        ("com.openfaas.scale.min", "1"),
        ("com.openfaas.scale.max", "1"),
    ]);
    p.handler(V2);
    let out = p.up_ok(&s, &[]).await;
    assert!(
        out.stdout.contains("greet: 1 of 1 replica(s) ready"),
        "{}",
        out.show()
    );
    assert!(!out.stdout.contains("3 of 1"), "{}", out.show());
    // It returned once v2 serves.
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v2".into()));
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(fjord_str(&st, &["rollout", "state"]), "ready", "{st}");
    assert_eq!(fjord_str(&st, &["digest"]), p.digest(), "{st}");
}
