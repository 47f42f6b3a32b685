//! A function's Kubernetes objects, made from its [`FunctionDeployment`] by pure functions: the
//! same request always gives the same objects, so applying them again changes nothing and
//! starts no rollout.
//!
//! The objects are the ones faas-netes makes, so that `kubectl` users and dashboards see what
//! they know — `faas_function=<name>` on the pods and as the selector, `http` on 8080, secrets
//! under `/var/openfaas/secrets` — without its flaws:
//!
//! - every name, label, annotation, quantity and duration is checked first, with an error
//!   naming the request field (faas-netes creates a Deployment, then fails on the Service);
//! - no `uid` label on the pod template, which forced a rollout on every update;
//! - `com.openfaas.scale.min` may be 0 (fjord scales to zero);
//! - `imagePullPolicy` is Kubernetes' own default rather than a hard-coded `Always`;
//! - the grace period covers the watchdog's drain (`healthcheck_interval` + `write_timeout`)
//!   instead of Kubernetes' 30 s, which cut long requests off on every scale-down;
//! - the secrets volume has a fixed name, so function names are not limited to 45 characters;
//! - `constraints` become a node selector instead of being ignored;
//! - function pods get no service account token and no environment variables for every
//!   other Service in the namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fjord_core::duration::{DurationError, parse_duration};
use fjord_core::openfaas::{FunctionDeployment, FunctionNamespace, FunctionResources};
use fjord_core::spec::{
    ANNOTATION_HEALTH_PATH, ANNOTATION_READY_PATH, ANNOTATION_TMP_SIZE, LABEL_FAAS_FUNCTION,
    LABEL_SCALE_MIN,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, LocalObjectReference,
    Namespace, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    Secret, SecretProjection, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{self, NameProblem};
use crate::quantity;

/// The port every function's watchdog listens on, and the port of its Service.
pub const FUNCTION_PORT: i32 = 8080;
/// Name of that port on the container, the Service and the EndpointSlices.
pub const PORT_NAME: &str = "http";
/// Where a function reads its secrets, one file per key (as in OpenFaaS).
pub const SECRETS_MOUNT_PATH: &str = "/var/openfaas/secrets";
/// The watchdogs' health endpoint (503 once SIGTERM arrives, so draining pods leave the
/// endpoints before they stop).
pub const DEFAULT_HEALTH_PATH: &str = "/_/health";
/// Label on the Secrets made through the API, as faas-netes sets it: `GET /system/secrets`
/// lists by it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_OPENFAAS: &str = "openfaas";
/// Label (and annotation, for older readers) that marks a namespace functions may use.
pub const LABEL_OPENFAAS_NAMESPACE: &str = "openfaas";
/// Added as `"false"` when absent, as faas-netes does: a Prometheus scraping every annotated
/// pod would otherwise scrape function pods, whose metrics the gateway already exports.
pub const ANNOTATION_PROMETHEUS_SCRAPE: &str = "prometheus.io.scrape";

/// The Kubernetes secret types whose secrets are registry credentials (`imagePullSecrets`).
pub const IMAGE_PULL_SECRET_TYPES: [&str; 2] =
    ["kubernetes.io/dockercfg", "kubernetes.io/dockerconfigjson"];

/// Kubernetes' limit on all annotations of one object, keys and values together.
const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
/// Kubernetes' limit on the data of one Secret.
const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// The watchdogs' `write_timeout` when a function sets none (openfaas-compat.md §4).
const WATCHDOG_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the process to exit after the watchdog's drain, before SIGKILL.
const EXIT_SLACK: Duration = Duration::from_secs(2);

/// Why a function's objects could not be made. Each names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("{field}: {value:?} {problem}")]
    Name {
        field: String,
        value: String,
        #[source]
        problem: NameProblem,
    },
    #[error("namespace: {namespace:?} is reserved for Kubernetes itself")]
    ReservedNamespace { namespace: String },
    #[error("image: {reason}")]
    Image { reason: &'static str },
    #[error("{field}: {value:?} is not a Kubernetes quantity: {reason}")]
    Quantity {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("requests.{resource}: {request} is above limits.{resource} ({limit})")]
    RequestAboveLimit {
        resource: &'static str,
        request: String,
        limit: String,
    },
    #[error(
        "requests.{resource}: set GPUs in limits only; Kubernetes uses the limit as the request"
    )]
    GpuRequest { resource: &'static str },
    #[error("limits.{resource}: {value:?} is not a whole number of devices")]
    GpuCount {
        resource: &'static str,
        value: String,
    },
    #[error(
        "labels.{LABEL_FAAS_FUNCTION}: {value:?} must be the function's name or left out: it selects the function's pods"
    )]
    FaasFunctionLabel { value: String },
    #[error("annotations: {bytes} bytes in all; Kubernetes allows {max}")]
    AnnotationsTooLarge { bytes: usize, max: usize },
    #[error("labels.{LABEL_SCALE_MIN}: {value:?} is not a whole number of replicas")]
    ScaleMin { value: String },
    #[error("{field}: {source}")]
    Duration {
        field: String,
        #[source]
        source: DurationError,
    },
    #[error(
        "annotations.{annotation}: {value:?} is not an HTTP path: it must start with '/' and contain no spaces or control characters"
    )]
    ProbePath {
        annotation: &'static str,
        value: String,
    },
    #[error(
        "constraints[{index}]: {value:?} is not a node label constraint: use key=value (e.g. kubernetes.io/arch=arm64)"
    )]
    Constraint { index: usize, value: String },
    #[error("secrets: {name:?} does not exist in the function's namespace: create it first")]
    SecretNotFound { name: String },
    #[error("secret {name:?}: {bytes} bytes; Kubernetes allows {max}")]
    SecretTooLarge {
        name: String,
        bytes: usize,
        max: usize,
    },
}

