//! The Function object controller against the fake API server (`fake_api`) and a store
//! standing in for fjord's control plane: what it deploys and removes, what it writes to
//! the objects' status, and how it retries. No cluster is involved.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_kube::controller::{self, MANAGED_BY};
use fjord_kube::{ControllerConfig, FunctionStore, StoreError};
use futures_util::future::BoxFuture;
use http::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

mod fake_api;
use fake_api::*;

/// A control plane in a map: records each deploy (`deploy NAME IMAGE`) and delete.
struct Store {
    functions: Mutex<HashMap<String, FunctionDeployment>>,
    log: Mutex<Vec<String>>,
    /// Answers for the next deploys, first in first out (then: success).
    failures: Mutex<VecDeque<StoreError>>,
    /// When set, each deploy of that function waits for a permit (a slow rollout), after its
    /// log line.
    gate: Option<(&'static str, Arc<Semaphore>)>,
    changed: watch::Sender<usize>,
}

impl Store {
    fn new() -> Arc<Self> {
        Self::with_gate(None)
    }

    fn with_gate(gate: Option<(&'static str, Arc<Semaphore>)>) -> Arc<Self> {
        Arc::new(Self {
            functions: Mutex::default(),
            log: Mutex::default(),
            failures: Mutex::default(),
            gate,
            changed: watch::Sender::new(0),
        })
    }

    /// A function deployed before the controller started.
    fn put(&self, d: FunctionDeployment) {
        self.functions.lock().unwrap().insert(d.service.clone(), d);
    }

    fn get(&self, name: &str) -> Option<FunctionDeployment> {
        self.functions.lock().unwrap().get(name).cloned()
    }

    fn fail_next(&self, e: StoreError) {
        self.failures.lock().unwrap().push_back(e);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, line: String) {
        self.log.lock().unwrap().push(line);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until the log has `n` lines and returns it.
    async fn wait_log(&self, n: usize) -> Vec<String> {
        let mut seen = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.len() >= n {
                return log;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                panic!("{n} store calls not seen within {PATIENCE:?}; got {log:?}");
            }
        }
    }
}

impl FunctionStore for Store {
    fn deployment(&self, key: &FunctionKey) -> Option<FunctionDeployment> {
        self.get(&key.name)
            .filter(|d| d.namespace.as_deref().unwrap_or(NS) == key.namespace)
    }

    fn functions(&self, namespace: &str) -> Vec<(FunctionKey, FunctionDeployment)> {
        self.functions
            .lock()
            .unwrap()
            .values()
            .filter(|d| d.namespace.as_deref().unwrap_or(NS) == namespace)
            .map(|d| {
                let key = FunctionKey::new(&d.service, Some(namespace)).unwrap();
                (key, d.clone())
            })
            .collect()
    }

    fn deploy(&self, d: FunctionDeployment) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.record(format!("deploy {} {}", d.service, d.image));
            if let Some((name, gate)) = &self.gate
                && d.service == *name
            {
                gate.acquire().await.expect("the gate").forget();
            }
            if let Some(e) = self.failures.lock().unwrap().pop_front() {
                return Err(e);
            }
            self.put(d);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.record(format!("delete {}", key.name));
            self.functions.lock().unwrap().remove(&key.name);
            Ok(())
        })
    }
}

