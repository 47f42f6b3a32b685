//! The Function custom resource controller: `openfaas.com/v1` Function objects that people
//! and GitOps tools (Argo CD, Flux, `kubectl apply`) write are deployed as functions through
//! fjord's control plane — the same checks as a REST deploy — and each gets its outcome in
//! its `status` (`Ready` condition, `observedGeneration`).
//!
//! - A function deployed from a Function object carries the annotation [`MANAGED_BY`] (the
//!   object's uid), so it shows as managed in the REST API (which refuses to change or delete
//!   it: its object is where it changes), and the controller removes only such functions
//!   when their object goes: functions deployed over the REST API alone are never touched.
//!   An object named like a function deployed over the REST API takes it over.
//! - Each function is reconciled by a task of its own that always works on the newest
//!   version of its object (a change during a slow rollout replaces what is waiting), so one
//!   function's rollout does not hold up the others.
//! - A deploy refused as invalid (400/403 from the control plane) waits for the object to
//!   change; any other failure is retried with a growing backoff.
//! - A (re-)list after a watch expired or fjord restarted removes the managed functions
//!   whose objects are gone, and re-checks every object (unchanged ones cost nothing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::sync::watch;

use crate::crd::{Function, FunctionCondition, FunctionCrStatus};

/// On a function deployed from a Function object: that object's uid.
pub const MANAGED_BY: &str = fjord_core::policy::ANNOTATION_FUNCTION_OBJECT;

/// Why the control plane did not deploy or delete a function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The deployment is refused as it is (a 400 or 403): retried only when the object
    /// changes.
    #[error("{0}")]
    Invalid(String),
    /// Anything else (a rollout that failed, the cluster away): retried with backoff.
    #[error("{0}")]
    Failed(String),
}

/// What the controller changes: fjord's functions. `fjord serve` implements it on its control
/// plane; tests on a map.
pub trait FunctionStore: Send + Sync + 'static {
    /// The stored deployment of `key`, if it is deployed.
    fn deployment(&self, key: &FunctionKey) -> Option<FunctionDeployment>;
    /// The functions deployed in `namespace`, with their deployments.
    fn functions(&self, namespace: &str) -> Vec<(FunctionKey, FunctionDeployment)>;
    /// Creates or updates the function.
    fn deploy(&self, deployment: FunctionDeployment) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Removes the function; one that is not deployed is not an error.
    fn delete<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The namespaces whose Function objects are deployed.
    pub namespaces: Vec<String>,
    /// Also every namespace labelled `openfaas=1`, followed as labels come and go (needs
    /// `list` and `watch` on namespaces; without them, `namespaces` only).
    pub labelled_namespaces: bool,
    /// The first wait before a failed deploy is tried again; doubled up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespaces: vec![fjord_core::DEFAULT_NAMESPACE.to_string()],
            labelled_namespaces: true,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Runs the controller until the future is dropped: one watch per namespace.
pub async fn run(client: kube::Client, config: ControllerConfig, store: Arc<dyn FunctionStore>) {
    use k8s_openapi::api::core::v1::Namespace;
    let config = Arc::new(config);
    let mut watches = Watches {
        client: client.clone(),
        config: config.clone(),
        store,
        tasks: tokio::task::JoinSet::new(),
        running: HashMap::new(),
    };
    for ns in &config.namespaces {
        watches.start(ns);
    }
    if !config.labelled_namespaces {
        while watches.tasks.join_next().await.is_some() {}
        return;
    }
    let api: Api<Namespace> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default().labels("openfaas=1"))
        .default_backoff()
        .boxed();
    let mut listed: HashSet<String> = HashSet::new();
    let mut failing: Option<String> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => {
                failing = None;
                e
            }
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "function objects: cannot watch the namespaces labelled openfaas=1 (the ClusterRole fjord-namespaces-read of deploy/kubernetes/rbac.yaml allows it); retrying, meanwhile watching {}", config.namespaces.join(", "));
                    failing = Some(text);
                }
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                if let Some(name) = n.metadata.name {
                    watches.start(&name);
                    listed.insert(name);
                }
            }
            watcher::Event::Delete(n) => {
                if let Some(name) = n.metadata.name {
                    watches.stop(&name);
                }
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = watches
                    .running
                    .keys()
                    .filter(|ns| !listed.contains(*ns))
                    .cloned()
                    .collect();
                for ns in gone {
                    watches.stop(&ns);
                }
            }
        }
    }
}

/// The namespaces' Function watches. Dropped (the controller's future dropped): all stop.
struct Watches {
    client: kube::Client,
    config: Arc<ControllerConfig>,
    store: Arc<dyn FunctionStore>,
    tasks: tokio::task::JoinSet<()>,
    running: HashMap<String, tokio::task::AbortHandle>,
}