fn name_error(field: impl Into<String>, value: &str, problem: NameProblem) -> ObjectError {
    ObjectError::Name {
        field: field.into(),
        // Long enough to recognise, short enough for an error message.
        value: value.chars().take(80).collect(),
        problem,
    }
}

/// How a function uses one of its secrets, from the Secret's Kubernetes `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// Files under [`SECRETS_MOUNT_PATH`]: `Opaque` and every other type.
    Mounted,
    /// Registry credentials for pulling the function's image.
    ImagePull,
}

impl SecretUse {
    pub fn of_type(secret_type: &str) -> Self {
        if IMAGE_PULL_SECRET_TYPES.contains(&secret_type) {
            Self::ImagePull
        } else {
            Self::Mounted
        }
    }
}

/// A function's Deployment and Service, made and checked together so that neither is applied
/// when the other would be refused.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionObjects {
    pub deployment: Deployment,
    pub service: Service,
}

/// Both objects of a function. `secret_types` maps the names of the Secrets in `namespace` to
/// their `type`; every secret the function names must be there.
pub fn function_objects(
    d: &FunctionDeployment,
    namespace: &str,
    secret_types: &BTreeMap<String, String>,
) -> Result<FunctionObjects, ObjectError> {
    Ok(FunctionObjects {
        deployment: deployment(d, namespace, secret_types)?,
        service: service(d, namespace)?,
    })
}

/// Checks a namespace a function or secret goes into.
pub fn check_namespace(namespace: &str) -> Result<(), ObjectError> {
    names::dns1123_label(namespace).map_err(|p| name_error("namespace", namespace, p))?;
    // kube-system, kube-public, kube-node-lease and any future one: functions there would run
    // next to the control plane's own workloads (faas-netes refuses kube-system only).
    if namespace.starts_with("kube-") {
        return Err(ObjectError::ReservedNamespace {
            namespace: namespace.to_string(),
        });
    }
    Ok(())
}

/// The function's name, which is also its Service's: a DNS-1035 label.
fn check_function_name(name: &str) -> Result<(), ObjectError> {
    names::dns1035_label(name).map_err(|p| name_error("service", name, p))
}

