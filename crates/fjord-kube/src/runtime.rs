//! [`KubeRuntime`]: the [`Runtime`] that runs functions as Deployments on a Kubernetes cluster.
//!
//! - `apply` server-side applies the function's Deployment and Service (field manager
//!   `fjord`, forced, so fjord owns the fields it sets and users keep the ones it does not);
//!   409 conflicts are retried with backoff a bounded number of times.
//! - `scale` patches the `deployments/scale` subresource: never a read-modify-write of the
//!   whole Deployment (faas-netes's GET + PUT races with every other writer).
//! - `remove` deletes the Deployment and the Service with foreground propagation; 404 is done.
//! - A function's Deployment or Service deleted by someone else, or its Deployment's spec
//!   changed (`kubectl edit`, `kubectl set image`), is applied again: the fields fjord sets
//!   come back (image, env, resources, probes, labels and annotations it sets, security
//!   context, volumes), the replica count stays as found (`kubectl scale` is taken as the
//!   autoscaler's input), and fields fjord does not set (a toleration, a node selector, an
//!   annotation of another tool) are left to whoever set them. At most once per
//!   `repair_interval`, so fjord never fights another controller in a tight loop.
//! - Replica state comes from one reflector per namespace and kind (Deployments, Services,
//!   the EndpointSlices of Services, function pods), never from a request per invocation. Each
//!   change recomputes the namespace's functions with [`crate::status`] and publishes the
//!   ready pod addresses to their [`FunctionHandle`]s, which the gateway reads lock-free.
//!
//! The watches retry with kube's default backoff and re-list when the API server says their
//! resource version expired; meanwhile the stores keep what they last knew, so the gateway
//! keeps routing to the pods it knew were ready.
//!
//! `done` of a first deploy answers once the API server has accepted the objects (as in
//! fjord's other runtimes: readiness is then read from the handle's rollout, which turns
//! `ready`, or `failed` with the pod's reason while Kubernetes keeps retrying). `done` of an
//! update answers once the Deployment's new ReplicaSet is available, or fails with the pod's
//! reason (`ErrImagePull`, `CrashLoopBackOff`…) or the timeout; the previous version's
//! objects are then applied again, so its pods keep serving and the stuck ones go.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use fjord_core::spec::LABEL_FAAS_FUNCTION;
use fjord_core::{FunctionKey, FunctionSpec};
use fjord_runtime_api::logs::LogBook;
use fjord_runtime_api::{
    Applied, BoxFuture, Endpoint, EndpointKind, FunctionHandle, RolloutResult, RolloutState,
    Runtime, RuntimeError, Serving, Source,
};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::error::{KubeError, Operation};
use crate::objects::{FunctionObjects, function_objects};
use crate::status::{FunctionReplicas, LABEL_SERVICE_NAME, function_replicas};

/// What `name()` returns, and the runtime shown on every handle.
pub const RUNTIME_NAME: &str = "kubernetes";

const DEPLOYMENTS: &str = "deployments.apps";
const DEPLOYMENTS_SCALE: &str = "deployments.apps/scale";
const SERVICES: &str = "services";
const SECRETS: &str = "secrets";

/// Settings of a [`KubeRuntime`].
#[derive(Debug, Clone)]
pub struct KubeRuntimeConfig {
    /// The server-side apply field manager: the owner of the fields fjord sets.
    pub field_manager: String,
    /// How long an update may take to become available before it is rolled back.
    pub rollout_timeout: Duration,
    /// Attempts at a request answered 409 Conflict, the first included.
    pub conflict_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub conflict_backoff: Duration,
    /// A function's Deployment or Service deleted, or its Deployment's spec changed, by
    /// someone else is re-applied (reconciled back), at most once per this interval.
    pub repair_interval: Duration,
}

impl Default for KubeRuntimeConfig {
    fn default() -> Self {
        Self {
            field_manager: "fjord".to_string(),
            // Below Kubernetes' own progress deadline (600 s), so fjord reports first, with
            // the pod's reason rather than ProgressDeadlineExceeded.
            rollout_timeout: Duration::from_secs(300),
            conflict_attempts: 5,
            conflict_backoff: Duration::from_millis(200),
            repair_interval: Duration::from_secs(5),
        }
    }
}

/// Runs functions as Deployments; see the module docs.
pub struct KubeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    config: KubeRuntimeConfig,
    tokio: tokio::runtime::Handle,
    functions: Mutex<HashMap<FunctionKey, Arc<Function>>>,
    namespaces: Mutex<HashMap<String, Arc<Stores>>>,
    /// Watches and in-flight API calls, aborted by `shutdown`.
    tasks: Mutex<JoinSet<()>>,
    stopped: AtomicBool,
    /// Counts function refreshes (see [`KubeRuntime::changes`]).
    changes: watch::Sender<u64>,
}

