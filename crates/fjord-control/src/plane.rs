//! The control plane: validates deployments, persists them, drives the runtime, and keeps
//! the routing snapshot the invoke path reads without locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use fjord_core::openfaas::{
    FjordStatus, FunctionDeployment, FunctionStatus, RolloutStatus, SecretDescription,
};
use fjord_core::policy::{ANNOTATION_FUNCTION_OBJECT, from_function_object};
use fjord_core::{DEFAULT_NAMESPACE, FunctionKey, FunctionSpec};
use fjord_runtime_api::{FunctionHandle, Runtime, SecretFiles, Source};

use crate::images::{GcReport, ImageSource, PullWatch, REGISTRY_AUTH_ANNOTATION, RegistryAuth};

use crate::autoscale::ScalerState;
use crate::bundles::Bundles;
use crate::metrics::{FunctionMetrics, FunctionSample};
use crate::secrets::SecretKey;
use fjord_store::uid_registry::UidBlock;
use fjord_store::{Pin, Store, StoredFunction, now_rfc3339};

use crate::ControlError;
use crate::trust::{Required, TrustState};

/// One function as the invoke path sees it.
pub struct Route {
    pub handle: Arc<FunctionHandle>,
    /// The runtime that runs this function's replicas.
    runtime: Arc<dyn Runtime>,
    /// While an update moves the function to another runtime: the new runtime's handle,
    /// whose rollout the status shows (this route's `handle` serves until it is ready).
    switching: Option<Arc<FunctionHandle>>,
    /// Counters and histograms; kept across updates of the function (as are the next two).
    pub metrics: Arc<FunctionMetrics>,
    /// The autoscaler's memory and the last scale's reason.
    pub scaling: Arc<Scaling>,
    /// Whether an async worker consumes this function's queued calls here, and its wake-up.
    pub queued: Arc<QueueSignal>,
    /// Calls need an API token (annotation `com.fjord.auth: token`), decided at deploy time
    /// so the invoke path only reads this field.
    pub requires_token: bool,
    uid: u32,
    created_at: String,
    updated_at: String,
    /// The bundle digest pinned by the latest deploy (`generation`), and that of the
    /// version that served before it (the same once it serves): the status shows the
    /// digest of the version serving.
    digest: Option<String>,
    generation: u64,
    serving_digest: Option<String>,
}

/// What the autoscaler keeps per function between ticks, and why the count last changed.
#[derive(Default)]
pub struct Scaling {
    /// Locked by the ticker and by scale events outside it (never per request).
    state: std::sync::Mutex<ScalerState>,
    reason: std::sync::Mutex<Option<String>>,
}

impl Scaling {
    /// The autoscaler's state, locked (a poisoned lock still holds usable state).
    pub fn state(&self) -> std::sync::MutexGuard<'_, ScalerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state if nobody holds it now (the saturated invoke path never waits for it).
    pub fn try_state(&self) -> Option<std::sync::MutexGuard<'_, ScalerState>> {
        self.state.try_lock().ok()
    }

    pub fn set_reason(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The link between a function's async enqueues and the worker running its queued calls on
/// this gateway: enqueues wake that worker directly instead of waiting for the queue scan.
#[derive(Default)]
pub struct QueueSignal {
    pub worker_running: std::sync::atomic::AtomicBool,
    pub wake: tokio::sync::Notify,
}

/// namespace → name → route; rebuilt on every change, read lock-free per request.
type Routes = HashMap<String, HashMap<String, Arc<Route>>>;

/// Why a request found no replica to take it (see [`ControlPlane::demand`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// The function is at zero replicas.
    Cold,
    /// Every ready replica is at its `max_inflight`.
    Saturated,
}

/// Whether a deploy may create, must update, or may do either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployMode {
    /// `POST /system/functions`: create, or update if it exists (as faas-cli expects).
    CreateOrUpdate,
    /// `PUT /system/functions`: update only; 404 when absent.
    Update,
    /// The Function object controller (`--runtime kubernetes`): create or update, also a
    /// function managed by its Function object, which the REST API may not change.
    FunctionObject,
}

/// What a control plane is made of (see [`ControlPlane::from_parts`]).
pub struct Parts {
    pub store: Store,
    /// Where functions run.
    pub runtimes: Runtimes,
    pub bundles: Bundles,
    pub secret_key: SecretKey,
    /// This instance's uids (reserved host-wide): each new function takes the next one.
    pub uids: UidBlock,
    /// How long an update that moves a function to another runtime may take to become
    /// ready (the server's `--rollout-timeout`).
    pub switch_timeout: std::time::Duration,
}

/// Where a control plane runs functions.
pub enum Runtimes {
    /// On this machine: bundles and `envProcess` commands on `process`, other images on
    /// `containers` when this server can run them (`None`: images need `envProcess`).
    Local {
        process: Arc<dyn Runtime>,
        containers: Option<Containers>,
    },
    /// One runtime runs every function from its image reference as given, and fetches the
    /// image itself (Kubernetes: the nodes pull). Nothing is resolved, pulled or unpacked
    /// here, bundles do not run, and the secrets a function names are the runtime's own
    /// (Kubernetes Secrets), not this server's vault.
    Only(Arc<dyn Runtime>),
}

/// The container runtime and where its images come from.
#[derive(Clone)]
pub struct Containers {
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn ImageSource>,
}

/// The annotation that picks a function's runtime (`process` or `container`) instead of the
/// default: bundles and `envProcess` commands run as processes, other images as containers.
pub const RUNTIME_ANNOTATION: &str = "com.fjord.runtime";

pub struct ControlPlane {
    store: Store,
    /// Runs bundles and `envProcess` commands; with [`Runtimes::Only`], every function.
    process: Arc<dyn Runtime>,
    containers: Option<Containers>,
    /// [`Runtimes::Only`]: `process` runs every function from its image reference.
    only: bool,
    bundles: Arc<Bundles>,
    secret_key: SecretKey,
    routes: ArcSwap<Routes>,
    /// Serialises changes (not the invoke path).
    changes: tokio::sync::Mutex<()>,
    /// This instance's uids (reserved host-wide): each new function takes the next one.
    uids: UidBlock,
    switch_timeout: std::time::Duration,
    /// Connectors' seam: bumped on every routing change, checks run before each deploy.
    hooks: Hooks,
    /// Image pulls that deploys wait for, by function: the status shows their progress
    /// (a new function's too, before it has a route).
    pulls: std::sync::Mutex<HashMap<FunctionKey, Pulling>>,
    /// Content trust: the server's policy and the verdicts (see `crate::trust`).
    trust: crate::trust::Trust,
}

struct Pulling {
    deployment: FunctionDeployment,
    watch: Arc<PullWatch>,
    started: std::time::Instant,
}

/// Removes a pull from [`ControlPlane::pulls`] when it ends, however it ends.
struct PullEntry<'a> {
    plane: &'a ControlPlane,
    key: FunctionKey,
}