/// The user's labels plus `faas_function=<name>`, checked.
fn pod_labels(d: &FunctionDeployment) -> Result<BTreeMap<String, String>, ObjectError> {
    let mut labels = d.labels.clone().unwrap_or_default();
    for (key, value) in &labels {
        names::qualified_name(key).map_err(|p| name_error("labels", key, p))?;
        names::label_value(value).map_err(|p| name_error(format!("labels.{key}"), value, p))?;
    }
    match labels.get(LABEL_FAAS_FUNCTION) {
        Some(value) if value != &d.service => {
            return Err(ObjectError::FaasFunctionLabel {
                value: value.clone(),
            });
        }
        _ => {}
    }
    labels.insert(LABEL_FAAS_FUNCTION.to_string(), d.service.clone());
    Ok(labels)
}

/// The selector, and the only label on the Deployment and the Service objects.
fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_FAAS_FUNCTION.to_string(), name.to_string())])
}

/// The user's annotations plus `prometheus.io.scrape: "false"` unless set, checked.
fn annotations(d: &FunctionDeployment) -> Result<BTreeMap<String, String>, ObjectError> {
    let mut annotations = d.annotations.clone().unwrap_or_default();
    for key in annotations.keys() {
        names::qualified_name(key).map_err(|p| name_error("annotations", key, p))?;
    }
    annotations
        .entry(ANNOTATION_PROMETHEUS_SCRAPE.to_string())
        .or_insert_with(|| "false".to_string());
    let bytes = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ANNOTATION_BYTES {
        return Err(ObjectError::AnnotationsTooLarge {
            bytes,
            max: MAX_ANNOTATION_BYTES,
        });
    }
    Ok(annotations)
}

/// `com.openfaas.scale.min`, else 1. Updates should keep the live replica count unless it is
/// below this (faas-netes resets it on every update, undoing the autoscaler).
pub fn initial_replicas(d: &FunctionDeployment) -> Result<i32, ObjectError> {
    match d.labels.as_ref().and_then(|l| l.get(LABEL_SCALE_MIN)) {
        None => Ok(1),
        Some(value) => value
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ObjectError::ScaleMin {
                value: value.clone(),
            }),
    }
}

/// `Always` for `:latest` and untagged images, whose content changes under the same name;
/// `IfNotPresent` for other tags and for digests. This is Kubernetes' own default, written
/// out so the object says what happens. faas-netes hard-codes `Always`, which costs a
/// registry round trip on every pod start (every scale-up and scale from zero) and makes pods
/// fail to start while the registry is down, for tags that do not change in practice.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // The tag is after the last ':' of the last path component: `registry:5000/fn` has none.
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn check_image(image: &str) -> Result<(), ObjectError> {
    if image.is_empty() {
        return Err(ObjectError::Image {
            reason: "must not be empty",
        });
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ObjectError::Image {
            reason: "must not contain spaces or control characters",
        });
    }
    Ok(())
}

/// `fprocess` from `envProcess`, plus `envVars`, sorted by name. `envProcess` wins over an
/// `fprocess` in `envVars`, as in fjord's other runtimes.
fn env(d: &FunctionDeployment) -> Result<Vec<EnvVar>, ObjectError> {
    let mut env = d.env_vars.clone().unwrap_or_default();
    for name in env.keys() {
        names::env_var_name(name).map_err(|p| name_error("envVars", name, p))?;
    }
    if let Some(fprocess) = d.env_process.as_ref().filter(|p| !p.trim().is_empty()) {
        env.insert("fprocess".to_string(), fprocess.clone());
    }
    Ok(env
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect())
}

fn env_duration(
    env: Option<&BTreeMap<String, String>>,
    key: &str,
) -> Result<Option<Duration>, ObjectError> {
    env.and_then(|e| e.get(key))
        .map(|v| {
            parse_duration(v).map_err(|source| ObjectError::Duration {
                field: format!("envVars.{key}"),
                source,
            })
        })
        .transpose()
}

/// Seconds a stopping pod gets: the watchdog waits `healthcheck_interval` (default
/// `write_timeout`) for its endpoint to go, then lets requests run up to `write_timeout`.
pub fn termination_grace_seconds(d: &FunctionDeployment) -> Result<i64, ObjectError> {
    let env = d.env_vars.as_ref();
    let write = env_duration(env, "write_timeout")?.unwrap_or(WATCHDOG_WRITE_TIMEOUT);
    let interval = env_duration(env, "healthcheck_interval")?.unwrap_or(write);
    let total = write.saturating_add(interval).saturating_add(EXIT_SLACK);
    let seconds = total.as_secs() + u64::from(total.subsec_nanos() > 0);
    Ok(i64::try_from(seconds).unwrap_or(i64::MAX))
}