fn config() -> ControllerConfig {
    ControllerConfig {
        namespaces: vec![NS.to_string()],
        labelled_namespaces: false,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

/// A Function object as the API server returns it.
fn object(name: &str, image: &str, generation: i64) -> Value {
    json!({
        "apiVersion": "openfaas.com/v1", "kind": "Function",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "generation": generation, "resourceVersion": "1",
        },
        "spec": {
            "name": name, "image": image, "handler": "python3 index.py",
            "environment": { "GREETING": "hi" },
            "annotations": { "com.openfaas.scale.min": "1" },
            "readOnlyRootFilesystem": true,
        },
    })
}

/// The deployment the controller makes of [`object`].
fn managed(name: &str, image: &str) -> FunctionDeployment {
    serde_json::from_value(json!({
        "service": name, "image": image, "namespace": NS, "envProcess": "python3 index.py",
        "envVars": { "GREETING": "hi" },
        "annotations": { "com.openfaas.scale.min": "1", MANAGED_BY: format!("uid-{name}") },
        "readOnlyRootFilesystem": true,
    }))
    .unwrap()
}

/// A function deployed over the REST API: no Function object behind it.
fn rest(name: &str) -> FunctionDeployment {
    serde_json::from_value(json!({ "service": name, "image": "img:rest" })).unwrap()
}

/// Starts the controller on `objects` and waits until it watches.
async fn start(objects: Vec<Value>, store: Arc<Store>) -> (FakeApi, tokio::task::JoinHandle<()>) {
    start_with(config(), objects, store).await
}

async fn start_with(
    config: ControllerConfig,
    objects: Vec<Value>,
    store: Arc<Store>,
) -> (FakeApi, tokio::task::JoinHandle<()>) {
    let (client, api) = fake_cluster();
    api.set_list(FUNCTIONS, objects);
    let task = tokio::spawn(controller::run(client, config, store));
    api.wait_for("the Function watch", 1, |r| {
        r.path == FUNCTIONS && r.is_watch()
    })
    .await;
    (api, task)
}

fn status_patches(api: &FakeApi, name: &str) -> Vec<Recorded> {
    let path = format!("{FUNCTIONS}/{name}/status");
    api.recorded()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && r.path == path)
        .collect()
}

async fn wait_status(api: &FakeApi, name: &str, n: usize) -> Vec<Recorded> {
    let path = format!("{FUNCTIONS}/{name}/status");
    api.wait_for("status patches", n, |r| {
        r.method == Method::PATCH && r.path == path
    })
    .await
}