impl Watches {
    fn start(&mut self, namespace: &str) {
        while self.tasks.try_join_next().is_some() {}
        if self.running.contains_key(namespace) {
            return;
        }
        let api: Api<Function> = Api::namespaced(self.client.clone(), namespace);
        let handle = self.tasks.spawn(watch_namespace(
            api,
            namespace.to_string(),
            self.config.clone(),
            self.store.clone(),
        ));
        self.running.insert(namespace.to_string(), handle);
    }

    /// Stops watching a namespace no longer labelled (never one of the configured ones).
    /// Its functions stay as they are: a label is not a deletion.
    fn stop(&mut self, namespace: &str) {
        if self.config.namespaces.iter().any(|n| n == namespace) {
            return;
        }
        if let Some(h) = self.running.remove(namespace) {
            tracing::info!(%namespace, "function objects: no longer watching (not labelled openfaas=1)");
            h.abort();
        }
    }
}

/// What a function's task is asked to make true: the object as last seen, or none (deleted).
type Desired = Option<Function>;

async fn watch_namespace(
    api: Api<Function>,
    namespace: String,
    config: Arc<ControllerConfig>,
    store: Arc<dyn FunctionStore>,
) {
    let mut workers: HashMap<String, watch::Sender<Desired>> = HashMap::new();
    // The objects of a list in progress (`Init` … `InitDone`).
    let mut listed: HashSet<String> = HashSet::new();
    let mut failing: Option<String> = None;
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    tracing::info!(%namespace, "function objects: watching");
    // A function's task lives as long as this watch (also after a deletion: the object may
    // come back, and two tasks must never work on one function).
    let mut send = |name: String, desired: Desired| match workers.get(&name) {
        Some(tx) => {
            tx.send_replace(desired);
        }
        None => {
            let (tx, rx) = watch::channel(desired);
            let key = match FunctionKey::new(&name, Some(&namespace)) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(%namespace, function = %name, error = %e, "function object: not a function name");
                    return;
                }
            };
            tokio::spawn(reconcile_function(
                key,
                rx,
                api.clone(),
                config.clone(),
                store.clone(),
            ));
            workers.insert(name, tx);
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => {
                if failing.take().is_some() {
                    tracing::info!(%namespace, "function objects: watch recovered");
                }
                e
            }
            Err(e) => {
                let text = describe_watch_error(&namespace, e);
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%namespace, error = %text, "function objects: watch failed; retrying with backoff (functions keep running as they are)");
                    failing = Some(text);
                }
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(f) | watcher::Event::Apply(f) => {
                let Some(name) = f.metadata.name.clone() else {
                    continue;
                };
                listed.insert(name.clone());
                send(name, Some(f));
            }
            watcher::Event::Delete(f) => {
                if let Some(name) = f.metadata.name.clone() {
                    send(name, None);
                }
            }
            watcher::Event::InitDone => {
                // Kubernetes holds the truth: a managed function without its object (deleted
                // while fjord was down, or while the watch was away) goes.
                for (key, d) in store.functions(&namespace) {
                    if managed(&d) && !listed.contains(&key.name) {
                        send(key.name.clone(), None);
                    }
                }
            }
        }
    }
}

/// A watch error in words (a 403 names the permission, as the runtime's watches do); a 404
/// means the CRD is missing.
fn describe_watch_error(namespace: &str, e: watcher::Error) -> String {
    let missing_crd = matches!(
        &e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) if s.code == 404
    );
    let text = crate::runtime::describe_watch_error(namespace, FUNCTIONS_RESOURCE, e);
    if missing_crd {
        format!(
            "{text}: the Function CRD is not installed (kubectl apply -f deploy/kubernetes/crd-function.yaml)"
        )
    } else {
        text
    }
}

/// The resource as RBAC names it.
const FUNCTIONS_RESOURCE: &str = "functions.openfaas.com";

fn managed(d: &FunctionDeployment) -> bool {
    fjord_core::policy::from_function_object(d.annotations.as_ref())
}

/// One function's task: makes the function what the newest desired state says, again after
/// a failure (with backoff) and whenever it changes. A new object that differs only in its
/// status (the controller's own writes come back so) is not a change. Ends when the watch
/// ends.
async fn reconcile_function(
    key: FunctionKey,
    mut desired: watch::Receiver<Desired>,
    api: Api<Function>,
    config: Arc<ControllerConfig>,
    store: Arc<dyn FunctionStore>,
) {
    let mut backoff = config.backoff;
    // The version last acted on, and when to try it again if that failed.
    let mut last: Option<(Desired, Option<tokio::time::Instant>)> = None;
    loop {
        let wanted = desired.borrow_and_update().clone();
        let due = match &last {
            Some((seen, retry)) if same_version(seen, &wanted) => match retry {
                None => false,
                Some(at) => tokio::select! {
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    () = tokio::time::sleep_until(*at) => true,
                },
            },
            _ => true,
        };
        if !due {
            if desired.changed().await.is_err() {
                return;
            }
            continue;
        }
        let failed = match &wanted {
            None => match delete(&key, store.as_ref()).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(function = %key, error = %e, "function object deleted, but the function could not be removed; retrying");
                    true
                }
            },
            Some(f) => {
                let outcome = apply(&key, f, store.as_ref()).await;
                report(&api, &key, f, &outcome).await;
                matches!(outcome, Err(StoreError::Failed(_)))
            }
        };
        let retry = if failed {
            let at = tokio::time::Instant::now() + backoff;
            backoff = (backoff * 2).min(config.max_backoff);
            Some(at)
        } else {
            backoff = config.backoff;
            None
        };
        last = Some((wanted, retry));
    }
}