fn checked_quantity(field: String, value: &str) -> Result<(Quantity, f64), ObjectError> {
    let base = quantity::parse(value).map_err(|reason| ObjectError::Quantity {
        field,
        value: value.chars().take(64).collect(),
        reason,
    })?;
    Ok((Quantity(value.to_string()), base))
}

/// `limits`/`requests` → the container's resources: memory and cpu, and GPUs in limits.
fn resources(d: &FunctionDeployment) -> Result<Option<ResourceRequirements>, ObjectError> {
    let none = FunctionResources::default();
    let limits = d.limits.as_ref().unwrap_or(&none);
    let requests = d.requests.as_ref().unwrap_or(&none);
    let mut out_limits = BTreeMap::new();
    let mut out_requests = BTreeMap::new();
    for (resource, limit, request) in [
        ("memory", &limits.memory, &requests.memory),
        ("cpu", &limits.cpu, &requests.cpu),
    ] {
        let limit = limit
            .as_deref()
            .map(|v| checked_quantity(format!("limits.{resource}"), v))
            .transpose()?;
        let request = request
            .as_deref()
            .map(|v| checked_quantity(format!("requests.{resource}"), v))
            .transpose()?;
        // The API server refuses this too, but only after the Deployment is half-applied.
        if let (Some((limit_q, limit)), Some((request_q, request))) = (&limit, &request)
            && request > limit
        {
            return Err(ObjectError::RequestAboveLimit {
                resource,
                request: request_q.0.clone(),
                limit: limit_q.0.clone(),
            });
        }
        if let Some((q, _)) = limit {
            out_limits.insert(resource.to_string(), q);
        }
        if let Some((q, _)) = request {
            out_requests.insert(resource.to_string(), q);
        }
    }
    // Extended resources: whole devices, limits only (Kubernetes sets the request to the limit
    // and refuses a different one). faas-netes drops them.
    for (resource, limit, request) in [
        ("nvidia.com/gpu", &limits.nvidia_gpu, &requests.nvidia_gpu),
        ("amd.com/gpu", &limits.amd_gpu, &requests.amd_gpu),
        ("intel.com/gpu", &limits.intel_gpu, &requests.intel_gpu),
    ] {
        if request.is_some() {
            return Err(ObjectError::GpuRequest { resource });
        }
        if let Some(value) = limit {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ObjectError::GpuCount {
                    resource,
                    value: value.chars().take(64).collect(),
                });
            }
            out_limits.insert(resource.to_string(), Quantity(value.clone()));
        }
    }
    if out_limits.is_empty() && out_requests.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        limits: (!out_limits.is_empty()).then_some(out_limits),
        requests: (!out_requests.is_empty()).then_some(out_requests),
        claims: None,
    }))
}

fn probe_path(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Option<String>, ObjectError> {
    match annotations.get(annotation) {
        None => Ok(None),
        Some(path)
            if path.starts_with('/')
                && !path.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(Some(path.clone()))
        }
        Some(path) => Err(ObjectError::ProbePath {
            annotation,
            value: path.chars().take(80).collect(),
        }),
    }
}

fn http_probe(path: String) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path),
            port: IntOrString::Int(FUNCTION_PORT),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// Readiness on `com.openfaas.ready.http.path`, else `com.openfaas.health.http.path`, else
