//! `fjord serve --runtime kubernetes`: startup errors, run everywhere (no cluster): a
//! kubeconfig that does not exist, an API server where nothing listens (a free loopback
//! port), the embedded queue, `--kubeconfig` without `--runtime kubernetes`. Each is one line
//! naming the cause and what to do.
#![cfg(feature = "kubernetes")]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs `fjord serve` with `args`, expecting it to refuse to start: exit code, stderr and
/// how long it took.
async fn serve_fails(args: &[&str]) -> (Option<i32>, String, Duration) {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let mut full = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tune-kernel=false",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let started = Instant::now();
    let out = run_cli(&full, &[], &dir.tmp.path().join("config.json")).await;
    (out.code, out.stderr, started.elapsed())
}

/// A queue address that is never contacted: the runtime's errors come first.
fn unused_nats() -> String {
    format!("nats://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn kubernetes_with_a_missing_kubeconfig_fails_fast_naming_it() {
    let nats = unused_nats();
    let (code, err, took) = serve_fails(&[
        "--runtime",
        "kubernetes",
        "--kubeconfig",
        "/nonexistent",
        "--queue",
        &nats,
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("kubeconfig /nonexistent: cannot read it")
            && err.contains("give --kubeconfig a kubeconfig"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn kubernetes_with_no_api_server_listening_fails_fast_naming_it() {
    let dir = TestDir::new();
    let port = free_port();
    let kubeconfig = dir.tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            r#"apiVersion: v1
kind: Config
clusters: [{{ name: c, cluster: {{ server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true }} }}]
users: [{{ name: u, user: {{ token: not-a-secret }} }}]
contexts: [{{ name: x, context: {{ cluster: c, user: u }} }}]
current-context: x
"#
        ),
    )
    .unwrap();
    let nats = unused_nats();
    let (code, err, took) = serve_fails(&[
        "--runtime",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--queue",
        &nats,
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!(
            "the Kubernetes API server at https://127.0.0.1:{port} cannot be used"
        )) && err.contains("refused")
            && err.contains("check that the cluster is up"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn kubernetes_needs_a_nats_queue_and_kubeconfig_needs_kubernetes() {
    let (code, err, _) = serve_fails(&["--runtime", "kubernetes"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--runtime kubernetes needs async calls in NATS JetStream")
            && err.contains("--queue nats://"),
        "{err}"
    );
    let (code, err, _) = serve_fails(&["--kubeconfig", "/nonexistent"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--kubeconfig is for --runtime kubernetes"),
        "{err}"
    );
}