/// Whether two desired states ask for the same thing (status aside).
fn same_version(a: &Desired, b: &Desired) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.metadata.uid == b.metadata.uid && a.spec == b.spec,
        _ => false,
    }
}

/// What happened to one version of a Function object: deployed (or already as it says).
type Outcome = Result<(), StoreError>;

async fn apply(key: &FunctionKey, f: &Function, store: &dyn FunctionStore) -> Outcome {
    let d = deployment_for(key, f)?;
    if is_deployed(store, key, &d) {
        return Ok(());
    }
    tracing::info!(function = %key, generation = ?f.metadata.generation, "function object: deploying");
    store.deploy(d).await?;
    tracing::info!(function = %key, "function object: deployed");
    Ok(())
}

/// The deployment a Function object asks for: in its namespace, marked with its uid.
pub fn deployment_for(key: &FunctionKey, f: &Function) -> Result<FunctionDeployment, StoreError> {
    let mut d = f
        .to_deployment()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    d.namespace = Some(key.namespace.clone());
    d.annotations.get_or_insert_with(BTreeMap::new).insert(
        MANAGED_BY.to_string(),
        f.metadata.uid.clone().unwrap_or_default(),
    );
    Ok(d)
}

/// Whether the store already runs `wanted` (as far as a Function object can say: the
/// namespace is the object's, empty maps are none).
pub fn is_deployed(
    store: &dyn FunctionStore,
    key: &FunctionKey,
    wanted: &FunctionDeployment,
) -> bool {
    let Some(mut current) = store.deployment(key) else {
        return false;
    };
    current.namespace = wanted.namespace.clone();
    current.registry_auth = None;
    current.network = None;
    let empty = |m: &Option<BTreeMap<String, String>>| m.as_ref().is_none_or(|m| m.is_empty());
    if empty(&current.labels) && empty(&wanted.labels) {
        current.labels = wanted.labels.clone();
    }
    if empty(&current.env_vars) && empty(&wanted.env_vars) {
        current.env_vars = wanted.env_vars.clone();
    }
    &current == wanted
}

async fn delete(key: &FunctionKey, store: &dyn FunctionStore) -> Result<(), StoreError> {
    match store.deployment(key) {
        Some(d) if managed(&d) => {
            store.delete(key).await?;
            tracing::info!(function = %key, "function object deleted: function removed");
            Ok(())
        }
        // Deployed over the REST API alone (or already gone): not the controller's.
        _ => Ok(()),
    }
}

/// The `Ready` condition for an outcome: (status, reason, message).
fn condition(outcome: &Outcome) -> (&'static str, &'static str, String) {
    match outcome {
        Ok(()) => ("True", "Deployed", "the function is deployed".to_string()),
        Err(StoreError::Invalid(m)) => ("False", "Invalid", m.clone()),
        Err(StoreError::Failed(m)) => ("False", "DeployFailed", format!("{m}; retrying")),
    }
}

/// Writes the outcome to the object's status, unless it says so already.
async fn report(api: &Api<Function>, key: &FunctionKey, f: &Function, outcome: &Outcome) {
    let (status, reason, message) = condition(outcome);
    let wanted = FunctionCrStatus {
        conditions: Some(vec![FunctionCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now_rfc3339()),
            ..FunctionCondition::default()
        }]),
        observed_generation: f.metadata.generation,
        ..f.status.clone().unwrap_or_default()
    };
    if let Some(current) = &f.status
        && current.observed_generation == wanted.observed_generation
        && ready_condition(current) == ready_condition(&wanted)
    {
        return;
    }
    let patch = json!({ "status": {
        "conditions": wanted.conditions,
        "observedGeneration": wanted.observed_generation,
    }});
    if let Err(e) = api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(function = %key, error = %e, "function object: cannot write its status");
    }
}

/// The Ready condition without its time: whether a status says something new.
fn ready_condition(s: &FunctionCrStatus) -> Option<(String, Option<String>, Option<String>)> {
    s.conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Now, in RFC 3339 to the second (as Kubernetes writes condition times).
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}