/// One namespace's reflector stores.
struct Stores {
    deployments: Store<Deployment>,
    /// Only to notice one deleted by someone else (routing needs none: its EndpointSlices
    /// say where the pods are).
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

struct Function {
    handle: Arc<FunctionHandle>,
    state: Mutex<FunctionState>,
    /// Scale requests and applies on their way to the API server: until they land, the
    /// Deployment in the store has the old count, which must not overwrite the one just
    /// asked for.
    scaling: AtomicUsize,
    /// One apply at a time per function, in the order they were asked for.
    applying: tokio::sync::Mutex<()>,
    /// Log followers of its started pods.
    followers: crate::logs::Followers,
}

struct FunctionState {
    /// The version that takes traffic (the handle's `Serving::spec`).
    serving: Arc<FunctionSpec>,
    /// The latest deploy, until its rollout ends.
    pending: Option<Pending>,
    /// Endpoints last published, by authority: kept across refreshes so their in-flight
    /// counts (least-in-flight balancing) survive.
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Whether a version became available: a later deploy is then an update, rolled back
    /// when it fails, rather than a first deploy that has nothing to go back to.
    ready_once: bool,
    /// The Deployment's `metadata.generation` after fjord last applied it (`None`: not
    /// applied yet). A higher one means someone else changed its spec.
    applied_generation: Option<i64>,
    /// Its pod template as the API server answered fjord's last apply: a later spec change
    /// that leaves it as it was only moved the replica count (a scale, fjord's or not).
    applied_template: Option<serde_json::Value>,
    /// Whether its Deployment and Service were in the stores since fjord last applied them:
    /// only then does their absence mean someone deleted them (not a watch event to come).
    deployment_seen: bool,
    service_seen: bool,
    /// A repair (re-apply) is scheduled or running; when the last one started.
    repairing: bool,
    last_repair: Option<std::time::Instant>,
    /// Being removed: its objects' deletion is fjord's own.
    removing: bool,
}

struct Pending {
    /// fjord's generation of this deploy.
    generation: u64,
    spec: Arc<FunctionSpec>,
    /// Whether there was an earlier version to keep serving (an update).
    update: bool,
    /// The Deployment's `metadata.generation` after fjord's apply: its status describes this
    /// deploy once `observedGeneration` reaches it. `None` until the apply is answered.
    target: Option<i64>,
    /// `None` once answered (a first deploy answers when its objects are accepted).
    done: Option<oneshot::Sender<RolloutResult>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeRuntime {
    /// A runtime using `client`. Call it inside a Tokio runtime: the watches run on it.
    pub fn new(client: kube::Client, config: KubeRuntimeConfig) -> Result<Self, KubeError> {
        let tokio = tokio::runtime::Handle::try_current().map_err(|_| KubeError::NoTokioRuntime)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                tokio,
                functions: Mutex::default(),
                namespaces: Mutex::default(),
                tasks: Mutex::new(JoinSet::new()),
                stopped: AtomicBool::new(false),
                changes: watch::Sender::new(0),
            }),
        })
    }

    /// A runtime for the cluster fjord runs in (its service account) or, outside one, the
    /// current context of the kubeconfig (`KUBECONFIG` or `~/.kube/config`).
    pub async fn from_env(config: KubeRuntimeConfig) -> Result<Self, KubeError> {
        let client = kube::Client::try_default()
            .await
            .map_err(KubeError::Config)?;
        Self::new(client, config)
    }

    /// The client this runtime talks to the cluster with (the Function controller shares it).
    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// Ticks after every refresh of functions from the cluster's state: lets a caller (a test,
    /// a long-polling status request) wait for the next change instead of polling.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Applies `spec`'s Deployment (with `replicas`) and Service and returns the Deployment's
    /// `metadata.generation` after the apply. This is what [`Runtime::apply`] runs, with the
    /// typed error.
    pub async fn apply_objects(
        &self,
        spec: &FunctionSpec,
        replicas: u64,
    ) -> Result<i64, KubeError> {
        self.inner.apply_objects(spec, replicas).await
    }

    /// Sets the function's Deployment to `replicas` through the scale subresource.
    pub async fn scale_deployment(
        &self,
        key: &FunctionKey,
        replicas: u64,
    ) -> Result<(), KubeError> {
        self.inner.scale_deployment(key, replicas).await
    }

    /// Deletes the function's Deployment and Service; objects already gone count as deleted.
    pub async fn delete_objects(&self, key: &FunctionKey) -> Result<(), KubeError> {
        self.inner.delete_objects(key).await
    }
}

