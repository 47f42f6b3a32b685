//! `fjord serve --runtime kubernetes`.
//!
//! - Startup errors, run everywhere (no cluster): a kubeconfig that does not exist, an API
//!   server where nothing listens (a free loopback port), the embedded queue, `--kubeconfig`
//!   without `--runtime kubernetes`. Each is one line naming the cause and what to do.
//! - End to end against the real cluster of the kubeconfig named by `FJORD_TEST_KUBECONFIG`:
//!   `#[ignore]`d, so they never count as passed without one; `scripts/test` runs them with
//!   `--ignored` when the variable is set. They need the namespace `openfaas-fn`
//!   (`kubectl apply -f deploy/kubernetes/namespaces.yaml`), a cluster that can pull
//!   [`WATCHDOG_IMAGE`], and `nats-server` here (as the other NATS tests). They are written
//!   for a single-node cluster whose ClusterIP Services do not route (no kube-proxy, no DNS):
//!   the gateway reaches pods by their IPs, so the machine running the tests must route to
//!   the pod network (it does on the node itself). Each function has a name of its own and is
//!   deleted from the cluster at the end, even when the test fails.
#![cfg(feature = "kubernetes")]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use fjord_queue::nats_server::NatsServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A small public image with OpenFaaS's classic watchdog (its `fprocess` runs per request).
const WATCHDOG_IMAGE: &str = "ghcr.io/openfaas/alpine:latest";
/// How long a pod may take to be scheduled, pulled and ready (a first pull included).
const POD_TIMEOUT: Duration = Duration::from_secs(180);
const IGNORED: &str = "needs a Kubernetes cluster: FJORD_TEST_KUBECONFIG";

// ------------------------------------------------------------------- startup errors (CI)

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

// ------------------------------------------------------------ end to end (a real cluster)

/// The kubeconfig of the cluster under test.
fn test_kubeconfig() -> PathBuf {
    match std::env::var_os("FJORD_TEST_KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("{IGNORED}: set it to the path of a kubeconfig"),
    }
}

/// A client of the cluster under test, to read back what the gateway made there.
async fn cluster() -> kube::Client {
    let path = test_kubeconfig();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("FJORD_TEST_KUBECONFIG {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("FJORD_TEST_KUBECONFIG {}: {e}", path.display()));
    let client = kube::Client::try_from(config).expect("a client of the test cluster");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let found = namespaces
        .get_opt(NS)
        .await
        .unwrap_or_else(|e| panic!("the test cluster's API server: {e}"));
    assert!(
        found.is_some(),
        "the test cluster has no namespace {NS}: kubectl apply -f deploy/kubernetes/namespaces.yaml"
    );
    client
}

/// A function name no other run uses (functions outlive a gateway in the cluster).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{:x}-{:x}", std::process::id(), nanos)
}

/// Deletes the function's Deployment and Service (and its Function object, when it has one)
/// from the cluster when dropped, however the test ends (a normal end has deleted them
/// through the gateway already).
struct Cleanup {
    name: String,
    function_object: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (name, function_object) = (self.name.clone(), self.function_object);
        // A runtime of its own: the test's may be shutting down.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let client = cluster().await;
                if function_object {
                    let _ = Api::<fjord_kube::Function>::namespaced(client.clone(), NS)
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
                let dp = DeleteParams::foreground();
                let _ = Api::<Deployment>::namespaced(client.clone(), NS)
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<Service>::namespaced(client, NS)
                    .delete(&name, &dp)
                    .await;
            });
        })
        .join();
        if cleaned.is_err() {
            eprintln!("cannot delete function {} from the test cluster", self.name);
        }
    }
}

/// `fjord serve --runtime kubernetes` on the test cluster, with its NATS queue.
struct Gateway {
    server: Server,
    _nats: NatsServer,
}

async fn gateway() -> Gateway {
    let kubeconfig = test_kubeconfig();
    let nats = NatsServer::start();
    let key = nats.queue_key_file();
    let server = Server::start_opts(ServeOpts {
        args: vec![
            "--runtime".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--queue".into(),
            nats.url(),
            "--queue-key".into(),
            key.display().to_string(),
            // A request at zero waits for a pod: scheduling and a pull take longer than a
            // process start.
            "--ready-timeout".into(),
            POD_TIMEOUT.as_secs().to_string(),
            "--rollout-timeout".into(),
            "300".into(),
        ],
    })
    .await;
    Gateway {
        server,
        _nats: nats,
    }
}

/// A function running `fprocess` in [`WATCHDOG_IMAGE`].
fn watchdog_fn(name: &str, fprocess: &str) -> serde_json::Value {
    json!({
        "service": name,
        "image": WATCHDOG_IMAGE,
        "envProcess": fprocess,
        "labels": {"fjord-test": "e2e"},
        "annotations": {"fjord.test/run": name},
    })
}

