//! `KubeRuntime` against kube's mock service (a `tower_test` pair standing in for the API
//! server): the requests it sends, how it takes 409, 403, 500 and an unreachable server, and
//! what its reflectors publish to a function's handle. No cluster is involved: the fake API
//! server of `fake_api` answers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fjord_core::FunctionSpec;
use fjord_core::openfaas::FunctionDeployment;
use fjord_kube::objects::function_objects;
use fjord_kube::{KubeError, KubeRuntime, KubeRuntimeConfig};
use fjord_runtime_api::{FunctionHandle, RolloutState, Runtime, RuntimeError, Source};
use http::Method;
use serde_json::{Value, json};

mod fake_api;
use fake_api::*;

fn test_config() -> KubeRuntimeConfig {
    KubeRuntimeConfig {
        conflict_backoff: Duration::from_millis(10),
        repair_interval: Duration::from_millis(10),
        ..KubeRuntimeConfig::default()
    }
}

fn runtime_with(config: KubeRuntimeConfig) -> (KubeRuntime, FakeApi) {
    let (client, api) = fake_cluster();
    (KubeRuntime::new(client, config).expect("a runtime"), api)
}

fn runtime() -> (KubeRuntime, FakeApi) {
    runtime_with(test_config())
}

fn deployment_request(name: &str, image: &str) -> FunctionDeployment {
    serde_json::from_value(json!({
        "service": name,
        "image": image,
        "namespace": NS,
        "labels": { "com.openfaas.scale.min": "1" },
        "annotations": { "topic": "orders" },
        "envVars": { "MARKER": "m" },
    }))
    .expect("a deployment request")
}

fn spec(name: &str, image: &str) -> Arc<FunctionSpec> {
    Arc::new(
        FunctionSpec::from_deployment_for_image(deployment_request(name, image))
            .expect("a valid spec"),
    )
}

/// A function's Deployment as the cluster reports it.
fn cluster_deployment(name: &str, replicas: i32, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": NS, "resourceVersion": "1", "generation": 1,
            "labels": { "faas_function": name },
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "faas_function": name } },
            "template": { "spec": { "containers": [{ "name": name }] } },
        },
        "status": status,
    })
}

fn cluster_slice(service: &str, suffix: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{suffix}"), "namespace": NS, "resourceVersion": "1",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })
}

fn cluster_pod(function: &str, name: &str, waiting_reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "resourceVersion": "1",
            "labels": { "faas_function": function },
        },
        "status": { "containerStatuses": [{
            "name": function, "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": { "waiting": { "reason": waiting_reason, "message": message } },
        }]},
    })
}

/// A function pod whose container runs.
fn running_pod(function: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
            "labels": { "faas_function": function },
        },
        "status": { "containerStatuses": [{
            "name": function, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": { "running": { "startedAt": "2026-12-03T09:00:00Z" } },
        }]},
    })
}

fn ready(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": true, "serving": true, "terminating": false } })
}

fn not_ready(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": false, "serving": false, "terminating": false } })
}

fn terminating(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": false, "serving": true, "terminating": true } })
}

fn authorities(h: &FunctionHandle) -> Vec<String> {
    h.serving()
        .endpoints
        .iter()
        .map(|e| match &e.kind {
            fjord_runtime_api::EndpointKind::Http { authority } => authority.to_string(),
            fjord_runtime_api::EndpointKind::InProcess(_) => "in-process".to_string(),
        })
        .collect()
}

/// Waits (on the runtime's change notifications, bounded) until `cond` holds.
async fn until(
    rt: &KubeRuntime,
    what: &str,
    h: &FunctionHandle,
    cond: impl Fn(&FunctionHandle) -> bool,
) {
    let mut changes = rt.changes();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond(h) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!(
                "{what}: not within {PATIENCE:?}; endpoints {:?}, status {:?}",
                authorities(h),
                h.status()
            );
        }
    }
}

async fn outcome(done: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("the rollout ends in time")
        .expect("the runtime answers")
}

fn patches_of<'a>(recorded: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    recorded
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path == path)
        .collect()
}