/// The objects of `spec`, with every secret assumed to be mounted: what `validate` can check
/// without asking the cluster for the secrets' types.
fn objects_assuming_opaque(spec: &FunctionSpec) -> Result<FunctionObjects, KubeError> {
    let types = spec
        .deployment
        .secrets
        .iter()
        .flatten()
        .map(|s| (s.clone(), "Opaque".to_string()))
        .collect();
    Ok(function_objects(
        &spec.deployment,
        &spec.key.namespace,
        &types,
    )?)
}

fn op(verb: &'static str, resource: &'static str, namespace: &str, name: &str) -> Operation {
    Operation {
        verb,
        resource,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn replicas_i32(replicas: u64) -> i32 {
    i32::try_from(replicas).unwrap_or(i32::MAX)
}

impl Inner {
    fn spawn(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::AbortHandle> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        Some(tasks.spawn_on(task, &self.tokio))
    }

    /// Keeps one log follower per started pod of `f` (see [`crate::logs`]).
    fn follow_logs(&self, f: &Function, pods: &[Pod]) {
        let key = &f.handle.key;
        f.followers.sync(pods, |pod| {
            self.spawn(crate::logs::follow_pod(
                self.client.clone(),
                key.namespace.clone(),
                // The container is named after the function (objects.rs).
                key.name.clone(),
                pod.to_string(),
                f.handle.logs.clone(),
            ))
        });
    }

    fn function(&self, key: &FunctionKey) -> Option<Arc<Function>> {
        lock(&self.functions).get(key).cloned()
    }

    /// Runs `request` until it is answered with something other than 409, at most
    /// `conflict_attempts` times, waiting longer between attempts.
    async fn with_conflict_retry<T, F, Fut>(
        &self,
        op: Operation,
        mut request: F,
    ) -> Result<T, KubeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let attempts = self.config.conflict_attempts.max(1);
        let mut wait = self.config.conflict_backoff;
        let mut attempt = 1;
        loop {
            match request().await {
                Ok(v) => return Ok(v),
                Err(e) => match KubeError::from_kube(op.clone(), e) {
                    KubeError::Conflict { message, .. } if attempt < attempts => {
                        tracing::debug!(%op, attempt, %message, "conflict; retrying");
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(2);
                        attempt += 1;
                    }
                    KubeError::Conflict { op, message, .. } => {
                        return Err(KubeError::Conflict {
                            op,
                            attempts: attempt,
                            message,
                        });
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// The `type` of each secret the function names, read from the cluster: registry
    /// credentials become pull secrets, the rest files.
    async fn secret_types(
        &self,
        spec: &FunctionSpec,
    ) -> Result<BTreeMap<String, String>, KubeError> {
        let ns = &spec.key.namespace;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut types = BTreeMap::new();
        for name in spec.deployment.secrets.iter().flatten() {
            // `get_opt`: a missing secret is the user's mistake, reported by the object
            // generation as such.
            match api.get_opt(name).await {
                Ok(Some(secret)) => {
                    let t = secret.type_.unwrap_or_else(|| "Opaque".to_string());
                    types.insert(name.clone(), t);
                }
                Ok(None) => {}
                Err(e) => return Err(KubeError::from_kube(op("get", SECRETS, ns, name), e)),
            }
        }
        Ok(types)
    }

    async fn apply_objects(&self, spec: &FunctionSpec, replicas: u64) -> Result<i64, KubeError> {
        self.apply_deployment(spec, replicas)
            .await
            .map(|d| d.metadata.generation.unwrap_or(0))
    }

    /// [`apply_objects`](Self::apply_objects), answering the Deployment as applied.
    async fn apply_deployment(
        &self,
        spec: &FunctionSpec,
        replicas: u64,
    ) -> Result<Deployment, KubeError> {
        let ns = &spec.key.namespace;
        let name = &spec.key.name;
        let types = self.secret_types(spec).await?;
        let mut objects = function_objects(&spec.deployment, ns, &types)?;
        // The control plane's count (it keeps the autoscaler's), not the label's initial one.
        if let Some(s) = objects.deployment.spec.as_mut() {
            s.replicas = Some(replicas_i32(replicas));
        }
        let pp = PatchParams::apply(&self.config.field_manager).force();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        // The Deployment first: a Service without pods is harmless, the reverse is not
        // reachable in-cluster.
        let deployment_patch = Patch::Apply(&objects.deployment);
        let service_patch = Patch::Apply(&objects.service);
        let applied = self
            .with_conflict_retry(op("patch", DEPLOYMENTS, ns, name), || {
                deployments.patch(name, &pp, &deployment_patch)
            })
            .await?;
        self.with_conflict_retry(op("patch", SERVICES, ns, name), || {
            services.patch(name, &pp, &service_patch)
        })
        .await?;
        Ok(applied)
    }

    async fn scale_deployment(&self, key: &FunctionKey, replicas: u64) -> Result<(), KubeError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
        let pp = PatchParams {
            field_manager: Some(self.config.field_manager.clone()),
            ..PatchParams::default()
        };
        let body = serde_json::json!({ "spec": { "replicas": replicas_i32(replicas) } });
        let patch = Patch::Merge(&body);
        self.with_conflict_retry(
            op("patch", DEPLOYMENTS_SCALE, &key.namespace, &key.name),
            || api.patch_scale(&key.name, &pp, &patch),
        )
        .await
        .map(|_| ())
    }

    async fn delete_objects(&self, key: &FunctionKey) -> Result<(), KubeError> {
        let ns = &key.namespace;
        let name = &key.name;
        // Foreground: the Deployment goes once its ReplicaSets and pods have.
        let dp = DeleteParams::foreground();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let gone = |r: Result<(), KubeError>| match r {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        };
        gone(
            self.with_conflict_retry(op("delete", DEPLOYMENTS, ns, name), || {
                deployments.delete(name, &dp)
            })
            .await
            .map(|_| ()),
        )?;
        gone(
            self.with_conflict_retry(op("delete", SERVICES, ns, name), || {
                services.delete(name, &dp)
            })
            .await
            .map(|_| ()),
        )
    }

    /// Starts the namespace's reflectors, once.
    fn watch_namespace(self: &Arc<Self>, namespace: &str) {
        let mut namespaces = lock(&self.namespaces);
        if namespaces.contains_key(namespace) || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let (deployments, dw) = reflector::store();
        let (services, svw) = reflector::store();
        let (slices, sw) = reflector::store();
        let (pods, pw) = reflector::store();
        self.spawn(watch_kind::<Deployment>(
            Arc::downgrade(self),
            namespace.to_string(),
            LABEL_FAAS_FUNCTION,
            dw,
            DEPLOYMENTS,
            |d: &Deployment| d.metadata.name.clone(),
        ));
        self.spawn(watch_kind::<Service>(
            Arc::downgrade(self),
            namespace.to_string(),
            LABEL_FAAS_FUNCTION,
            svw,
            SERVICES,
            |s: &Service| s.metadata.name.clone(),
        ));
        self.spawn(watch_kind::<EndpointSlice>(
            Arc::downgrade(self),
            namespace.to_string(),
            LABEL_SERVICE_NAME,
            sw,
            "endpointslices.discovery.k8s.io",
            |s: &EndpointSlice| label(s, LABEL_SERVICE_NAME).map(str::to_string),
        ));
        self.spawn(watch_kind::<Pod>(
            Arc::downgrade(self),
            namespace.to_string(),
            LABEL_FAAS_FUNCTION,
            pw,
            "pods",
            |p: &Pod| label(p, LABEL_FAAS_FUNCTION).map(str::to_string),
        ));
        namespaces.insert(
            namespace.to_string(),
            Arc::new(Stores {
                deployments,
                services,
                slices,
                pods,
            }),
        );
    }

    /// Recomputes the functions of `namespace` (only `function`, when given) from the
    /// stores and publishes what changed. Only the function's own slices and pods are looked
    /// at, so an event costs one pass over the namespace's stores, not one per function.
    fn refresh(self: &Arc<Self>, namespace: &str, function: Option<&str>) {
        let Some(stores) = lock(&self.namespaces).get(namespace).cloned() else {
            return;
        };
        let functions: Vec<Arc<Function>> = lock(&self.functions)
            .iter()
            .filter(|(k, _)| k.namespace == namespace && function.is_none_or(|n| k.name == n))
            .map(|(_, f)| f.clone())
            .collect();
        for f in functions {
            let name = f.handle.key.name.as_str();
            let deployment = stores
                .deployments
                .get(&ObjectRef::new(name).within(namespace));
            let slices: Vec<EndpointSlice> = stores
                .slices
                .state_filter(|s| label(s, LABEL_SERVICE_NAME) == Some(name))
                .iter()
                .map(|s| (**s).clone())
                .collect();
            let pods: Vec<Pod> = stores
                .pods
                .state_filter(|p| label(p, LABEL_FAAS_FUNCTION) == Some(name))
                .iter()
                .map(|p| (**p).clone())
                .collect();
            let service_seen = stores
                .services
                .get(&ObjectRef::new(name).within(namespace))
                .is_some();
            self.refresh_function(&f, deployment.as_deref(), service_seen, &slices, &pods);
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn refresh_function(
        self: &Arc<Self>,
        f: &Arc<Function>,
        deployment: Option<&Deployment>,
        service_seen: bool,
        slices: &[EndpointSlice],
        pods: &[Pod],
    ) {
        self.follow_logs(f, pods);
        let h = &f.handle;
        let mut st = lock(&f.state);
        let Some(deployment) = deployment else {
            // Not applied yet, or deleted by someone else (then it is made again): nothing
            // to route to meanwhile.
            publish(h, &mut st, &[]);
            self.repair_if_changed(f, &mut st, None, service_seen);
            return;
        };
        self.repair_if_changed(f, &mut st, Some(deployment), service_seen);
        let r = function_replicas(deployment, slices, pods);
        if f.scaling.load(Ordering::Acquire) == 0 {
            // Also picks up `kubectl scale` and the replicas the control plane asked for.
            h.set_desired(u64::from(r.desired));
        }
        match &r.not_progressing {
            Some(reason) => h.set_last_error(Some(reason.clone())),
            None if r.available >= r.desired => h.set_last_error(None),
            None => {}
        }
        self.track_rollout(h, &mut st, deployment, &r);
        let endpoints = r.ready_endpoints.clone();
        publish(h, &mut st, &endpoints);
    }

    /// Moves the pending deploy on: ready once the Deployment's new ReplicaSet is available,
    /// failed when a pod is stuck.
    fn track_rollout(
        self: &Arc<Self>,
        h: &FunctionHandle,
        st: &mut FunctionState,
        deployment: &Deployment,
        r: &FunctionReplicas,
    ) {
        let Some(p) = st.pending.as_mut() else { return };
        let Some(target) = p.target else { return };
        let status = deployment.status.clone().unwrap_or_default();
        if status.observed_generation.unwrap_or(0) < target {
            // The controller has not looked at this deploy yet: its status is the old one's.
            return;
        }
        let updated = u64::try_from(status.updated_replicas.unwrap_or(0)).unwrap_or(0);
        let total = u64::try_from(status.replicas.unwrap_or(0)).unwrap_or(0);
        let available = u64::from(r.available);
        let desired = u64::from(r.desired);
        {
            let mut rollout = h.rollout();
            if rollout.generation == p.generation {
                rollout.replicas = desired;
                rollout.ready = available.min(updated);
            }
        }
        // `total <= updated`: no pod of an older ReplicaSet is left.
        if updated >= desired && total <= updated && available >= desired {
            let Some(p) = st.pending.take() else { return };
            st.serving = p.spec.clone();
            st.ready_once = true;
            {
                let mut rollout = h.rollout();
                if rollout.generation == p.generation {
                    rollout.state = RolloutState::Ready;
                    rollout.message = None;
                    rollout.failed_replica = None;
                }
            }
            if p.update {
                let msg = format!(
                    "fjord: updated to image {}; {desired} replica(s) available",
                    p.spec.deployment.image
                );
                h.logs.push(&Arc::from("fjord"), &msg);
            }
            if let Some(done) = p.done {
                let _ = done.send(Ok(()));
            }
            return;
        }
        if let Some(reason) = &r.not_progressing {
            let reason = reason.clone();
            self.rollout_failed(h, st, reason);
        }
    }

    /// Remembers what fjord's apply made of the Deployment.
    fn record_apply(st: &mut FunctionState, applied: &Deployment) {
        st.applied_generation = Some(applied.metadata.generation.unwrap_or(0));
        st.applied_template = template(applied);
    }

    /// Re-applies the function's objects when someone else deleted its Deployment or
    /// Service or changed its Deployment's spec (its generation went past fjord's last
    /// apply). The replica count stays as found (`kubectl scale` is an input, as the
    /// autoscaler's); fields fjord does not set are left alone (server-side apply).
    fn repair_if_changed(
        self: &Arc<Self>,
        f: &Arc<Function>,
        st: &mut FunctionState,
        deployment: Option<&Deployment>,
        service_seen: bool,
    ) {
        let Some(applied) = st.applied_generation else {
            return;
        };
        let deployment_deleted = deployment.is_none() && st.deployment_seen;
        let service_deleted = !service_seen && st.service_seen;
        st.deployment_seen |= deployment.is_some();
        st.service_seen |= service_seen;
        if st.removing || st.repairing || f.scaling.load(Ordering::Acquire) > 0 {
            return;
        }
        let found = deployment
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .map(|r| u64::try_from(r).unwrap_or(0));
        let changed = match deployment {
            Some(d) if d.metadata.generation.unwrap_or(0) > applied => {
                if template(d) == st.applied_template {
                    // Only the count moved (a scale): nothing to put back.
                    st.applied_generation = d.metadata.generation;
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        let why = if deployment_deleted {
            "its Deployment was deleted"
        } else if changed {
            "its Deployment's spec was changed"
        } else if service_deleted {
            "its Service was deleted"
        } else {
            return;
        };
        let replicas = found.unwrap_or_else(|| f.handle.desired());
        st.repairing = true;
        let wait = st.last_repair.map_or(Duration::ZERO, |t| {
            self.config.repair_interval.saturating_sub(t.elapsed())
        });
        let (this, f) = (self.clone(), f.clone());
        self.spawn(async move {
            tokio::time::sleep(wait).await;
            let _order = f.applying.lock().await;
            let spec = {
                let mut st = lock(&f.state);
                st.last_repair = Some(std::time::Instant::now());
                if st.removing {
                    st.repairing = false;
                    return;
                }
                st.pending
                    .as_ref()
                    .map_or_else(|| st.serving.clone(), |p| p.spec.clone())
            };
            let key = &f.handle.key;
            tracing::warn!(function = %key, "{why} outside fjord: applying the function's objects again");
            let result = this.apply_deployment(&spec, replicas).await;
            {
                let mut st = lock(&f.state);
                st.repairing = false;
                match result {
                    Ok(applied) => {
                        Inner::record_apply(&mut st, &applied);
                        // Seen again once their watch events come.
                        st.deployment_seen = false;
                        st.service_seen = false;
                    }
                    Err(e) => {
                        tracing::warn!(function = %key, error = %e, "cannot apply the function's objects again");
                    }
                }
            }
            // Looks again: a failed repair, or a change meanwhile, is retried.
            this.refresh(&key.namespace, Some(&key.name));
        });
    }

    /// Ends the pending deploy as failed. An update is rolled back to the serving version;
    /// a first deploy stays, marked failed, while Kubernetes keeps retrying its pods.
    fn rollout_failed(
        self: &Arc<Self>,
        h: &FunctionHandle,
        st: &mut FunctionState,
        reason: String,
    ) {
        let Some(p) = st.pending.as_mut() else { return };
        if !p.update {
            let mut rollout = h.rollout();
            if rollout.generation == p.generation && rollout.state == RolloutState::Progressing {
                rollout.state = RolloutState::Failed;
                rollout.message = Some(format!(
                    "image {} failed to start: {reason}; Kubernetes keeps retrying",
                    p.spec.deployment.image
                ));
            }
            // Kept pending: it turns ready if the pods recover (an image pushed late).
            return;
        }
        let Some(p) = st.pending.take() else { return };
        let msg = format!(
            "update to image {} failed: {reason}; the previous version keeps serving",
            p.spec.deployment.image
        );
        {
            // Still `progressing`: the control plane marks it failed once it has rolled back
            // its stored state (`FunctionHandle::rolled_back`).
            let mut rollout = h.rollout();
            if rollout.generation == p.generation {
                rollout.message = Some(msg.clone());
            }
        }
        tracing::warn!(function = %h.qualified, "{msg}");
        h.logs.push(&Arc::from("fjord"), &format!("fjord: {msg}"));
        h.set_last_error(Some(msg.clone()));
        if let Some(done) = p.done {
            let _ = done.send(Err(msg));
        }
        // Back to the version that serves, so its pods stay and the stuck ones go.
        let previous = st.serving.clone();
        let replicas = h.desired();
        let this = self.clone();
        let key = h.key.clone();
        let f = self.function(&key);
        self.spawn(async move {
            match this.apply_deployment(&previous, replicas).await {
                Ok(applied) => {
                    if let Some(f) = f {
                        Inner::record_apply(&mut lock(&f.state), &applied);
                    }
                }
                Err(e) => {
                    tracing::warn!(function = %key, error = %e, "cannot roll the Deployment back")
                }
            }
        });
    }

    /// The apply task: objects first, then the rollout is watched from the stores.
    async fn run_apply(
        self: Arc<Self>,
        f: Arc<Function>,
        spec: Arc<FunctionSpec>,
        replicas: u64,
        generation: u64,
    ) {
        let order = f.clone();
        let _order = order.applying.lock().await;
        let h = f.handle.clone();
        let result = self.apply_deployment(&spec, replicas).await;
        f.scaling.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(applied) => {
                let target = applied.metadata.generation.unwrap_or(0);
                {
                    let mut st = lock(&f.state);
                    Inner::record_apply(&mut st, &applied);
                    if let Some(p) = st.pending.as_mut().filter(|p| p.generation == generation) {
                        p.target = Some(target);
                        if !p.update {
                            // A new function: answered now, its readiness is in the rollout.
                            if let Some(done) = p.done.take() {
                                let _ = done.send(Ok(()));
                            }
                        }
                    }
                }
                self.refresh(&spec.key.namespace, Some(&spec.key.name));
                let timeout = self.config.rollout_timeout;
                let this = self.clone();
                self.spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let mut st = lock(&f.state);
                    if st
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.generation == generation)
                    {
                        let last = f.handle.status().last_error;
                        let why = format!(
                            "not available within {} s{}",
                            timeout.as_secs(),
                            last.map(|e| format!(" ({e})")).unwrap_or_default()
                        );
                        this.rollout_failed(&f.handle, &mut st, why);
                    }
                });
            }
            Err(e) => {
                tracing::warn!(function = %h.qualified, error = %e, "apply failed");
                let msg = e.to_string();
                h.set_last_error(Some(msg.clone()));
                let mut st = lock(&f.state);
                if let Some(p) = st.pending.take_if(|p| p.generation == generation) {
                    let mut rollout = h.rollout();
                    if rollout.generation == generation {
                        rollout.message = Some(msg.clone());
                        // Nothing was applied: a first deploy has nothing that could recover.
                        if !p.update {
                            rollout.state = RolloutState::Failed;
                        }
                    }
                    if let Some(done) = p.done {
                        let _ = done.send(Err(msg));
                    }
                }
            }
        }
    }
}

/// Publishes the endpoints at `addrs` (and the serving spec) when they differ from the last
/// published ones, reusing the endpoints that stay.
fn publish(h: &FunctionHandle, st: &mut FunctionState, addrs: &[std::net::SocketAddr]) {
    let mut next = BTreeMap::new();
    for addr in addrs {
        let text = addr.to_string();
        let endpoint = match st.endpoints.get(&text) {
            Some(e) => e.clone(),
            None => match http::uri::Authority::try_from(text.as_str()) {
                Ok(authority) => Arc::new(Endpoint::new(
                    Arc::from(format!("{}@{text}", h.key.name)),
                    EndpointKind::Http { authority },
                    None,
                )),
                // A socket address is always an authority; skip rather than panic.
                Err(_) => continue,
            },
        };
        next.insert(text, endpoint);
    }
    let current = h.serving();
    let same = next.len() == st.endpoints.len()
        && next.keys().eq(st.endpoints.keys())
        && Arc::ptr_eq(&current.spec, &st.serving);
    if same {
        return;
    }
    st.endpoints = next;
    h.publish(Serving {
        spec: st.serving.clone(),
        endpoints: st.endpoints.values().cloned().collect(),
    });
}

/// Keeps one kind's reflector store for `namespace` current and refreshes the namespace's
/// functions on every change. Errors are logged when they start or change, and retried with
/// kube's default backoff; the store keeps the last state meanwhile.
async fn watch_kind<K>(
    inner: Weak<Inner>,
    namespace: String,
    label_selector: &'static str,
    writer: Writer<K>,
    resource: &'static str,
    function_of: fn(&K) -> Option<String>,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let api: Api<K> = match inner.upgrade() {
        Some(i) => Api::namespaced(i.client.clone(), &namespace),
        None => return,
    };
    // A label key alone selects the objects that have it.
    let config = watcher::Config::default().labels(label_selector);
    let mut stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .boxed();
    let mut failing: Option<String> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing.take().is_some() {
                    tracing::info!(namespace, resource, "watch recovered");
                }
                // A (re-)list replaces the whole store at `InitDone`: everything may have
                // changed. `Init`/`InitApply` only fill the reflector's buffer.
                let function = match &event {
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => match function_of(o) {
                        Some(name) => Some(name),
                        None => continue,
                    },
                    watcher::Event::InitDone => None,
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                };
                let Some(inner) = inner.upgrade() else { return };
                inner.refresh(&namespace, function.as_deref());
            }
            Err(e) => {
                let text = describe_watch_error(&namespace, resource, e);
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        namespace,
                        resource,
                        error = %text,
                        "watch failed; retrying with backoff, functions keep the endpoints last seen"
                    );
                    failing = Some(text);
                }
            }
        }
    }
}

/// A Deployment's pod template, for comparison.
fn template(d: &Deployment) -> Option<serde_json::Value> {
    d.spec
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.template).ok())
}