/// The names of the function's pods that the cluster says are ready.
async fn ready_pods(client: &kube::Client, name: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods
        .list(&ListParams::default().labels(&format!("faas_function={name}")))
        .await
        .expect("list the function's pods");
    list.items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// The Deployment's `spec.replicas` (`None`: there is no Deployment).
async fn deployment_replicas(client: &kube::Client, name: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get the function's Deployment")
        .map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// The `HOSTNAME=` line of the `env` function's answer: the pod that answered.
fn answered_by(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("HOSTNAME="))
        .unwrap_or_else(|| panic!("no HOSTNAME in the answer: {body}"))
        .to_string()
}

async fn scale(s: &Server, name: &str, replicas: u64) {
    s.sys_expect(
        Method::POST,
        &format!("/system/scale-function/{name}"),
        &json!({"serviceName": name, "replicas": replicas}),
        StatusCode::ACCEPTED,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: FJORD_TEST_KUBECONFIG"]
async fn deploy_invoke_by_pod_ip_and_delete() {
    let client = cluster().await;
    let g = gateway().await;
    let s = &g.server;
    let name = unique("e2e-env");
    let _cleanup = Cleanup {
        name: name.clone(),
        function_object: false,
    };

    // No image: refused before anything reaches the cluster.
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &json!({"service": name, "image": "", "envProcess": "env"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.starts_with("image: "), "{body}");
    assert_eq!(deployment_replicas(&client, &name).await, None);

    let st = s
        .sys_json(
            Method::POST,
            "/system/functions",
            &watchdog_fn(&name, "env"),
        )
        .await;
    assert_eq!(st.0, StatusCode::ACCEPTED, "{}", st.1);
    let status = s.wait_ready(&name, POD_TIMEOUT).await;
    assert_eq!(status["image"], WATCHDOG_IMAGE, "{status}");
    assert_eq!(status["fjord"]["runtime"], "kubernetes", "{status}");

    // The Deployment is faas-netes's: named after the function, labelled, the image as given.
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get(&name)
        .await
        .expect("the function's Deployment");
    let labels = deployment.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("faas_function").map(String::as_str),
        Some(name.as_str())
    );
    assert_eq!(labels.get("fjord-test").map(String::as_str), Some("e2e"));
    let image = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone());
    assert_eq!(image.as_deref(), Some(WATCHDOG_IMAGE));

    // Through the gateway, straight to the pod (ClusterIPs need not route here).
    let (code, body) = s
        .call_text(Method::POST, &format!("{name}/sub?q=1"), "hello")
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body.contains("Http_Method=POST") && body.contains("Http_Query=q=1"),
        "{body}"
    );
    let pods = ready_pods(&client, &name).await;
    assert!(
        pods.contains(&answered_by(&body)),
        "answered by a pod of the function ({pods:?}): {body}"
    );
    // Its logs come from the pods' log API, each line named by its pod (the watchdog logs
    // every fork).
    wait_until(
        POD_TIMEOUT,
        "a log line from a pod of the function",
        async || {
            s.logs(&format!("name={name}&tail=100"))
                .await
                .iter()
                .any(|l| {
                    l["instance"]
                        .as_str()
                        .is_some_and(|i| pods.iter().any(|p| p == i))
                })
        },
    )
    .await;

    s.remove(&name).await;
    assert!(s.get_function(&name).await.is_none(), "404 after delete");
    let (code, _) = s.call(&name).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    wait_until(
        POD_TIMEOUT,
        "the Deployment deleted from the cluster",
        async || deployment_replicas(&client, &name).await.is_none(),
    )
    .await;
    let service = Api::<Service>::namespaced(client.clone(), NS)
        .get_opt(&name)
        .await
        .expect("get the Service");
    assert!(service.is_none(), "the Service is deleted too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: FJORD_TEST_KUBECONFIG"]
async fn scale_zero_to_two_to_zero_with_a_held_request() {
    let client = cluster().await;
    let g = gateway().await;
    let s = &g.server;
    let name = unique("e2e-scale");
    let _cleanup = Cleanup {
        name: name.clone(),
        function_object: false,
    };
    s.deploy(&watchdog_fn(&name, "env")).await;
    s.wait_ready(&name, POD_TIMEOUT).await;

    // To zero through the scale subresource: no pod left, in the cluster and at the gateway.
    scale(s, &name, 0).await;
    s.wait_status(&name, POD_TIMEOUT, "at zero", |v| {
        num(v, "replicas") == 0 && num(v, "availableReplicas") == 0
    })
    .await;
    assert_eq!(deployment_replicas(&client, &name).await, Some(0));
    wait_until(POD_TIMEOUT, "no ready pod at zero", async || {
        ready_pods(&client, &name).await.is_empty()
    })
    .await;

    // A request at zero is held until a pod is ready, then answered by it.
    let held = {
        let rb = s
            .invoke(Method::GET, &name)
            .timeout(POD_TIMEOUT + Duration::from_secs(30));
        tokio::spawn(async move { send_text(rb).await })
    };
    wait_until(POD_TIMEOUT, "the Deployment scaled from zero", async || {
        deployment_replicas(&client, &name).await == Some(1)
    })
    .await;
    let (code, body) = held.await.expect("the held request");
    assert_eq!(code, StatusCode::OK, "{body}");
    let pods = ready_pods(&client, &name).await;
    assert!(pods.contains(&answered_by(&body)), "{pods:?}: {body}");
    let status = s.get_function(&name).await.expect("status");
    assert!(fjord_num(&status, "coldStarts") >= 1, "{status}");

    // Up to two, both ready; every call answered by one of them.
    scale(s, &name, 2).await;
    s.wait_status(&name, POD_TIMEOUT, "two available", |v| {
        num(v, "availableReplicas") == 2
    })
    .await;
    assert_eq!(deployment_replicas(&client, &name).await, Some(2));
    let pods = ready_pods(&client, &name).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    for _ in 0..10 {
        let (code, body) = s.call(&name).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(pods.contains(&answered_by(&body)), "{pods:?}: {body}");
    }

    // And back to zero.
    scale(s, &name, 0).await;
    s.wait_status(&name, POD_TIMEOUT, "back at zero", |v| {
        num(v, "replicas") == 0 && num(v, "availableReplicas") == 0
    })
    .await;
    assert_eq!(deployment_replicas(&client, &name).await, Some(0));

    s.remove(&name).await;
    assert!(s.get_function(&name).await.is_none(), "404 after delete");
}

/// The Function object's `Ready` condition: (status, reason).
async fn object_ready(api: &Api<fjord_kube::Function>, name: &str) -> Option<(String, String)> {
    let f = api.get_opt(name).await.expect("get the Function")?;
    let c = f
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: FJORD_TEST_KUBECONFIG"]
async fn a_function_object_is_deployed_updated_and_deleted_through_the_cluster() {
    let client = cluster().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    assert!(
        crds.get_opt("functions.openfaas.com")
            .await
            .expect("read CRDs")
            .is_some(),
        "the test cluster has no Function CRD: kubectl apply -f deploy/kubernetes/crd-function.yaml"
    );
    let g = gateway().await;
    let s = &g.server;
    let name = unique("e2e-object");
    let _cleanup = Cleanup {
        name: name.clone(),
        function_object: true,
    };
    let api = Api::<fjord_kube::Function>::namespaced(client.clone(), NS);
    let object = |greeting: &str| -> fjord_kube::Function {
        serde_json::from_value(json!({
            "apiVersion": "openfaas.com/v1", "kind": "Function",
            "metadata": { "name": name, "namespace": NS },
            "spec": {
                "name": name, "image": WATCHDOG_IMAGE, "handler": "env",
                "environment": { "GREETING": greeting },
                "labels": { "fjord-test": "e2e" },
            },
        }))
        .expect("a Function")
    };
    api.create(&Default::default(), &object("one"))
        .await
        .expect("create the Function object");

    // Deployed through the gateway's control plane, shown by its REST API as managed.
    let status = s.wait_ready(&name, POD_TIMEOUT).await;
    assert!(
        status["annotations"]["com.fjord.function-object"].is_string(),
        "{status}"
    );
    wait_until(POD_TIMEOUT, "the object's status Ready=True", async || {
        object_ready(&api, &name).await == Some(("True".into(), "Deployed".into()))
    })
    .await;
    let (code, body) = s.call_text(Method::POST, &name, "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("GREETING=one"), "{body}");

    // The REST API does not change what the object owns.
    let body = s
        .sys_expect(
            Method::DELETE,
            "/system/functions",
            &json!({"functionName": name}),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(body.contains("kubectl edit function"), "{body}");

    // An edit of the object rolls the function.
    let mut changed = api.get(&name).await.expect("the object");
    changed.spec = object("two").spec;
    api.replace(&name, &Default::default(), &changed)
        .await
        .expect("update the Function object");
    wait_until(POD_TIMEOUT, "the new environment served", async || {
        let (code, body) = s.call_text(Method::POST, &name, "").await;
        code == StatusCode::OK && body.contains("GREETING=two")
    })
    .await;

    // Deleting the object deletes the function and its objects.
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the Function object");
    wait_until(
        POD_TIMEOUT,
        "the function gone from the gateway",
        async || s.get_function(&name).await.is_none(),
    )
    .await;
    wait_until(POD_TIMEOUT, "the Deployment deleted", async || {
        deployment_replicas(&client, &name).await.is_none()
    })
    .await;
}