/// the watchdog's `/_/health` (the order fjord's other runtimes read them in). Probed every
/// second from the container's start: a request waiting on a scale from zero waits for this,
/// and a kubelet HTTP GET per pod per second is cheap. Three misses take a pod out.
///
/// Liveness only when the function names a health path: the watchdog exits when its function
/// does, so the container restarts without one, and a liveness probe on a busy but healthy
/// replica would kill its in-flight requests. Its period and timeout are therefore lenient.
fn probes(annotations: &BTreeMap<String, String>) -> Result<(Probe, Option<Probe>), ObjectError> {
    let ready = probe_path(annotations, ANNOTATION_READY_PATH)?;
    let health = probe_path(annotations, ANNOTATION_HEALTH_PATH)?;
    let readiness = Probe {
        initial_delay_seconds: Some(0),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..http_probe(
            ready
                .or_else(|| health.clone())
                .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string()),
        )
    };
    let liveness = health.map(|path| Probe {
        initial_delay_seconds: Some(0),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..http_probe(path)
    });
    Ok((readiness, liveness))
}

/// `constraints` as `key=value` (or `key==value`) node labels: how OpenFaaS documents them
/// for Kubernetes. faas-netes CE ignores them, so a function meant for GPU or arm64 nodes
/// lands anywhere.
fn node_selector(d: &FunctionDeployment) -> Result<Option<BTreeMap<String, String>>, ObjectError> {
    let constraints = d.constraints.as_deref().unwrap_or_default();
    let mut selector = BTreeMap::new();
    for (index, constraint) in constraints.iter().enumerate() {
        let bad = || ObjectError::Constraint {
            index,
            value: constraint.chars().take(80).collect(),
        };
        let (key, value) = constraint
            .split_once("==")
            .or_else(|| constraint.split_once('='))
            .ok_or_else(bad)?;
        let (key, value) = (key.trim(), value.trim());
        if names::qualified_name(key).is_err() || names::label_value(value).is_err() {
            return Err(bad());
        }
        selector.insert(key.to_string(), value.to_string());
    }
    Ok((!selector.is_empty()).then_some(selector))
}

/// The secrets' volume and pull secrets. Names are sorted and deduplicated so the same set in
/// another order makes the same pod template (and no rollout).
fn secrets(
    d: &FunctionDeployment,
    secret_types: &BTreeMap<String, String>,
) -> Result<(Vec<SecretProjection>, Vec<LocalObjectReference>), ObjectError> {
    let wanted: BTreeSet<&String> = d.secrets.iter().flatten().collect();
    let mut mounted = Vec::new();
    let mut pull = Vec::new();
    for name in wanted {
        names::dns1123_subdomain(name).map_err(|p| name_error("secrets", name, p))?;
        let secret_type = secret_types
            .get(name)
            .ok_or_else(|| ObjectError::SecretNotFound { name: name.clone() })?;
        match SecretUse::of_type(secret_type) {
            // No `items`: every key of the Secret becomes a file, including keys added later
            // to a secret made with kubectl.
            SecretUse::Mounted => mounted.push(SecretProjection {
                name: name.clone(),
                items: None,
                optional: None,
            }),
            SecretUse::ImagePull => pull.push(LocalObjectReference { name: name.clone() }),
        }
    }
    Ok((mounted, pull))
}

/// The `temp` volume at `/tmp`: needed when the root filesystem is read-only (watchdogs write
/// their lock file there). With `com.fjord.tmp-size` it is a size-limited tmpfs counted in the
/// function's memory, as in fjord's process runtime.
fn temp_volume(d: &FunctionDeployment) -> Result<Option<EmptyDirVolumeSource>, ObjectError> {
    let size = d
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TMP_SIZE))
        .map(|v| checked_quantity(format!("annotations.{ANNOTATION_TMP_SIZE}"), v))
        .transpose()?;
    Ok(match size {
        Some((q, _)) => Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(q),
        }),
        None if d.read_only_root_filesystem => Some(EmptyDirVolumeSource::default()),
        None => None,
    })
}