fn label<'a, K: kube::Resource>(o: &'a K, key: &str) -> Option<&'a str> {
    o.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// A watch error in words; a 403 names the permission.
pub(crate) fn describe_watch_error(
    namespace: &str,
    resource: &'static str,
    e: watcher::Error,
) -> String {
    let (verb, inner) = match e {
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
        other => return other.to_string(),
    };
    KubeError::from_kube(op(verb, resource, namespace, ""), inner).to_string()
}

impl Runtime for KubeRuntime {
    fn name(&self) -> &'static str {
        RUNTIME_NAME
    }

    /// Pods are isolated from each other by Kubernetes, not by host uids: bundles are not
    /// unpacked per function here.
    fn isolates(&self) -> bool {
        false
    }

    fn validate(&self, spec: &FunctionSpec, source: &Source) -> Result<(), RuntimeError> {
        if source.bundle.is_some() {
            return Err(RuntimeError::Invalid(
                "image: the kubernetes runtime runs container images; deploy the function as an image instead of a bundle".into(),
            ));
        }
        objects_assuming_opaque(spec)
            .map(|_| ())
            .map_err(RuntimeError::from)
    }

    fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        source: Source,
        replicas: u64,
    ) -> Result<Applied, RuntimeError> {
        self.validate(&spec, &source)?;
        let inner = &self.inner;
        if inner.stopped.load(Ordering::Relaxed) {
            return Err(RuntimeError::Io(std::io::Error::other(
                "the kubernetes runtime has shut down",
            )));
        }
        let (tx, done) = oneshot::channel();
        let (f, generation) = {
            let mut functions = lock(&inner.functions);
            let f = functions
                .entry(spec.key.clone())
                .or_insert_with(|| {
                    Arc::new(Function {
                        handle: Arc::new(FunctionHandle::new(
                            spec.clone(),
                            replicas,
                            Arc::new(LogBook::new(None)),
                            RUNTIME_NAME,
                            None,
                        )),
                        state: Mutex::new(FunctionState {
                            serving: spec.clone(),
                            pending: None,
                            endpoints: BTreeMap::new(),
                            ready_once: false,
                            applied_generation: None,
                            applied_template: None,
                            deployment_seen: false,
                            service_seen: false,
                            repairing: false,
                            last_repair: None,
                            removing: false,
                        }),
                        scaling: AtomicUsize::new(0),
                        applying: tokio::sync::Mutex::new(()),
                        followers: crate::logs::Followers::default(),
                    })
                })
                .clone();
            let generation = f.handle.begin_rollout(replicas);
            // Like a scale: the store's count is stale until the apply lands.
            f.scaling.fetch_add(1, Ordering::AcqRel);
            f.handle.set_desired(replicas);
            let mut st = lock(&f.state);
            let update = st.ready_once;
            if let Some(old) = st.pending.take()
                && let Some(d) = old.done
            {
                let _ = d.send(Err("superseded by a newer update".into()));
            }
            st.pending = Some(Pending {
                generation,
                spec: spec.clone(),
                update,
                target: None,
                done: Some(tx),
            });
            drop(st);
            (f, generation)
        };
        inner.watch_namespace(&spec.key.namespace);
        let handle = f.handle.clone();
        inner.spawn(inner.clone().run_apply(f, spec, replicas, generation));
        Ok(Applied {
            handle,
            generation,
            done,
        })
    }

    fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let f = inner
            .function(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        f.scaling.fetch_add(1, Ordering::AcqRel);
        f.handle.set_desired(replicas);
        // Wakes requests waiting for a replica, so they fail fast when scaled to zero.
        let serving = f.handle.serving();
        f.handle.publish(Serving {
            spec: serving.spec.clone(),
            endpoints: serving.endpoints.clone(),
        });
        let this = inner.clone();
        let key = key.clone();
        inner.spawn(async move {
            let result = this.scale_deployment(&key, replicas).await;
            f.scaling.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(()) => this.refresh(&key.namespace, Some(&key.name)),
                Err(e) => {
                    tracing::warn!(function = %key, replicas, error = %e, "scale failed");
                    f.handle.set_last_error(Some(e.to_string()));
                }
            }
        });
        Ok(())
    }

    fn remove<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let f = inner
                .function(key)
                .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
            // Kept known until the objects are gone, so a failed remove can be retried.
            lock(&f.state).removing = true;
            if let Err(e) = inner.delete_objects(key).await {
                lock(&f.state).removing = false;
                return Err(e.into());
            }
            lock(&inner.functions).remove(key);
            f.followers.stop_all();
            let h = &f.handle;
            h.set_desired(0);
            let mut st = lock(&f.state);
            if let Some(p) = st.pending.take()
                && let Some(done) = p.done
            {
                let _ = done.send(Err("the function was removed".into()));
            }
            publish(h, &mut st, &[]);
            Ok(())
        })
    }

    fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.inner.function(key).map(|f| f.handle.clone())
    }

    /// Stops the watches and in-flight calls; the functions keep running in the cluster.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.stopped.store(true, Ordering::Relaxed);
            let mut tasks = std::mem::take(&mut *lock(&inner.tasks));
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            lock(&inner.namespaces).clear();
            let functions: Vec<_> = lock(&inner.functions).drain().map(|(_, f)| f).collect();
            for f in functions {
                let mut st = lock(&f.state);
                if let Some(p) = st.pending.take()
                    && let Some(done) = p.done
                {
                    let _ = done.send(Err("the runtime stopped".into()));
                }
            }
        })
    }
}