fn ready(patch: &Recorded) -> (&str, &str, &str) {
    let c = &patch.body["status"]["conditions"][0];
    assert_eq!(c["type"], "Ready", "{:#}", patch.body);
    (
        c["status"].as_str().unwrap(),
        c["reason"].as_str().unwrap(),
        c["message"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn an_object_is_deployed_as_its_function_and_its_status_says_ready() {
    let store = Store::new();
    let (api, _task) = start(vec![object("hello", "img:1", 1)], store.clone()).await;
    assert_eq!(store.wait_log(1).await, ["deploy hello img:1"]);
    assert_eq!(store.get("hello").unwrap(), managed("hello", "img:1"));

    let patches = wait_status(&api, "hello", 1).await;
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(ready(&patches[0]).0, "True");
    assert_eq!(ready(&patches[0]).1, "Deployed");
    assert_eq!(patches[0].body["status"]["observedGeneration"], 1);

    // The object with the status it now has: nothing to do. Then a new generation.
    let mut same = object("hello", "img:1", 1);
    same["status"] = patches[0].body["status"].clone();
    api.push(FUNCTIONS, "MODIFIED", same);
    api.push(FUNCTIONS, "MODIFIED", object("hello", "img:2", 2));
    assert_eq!(
        store.wait_log(2).await,
        ["deploy hello img:1", "deploy hello img:2"]
    );
    let patches = wait_status(&api, "hello", 2).await;
    assert_eq!(patches[1].body["status"]["observedGeneration"], 2);
    assert_eq!(store.get("hello").unwrap().image, "img:2");
}

#[tokio::test]
async fn an_invalid_object_gets_ready_false_and_waits_for_a_change() {
    let store = Store::new();
    store.fail_next(StoreError::Invalid(
        "secrets: \"db\" does not exist in openfaas-fn".into(),
    ));
    let (api, _task) = start(vec![object("hello", "img:1", 1)], store.clone()).await;
    let patches = wait_status(&api, "hello", 1).await;
    let (status, reason, message) = ready(&patches[0]);
    assert_eq!((status, reason), ("False", "Invalid"));
    assert!(message.contains("\"db\" does not exist"), "{message}");
    // Not retried: ten backoffs later still the one attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.log(), ["deploy hello img:1"]);
    assert!(store.get("hello").is_none());

    api.push(FUNCTIONS, "MODIFIED", object("hello", "img:2", 2));
    assert_eq!(
        store.wait_log(2).await,
        ["deploy hello img:1", "deploy hello img:2"]
    );
    let patches = wait_status(&api, "hello", 2).await;
    assert_eq!(ready(&patches[1]).0, "True");
}

#[tokio::test]
async fn a_failed_deploy_is_retried_with_backoff_until_it_succeeds() {
    let store = Store::new();
    for _ in 0..2 {
        store.fail_next(StoreError::Failed(
            "the rollout did not become ready: ErrImagePull".into(),
        ));
    }
    // A backoff long enough for the test to answer the first status write before the retry.
    let slower = ControllerConfig {
        backoff: Duration::from_millis(500),
        ..config()
    };
    let (api, _task) = start_with(slower, vec![object("hello", "img:1", 1)], store.clone()).await;
    let patches = wait_status(&api, "hello", 1).await;
    let (status, reason, message) = ready(&patches[0]);
    assert_eq!((status, reason), ("False", "DeployFailed"));
    assert!(message.contains("ErrImagePull"), "{message}");
    assert!(message.ends_with("retrying"), "{message}");
    // The status write comes back as a change of the object, as from an API server: not a
    // new version, so it waits for its backoff like any retry, and the same failure again
    // is no new status.
    let mut written = object("hello", "img:1", 1);
    written["status"] = patches[0].body["status"].clone();
    api.push(FUNCTIONS, "MODIFIED", written);
    assert_eq!(store.wait_log(3).await.len(), 3);
    let patches = wait_status(&api, "hello", 2).await;
    assert_eq!(ready(&patches[1]).0, "True");
    assert_eq!(status_patches(&api, "hello").len(), 2);
    assert_eq!(store.get("hello").unwrap(), managed("hello", "img:1"));
}

#[tokio::test]
async fn deleting_an_object_removes_its_function_but_never_one_deployed_over_rest() {
    let store = Store::new();
    store.put(managed("managed", "img:1"));
    store.put(rest("plain"));
    let (api, _task) = start(vec![object("managed", "img:1", 1)], store.clone()).await;
    // Already what its object says: not deployed again.
    wait_status(&api, "managed", 1).await;
    assert!(store.log().is_empty(), "{:?}", store.log());

    // An object named like the REST function, deleted: the function is not its.
    api.push(FUNCTIONS, "DELETED", object("plain", "img:rest", 1));
    api.push(FUNCTIONS, "DELETED", object("managed", "img:1", 1));
    assert_eq!(store.wait_log(1).await, ["delete managed"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.log(), ["delete managed"]);
    assert!(store.get("plain").is_some());

    // Created again: deployed again (the function's task outlives the deletion).
    api.push(FUNCTIONS, "ADDED", object("managed", "img:3", 1));
    assert_eq!(
        store.wait_log(2).await,
        ["delete managed", "deploy managed img:3"]
    );
}

#[tokio::test]
async fn a_list_removes_managed_functions_whose_objects_are_gone() {
    let store = Store::new();
    store.put(managed("gone", "img:1"));
    store.put(rest("plain"));
    let (_api, _task) = start(Vec::new(), store.clone()).await;
    assert_eq!(store.wait_log(1).await, ["delete gone"]);
    assert!(store.get("gone").is_none());
    assert!(store.get("plain").is_some());
}

#[tokio::test]
async fn changes_during_a_slow_rollout_are_applied_after_it_newest_first() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Store::with_gate(Some(("hello", gate.clone())));
    let (api, _task) = start(vec![object("hello", "img:1", 1)], store.clone()).await;
    // The first rollout is under way; two more versions arrive meanwhile.
    assert_eq!(store.wait_log(1).await, ["deploy hello img:1"]);
    api.push(FUNCTIONS, "MODIFIED", object("hello", "img:2", 2));
    api.push(FUNCTIONS, "MODIFIED", object("hello", "img:3", 3));
    // Another function is not held up by it (and, the watch's events being handled in
    // order, once it is deployed both versions have reached hello's task).
    api.push(FUNCTIONS, "ADDED", object("other", "img:o", 1));
    assert_eq!(
        store.wait_log(2).await,
        ["deploy hello img:1", "deploy other img:o"]
    );
    gate.add_permits(10);
    assert_eq!(
        store.wait_log(3).await,
        [
            "deploy hello img:1",
            "deploy other img:o",
            "deploy hello img:3"
        ]
    );
    let patches = wait_status(&api, "hello", 2).await;
    assert_eq!(patches[0].body["status"]["observedGeneration"], 1);
    assert_eq!(patches[1].body["status"]["observedGeneration"], 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.log().len(), 3, "{:?}", store.log());
    assert_eq!(status_patches(&api, "hello").len(), 2);
}

#[tokio::test]
async fn namespaces_labelled_openfaas_1_are_followed_as_they_come_and_go() {
    let store = Store::new();
    let (client, api) = fake_cluster();
    api.set_list(FUNCTIONS, Vec::new());
    api.set_list(TEAM_FUNCTIONS, Vec::new());
    let following = ControllerConfig {
        labelled_namespaces: true,
        ..config()
    };
    let _task = tokio::spawn(controller::run(client, following, store.clone()));
    let namespaces = api
        .wait_for("the namespace watch", 1, |r| {
            r.path == NAMESPACES && r.is_watch()
        })
        .await;
    assert!(
        namespaces[0].query.contains("labelSelector=openfaas%3D1"),
        "{:?}",
        namespaces[0].query
    );
    let team = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": TEAM_NS, "labels": { "openfaas": "1" } },
    });
    api.push(NAMESPACES, "ADDED", team.clone());
    api.wait_for("the new namespace's Function watch", 1, |r| {
        r.path == TEAM_FUNCTIONS && r.is_watch()
    })
    .await;
    let mut object = object("teamfn", "img:1", 1);
    object["metadata"]["namespace"] = json!(TEAM_NS);
    api.push(TEAM_FUNCTIONS, "ADDED", object);
    assert_eq!(store.wait_log(1).await, ["deploy teamfn img:1"]);
    assert_eq!(
        store.get("teamfn").unwrap().namespace.as_deref(),
        Some(TEAM_NS)
    );

    // Unlabelled: its watch stops, its function stays (a label is not a deletion).
    api.push(NAMESPACES, "DELETED", team);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while api.watch_open(TEAM_FUNCTIONS) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch of {TEAM_NS} still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.get("teamfn").is_some());
    // The configured namespace is watched throughout.
    assert!(api.watch_open(FUNCTIONS));
}

#[tokio::test]
async fn a_refused_or_failed_list_is_retried_and_the_functions_then_deployed() {
    let store = Store::new();
    let (client, api) = fake_cluster();
    api.set_list(FUNCTIONS, vec![object("hello", "img:1", 1)]);
    // RBAC not granted yet, then the API server failing: both retried with backoff.
    api.script(
        Method::GET,
        FUNCTIONS,
        403,
        status(403, "Forbidden", "functions.openfaas.com is forbidden"),
    );
    api.script(
        Method::GET,
        FUNCTIONS,
        500,
        status(500, "InternalError", "etcdserver: request timed out"),
    );
    let _task = tokio::spawn(controller::run(client, config(), store.clone()));
    assert_eq!(store.wait_log(1).await, ["deploy hello img:1"]);
    let lists: Vec<u16> = api
        .recorded()
        .iter()
        .filter(|r| r.is_list(FUNCTIONS))
        .map(|r| r.status)
        .collect();
    assert_eq!(lists[..3], [403, 500, 200], "{lists:?}");
}