/// The function's Deployment in `namespace`.
pub fn deployment(
    d: &FunctionDeployment,
    namespace: &str,
    secret_types: &BTreeMap<String, String>,
) -> Result<Deployment, ObjectError> {
    let name = &d.service;
    check_function_name(name)?;
    check_namespace(namespace)?;
    check_image(&d.image)?;
    let pod_labels = pod_labels(d)?;
    let annotations = annotations(d)?;
    let replicas = initial_replicas(d)?;
    let env = env(d)?;
    let resources = resources(d)?;
    let (readiness, liveness) = probes(&annotations)?;
    let node_selector = node_selector(d)?;
    let (mounted_secrets, pull_secrets) = secrets(d, secret_types)?;
    let temp = temp_volume(d)?;
    let grace = termination_grace_seconds(d)?;

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(empty_dir) = temp {
        volumes.push(Volume {
            name: "temp".to_string(),
            empty_dir: Some(empty_dir),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "temp".to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        });
    }
    if !mounted_secrets.is_empty() {
        volumes.push(Volume {
            name: "secrets".to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    mounted_secrets
                        .into_iter()
                        .map(|secret| VolumeProjection {
                            secret: Some(secret),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
                default_mode: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "secrets".to_string(),
            mount_path: SECRETS_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let container = Container {
        name: name.clone(),
        image: Some(d.image.clone()),
        image_pull_policy: Some(image_pull_policy(&d.image).to_string()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: FUNCTION_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources,
        readiness_probe: Some(readiness),
        liveness_probe: liveness,
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(d.read_only_root_filesystem),
            ..SecurityContext::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(selector(name)),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(name)),
                match_expressions: None,
            },
            // One new pod at a time, never fewer ready pods than wanted: an update never
            // drops capacity (and stalls, visibly, when the new pods never get ready).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(10),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
                    node_selector,
                    termination_grace_period_seconds: Some(grace),
                    // Functions do not call the Kubernetes API: no token in every pod.
                    automount_service_account_token: Some(false),
                    // Otherwise every Service in the namespace (one per function) becomes
                    // environment variables in every function pod, growing with the namespace.
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The function's Service: its pods on `http` 8080. fjord routes to the pods themselves,
/// through the EndpointSlices Kubernetes keeps for this Service; the ClusterIP is for
/// in-cluster callers. Unlike faas-netes it also carries `faas_function`, so a function's
/// objects can be listed (and checked before deletion) with one selector.
pub fn service(d: &FunctionDeployment, namespace: &str) -> Result<Service, ObjectError> {
    let name = &d.service;
    check_function_name(name)?;
    check_namespace(namespace)?;
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(selector(name)),
            annotations: Some(annotations(d)?),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector(name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: FUNCTION_PORT,
                target_port: Some(IntOrString::Int(FUNCTION_PORT)),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// A secret made through `/system/secrets`: Opaque, one key named like the secret, so the
/// function reads it at `/var/openfaas/secrets/<name>`. `value` is the decoded bytes (the
/// gateway takes `value`, else `rawValue`).
pub fn secret(name: &str, namespace: &str, value: &[u8]) -> Result<Secret, ObjectError> {
    names::dns1123_subdomain(name).map_err(|p| name_error("name", name, p))?;
    check_namespace(namespace)?;
    let bytes = name.len() + value.len();
    if bytes > MAX_SECRET_BYTES {
        return Err(ObjectError::SecretTooLarge {
            name: name.to_string(),
            bytes,
            max: MAX_SECRET_BYTES,
        });
    }
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGED_BY_OPENFAAS.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            name.to_string(),
            ByteString(value.to_vec()),
        )])),
        ..Secret::default()
    })
}

/// A namespace for functions: the caller's labels and annotations plus `openfaas: "1"` as
/// both, since faasd and the go-sdk read the label and older faas-netes the annotation.
pub fn namespace(ns: &FunctionNamespace) -> Result<Namespace, ObjectError> {
    check_namespace(&ns.name)?;
    let marker = || (LABEL_OPENFAAS_NAMESPACE.to_string(), "1".to_string());
    let mut labels = ns.labels.clone().unwrap_or_default();
    for (key, value) in &labels {
        names::qualified_name(key).map_err(|p| name_error("labels", key, p))?;
        names::label_value(value).map_err(|p| name_error(format!("labels.{key}"), value, p))?;
    }
    let mut annotations = ns.annotations.clone().unwrap_or_default();
    for key in annotations.keys() {
        names::qualified_name(key).map_err(|p| name_error("annotations", key, p))?;
    }
    labels.extend([marker()]);
    annotations.extend([marker()]);
    Ok(Namespace {
        metadata: ObjectMeta {
            name: Some(ns.name.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}