impl Drop for PullEntry<'_> {
    fn drop(&mut self) {
        self.plane
            .pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl ControlPlane {
    /// A control plane with one runtime for everything (tests, the fake runtime).
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        bundles: Bundles,
        secret_key: SecretKey,
    ) -> Arc<Self> {
        Self::from_parts(Parts {
            store,
            runtimes: Runtimes::Local {
                process: runtime,
                containers: None,
            },
            bundles,
            secret_key,
            uids: UidBlock::unrestricted(),
            switch_timeout: std::time::Duration::from_secs(120),
        })
    }

    pub fn from_parts(p: Parts) -> Arc<Self> {
        let (process, containers, only) = match p.runtimes {
            Runtimes::Local {
                process,
                containers,
            } => (process, containers, false),
            Runtimes::Only(runtime) => (runtime, None, true),
        };
        Arc::new(Self {
            store: p.store,
            process,
            containers,
            only,
            bundles: Arc::new(p.bundles),
            secret_key: p.secret_key,
            routes: ArcSwap::from_pointee(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            uids: p.uids,
            switch_timeout: p.switch_timeout,
            pulls: Default::default(),
            hooks: Hooks::default(),
            trust: Default::default(),
        })
    }

    /// The invoke path's lookup: two hash lookups on a snapshot, no allocation.
    #[inline]
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<Route>> {
        self.routes.load().get(namespace)?.get(name).cloned()
    }

    fn set_route(&self, key: &FunctionKey, route: Option<Route>) {
        let mut next: Routes = (**self.routes.load()).clone();
        match route {
            Some(r) => {
                next.entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone(), Arc::new(r));
            }
            None => {
                if let Some(ns) = next.get_mut(&key.namespace) {
                    ns.remove(&key.name);
                    if ns.is_empty() {
                        next.remove(&key.namespace);
                    }
                }
            }
        }
        self.routes.store(Arc::new(next));
        self.hooks.routes_changed();
    }

    /// Starts every stored function (after a restart).
    pub async fn restore(&self) -> Result<usize, ControlError> {
        let _guard = self.changes.lock().await;
        let mut started = 0;
        for mut f in self.store.list()? {
            let name = format!("{}.{}", f.name, f.namespace);
            if !self.uids.contains(f.uid) {
                // Stored before this instance had its own uid block (or in a copied data
                // dir): another instance may use that uid, so the function moves to a new
                // one. Its unpacked bundle belongs to the old gid: unpacked again below.
                let old = f.uid;
                let uid = match self.store.next_uid(self.uids.first, self.uids.last) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, "stored function cannot get a uid in this instance's block");
                        continue;
                    }
                };
                self.store.set_uid(&f.namespace, &f.name, uid)?;
                self.bundles.remove_for(old, None);
                tracing::info!(function = %name, old_uid = old, uid, block = %self.uids, "function moved to a uid of this instance's block");
                f.uid = uid;
            }
            // The version runs the bundle pinned when it was deployed, never what its tag
            // names today.
            let Resolved {
                spec,
                source,
                pin,
                runtime,
                trust,
            } = match self
                .resolve(f.deployment.clone(), f.uid, Some(&f.pin))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    if let (ControlError::Forbidden(m), Ok(key)) =
                        (&e, FunctionKey::new(&f.name, Some(&f.namespace)))
                    {
                        // Listed by `GET /system/trust` (`fjord trust check`).
                        self.trust.refuse_at_restore(&key, m.clone());
                    }
                    tracing::error!(function = %name, error = %e, "stored function cannot start");
                    continue;
                }
            };
            if f.pin == Pin::Unknown {
                // Stored by a fjord before pinning: pinned now, once.
                match self.store.set_pin(&f.namespace, &f.name, &pin) {
                    Ok(_) => {
                        tracing::info!(function = %name, image = %f.deployment.image, digest = pin.digest().unwrap_or("none"), "pinned the bundle of a function stored before pinning")
                    }
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, "cannot store the pinned bundle: the tag is resolved again at the next start")
                    }
                }
            }
            let key = spec.key.clone();
            self.trust.remember(&key, pin.digest(), trust);
            let (handle, generation) = match runtime.apply(Arc::new(spec), source, f.replicas) {
                Ok(a) => (a.handle, a.generation),
                Err(e) => {
                    tracing::error!(function = %name, error = %e, "stored function cannot start");
                    continue;
                }
            };
            self.set_route(
                &key,
                Some(Route {
                    handle,
                    runtime,
                    switching: None,
                    metrics: Arc::new(FunctionMetrics::new()),
                    scaling: Arc::default(),
                    queued: Arc::default(),
                    requires_token: fjord_core::policy::requires_token(
                        f.deployment.annotations.as_ref(),
                    )
                    .unwrap_or(true),
                    uid: f.uid,
                    created_at: f.created_at,
                    updated_at: f.updated_at,
                    digest: pin.digest().map(str::to_string),
                    generation,
                    serving_digest: pin.digest().map(str::to_string),
                }),
            );
            started += 1;
        }
        Ok(started)
    }

    /// Turns a deployment into what a runtime runs, and picks the runtime (see
    /// [`RUNTIME_ANNOTATION`]). A bundle on this gateway is unpacked for the function's uid
    /// and its manifest supplies the command and default environment; a container image is
    /// pulled and its layers unpacked. `pinned`: the bundle or image a stored version was
    /// deployed with (a new deploy passes `None` and its tag is resolved now).
    async fn resolve(
        &self,
        d: FunctionDeployment,
        uid: u32,
        pinned: Option<&Pin>,
    ) -> Result<Resolved, ControlError> {
        fjord_core::policy::RetryPolicy::from_annotations(d.annotations.as_ref())
            .map_err(ControlError::BadRequest)?;
        fjord_core::policy::max_inflight(d.annotations.as_ref())
            .map_err(ControlError::BadRequest)?;
        fjord_core::policy::requires_token(d.annotations.as_ref())
            .map_err(ControlError::BadRequest)?;
        let wanted = wanted_runtime(&d)?;
        if self.only {
            return self.resolve_as_given(d, uid, pinned, wanted);
        }
        let secrets = self.function_secrets(&d)?;
        let required = self.required_keys(&d)?;
        let bundle = match pinned {
            None | Some(Pin::Unknown) if wanted != Some(Wanted::Container) => {
                self.bundles.resolve(&self.store, &d.image)?
            }
            Some(Pin::Bundle(digest)) => Some(self.bundles.pinned(digest)?),
            _ => None,
        };
        let container = match (pinned, wanted, &bundle) {
            (Some(Pin::Image(_)), _, _) => true,
            (_, Some(Wanted::Container), Some(_)) => {
                return Err(ControlError::BadRequest(format!(
                    "annotations.{RUNTIME_ANNOTATION}: {:?} is a bundle, and bundles run on the process runtime: remove the annotation, or deploy a container image",
                    d.image
                )));
            }
            (_, Some(w), _) => w == Wanted::Container,
            (_, None, Some(_)) => false,
            // An image with a command to run on this host is a process function (the image
            // is a label); without one, the image's own entry point runs in a container.
            (_, None, None) => !has_command(&d) && self.containers.is_some(),
        };
        if container {
            let Some(c) = &self.containers else {
                return Err(ControlError::BadRequest(format!(
                    "annotations.{RUNTIME_ANNOTATION}: this server cannot run containers (they need fjord serve running as root, with runc installed): remove the annotation and give envProcess, or deploy to a server that runs containers"
                )));
            };
            let spec = FunctionSpec::from_deployment_for_image(d)?;
            let auth = self.registry_auth(&spec.deployment)?;
            let image = &spec.deployment.image;
            let watch = Arc::new(PullWatch::default());
            let _pulling = self.pulling(&spec, &watch);
            let hint = |e: ControlError| {
                if wanted.is_some() {
                    return e;
                }
                // Perhaps meant as a bundle: say that there is none by that name either.
                let hint = format!(
                    " (nor is {image:?} a bundle on this gateway: `fjord push` uploads one, or give envProcess to run a command)"
                );
                match e {
                    ControlError::BadRequest(m) => ControlError::BadRequest(m + &hint),
                    ControlError::Upstream(m) => ControlError::Upstream(m + &hint),
                    e => e,
                }
            };
            // Under a policy, the digest is verified before the image is pulled, so nothing
            // of an image the policy refuses is downloaded or unpacked; then exactly that
            // digest is pulled.
            let verify_first = match (&required, pinned) {
                (Required::Nothing, _) => None,
                (Required::Keys(_), Some(Pin::Image(d))) => Some(d.clone()),
                (Required::Keys(_), _) => c
                    .images
                    .resolve(image, auth.as_ref())
                    .await
                    .map_err(|e| hint(e.into()))?,
            };
            let early = match &verify_first {
                Some(d) => Some(
                    self.verify_image(&required, c, image, d, auth.as_ref())
                        .await?,
                ),
                None => None,
            };
            let pulled = match (pinned, &verify_first) {
                (Some(Pin::Image(digest)), _) | (_, Some(digest)) => {
                    c.images.pinned(image, digest, auth.as_ref(), &watch).await
                }
                _ => c.images.pull(image, auth.as_ref(), &watch).await,
            };
            let rootfs = pulled.map_err(|e| hint(e.into()))?;
            // Before anything of the image runs (verified already unless the source could
            // not say which digest the reference names).
            let trust = match early {
                Some(t) if verify_first.as_deref() == Some(rootfs.digest.as_str()) => t,
                _ => {
                    self.verify_image(&required, c, image, &rootfs.digest, auth.as_ref())
                        .await?
                }
            };
            let pin = Pin::Image(rootfs.digest.clone());
            let source = Source {
                bundle: None,
                secrets,
                uid,
                image: Some(rootfs),
            };
            c.runtime.validate(&spec, &source)?;
            return Ok(Resolved {
                spec,
                source,
                pin,
                runtime: c.runtime.clone(),
                trust,
            });
        }
        let trust = match &bundle {
            Some(digest) => self.verify_bundle(&required, digest).await?,
            None => unsigned_command(&required, &d)?,
        };
        let (spec, source) = match &bundle {
            Some(digest) => {
                let (dir, defaults) = self.bundles.unpack_for(digest, uid).await?;
                let spec = FunctionSpec::from_deployment_with(d, Some(&defaults))?;
                let source = Source {
                    bundle: Some(dir),
                    secrets,
                    uid,
                    image: None,
                };
                (spec, source)
            }
            None => {
                let spec = FunctionSpec::from_deployment(d)?;
                let source = Source {
                    bundle: None,
                    secrets,
                    uid,
                    image: None,
                };
                (spec, source)
            }
        };
        self.process.validate(&spec, &source)?;
        let pin = match bundle {
            Some(d) => Pin::Bundle(d.as_str().to_string()),
            None => Pin::NoBundle,
        };
        Ok(Resolved {
            spec,
            source,
            pin,
            runtime: self.process.clone(),
            trust,
        })
    }

    /// [`Runtimes::Only`]: the runtime gets the image reference as given and pulls it
    /// itself, so an image is all a function needs, and nothing is looked up here (no
    /// bundle, no pull, no digest: `Pin::NoBundle`). A version stored with a local
    /// image pin runs its reference, not that digest; one stored as a bundle cannot run.
    fn resolve_as_given(
        &self,
        d: FunctionDeployment,
        uid: u32,
        pinned: Option<&Pin>,
        wanted: Option<Wanted>,
    ) -> Result<Resolved, ControlError> {
        let runtime = &self.process;
        let name = runtime.name();
        if d.image.trim().is_empty() {
            return Err(ControlError::BadRequest(format!(
                "image: required: this server runs every function on the {name} runtime, from a container image it pulls (e.g. \"ghcr.io/openfaas/alpine:latest\")"
            )));
        }
        if wanted == Some(Wanted::Process) {
            return Err(ControlError::BadRequest(format!(
                "annotations.{RUNTIME_ANNOTATION}: this server runs every function on the {name} runtime, as a container image: remove the annotation"
            )));
        }
        if let Some(Pin::Bundle(digest)) = pinned {
            return Err(ControlError::BadRequest(format!(
                "image: {:?} was deployed as the bundle {digest}, and bundles do not run on the {name} runtime: deploy a container image",
                d.image
            )));
        }
        // Signatures are checked on the images fjord pulls itself; these it never sees.
        let trust = match self.required_keys(&d)? {
            Required::Nothing => TrustState::UnsignedAllowed,
            Required::Keys(_) => {
                return Err(ControlError::Forbidden(format!(
                    "refused by the trust policy: the {name} runtime pulls {:?} itself, so this server cannot verify its signature",
                    d.image
                )));
            }
        };
        let spec = FunctionSpec::from_deployment_for_image(d)?;
        let source = Source {
            bundle: None,
            secrets: SecretFiles::default(),
            uid,
            image: None,
        };
        runtime.validate(&spec, &source)?;
        Ok(Resolved {
            spec,
            source,
            pin: Pin::NoBundle,
            runtime: runtime.clone(),
            trust,
        })
    }

    /// The registry credentials a deployment names (annotation
    /// [`REGISTRY_AUTH_ANNOTATION`]: a secret of its namespace holding a Docker config.json).
    fn registry_auth(&self, d: &FunctionDeployment) -> Result<Option<RegistryAuth>, ControlError> {
        let Some(name) = d
            .annotations
            .as_ref()
            .and_then(|a| a.get(REGISTRY_AUTH_ANNOTATION))
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let field = format!("annotations.{REGISTRY_AUTH_ANNOTATION}");
        crate::secrets::validate_name(&field, name)?;
        let ns = d
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        let Some(sealed) = self.store.secret(ns, name)? else {
            return Err(ControlError::BadRequest(format!(
                "{field}: secret {name:?} not found in namespace {ns}: create it from your Docker config with `fjord secret create {name} --from-file ~/.docker/config.json`"
            )));
        };
        Ok(Some(RegistryAuth(self.secret_key.open(&sealed)?)))
    }

    /// The decrypted values of the secrets a deployment names; each must exist in the
    /// function's namespace (400 naming the first one that does not).
    fn function_secrets(&self, d: &FunctionDeployment) -> Result<SecretFiles, ControlError> {
        let ns = d
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        let mut files = SecretFiles::default();
        let mut seen = std::collections::HashSet::new();
        for (i, name) in d.secrets.iter().flatten().enumerate() {
            crate::secrets::validate_name(&format!("secrets[{i}]"), name)?;
            if !seen.insert(name.as_str()) {
                continue;
            }
            let Some(sealed) = self.store.secret(ns, name)? else {
                return Err(ControlError::BadRequest(format!(
                    "secrets[{i}]: secret {name:?} not found in namespace {ns}: create it first with `fjord secret create {name}` (POST /system/secrets)"
                )));
            };
            files.push(name.clone(), self.secret_key.open(&sealed)?);
        }
        Ok(files)
    }

    /// Stored functions of `namespace` that name secret `name`.
    fn functions_using(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<StoredFunction>, ControlError> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|f| {
                f.namespace == namespace && f.deployment.secrets.iter().flatten().any(|s| s == name)
            })
            .collect())
    }

    /// Secrets of one namespace, names only.
    pub fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretDescription>, ControlError> {
        Ok(self
            .store
            .secret_names(namespace)?
            .into_iter()
            .map(|name| SecretDescription {
                name,
                namespace: namespace.to_string(),
            })
            .collect())
    }

    pub async fn create_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        let sealed = self.secret_key.seal(namespace, name, value)?;
        if !self.store.insert_secret(&sealed)? {
            return Err(ControlError::Conflict(format!(
                "secret {name} already exists in namespace {namespace}: change its value with PUT /system/secrets (`fjord secret update {name}`)"
            )));
        }
        tracing::info!(secret = name, namespace, "secret created");
        Ok(())
    }

    /// Replaces a secret's value, then rolls every function that uses it (through the normal
    /// update path, so the old replicas serve until the new ones are ready).
    pub async fn update_secret(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), ControlError> {
        let users = {
            let _guard = self.changes.lock().await;
            let sealed = self.secret_key.seal(namespace, name, value)?;
            if !self.store.update_secret(&sealed)? {
                return Err(ControlError::NotFound(format!(
                    "secret {name} not found in namespace {namespace}: create it with POST /system/secrets (`fjord secret create {name}`)"
                )));
            }
            self.functions_using(namespace, name)?
        };
        tracing::info!(
            secret = name,
            namespace,
            functions = users.len(),
            "secret updated"
        );
        for f in users {
            let function = format!("{}.{}", f.name, f.namespace);
            // Same code, new secret value: the pinned bundle, not what the tag names now.
            if let Err(e) = self
                .deploy_pinned(f.deployment, DeployMode::Update, Some(f.pin))
                .await
            {
                tracing::warn!(%function, secret = name, error = %e, "cannot roll the function to the new secret value");
            }
        }
        Ok(())
    }

    /// Deletes a secret no function uses (409 naming those that do).
    pub async fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        let users = self.functions_using(namespace, name)?;
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|f| f.name.as_str()).collect();
            return Err(ControlError::Conflict(format!(
                "secret {name} is used by function(s) {}: remove it from their secrets or delete them first",
                names.join(", ")
            )));
        }
        if !self.store.delete_secret(namespace, name)? {
            return Err(ControlError::NotFound(format!(
                "secret {name} not found in namespace {namespace}"
            )));
        }
        tracing::info!(secret = name, namespace, "secret deleted");
        Ok(())
    }

    /// Validates, stores and applies a deployment. Nothing changes if validation fails; an
    /// update that never becomes ready is rolled back in the store and the old version
    /// keeps serving. A bundle tag is resolved now and the version pinned to that digest.
    /// Returns the deploy's generation (see `fjord.rollout`).
    pub async fn deploy(
        self: &Arc<Self>,
        deployment: FunctionDeployment,
        mode: DeployMode,
    ) -> Result<u64, ControlError> {
        self.deploy_pinned(deployment, mode, None).await
    }

    /// [`deploy`](Self::deploy), running the bundle `pin` instead of resolving the tag.
    async fn deploy_pinned(
        self: &Arc<Self>,
        deployment: FunctionDeployment,
        mode: DeployMode,
        pin: Option<Pin>,
    ) -> Result<u64, ControlError> {
        // Names first, so a bad name is a 400 before anything is looked up.
        let key = FunctionKey::new(&deployment.service, deployment.namespace.as_deref())?;
        self.hooks.check(&deployment)?;
        let _guard = self.changes.lock().await;
        let existing = self.store.get(&key.namespace, &key.name)?;
        // Callers' deploys (not the roll of a stored version to a new secret value, `pin`).
        if pin.is_none() && mode != DeployMode::FunctionObject {
            if from_function_object(deployment.annotations.as_ref()) {
                return Err(ControlError::BadRequest(format!(
                    "annotations.{ANNOTATION_FUNCTION_OBJECT}: set by fjord's Function object controller only; remove it"
                )));
            }
            if let Some(e) = &existing {
                refuse_if_from_object(&key, &e.deployment)?;
            }
        }
        if mode == DeployMode::Update && existing.is_none() {
            return Err(ControlError::NotFound(format!(
                "function {} not found in namespace {}: create it with POST /system/functions",
                key.name, key.namespace
            )));
        }
        let uid = match &existing {
            Some(e) => e.uid,
            None => self.store.next_uid(self.uids.first, self.uids.last)?,
        };
        let Resolved {
            spec,
            source,
            pin,
            runtime,
            trust,
        } = self.resolve(deployment, uid, pin.as_ref()).await?;
        self.trust.remember(&key, pin.digest(), trust);
        let previous = self.lookup(&key.namespace, &key.name);
        if let Some(p) = &previous
            && !Arc::ptr_eq(&p.runtime, &runtime)
        {
            return self
                .switch_runtime(key, existing, p.clone(), (spec, source, pin, runtime))
                .await;
        }
        let replicas = match &existing {
            Some(e) => e.replicas.clamp(spec.min_replicas, spec.max_replicas),
            None => spec.min_replicas,
        };
        let now = now_rfc3339();
        let stored = self.store.upsert(&StoredFunction {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            deployment: spec.deployment.clone(),
            replicas,
            uid,
            created_at: now.clone(),
            updated_at: now,
            pin: pin.clone(),
        })?;
        let new_deployment = spec.deployment.clone();
        let fjord_runtime_api::Applied {
            handle,
            generation,
            done,
        } = match runtime.apply(Arc::new(spec), source, replicas) {
            Ok(a) => a,
            Err(e) => {
                // Nothing started: the store goes back to what it held.
                self.undo_store(&key, existing.as_ref());
                return Err(e.into());
            }
        };
        let (metrics, scaling, queued) = match self.lookup(&key.namespace, &key.name) {
            Some(r) => (r.metrics.clone(), r.scaling.clone(), r.queued.clone()),
            None => (
                Arc::new(FunctionMetrics::new()),
                Arc::default(),
                Arc::default(),
            ),
        };
        let previous_updated_at = self
            .lookup(&key.namespace, &key.name)
            .map(|r| r.updated_at.clone());
        let previous_digest = self
            .lookup(&key.namespace, &key.name)
            .map(|r| r.serving_digest.clone());
        // While an update rolls out, old and new replicas may both answer: require a token if
        // either version does; after the rollout the version that serves decides.
        let requires_token =
            fjord_core::policy::requires_token(new_deployment.annotations.as_ref()).unwrap_or(true)
                || self
                    .lookup(&key.namespace, &key.name)
                    .is_some_and(|r| r.requires_token);
        self.set_route(
            &key,
            Some(Route {
                handle,
                runtime,
                switching: None,
                metrics,
                scaling,
                queued,
                requires_token,
                uid,
                created_at: stored.created_at.clone(),
                // The update counts once it serves; until then the old time stands.
                updated_at: previous_updated_at.unwrap_or_else(|| stored.updated_at.clone()),
                digest: pin.digest().map(str::to_string),
                generation,
                serving_digest: previous_digest.unwrap_or_else(|| pin.digest().map(str::to_string)),
            }),
        );
        tracing::info!(function = %key, image = %new_deployment.image, digest = pin.digest().unwrap_or("none"), replicas, generation, "deploy accepted");
        if let Some(old) = existing {
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = done.await.unwrap_or(Err("the runtime stopped".into()));
                this.after_rollout(
                    key,
                    old,
                    (new_deployment, pin, generation),
                    stored.updated_at,
                    outcome,
                )
                .await;
            });
        }
        Ok(generation)
    }

    /// An update that moves a function to another runtime (process ↔ container): the new
    /// runtime starts the new version while the old one keeps serving; once it is ready the
    /// route switches and the old runtime's replicas stop. If it never becomes ready, the
    /// new runtime forgets it and the store goes back to the old version.
    async fn switch_runtime(
        self: &Arc<Self>,
        key: FunctionKey,
        existing: Option<StoredFunction>,
        previous: Arc<Route>,
        (spec, source, pin, runtime): (FunctionSpec, Source, Pin, Arc<dyn Runtime>),
    ) -> Result<u64, ControlError> {
        let replicas = existing
            .as_ref()
            .map_or(spec.min_replicas, |e| e.replicas)
            .clamp(spec.min_replicas, spec.max_replicas)
            // Never start from zero: the switch waits for a ready replica.
            .max(1);
        let now = now_rfc3339();
        let stored = self.store.upsert(&StoredFunction {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            deployment: spec.deployment.clone(),
            replicas,
            uid: previous.uid,
            created_at: now.clone(),
            updated_at: now,
            pin: pin.clone(),
        })?;
        let new_deployment = spec.deployment.clone();
        let applied = match runtime.apply(Arc::new(spec), source, replicas) {
            Ok(a) => a,
            Err(e) => {
                self.undo_store(&key, existing.as_ref());
                return Err(e.into());
            }
        };
        let generation = applied.generation;
        self.set_route(
            &key,
            Some(Route {
                switching: Some(applied.handle.clone()),
                ..route_like(&previous)
            }),
        );
        tracing::info!(function = %key, from = previous.runtime.name(), to = runtime.name(), image = %new_deployment.image, generation, "deploy accepted: moving to another runtime");
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = switched(&applied, this.switch_timeout).await;
            let _guard = this.changes.lock().await;
            let Some(current) = this.lookup(&key.namespace, &key.name) else {
                // Deleted meanwhile.
                let _ = runtime.remove(&key).await;
                return;
            };
            // A newer deploy to the same runtime reuses its handle with a higher generation:
            // then this outcome is no longer the function's to act on.
            let still_this_deploy = current
                .switching
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(h, &applied.handle))
                && applied.handle.status().rollout.generation == generation;
            if !still_this_deploy {
                return;
            }
            match outcome {
                Ok(()) => {
                    let requires_token =
                        fjord_core::policy::requires_token(new_deployment.annotations.as_ref())
                            .unwrap_or(true);
                    let digest = pin.digest().map(str::to_string);
                    this.set_route(
                        &key,
                        Some(Route {
                            handle: applied.handle.clone(),
                            runtime: runtime.clone(),
                            requires_token,
                            updated_at: stored.updated_at.clone(),
                            digest: digest.clone(),
                            generation,
                            serving_digest: digest,
                            ..route_like(&current)
                        }),
                    );
                    if let Err(e) = current.runtime.remove(&key).await {
                        tracing::warn!(function = %key, error = %e, "cannot stop the replicas of the previous runtime");
                    }
                    tracing::info!(function = %key, runtime = runtime.name(), "moved to another runtime");
                    this.collect_images().await;
                }
                Err(reason) => {
                    if let Err(e) = runtime.remove(&key).await {
                        tracing::warn!(function = %key, error = %e, "cannot stop the new runtime's replicas");
                    }
                    if let Some(old) = existing {
                        let replicas = current.handle.status().desired;
                        if let Err(e) = this.store.upsert(&StoredFunction { replicas, ..old }) {
                            tracing::error!(function = %key, error = %e, "cannot roll back the stored spec");
                        }
                    }
                    // The failed rollout stays visible in the status until the next deploy.
                    applied.handle.rolled_back(generation);
                    this.set_route(
                        &key,
                        Some(Route {
                            switching: current.switching.clone(),
                            ..route_like(&current)
                        }),
                    );
                    tracing::warn!(function = %key, %reason, "update rolled back: the previous runtime keeps serving");
                }
            }
        });
        Ok(generation)
    }

    async fn after_rollout(
        &self,
        key: FunctionKey,
        old: StoredFunction,
        (new_deployment, new_pin, generation): (FunctionDeployment, Pin, u64),
        updated_at: String,
        outcome: Result<(), String>,
    ) {
        let _guard = self.changes.lock().await;
        let Some(route) = self.lookup(&key.namespace, &key.name) else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.set_route(
                    &key,
                    Some(Route {
                        requires_token: fjord_core::policy::requires_token(
                            new_deployment.annotations.as_ref(),
                        )
                        .unwrap_or(true),
                        updated_at,
                        digest: new_pin.digest().map(str::to_string),
                        serving_digest: new_pin.digest().map(str::to_string),
                        ..route_like(&route)
                    }),
                );
                if matches!(old.pin, Pin::Image(_)) {
                    self.collect_images().await;
                }
            }
            Err(reason) => {
                // Roll the store back (deployment and pinned bundle) unless a newer deploy
                // already replaced this one, so a restart runs the version that serves.
                match self.store.get(&key.namespace, &key.name) {
                    Ok(Some(cur))
                        if cur.deployment == new_deployment
                            && cur.pin == new_pin
                            && route.handle.status().rollout.generation == generation =>
                    {
                        let replicas = route.handle.status().desired;
                        let requires_token =
                            fjord_core::policy::requires_token(old.deployment.annotations.as_ref())
                                .unwrap_or(true);
                        let digest = old.pin.digest().map(str::to_string);
                        if let Err(e) = self.store.upsert(&StoredFunction { replicas, ..old }) {
                            tracing::error!(function = %key, error = %e, "cannot roll back the stored spec");
                        }
                        self.set_route(
                            &key,
                            Some(Route {
                                requires_token,
                                digest: digest.clone(),
                                serving_digest: digest,
                                ..route_like(&route)
                            }),
                        );
                        route.handle.rolled_back(generation);
                        tracing::warn!(function = %key, %reason, "update rolled back");
                    }
                    _ => {}
                }
            }
        }
    }

    /// `DELETE /system/functions`: a function managed by its Function object is refused (409).
    pub async fn delete(&self, key: &FunctionKey) -> Result<(), ControlError> {
        self.remove(key, false).await
    }

    /// The Function object controller: its object is gone.
    pub async fn delete_function_object(&self, key: &FunctionKey) -> Result<(), ControlError> {
        self.remove(key, true).await
    }

    async fn remove(&self, key: &FunctionKey, from_object: bool) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        if !from_object && let Some(e) = self.store.get(&key.namespace, &key.name)? {
            refuse_if_from_object(key, &e.deployment)?;
        }
        self.trust.forget(key);
        if !self.store.delete(&key.namespace, &key.name)? {
            return Err(not_found(key));
        }
        let route = self.lookup(&key.namespace, &key.name);
        self.set_route(key, None);
        let Some(route) = route else {
            tracing::info!(function = %key, "deleted (it was not running)");
            return Ok(());
        };
        route.runtime.remove(key).await?;
        let uid = route.uid;
        {
            self.bundles.remove_for(uid, None);
            if route.runtime.isolates() {
                // Uids are never reused, so nothing can read these; still, do not leave
                // them behind (and free the space).
                let _ = tokio::task::spawn_blocking(move || remove_leftovers(uid)).await;
            }
        }
        tracing::info!(function = %key, "deleted");
        self.collect_images().await;
        Ok(())
    }

    /// Removes the images and layers no stored or serving version uses (also done after
    /// every delete and every update of a container function). Returns what went.
    pub async fn gc_images(&self) -> Result<GcReport, ControlError> {
        let _guard = self.changes.lock().await;
        self.gc_images_locked().await
    }

    /// [`gc_images`](Self::gc_images) with the change lock held: a deploy pulling an image
    /// holds it too, so nothing it just pulled can go before it is stored.
    async fn gc_images_locked(&self) -> Result<GcReport, ControlError> {
        let Some(c) = &self.containers else {
            return Ok(GcReport::default());
        };
        let mut keep: Vec<String> = self
            .store
            .list()?
            .into_iter()
            .filter_map(|f| match f.pin {
                Pin::Image(d) => Some(d),
                _ => None,
            })
            .collect();
        for r in self.routes.load().values().flat_map(|m| m.values()) {
            keep.extend(r.digest.iter().chain(&r.serving_digest).cloned());
        }
        keep.sort();
        keep.dedup();
        let report = c.images.gc(&keep).await?;
        if report.images + report.layers > 0 {
            tracing::info!(
                images = report.images,
                layers = report.layers,
                bytes = report.bytes,
                "removed images no function uses"
            );
        }
        Ok(report)
    }

    /// Automatic image collection: a failure is logged, never the caller's problem.
    async fn collect_images(&self) {
        if let Err(e) = self.gc_images_locked().await {
            tracing::warn!(error = %e, "image garbage collection failed");
        }
    }

    /// Sets the replica count, as OpenFaaS does: any count from 0 (the next request wakes
    /// the function) up to `com.openfaas.scale.max` (above is clamped). `scale.min` bounds
    /// only the autoscaler and the idler. Returns the count actually set.
    pub async fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<u64, ControlError> {
        let _guard = self.changes.lock().await;
        let route = self
            .lookup(&key.namespace, &key.name)
            .ok_or_else(|| not_found(key))?;
        let max = route.handle.spec().max_replicas;
        let set = replicas.min(max);
        self.store.set_replicas(&key.namespace, &key.name, set)?;
        let clamped = if set < replicas {
            format!(" (asked for {replicas}; com.openfaas.scale.max is {max})")
        } else {
            String::new()
        };
        route.scale_for(
            set,
            format!(
                "{}: scaled to {set} through the API{clamped}",
                now_rfc3339()
            ),
        )?;
        hold(&route, set);
        tracing::info!(function = %key, replicas = set, requested = replicas, "scaled");
        Ok(set)
    }

    pub fn status(&self, key: &FunctionKey) -> Result<FunctionStatus, ControlError> {
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        match self.lookup(&key.namespace, &key.name) {
            Some(route) => {
                let mut st = status_of(&route);
                if let (Some(p), Some(f)) = (pulls.get(key), st.fjord.as_mut()) {
                    f.pull = Some(p.status());
                }
                self.add_trust(key, &mut st);
                Ok(st)
            }
            None => pulls
                .get(key)
                .map(|p| p.new_function_status(key))
                .ok_or_else(|| not_found(key)),
        }
    }

    /// Functions of one namespace (the default when `None`), sorted by name; new ones whose
    /// image is being pulled are listed too (no replicas, rollout `pulling`).
    pub fn list(&self, namespace: Option<&str>) -> Vec<FunctionStatus> {
        let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
        let routes = self.routes.load();
        let in_ns = routes.get(ns);
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<FunctionStatus> = in_ns
            .map(|m| {
                m.iter()
                    .map(|(name, r)| {
                        let mut st = status_of(r);
                        if !pulls.is_empty()
                            && let Ok(key) = FunctionKey::new(name, Some(ns))
                            && let (Some(p), Some(f)) = (pulls.get(&key), st.fjord.as_mut())
                        {
                            f.pull = Some(p.status());
                        }
                        if let Ok(key) = FunctionKey::new(name, Some(ns)) {
                            self.add_trust(&key, &mut st);
                        }
                        st
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.extend(
            pulls
                .iter()
                .filter(|(k, _)| {
                    k.namespace == ns && in_ns.is_none_or(|m| !m.contains_key(&k.name))
                })
                .map(|(k, p)| p.new_function_status(k)),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Registers a pull for the function's status until the returned entry is dropped.
    fn pulling(&self, spec: &FunctionSpec, watch: &Arc<PullWatch>) -> PullEntry<'_> {
        self.pulls.lock().unwrap_or_else(|p| p.into_inner()).insert(
            spec.key.clone(),
            Pulling {
                deployment: spec.deployment.clone(),
                watch: watch.clone(),
                started: std::time::Instant::now(),
            },
        );
        PullEntry {
            plane: self,
            key: spec.key.clone(),
        }
    }

    /// Every function's metrics in the Prometheus text format.
    pub fn render_metrics(&self, depth: &std::collections::HashMap<String, u64>) -> String {
        let routes = self.routes.load();
        let mut all: Vec<(String, Arc<Route>)> = routes
            .values()
            .flat_map(|m| m.values())
            .map(|r| (r.handle.qualified.to_string(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let statuses: Vec<_> = all.iter().map(|(_, r)| r.handle.status()).collect();
        let samples: Vec<FunctionSample<'_>> = all
            .iter()
            .zip(&statuses)
            .map(|((name, r), s)| FunctionSample {
                function_name: name,
                metrics: &r.metrics,
                desired: s.desired,
                ready: s.available,
                restarts: s.restarts,
                oom_kills: s.oom_kills,
                queue_depth: depth.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        crate::metrics::render(&samples)
    }

    /// The invoke path's one call into the control plane: no replica could take a request
    /// at once. [`Demand::Cold`] starts a function at zero replicas (no store write: the
    /// idler brings it back to zero); [`Demand::Saturated`] asks for one more replica.
    /// Returns `false` when the function is saturated at its maximum scale (the caller
    /// answers 429 and must not wait).
    pub fn demand(&self, route: &Route, demand: Demand) -> bool {
        let h = &route.handle;
        match demand {
            Demand::Cold => {
                if h.desired() == 0 {
                    let n = h.spec().min_replicas.max(1);
                    let why = format!("{}: scaled from zero to {n} by a request", now_rfc3339());
                    if route.scale_for(n, why).is_ok() {
                        hold(route, n);
                        tracing::info!(function = %h.qualified, replicas = n, "scaling from zero");
                    }
                }
                true
            }
            Demand::Saturated => {
                let (desired, max) = (h.desired(), h.spec().max_replicas);
                if desired >= max {
                    // Every request here is turned away with 429: never wait for the lock.
                    if let Some(mut s) = route.scaling.try_state() {
                        s.still_saturated(crate::metrics::now_ms());
                    }
                    return false;
                }
                let n = desired + 1;
                let why = format!(
                    "{}: all replicas at max_inflight: {desired} → {n}",
                    now_rfc3339()
                );
                if route.scale_for(n, why).is_ok() {
                    route.scaling.state().raised(crate::metrics::now_ms(), n);
                }
                true
            }
        }
    }

    /// One decision of the autoscaler and the idler, for every function, at `now_ms` (the
    /// ticker's clock). The decisions are [`crate::autoscale::decide`]'s; see docs/api.md
    /// ("Autoscaling") for the rules.
    pub fn autoscale_tick(&self, now_ms: u64, defaults: &crate::autoscale::Defaults) {
        let routes = self.routes.load();
        for route in routes.values().flat_map(|m| m.values()) {
            let h = &route.handle;
            let spec = h.spec();
            let m = &route.metrics;
            let o = crate::autoscale::Observation {
                now_ms,
                desired: h.desired(),
                started: m.started.load(Ordering::Relaxed),
                succeeded: m.successes(),
                inflight: m.inflight.load(Ordering::Relaxed),
                // Read from the cgroups only when the rule uses it.
                cpu_ns: (spec.scale.kind == fjord_core::ScaleKind::Cpu
                    && spec.scale.rule == fjord_core::ScaleRule::Target)
                    .then(|| h.cpu_usage_ns().unwrap_or(0)),
                last_request_ms: m.last_request_ms.load(Ordering::Relaxed),
            };
            let Some(d) = crate::autoscale::decide(&mut route.scaling.state(), &spec, &o, defaults)
            else {
                continue;
            };
            let why = format!("{}: {}", now_rfc3339(), d.reason);
            if route.scale_for(d.replicas, why).is_ok() {
                if d.idle {
                    tracing::info!(function = %h.qualified, "idle: scaled to zero");
                } else {
                    tracing::info!(function = %h.qualified, from = o.desired, to = d.replicas, reason = %d.reason, "autoscaled");
                }
            }
        }
    }

    /// Takes one sample of every function's history (the dashboard's graphs); called every
    /// [`crate::history::INTERVAL_MS`] by the server.
    pub fn sample_history(&self, now_ms: u64) {
        for route in self.routes.load().values().flat_map(|m| m.values()) {
            let h = &route.handle;
            let s = h.status();
            let gauges = crate::history::Gauges {
                ready: s.available,
                desired: s.desired,
                cpu_ns: h.cpu_usage_ns(),
                memory_bytes: h.memory_bytes(),
            };
            route.metrics.history.sample(&route.metrics, gauges, now_ms);
        }
    }

    /// The functions list's sparklines, error rates and percentiles of one namespace (the
    /// default when `None`), sorted by name.
    pub fn history_summaries(
        &self,
        namespace: Option<&str>,
    ) -> Vec<crate::history::FunctionSummary> {
        let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
        let routes = self.routes.load();
        let mut out: Vec<_> = routes
            .get(ns)
            .map(|m| {
                m.iter()
                    .map(|(name, r)| r.metrics.history.summary(name, ns))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A function's last 15 minutes of samples.
    pub fn history(
        &self,
        key: &FunctionKey,
    ) -> Result<crate::history::FunctionHistory, ControlError> {
        self.lookup(&key.namespace, &key.name)
            .map(|r| r.metrics.history.snapshot())
            .ok_or_else(|| not_found(key))
    }

    /// Puts back what the store held before a deploy that could not start.
    fn undo_store(&self, key: &FunctionKey, previous: Option<&StoredFunction>) {
        let undone = match previous {
            Some(p) => self.store.upsert(p).map(|_| ()),
            None => self.store.delete(&key.namespace, &key.name).map(|_| ()),
        };
        if let Err(e) = undone {
            tracing::error!(function = %key, error = %e, "cannot undo the stored deploy");
        }
        // Connectors follow the stored deployment: a rolled-back one is a change too.
        self.hooks.routes_changed();
    }

    pub fn namespaces(&self) -> Result<Vec<String>, ControlError> {
        let mut ns = self.store.namespaces()?;
        ns.push(DEFAULT_NAMESPACE.to_string());
        ns.sort();
        ns.dedup();
        Ok(ns)
    }

    pub async fn shutdown(&self) {
        // Containers first: they share the process runtime's sandbox (network pool, cgroups).
        if let Some(c) = &self.containers {
            c.runtime.shutdown().await;
        }
        self.process.shutdown().await;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serialises a change made outside the control plane (namespaces) with deploys and
    /// secret changes, so a check and the write it guards see no deploy in between.
    pub async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    pub fn bundles(&self) -> &Arc<Bundles> {
        &self.bundles
    }
}

/// A scale from outside the autoscaler (API, alert, saturation, a request at zero) holds
/// for one `down.window`: it counts as a recommendation there, so the autoscaler does not
/// undo it on its next tick.
fn hold(route: &Route, replicas: u64) {
    route
        .scaling
        .state()
        .hold(crate::metrics::now_ms(), replicas);
}

/// Shared writable directories where a function's processes could leave files.
const SHARED_DIRS: [&str; 5] = ["/dev/shm", "/var/tmp", "/tmp", "/run/lock", "/dev/mqueue"];

/// Removes what a deleted function's uid left in the host's shared writable directories
/// (its processes are already gone: their cgroups were emptied). Only entries owned by that
/// uid, never following symlinks.
fn remove_leftovers(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for dir in SHARED_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != uid {
                continue;
            }
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    tracing::info!(uid, path = %path.display(), "removed a deleted function's leftover")
                }
                Err(e) => {
                    tracing::warn!(uid, path = %path.display(), error = %e, "cannot remove a deleted function's leftover")
                }
            }
        }
    }
}

impl Route {
    /// The runtime serving this function (`process`, `container`, …).
    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Sets the replica count to `n` for `reason`. The reason is recorded first, so whoever
    /// sees the new count sees why.
    fn scale_for(&self, n: u64, reason: String) -> Result<(), fjord_runtime_api::RuntimeError> {
        self.scaling.set_reason(reason);
        self.runtime.scale(&self.handle.key, n)
    }
}

/// Whether a version started on another runtime became ready: a runtime answers a new
/// function's `done` at once, so readiness is read from its rollout (ready once every
/// replica is; failed when they crash-loop), bounded by `timeout`.
async fn switched(
    applied: &fjord_runtime_api::Applied,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r = applied.handle.status().rollout;
        if r.generation != applied.generation {
            return Err("superseded by a newer deploy".into());
        }
        match r.state {
            fjord_runtime_api::RolloutState::Ready => return Ok(()),
            fjord_runtime_api::RolloutState::Failed => {
                return Err(r
                    .message
                    .unwrap_or_else(|| "its replicas failed to start".into()));
            }
            fjord_runtime_api::RolloutState::Progressing => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "its replicas were not ready within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A copy of a route (the same handle, runtime and kept parts), to change a field or two.
fn route_like(r: &Route) -> Route {
    Route {
        handle: r.handle.clone(),
        runtime: r.runtime.clone(),
        switching: None,
        metrics: r.metrics.clone(),
        scaling: r.scaling.clone(),
        queued: r.queued.clone(),
        requires_token: r.requires_token,
        uid: r.uid,
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        digest: r.digest.clone(),
        generation: r.generation,
        serving_digest: r.serving_digest.clone(),
    }
}

/// A deployment made ready to run: its spec, what it runs, its pin and its runtime.
struct Resolved {
    spec: FunctionSpec,
    source: Source,
    pin: Pin,
    runtime: Arc<dyn Runtime>,
    /// What the trust policy found (verified before anything was unpacked or started).
    trust: TrustState,
}

/// The runtime a deployment asks for with [`RUNTIME_ANNOTATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Process,
    Container,
}

fn wanted_runtime(d: &FunctionDeployment) -> Result<Option<Wanted>, ControlError> {
    let Some(v) = d
        .annotations
        .as_ref()
        .and_then(|a| a.get(RUNTIME_ANNOTATION))
    else {
        return Ok(None);
    };
    match v.trim() {
        "" => Ok(None),
        "process" => Ok(Some(Wanted::Process)),
        "container" => Ok(Some(Wanted::Container)),
        other => Err(ControlError::BadRequest(format!(
            "annotations.{RUNTIME_ANNOTATION}: {other:?} is not a runtime: use process or container"
        ))),
    }
}

/// Whether a deployment names a command to run on this host (`envProcess`, or the
/// watchdog's `fprocess`/`function_process` variables).
fn has_command(d: &FunctionDeployment) -> bool {
    let set = |v: Option<&String>| v.is_some_and(|v| !v.trim().is_empty());
    set(d.env_process.as_ref())
        || d.env_vars
            .as_ref()
            .is_some_and(|e| set(e.get("fprocess")) || set(e.get("function_process")))
}

pub fn not_found(key: &FunctionKey) -> ControlError {
    ControlError::NotFound(format!(
        "function {} not found in namespace {}",
        key.name, key.namespace
    ))
}

impl Pulling {
    fn status(&self) -> fjord_core::openfaas::PullStatus {
        let s = self.watch.snapshot();
        fjord_core::openfaas::PullStatus {
            image: self.deployment.image.clone(),
            layers: s.layers as u64,
            layers_done: s.layers_done as u64,
            bytes: s.bytes,
            total_bytes: s.total_bytes,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// The status of a function that does not exist yet: its first deploy waits for the pull.
    fn new_function_status(&self, key: &FunctionKey) -> FunctionStatus {
        let d = &self.deployment;
        FunctionStatus {
            name: key.name.clone(),
            image: d.image.clone(),
            namespace: key.namespace.clone(),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone(),
            constraints: d.constraints.clone(),
            secrets: d.secrets.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            limits: d.limits.clone(),
            requests: d.requests.clone(),
            read_only_root_filesystem: d.read_only_root_filesystem,
            invocation_count: 0.0,
            replicas: 0,
            available_replicas: 0,
            created_at: now_rfc3339(),
            fjord: Some(FjordStatus {
                runtime: Some("container".into()),
                mode: "http".into(),
                pull: Some(self.status()),
                rollout: Some(RolloutStatus {
                    state: "pulling".into(),
                    ..RolloutStatus::default()
                }),
                ..FjordStatus::default()
            }),
        }
    }
}

fn status_of(route: &Route) -> FunctionStatus {
    let s = route.handle.status();
    let rollout = match &route.switching {
        Some(next) => next.status().rollout,
        None => s.rollout.clone(),
    };
    let d = &s.spec.deployment;
    FunctionStatus {
        name: d.service.clone(),
        image: d.image.clone(),
        namespace: s.spec.key.namespace.clone(),
        env_process: d.env_process.clone(),
        env_vars: d.env_vars.clone(),
        constraints: d.constraints.clone(),
        secrets: d.secrets.clone(),
        // As OpenFaaS providers do; never stored (see fjord_core::spec::LABEL_FAAS_FUNCTION).
        labels: Some({
            let mut l = d.labels.clone().unwrap_or_default();
            l.insert(
                fjord_core::spec::LABEL_FAAS_FUNCTION.to_string(),
                d.service.clone(),
            );
            l
        }),
        annotations: d.annotations.clone(),
        limits: d.limits.clone(),
        requests: d.requests.clone(),
        read_only_root_filesystem: d.read_only_root_filesystem,
        invocation_count: route.metrics.invocations() as f64,
        replicas: s.desired,
        available_replicas: s.available,
        created_at: route.created_at.clone(),
        fjord: Some(FjordStatus {
            runtime: Some(route.runtime.name().to_string()),
            mode: s.spec.mode.name().to_string(),
            restarts: s.restarts,
            oom_kills: s.oom_kills,
            memory_limit: d
                .limits
                .as_ref()
                .and_then(|l| l.memory.clone())
                .filter(|m| !m.is_empty())
                .or_else(|| {
                    s.memory_limit_bytes
                        .map(fjord_core::quantity::format_memory)
                }),
            last_error: s.last_error,
            updated_at: Some(route.updated_at.clone()),
            cold_starts: route.metrics.cold_starts.load(Ordering::Relaxed),
            last_scale_reason: route.scaling.reason(),
            digest: if s.rollout.generation == route.generation
                && s.rollout.state == fjord_runtime_api::RolloutState::Ready
            {
                route.digest.clone()
            } else {
                route.serving_digest.clone()
            },
            pull: None,
            rollout: Some(RolloutStatus {
                generation: rollout.generation,
                state: rollout.state.name().to_string(),
                replicas: rollout.replicas,
                ready_replicas: rollout.ready,
                message: rollout.message,
                failed_replica: rollout.failed_replica,
            }),
            triggers: route.metrics.triggers.statuses(),
            // Set by the caller, which holds the verdicts.
            trust: None,
        }),
    }
}

/// A function deployed from a Function object is changed there: the REST API would be undone
/// by the next reconcile, and GitOps would disagree with the cluster.
fn refuse_if_from_object(key: &FunctionKey, d: &FunctionDeployment) -> Result<(), ControlError> {
    if from_function_object(d.annotations.as_ref()) {
        return Err(ControlError::Conflict(format!(
            "function {name} in namespace {ns} is managed by its Function object (openfaas.com/v1): change or delete that object instead (kubectl edit function {name} -n {ns}, or in the repository your GitOps tool applies)",
            name = key.name,
            ns = key.namespace
        )));
    }
    Ok(())
}

/// A check of a deployment's annotations by a connector (cron schedule, topic list), run
/// before anything is looked up or stored: an error is a 400 and the function stays as it was.
pub trait DeployCheck: Send + Sync {
    /// `Err` names the annotation and the reason.
    fn check(&self, deployment: &FunctionDeployment) -> Result<(), String>;
}

/// What connectors hook into: a change counter they watch, and their deploy checks.
struct Hooks {
    version: tokio::sync::watch::Sender<u64>,
    checks: std::sync::RwLock<Vec<Arc<dyn DeployCheck>>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            version: tokio::sync::watch::Sender::new(0),
            checks: std::sync::RwLock::default(),
        }
    }
}

impl Hooks {
    fn routes_changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn check(&self, d: &FunctionDeployment) -> Result<(), ControlError> {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        for c in checks.iter() {
            c.check(d).map_err(ControlError::BadRequest)?;
        }
        Ok(())
    }
}

/// One deployed function as connectors see it (see [`ControlPlane::deployed`]).
pub struct Deployed {
    pub key: FunctionKey,
    /// The latest stored deployment (its annotations configure the connectors).
    pub deployment: FunctionDeployment,
    pub route: Arc<Route>,
}

impl ControlPlane {
    /// Changes whenever a function is deployed, updated, rolled back or deleted: connectors
    /// re-read [`deployed`](Self::deployed) then, instead of polling.
    pub fn watch_routes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hooks.version.subscribe()
    }

    /// Adds a check every later deploy must pass (registered by `serve` before `restore`).
    pub fn add_deploy_check(&self, check: Arc<dyn DeployCheck>) {
        self.hooks
            .checks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(check);
    }

    /// Every function that has a route, with its latest stored deployment, in the store's
    /// order (namespace, name).
    /// Reads the store: for connectors on a change, never for the invoke path.
    pub fn deployed(&self) -> Result<Vec<Deployed>, ControlError> {
        let out: Vec<Deployed> = self
            .store
            .list()?
            .into_iter()
            .filter_map(|f| {
                let route = self.lookup(&f.namespace, &f.name)?;
                let key = FunctionKey::new(&f.name, Some(&f.namespace)).ok()?;
                Some(Deployed {
                    key,
                    deployment: f.deployment,
                    route,
                })
            })
            .collect();
        Ok(out)
    }
}

// ------------------------------------------------------------------------- content trust

/// One stored function under the current trust policy (`GET /system/trust`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustReport {
    pub name: String,
    pub namespace: String,
    pub image: String,
    /// The pinned bundle or image digest (absent for a command of the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether it runs on this server now.
    pub running: bool,
    pub trust: fjord_core::openfaas::TrustStatus,
}

/// A function that runs a command of this host (`envProcess`) runs no image or bundle that
/// could carry a signature: under a policy that wants signatures it is refused, or a stolen
/// deploy token could run any program of the host.
fn unsigned_command(
    required: &Required,
    d: &FunctionDeployment,
) -> Result<TrustState, ControlError> {
    match required {
        Required::Nothing => Ok(TrustState::UnsignedAllowed),
        Required::Keys(_) => Err(ControlError::Forbidden(format!(
            "refused by the trust policy: unsigned: {:?} is neither a bundle on this gateway nor a container image, and a command of this host (envProcess) cannot be signed",
            d.image
        ))),
    }
}

impl ControlPlane {
    /// Sets the trust policy (`fjord serve --trust-policy`; before `restore`). `None`:
    /// unsigned code runs.
    pub fn set_trust_policy(&self, policy: Option<fjord_trust::Policy>) {
        self.trust.set_policy(policy);
    }

    /// The keys a deployment's namespace requires under the policy.
    fn required_keys(&self, d: &FunctionDeployment) -> Result<Required, ControlError> {
        let ns = d
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        self.trust.required(ns, &|name| {
            crate::secrets::validate_name("trust policy key", name)?;
            match self.store.secret(ns, name)? {
                Some(sealed) => Ok(Some(self.secret_key.open(&sealed)?.to_vec())),
                None => Ok(None),
            }
        })
    }

    /// Image `digest` (pulled for `reference`) must carry a cosign signature by a required
    /// key; the signatures are read from the registry each time (a signature removed there,
    /// or a key no longer trusted, counts at the next pull or restart).
    async fn verify_image(
        &self,
        required: &Required,
        c: &Containers,
        reference: &str,
        digest: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<TrustState, ControlError> {
        let Required::Keys(keys) = required else {
            return Ok(TrustState::UnsignedAllowed);
        };
        let started = std::time::Instant::now();
        let signatures = c
            .images
            .signatures(reference, digest, auth)
            .await
            .map_err(ControlError::from)?;
        let fetched = started.elapsed();
        let verdict = crate::trust::Trust::check(
            keys,
            &format!("image {reference} ({digest})"),
            digest,
            fjord_trust::IMAGE_SIGNATURE_TYPE,
            &signatures,
        );
        if let Ok(TrustState::Verified { key_id }) = &verdict {
            tracing::info!(image = %reference, %digest, key_id, fetch_us = fetched.as_micros() as u64, total_us = started.elapsed().as_micros() as u64, "content trust: image signature verified");
        }
        verdict
    }

    /// Bundle `digest` must carry a signature by a required key, and its archive must
    /// still hash to its digest.
    async fn verify_bundle(
        &self,
        required: &Required,
        digest: &fjord_bundle::Digest,
    ) -> Result<TrustState, ControlError> {
        let Required::Keys(keys) = required else {
            return Ok(TrustState::UnsignedAllowed);
        };
        let started = std::time::Instant::now();
        let what = format!("bundle {digest}");
        let trust = crate::trust::Trust::check(
            keys,
            &what,
            digest.as_str(),
            fjord_trust::BUNDLE_SIGNATURE_TYPE,
            &self.bundles.signatures(digest)?.decoded(),
        )?;
        if !self.bundles.archive_matches(digest).await? {
            return Err(ControlError::Forbidden(format!(
                "refused by the trust policy: {what} was tampered with: its archive on this gateway no longer hashes to its digest (upload it again)"
            )));
        }
        if let TrustState::Verified { key_id } = &trust {
            tracing::info!(%digest, key_id, total_us = started.elapsed().as_micros() as u64, "content trust: bundle signature verified");
        }
        Ok(trust)
    }

    /// Sets `fjord.trust` of a status from the verdict on the version it shows.
    fn add_trust(&self, key: &FunctionKey, st: &mut FunctionStatus) {
        if let Some(f) = st.fjord.as_mut() {
            f.trust = self
                .trust
                .state(key, f.digest.as_deref())
                .map(|t| t.status());
        }
    }

    /// Every stored function checked again under the current policy (signatures read
    /// again: a key secret rotated or a signature removed shows here), without changing
    /// anything: what `fjord trust check` lists.
    pub async fn trust_report(&self) -> Result<Vec<TrustReport>, ControlError> {
        let mut out = Vec::new();
        for f in self.store.list()? {
            let Ok(key) = FunctionKey::new(&f.name, Some(&f.namespace)) else {
                continue;
            };
            let running = self.lookup(&f.namespace, &f.name).is_some();
            let verdict = match self.required_keys(&f.deployment) {
                Err(e) => Err(e),
                Ok(required) => match &f.pin {
                    Pin::Bundle(d) => match fjord_bundle::Digest::parse(d) {
                        Ok(d) => self.verify_bundle(&required, &d).await,
                        Err(e) => Err(ControlError::Internal(e.to_string())),
                    },
                    Pin::Image(d) => match &self.containers {
                        Some(c) => match self.registry_auth(&f.deployment) {
                            Ok(auth) => {
                                self.verify_image(
                                    &required,
                                    c,
                                    &f.deployment.image,
                                    d,
                                    auth.as_ref(),
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        },
                        None => Err(ControlError::BadRequest(
                            "this server runs no containers".into(),
                        )),
                    },
                    Pin::NoBundle | Pin::Unknown => unsigned_command(&required, &f.deployment),
                },
            };
            let trust = match verdict {
                Ok(t) => t.status(),
                Err(e) => fjord_core::openfaas::TrustStatus {
                    state: "refused".into(),
                    key_id: None,
                    reason: Some(
                        self.trust
                            .refused_at_restore(&key)
                            .filter(|_| !running)
                            .unwrap_or_else(|| e.to_string()),
                    ),
                },
            };
            out.push(TrustReport {
                name: f.name.clone(),
                namespace: f.namespace.clone(),
                image: f.deployment.image.clone(),
                digest: f.pin.digest().map(str::to_string),
                running,
                trust,
            });
        }
        Ok(out)
    }
}