fn query(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn apply_server_side_applies_the_deployment_then_the_service() {
    let (rt, api) = runtime();
    assert_eq!(rt.name(), "kubernetes");
    let s = spec("hello", "ghcr.io/acme/hello:1.2");
    let applied = rt.apply(s.clone(), Source::default(), 2).expect("apply");
    assert_eq!(applied.generation, 1);
    assert_eq!(
        outcome(applied.done).await,
        Ok(()),
        "a first deploy is answered once applied"
    );

    let mut expected = function_objects(&s.deployment, NS, &Default::default()).expect("objects");
    expected.deployment.spec.as_mut().expect("spec").replicas = Some(2);
    let writes: Vec<Recorded> = api
        .recorded()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .collect();
    assert_eq!(writes.len(), 2, "exactly two writes: {writes:#?}");
    let (d, svc) = (&writes[0], &writes[1]);
    assert_eq!(
        (d.method.clone(), d.path.as_str()),
        (
            Method::PATCH,
            "/apis/apps/v1/namespaces/openfaas-fn/deployments/hello"
        )
    );
    assert_eq!(
        (svc.method.clone(), svc.path.as_str()),
        (
            Method::PATCH,
            "/api/v1/namespaces/openfaas-fn/services/hello"
        )
    );
    for w in [d, svc] {
        assert_eq!(w.query, query(&["fieldManager=fjord", "force=true"]));
        assert_eq!(
            w.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }
    assert_eq!(
        d.body,
        serde_json::to_value(&expected.deployment).expect("json")
    );
    assert_eq!(
        svc.body,
        serde_json::to_value(&expected.service).expect("json")
    );
    assert_eq!(
        d.body["kind"], "Deployment",
        "apply bodies carry apiVersion and kind"
    );
    assert_eq!(
        d.body["spec"]["replicas"], 2,
        "the control plane's count, not scale.min"
    );

    let h = rt.get(&s.key).expect("get finds it");
    assert!(Arc::ptr_eq(&h, &applied.handle));
    assert_eq!(h.runtime, "kubernetes");
    assert_eq!(h.status().desired, 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn the_namespace_is_watched_once_with_label_selectors() {
    let (rt, api) = runtime();
    for name in ["one", "two"] {
        let a = rt
            .apply(spec(name, "img:1"), Source::default(), 1)
            .expect("apply");
        assert_eq!(outcome(a.done).await, Ok(()));
    }
    api.wait_watching().await;
    let recorded = api.recorded();
    for (collection, selector) in [
        (DEPLOYMENTS, "labelSelector=faas_function"),
        (SERVICES, "labelSelector=faas_function"),
        (SLICES, "labelSelector=kubernetes.io%2Fservice-name"),
        (PODS, "labelSelector=faas_function"),
    ] {
        let lists: Vec<_> = recorded.iter().filter(|r| r.is_list(collection)).collect();
        assert_eq!(lists.len(), 1, "one list of {collection} for two functions");
        assert!(lists[0].query.contains(selector), "{:?}", lists[0].query);
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn scale_patches_the_scale_subresource_only() {
    let (rt, api) = runtime();
    let s = spec("hello", "img:1");
    let a = rt.apply(s.clone(), Source::default(), 1).expect("apply");
    assert_eq!(outcome(a.done).await, Ok(()));
    rt.scale(&s.key, 3).expect("scale");
    assert_eq!(a.handle.desired(), 3, "the handle wants 3 at once");
    let scales = api
        .wait_for("scale", 1, |r| r.path.ends_with("/scale"))
        .await;
    let r = &scales[0];
    assert_eq!(r.method, Method::PATCH);
    assert_eq!(
        r.path,
        "/apis/apps/v1/namespaces/openfaas-fn/deployments/hello/scale"
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(r.body, json!({ "spec": { "replicas": 3 } }));
    assert_eq!(r.query, query(&["fieldManager=fjord"]));
    assert!(
        !api.recorded().iter().any(|r| r.method == Method::PUT),
        "never a full-object replace"
    );
    let unknown = fjord_core::FunctionKey::new("nope", Some(NS)).expect("key");
    assert!(matches!(
        rt.scale(&unknown, 1),
        Err(RuntimeError::NotFound(_))
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn remove_deletes_both_objects_and_404_counts_as_done() {
    let (rt, api) = runtime();
    let s = spec("hello", "img:1");
    let a = rt.apply(s.clone(), Source::default(), 1).expect("apply");
    assert_eq!(outcome(a.done).await, Ok(()));
    // Someone deleted the Service by hand already.
    api.script(
        Method::DELETE,
        &format!("{SERVICES}/hello"),
        404,
        status(404, "NotFound", "services \"hello\" not found"),
    );
    rt.remove(&s.key).await.expect("remove");
    let deletes: Vec<Recorded> = api
        .recorded()
        .into_iter()
        .filter(|r| r.method == Method::DELETE)
        .collect();
    assert_eq!(
        deletes.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        [format!("{DEPLOYMENTS}/hello"), format!("{SERVICES}/hello")]
    );
    for d in &deletes {
        assert_eq!(d.body["propagationPolicy"], "Foreground", "{:?}", d.body);
    }
    assert_eq!(deletes[1].status, 404);
    assert!(rt.get(&s.key).is_none(), "forgotten after remove");
    assert_eq!(a.handle.desired(), 0);
    assert!(matches!(
        rt.remove(&s.key).await,
        Err(RuntimeError::NotFound(_))
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_conflict_on_apply_is_retried_until_it_succeeds() {
    let (rt, api) = runtime();
    let path = format!("{DEPLOYMENTS}/hello");
    for _ in 0..2 {
        api.script(
            Method::PATCH,
            &path,
            409,
            status(409, "Conflict", "the object has been modified"),
        );
    }
    let a = rt
        .apply(spec("hello", "img:1"), Source::default(), 1)
        .expect("apply");
    assert_eq!(outcome(a.done).await, Ok(()));
    let recorded = api.recorded();
    let attempts = patches_of(&recorded, &path);
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [409, 409, 200],
        "two conflicts, then the same apply again"
    );
    assert_eq!(attempts[0].body, attempts[2].body);
    assert_eq!(patches_of(&recorded, &format!("{SERVICES}/hello")).len(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn conflicts_that_persist_end_in_a_conflict_error() {
    let (rt, api) = runtime_with(KubeRuntimeConfig {
        conflict_attempts: 3,
        ..test_config()
    });
    let path = format!("{DEPLOYMENTS}/hello");
    for _ in 0..3 {
        api.script(
            Method::PATCH,
            &path,
            409,
            status(409, "Conflict", "modified"),
        );
    }
    match rt.apply_objects(&spec("hello", "img:1"), 1).await {
        Err(KubeError::Conflict { attempts, op, .. }) => {
            assert_eq!(attempts, 3);
            assert_eq!(op.verb, "patch");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        patches_of(&api.recorded(), &path).len(),
        3,
        "bounded attempts"
    );
    assert!(
        patches_of(&api.recorded(), &format!("{SERVICES}/hello")).is_empty(),
        "no Service without its Deployment"
    );
}

#[tokio::test]
async fn forbidden_names_the_missing_rbac_permission() {
    let (rt, api) = runtime();
    let forbidden = status(
        403,
        "Forbidden",
        "deployments.apps \"hello\" is forbidden: User \"system:serviceaccount:openfaas:fjord\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"openfaas-fn\"",
    );
    api.script(
        Method::PATCH,
        &format!("{DEPLOYMENTS}/hello"),
        403,
        forbidden.clone(),
    );
    let s = spec("hello", "img:1");
    let a = rt
        .apply(s.clone(), Source::default(), 1)
        .expect("apply is accepted");
    let why = outcome(a.done).await.expect_err("a 403 fails the deploy");
    for part in [
        "patch deployments.apps",
        "\"openfaas-fn\"",
        "deploy/kubernetes/rbac.yaml",
        "`create`",
    ] {
        assert!(why.contains(part), "{part:?} missing from {why:?}");
    }
    let status = a.handle.status();
    assert_eq!(status.rollout.state, RolloutState::Failed);
    assert_eq!(status.last_error.as_deref(), Some(why.as_str()));

    // The typed error, and its mapping for remove.
    api.script(
        Method::DELETE,
        &format!("{DEPLOYMENTS}/hello"),
        403,
        forbidden,
    );
    match rt.remove(&s.key).await {
        Err(RuntimeError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            match e.get_ref().and_then(|e| e.downcast_ref::<KubeError>()) {
                Some(KubeError::Forbidden { op, .. }) => {
                    assert_eq!(
                        (op.verb, op.resource, op.namespace.as_str()),
                        ("delete", "deployments.apps", NS)
                    );
                }
                other => panic!("expected Forbidden inside, got {other:?}"),
            }
            assert!(e.to_string().contains("rbac.yaml"), "{e}");
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    assert!(
        rt.get(&s.key).is_some(),
        "a failed remove keeps the function known"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn secrets_are_read_for_their_type_and_a_missing_one_is_refused() {
    let (rt, api) = runtime();
    let secrets = "/api/v1/namespaces/openfaas-fn/secrets";
    let secret = |name: &str, t: &str| json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": NS }, "type": t });
    api.script(
        Method::GET,
        &format!("{secrets}/db"),
        200,
        secret("db", "Opaque"),
    );
    api.script(
        Method::GET,
        &format!("{secrets}/regcred"),
        200,
        secret("regcred", "kubernetes.io/dockerconfigjson"),
    );
    let mut d = deployment_request("hello", "img:1");
    d.secrets = Some(vec!["regcred".into(), "db".into()]);
    let s = Arc::new(FunctionSpec::from_deployment_for_image(d.clone()).expect("spec"));
    let a = rt.apply(s, Source::default(), 1).expect("apply");
    assert_eq!(outcome(a.done).await, Ok(()));
    let recorded = api.recorded();
    let body = &patches_of(&recorded, &format!("{DEPLOYMENTS}/hello"))[0].body;
    let pod = &body["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{ "name": "regcred" }]));
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"],
        json!([{ "secret": { "name": "db" } }]),
        "only the opaque secret is mounted"
    );

    // Not scripted: the fake answers 404, and nothing is applied.
    d.secrets = Some(vec!["missing".into()]);
    let s = Arc::new(FunctionSpec::from_deployment_for_image(d).expect("spec"));
    let writes_before = api
        .recorded()
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .count();
    let a = rt.apply(s, Source::default(), 1).expect("apply");
    let why = outcome(a.done).await.expect_err("a missing secret");
    assert!(why.contains("\"missing\" does not exist"), "{why}");
    let writes_after = api
        .recorded()
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .count();
    assert_eq!(writes_before, writes_after, "no object applied");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_server_error_and_an_unreachable_server_are_errors() {
    let (rt, api) = runtime();
    api.script(
        Method::PATCH,
        &format!("{DEPLOYMENTS}/hello"),
        500,
        status(500, "InternalError", "etcdserver: request timed out"),
    );
    match rt.apply_objects(&spec("hello", "img:1"), 1).await {
        Err(KubeError::Api { code, message, .. }) => {
            assert_eq!(code, 500);
            assert!(message.contains("etcdserver"));
        }
        other => panic!("expected the API error, got {other:?}"),
    }

    // No API server at all: the mock's other end is gone.
    let (service, handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<MockBody>>();
    drop(handle);
    let rt = KubeRuntime::new(kube::Client::new(service, NS), test_config()).expect("runtime");
    let s = spec("hello", "img:1");
    assert!(matches!(
        rt.apply_objects(&s, 1).await,
        Err(KubeError::Unreachable { .. })
    ));
    let a = rt
        .apply(s.clone(), Source::default(), 1)
        .expect("apply is accepted");
    let why = outcome(a.done).await.expect_err("nothing was applied");
    assert!(
        why.contains("cannot reach the Kubernetes API server"),
        "{why}"
    );
    match rt.remove(&s.key).await {
        Err(RuntimeError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotConnected),
        other => panic!("expected not connected, got {other:?}"),
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn the_reflectors_publish_ready_pod_addresses_counts_and_the_stuck_reason() {
    let (rt, api) = runtime();
    api.set_list(
        DEPLOYMENTS,
        vec![cluster_deployment(
            "hello",
            3,
            json!({ "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2 }),
        )],
    );
    api.set_list(
        SLICES,
        vec![
            cluster_slice(
                "hello",
                "a",
                json!([
                    ready("10.0.0.2"),
                    not_ready("10.0.0.3"),
                    terminating("10.0.0.4")
                ]),
            ),
            cluster_slice("hello", "b", json!([ready("10.0.0.1")])),
            cluster_slice("other", "a", json!([ready("10.9.9.9")])),
        ],
    );
    api.set_list(
        PODS,
        vec![cluster_pod(
            "hello",
            "hello-7d-x",
            "ErrImagePull",
            "pull access denied",
        )],
    );
    let s = spec("hello", "img:1");
    let a = rt.apply(s, Source::default(), 3).expect("apply");
    let h = a.handle.clone();
    until(&rt, "endpoints", &h, |h| h.serving().endpoints.len() == 2).await;
    assert_eq!(
        authorities(&h),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "ready endpoints only"
    );
    let status = h.status();
    assert_eq!((status.desired, status.available), (3, 2));
    let reason = status.last_error.expect("the stuck reason");
    assert!(
        reason.starts_with("ErrImagePull: pull access denied"),
        "{reason}"
    );

    // A pod gets ready: the endpoints already known stay the same objects, so their in-flight
    // counts survive.
    api.wait_watching().await;
    let (_, inflight) = h.pick().expect("a ready endpoint");
    let picked = inflight.endpoint().replica.clone();
    api.push(
        SLICES,
        "MODIFIED",
        cluster_slice("hello", "a", json!([ready("10.0.0.2"), ready("10.0.0.3")])),
    );
    until(&rt, "third endpoint", &h, |h| {
        h.serving().endpoints.len() == 3
    })
    .await;
    assert_eq!(
        authorities(&h),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    let same = h
        .serving()
        .endpoints
        .iter()
        .find(|e| e.replica == picked)
        .map(|e| e.inflight());
    assert_eq!(
        same,
        Some(1),
        "the request in flight still counts on its endpoint"
    );
    drop(inflight);

    // The pod recovers and the Deployment is scaled by hand: the status follows.
    api.push(
        PODS,
        "DELETED",
        cluster_pod("hello", "hello-7d-x", "ErrImagePull", "pull access denied"),
    );
    api.push(
        DEPLOYMENTS,
        "MODIFIED",
        cluster_deployment("hello", 4, json!({ "observedGeneration": 1, "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4 })),
    );
    until(&rt, "desired 4", &h, |h| h.status().desired == 4).await;
    until(&rt, "no error", &h, |h| h.status().last_error.is_none()).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_watch_error_keeps_the_last_endpoints_and_a_relist_recovers() {
    let (rt, api) = runtime();
    api.set_list(
        DEPLOYMENTS,
        vec![cluster_deployment(
            "hello",
            2,
            json!({ "observedGeneration": 1, "availableReplicas": 1 }),
        )],
    );
    api.set_list(
        SLICES,
        vec![cluster_slice("hello", "a", json!([ready("10.0.0.1")]))],
    );
    let a = rt
        .apply(spec("hello", "img:1"), Source::default(), 2)
        .expect("apply");
    let h = a.handle.clone();
    until(&rt, "first endpoint", &h, |h| {
        authorities(h) == ["10.0.0.1:8080"]
    })
    .await;
    api.wait_watching().await;

    // The watch expires (410) while the cluster changes; the first re-list fails too.
    api.set_list(
        SLICES,
        vec![cluster_slice(
            "hello",
            "a",
            json!([ready("10.0.0.1"), ready("10.0.0.2")]),
        )],
    );
    api.script(
        Method::GET,
        SLICES,
        500,
        status(500, "InternalError", "etcd leader changed"),
    );
    api.push(
        SLICES,
        "ERROR",
        status(410, "Expired", "too old resource version: 5 (9)"),
    );
    let failed = api
        .wait_for("failed re-list", 1, |r| {
            r.is_list(SLICES) && r.status == 500
        })
        .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        authorities(&h),
        ["10.0.0.1:8080"],
        "the last endpoints keep serving"
    );

    let lists = api
        .wait_for("successful re-list", 2, |r| {
            r.is_list(SLICES) && r.status == 200
        })
        .await;
    assert_eq!(
        lists.len(),
        2,
        "the initial list and the one after the errors"
    );
    until(&rt, "re-listed endpoints", &h, |h| {
        h.serving().endpoints.len() == 2
    })
    .await;
    assert_eq!(authorities(&h), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    rt.shutdown().await;
}

/// A function whose first version is serving on one pod.
async fn serving_v1(rt: &KubeRuntime, api: &FakeApi) -> Arc<FunctionHandle> {
    api.set_list(
        DEPLOYMENTS,
        vec![cluster_deployment("hello", 1, json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 }))],
    );
    api.set_list(
        SLICES,
        vec![cluster_slice("hello", "a", json!([ready("10.0.0.1")]))],
    );
    let a = rt
        .apply(spec("hello", "img:1"), Source::default(), 1)
        .expect("apply v1");
    assert_eq!(outcome(a.done).await, Ok(()));
    let h = a.handle.clone();
    until(rt, "v1 ready", &h, |h| {
        h.status().rollout.state == RolloutState::Ready
    })
    .await;
    api.wait_watching().await;
    h
}

#[tokio::test]
async fn an_update_is_done_when_its_replicaset_is_available() {
    let (rt, api) = runtime();
    let h = serving_v1(&rt, &api).await;
    let v2 = spec("hello", "img:2");
    let a = rt
        .apply(v2.clone(), Source::default(), 1)
        .expect("apply v2");
    assert_eq!(a.generation, 2);
    assert!(Arc::ptr_eq(&a.handle, &h), "an update keeps the handle");
    let mut done = a.done;
    // The controller has seen generation 2 but the new pod is not available yet.
    api.push(
        DEPLOYMENTS,
        "MODIFIED",
        cluster_deployment("hello", 1, json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1 })),
    );
    // Seen once the rollout counts the new ReplicaSet's available pod.
    until(&rt, "v2's pod counted", &h, |h| {
        h.status().rollout.ready == 1
    })
    .await;
    assert!(
        done.try_recv().is_err(),
        "not done while an old pod remains"
    );
    assert_eq!(
        h.spec().deployment.image,
        "img:1",
        "v1 serves until v2 is available"
    );

    api.push(
        DEPLOYMENTS,
        "MODIFIED",
        cluster_deployment("hello", 1, json!({ "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 })),
    );
    assert_eq!(outcome(done).await, Ok(()));
    assert_eq!(h.spec().deployment.image, "img:2");
    assert_eq!(h.status().rollout.state, RolloutState::Ready);
    assert_eq!(h.status().rollout.generation, 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_failed_update_reports_the_pods_reason_and_rolls_the_deployment_back() {
    let (rt, api) = runtime();
    let h = serving_v1(&rt, &api).await;
    let a = rt
        .apply(spec("hello", "img:broken"), Source::default(), 1)
        .expect("apply v2");
    api.wait_for("v2 applied", 2, |r| {
        r.method == Method::PATCH && r.path == format!("{DEPLOYMENTS}/hello")
    })
    .await;
    api.push(
        PODS,
        "ADDED",
        cluster_pod(
            "hello",
            "hello-new-1",
            "CrashLoopBackOff",
            "back-off 20s restarting failed container",
        ),
    );
    api.push(
        DEPLOYMENTS,
        "MODIFIED",
        cluster_deployment("hello", 1, json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1 })),
    );
    let why = outcome(a.done).await.expect_err("the update fails");
    assert!(why.contains("CrashLoopBackOff: back-off 20s"), "{why}");
    assert!(why.contains("previous version keeps serving"), "{why}");
    assert_eq!(h.spec().deployment.image, "img:1");
    assert_eq!(authorities(&h), ["10.0.0.1:8080"]);
    let applies = api
        .wait_for("rollback", 3, |r| {
            r.method == Method::PATCH && r.path == format!("{DEPLOYMENTS}/hello")
        })
        .await;
    let images: Vec<&Value> = applies
        .iter()
        .map(|r| &r.body["spec"]["template"]["spec"]["containers"][0]["image"])
        .collect();
    assert_eq!(
        images,
        [&json!("img:1"), &json!("img:broken"), &json!("img:1")]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_that_never_gets_available_times_out() {
    let (rt, api) = runtime_with(KubeRuntimeConfig {
        rollout_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let _h = serving_v1(&rt, &api).await;
    let a = rt
        .apply(spec("hello", "img:slow"), Source::default(), 1)
        .expect("apply v2");
    let why = outcome(a.done).await.expect_err("times out");
    assert!(why.contains("not available within"), "{why}");
    rt.shutdown().await;
}

#[tokio::test]
async fn validate_refuses_bundles_and_bad_objects_with_the_field() {
    let (rt, _api) = runtime();
    let bundle = Source {
        bundle: Some("/tmp/x".into()),
        ..Source::default()
    };
    assert!(
        matches!(rt.validate(&spec("hello", "img:1"), &bundle), Err(RuntimeError::Invalid(m)) if m.contains("container images"))
    );
    let mut d = deployment_request("hello", "img:1");
    d.constraints = Some(vec!["not a constraint".into()]);
    let bad = FunctionSpec::from_deployment_for_image(d).expect("the spec itself is fine");
    match rt.apply(Arc::new(bad), Source::default(), 1) {
        Err(RuntimeError::Invalid(m)) => assert!(m.starts_with("constraints[0]"), "{m}"),
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("expected Invalid, got a deploy"),
    }
    assert!(
        rt.get(&spec("hello", "img:1").key).is_none(),
        "nothing started"
    );
}

/// The contract suite's checks that need no replica answering HTTP. The others (apply
/// serves, scale, updates, remove) call real pods: they need a cluster.
struct MockSubject(Arc<KubeRuntime>);

impl fjord_runtime_api::contract::Subject for MockSubject {
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.0.clone()
    }
    fn spec(&self, name: &str, _marker: &str) -> (FunctionSpec, Source) {
        ((*spec(name, "img:1")).clone(), Source::default())
    }
    fn broken(&self, name: &str) -> (FunctionSpec, Source) {
        ((*spec(name, "img:broken")).clone(), Source::default())
    }
    fn invalid(&self, name: &str) -> (FunctionSpec, Source) {
        // Fine for the spec, refused by the object generation (not a node label).
        let mut d = deployment_request(name, "img:1");
        d.constraints = Some(vec!["not a constraint".into()]);
        (
            FunctionSpec::from_deployment_for_image(d).expect("spec"),
            Source::default(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_validate_refuses_invalid() {
    let (rt, _api) = runtime();
    let s = MockSubject(Arc::new(rt));
    fjord_runtime_api::contract::validate_refuses_invalid(&s).await;
    fjord_runtime_api::contract::Subject::finish(&s).await;
}

/// The real client's TLS stack builds with the one crypto provider in the tree (ring): with
/// two providers and none installed, rustls would refuse to pick, at the first connection.
#[tokio::test]
async fn an_https_client_builds_with_rustls_on_ring() {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(
        r#"
apiVersion: v1
kind: Config
clusters: [{ name: c, cluster: { server: "https://127.0.0.1:6443" } }]
users: [{ name: u, user: { token: not-a-secret } }]
contexts: [{ name: x, context: { cluster: c, user: u, namespace: openfaas-fn } }]
current-context: x
"#,
    )
    .expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config");
    let client = kube::Client::try_from(config).expect("an HTTPS client (rustls with ring)");
    assert_eq!(client.default_namespace(), NS);
    let rt = KubeRuntime::new(client, KubeRuntimeConfig::default()).expect("a runtime");
    assert_eq!(rt.name(), "kubernetes");
}

/// The function's log lines from `pod`, as `/system/logs` reads them.
fn pod_lines(h: &FunctionHandle, pod: &str) -> Vec<String> {
    h.logs
        .snapshot(None, None)
        .iter()
        .filter(|e| &*e.instance == pod)
        .map(|e| e.text.trim_end().to_string())
        .collect()
}

async fn until_lines(h: &FunctionHandle, pod: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while pod_lines(h, pod) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pod}'s lines: {:?}, want {want:?}",
            pod_lines(h, pod)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_not_followed(api: &FakeApi, pod: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while api.log_followed(pod) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pod}'s log is still followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pod_logs_are_followed_per_pod_resumed_where_they_ended_and_stopped_with_the_pod() {
    let (rt, api) = runtime();
    let h = serving_v1(&rt, &api).await;
    let log_path = |pod: &str| format!("{PODS}/{pod}/log");
    api.push(PODS, "ADDED", running_pod("hello", "hello-a", "ua"));
    let first = api
        .wait_for("hello-a's log stream", 1, |r| r.path == log_path("hello-a"))
        .await;
    assert!(
        query(&[
            "container=hello",
            "follow=true",
            "timestamps=true",
            "tailLines=1000"
        ])
        .is_subset(&first[0].query),
        "{:?}",
        first[0].query
    );
    assert!(api.log("hello-a", "2026-12-03T09:00:01.000000001Z first"));
    assert!(api.log("hello-a", "2026-12-03T09:00:01.5Z second"));
    until_lines(&h, "hello-a", &["first", "second"]).await;
    let stamp = h.logs.snapshot(None, None)[0].timestamp;
    assert_eq!(
        stamp,
        std::time::UNIX_EPOCH + Duration::new(1_796_288_401, 1),
        "the kubelet's time, not the time fjord read it"
    );

    // A second pod: its lines merge into the function's, named by pod.
    api.push(PODS, "ADDED", running_pod("hello", "hello-b", "ub"));
    api.wait_for("hello-b's log stream", 1, |r| r.path == log_path("hello-b"))
        .await;
    assert!(api.log("hello-b", "2026-12-03T09:00:02Z from b"));
    until_lines(&h, "hello-b", &["from b"]).await;

    // The API server ends hello-a's stream: it is opened again from the last line's second,
    // and lines already read are not repeated.
    api.end_logs("hello-a");
    let again = api
        .wait_for("hello-a's stream reopened", 2, |r| {
            r.path == log_path("hello-a")
        })
        .await;
    let since: Vec<&String> = again[1]
        .query
        .iter()
        .filter(|q| q.starts_with("sinceTime="))
        .collect();
    assert_eq!(since.len(), 1, "{:?}", again[1].query);
    assert!(
        since[0].contains("2026-12-03T09") && since[0].ends_with("01Z"),
        "{since:?}"
    );
    assert!(
        !again[1].query.iter().any(|q| q.starts_with("tailLines")),
        "{:?}",
        again[1].query
    );
    assert!(api.log("hello-a", "2026-12-03T09:00:01.000000001Z first"));
    assert!(api.log("hello-a", "2026-12-03T09:00:01.5Z second"));
    assert!(api.log("hello-a", "2026-12-03T09:00:03Z third"));
    until_lines(&h, "hello-a", &["first", "second", "third"]).await;

    // hello-b goes: its follower stops. Removing the function stops hello-a's.
    api.push(PODS, "DELETED", running_pod("hello", "hello-b", "ub"));
    until_not_followed(&api, "hello-b").await;
    assert!(api.log_followed("hello-a"));
    rt.remove(&h.key).await.expect("remove");
    until_not_followed(&api, "hello-a").await;
    rt.shutdown().await;
}

fn cluster_service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": NS, "resourceVersion": "1",
            "labels": { "faas_function": name },
        },
        "spec": { "selector": { "faas_function": name }, "ports": [{ "port": 8080 }] },
    })
}

/// The Deployment as fjord last applied it, with `replicas` and, when `changed`, the
/// generation after the fake's (which counts applies): what the watch shows after someone
/// else changed its spec.
fn as_applied(api: &FakeApi, changed: bool, replicas: i32) -> Value {
    let path = format!("{DEPLOYMENTS}/hello");
    let recorded = api.recorded();
    let applies = patches_of(&recorded, &path);
    let mut d = applies.last().map(|r| r.body.clone()).expect("an apply");
    let generation = applies.len() as i64 + i64::from(changed);
    d["metadata"]["generation"] = json!(generation);
    d["metadata"]["resourceVersion"] = json!("1");
    d["spec"]["replicas"] = json!(replicas);
    d["status"] = json!({ "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas });
    d
}

#[tokio::test]
async fn objects_deleted_or_edited_by_someone_else_are_applied_again() {
    let (rt, api) = runtime();
    let _h = serving_v1(&rt, &api).await;
    let deployment = format!("{DEPLOYMENTS}/hello");
    let service = format!("{SERVICES}/hello");
    let applies = |path: &str| patches_of(&api.recorded(), path).len();
    let (d0, s0) = (applies(&deployment), applies(&service));

    // The Service deleted (after it was seen): both objects applied again.
    api.push(SERVICES, "ADDED", cluster_service("hello"));
    api.push(SERVICES, "DELETED", cluster_service("hello"));
    api.wait_for("the Service applied again", s0 + 1, |r| {
        r.method == Method::PATCH && r.path == service
    })
    .await;
    assert_eq!(applies(&deployment), d0 + 1);

    // The Deployment deleted: applied again with the count fjord wants.
    api.push(DEPLOYMENTS, "ADDED", as_applied(&api, false, 1));
    api.push(DEPLOYMENTS, "DELETED", as_applied(&api, false, 1));
    let again = api
        .wait_for("the Deployment applied again", d0 + 2, |r| {
            r.method == Method::PATCH && r.path == deployment
        })
        .await;
    let last = &again.last().unwrap().body;
    assert_eq!(last["spec"]["replicas"], 1);
    assert_eq!(
        last["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:1"
    );

    // Its image changed by hand (kubectl set image) and scaled to 3: the image comes back,
    // the count stays.
    let mut edited = as_applied(&api, true, 3);
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
    api.push(DEPLOYMENTS, "MODIFIED", edited);
    let again = api
        .wait_for("the edit undone", d0 + 3, |r| {
            r.method == Method::PATCH && r.path == deployment
        })
        .await;
    let last = &again.last().unwrap().body;
    assert_eq!(
        last["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:1"
    );
    assert_eq!(last["spec"]["replicas"], 3);

    // A scale alone (a new generation, the same template) is nothing to put back.
    api.push(DEPLOYMENTS, "MODIFIED", as_applied(&api, true, 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(applies(&deployment), d0 + 3);

    // Removed by fjord: its objects' deletion is not undone.
    rt.remove(&fjord_core::FunctionKey::new("hello", None).unwrap())
        .await
        .expect("removed");
    api.push(DEPLOYMENTS, "DELETED", as_applied(&api, false, 2));
    api.push(SERVICES, "DELETED", cluster_service("hello"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(applies(&deployment), d0 + 3);
    rt.shutdown().await;
}
