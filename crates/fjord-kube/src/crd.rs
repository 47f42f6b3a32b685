//! The `openfaas.com/v1` `Function` custom resource, as OpenFaaS Pro's operator defines it
//! (`deploy/kubernetes/crd-function.yaml` is its CustomResourceDefinition), so that
//! `faas-cli generate` output and existing Function objects work unchanged.
//!
//! Its spec uses the resource's own field names, not the REST API's: `handler` is
//! `envProcess`, `environment` is `envVars`, and there is no namespace field (the object's
//! `metadata.namespace` is the function's).

use std::collections::BTreeMap;

use fjord_core::openfaas::{FunctionDeployment, FunctionResources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "openfaas.com";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "openfaas.com/v1";
pub const KIND: &str = "Function";
/// The resource's plural name, in its API paths and in the CRD's name.
pub const PLURAL: &str = "functions";

/// Why a Function could not be read or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    #[error("expected apiVersion {API_VERSION} and kind {KIND}, found {api_version} {kind}")]
    NotAFunction { api_version: String, kind: String },
    #[error(
        "spec.name {spec_name:?} differs from metadata.name {metadata_name:?}: the function's objects are named after spec.name, so two Functions could claim one Deployment"
    )]
    NameMismatch {
        metadata_name: String,
        spec_name: String,
    },
    /// The Function resource has memory and cpu only; dropping a GPU would deploy a function
    /// that cannot do its work.
    #[error("{field}: the Function resource has no such field")]
    NotRepresentable { field: &'static str },
}

/// An `openfaas.com/v1` Function. (De)serialises with its `apiVersion` and `kind`, which must
/// be this resource's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FunctionObject", into = "FunctionObject")]
pub struct Function {
    pub metadata: ObjectMeta,
    pub spec: FunctionCrSpec,
    pub status: Option<FunctionCrStatus>,
}

/// The Function's `spec`, field for field as OpenFaaS's `FunctionSpec` (Go) writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCrSpec {
    pub name: String,
    pub image: String,
    /// The function's process: `envProcess` in the REST API, `fprocess` in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// `envVars` in the REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionCrResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionCrResources>,
    /// Always written, as the Go type does (it has no `omitempty`).
    #[serde(default)]
    pub read_only_root_filesystem: bool,
}

/// `limits` / `requests` of a Function: Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCrResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// What the operator reports on a Function (the `status` subresource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCrStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<FunctionCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One of the status's conditions: `Ready`, `Healthy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The wire form, with the type's identity checked on the way in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionObject {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: FunctionCrSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<FunctionCrStatus>,
}

impl TryFrom<FunctionObject> for Function {
    type Error = CrdError;

    fn try_from(o: FunctionObject) -> Result<Self, CrdError> {
        if o.api_version != API_VERSION || o.kind != KIND {
            return Err(CrdError::NotAFunction {
                api_version: o.api_version,
                kind: o.kind,
            });
        }
        Ok(Self {
            metadata: o.metadata,
            spec: o.spec,
            status: o.status,
        })
    }
}

impl From<Function> for FunctionObject {
    fn from(f: Function) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: f.metadata,
            spec: f.spec,
            status: f.status,
        }
    }
}

// So that a Kubernetes client can address it like any built-in type.
impl k8s_openapi::Resource for Function {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for Function {
    const LIST_KIND: &'static str = "FunctionList";
}

impl k8s_openapi::Metadata for Function {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn resources_to_cr(
    r: &Option<FunctionResources>,
    gpu_fields: [&'static str; 3],
) -> Result<Option<FunctionCrResources>, CrdError> {
    let Some(r) = r else { return Ok(None) };
    for (value, field) in [&r.nvidia_gpu, &r.amd_gpu, &r.intel_gpu]
        .into_iter()
        .zip(gpu_fields)
    {
        if value.is_some() {
            return Err(CrdError::NotRepresentable { field });
        }
    }
    Ok(Some(FunctionCrResources {
        memory: r.memory.clone(),
        cpu: r.cpu.clone(),
    }))
}

fn resources_from_cr(r: &Option<FunctionCrResources>) -> Option<FunctionResources> {
    r.as_ref().map(|r| FunctionResources {
        memory: r.memory.clone(),
        cpu: r.cpu.clone(),
        ..FunctionResources::default()
    })
}

impl Function {
    /// The Function for a deployment in `namespace`. Fails only on fields the resource cannot
    /// carry (GPUs); the deprecated `registryAuth` and `network` are ignored, as everywhere.
    pub fn from_deployment(d: &FunctionDeployment, namespace: &str) -> Result<Self, CrdError> {
        Ok(Self {
            metadata: ObjectMeta {
                name: Some(d.service.clone()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec: FunctionCrSpec {
                name: d.service.clone(),
                image: d.image.clone(),
                handler: d.env_process.clone(),
                environment: d.env_vars.clone(),
                labels: d.labels.clone(),
                annotations: d.annotations.clone(),
                constraints: d.constraints.clone(),
                secrets: d.secrets.clone(),
                limits: resources_to_cr(
                    &d.limits,
                    [
                        "limits.nvidia.com/gpu",
                        "limits.amd.com/gpu",
                        "limits.intel.com/gpu",
                    ],
                )?,
                requests: resources_to_cr(
                    &d.requests,
                    [
                        "requests.nvidia.com/gpu",
                        "requests.amd.com/gpu",
                        "requests.intel.com/gpu",
                    ],
                )?,
                read_only_root_filesystem: d.read_only_root_filesystem,
            },
            status: None,
        })
    }

    /// The deployment this Function asks for, in its `metadata.namespace` (none: the default
    /// namespace, as for the REST API). The result still goes through the same checks as a
    /// REST request.
    pub fn to_deployment(&self) -> Result<FunctionDeployment, CrdError> {
        if let Some(metadata_name) = &self.metadata.name
            && metadata_name != &self.spec.name
        {
            return Err(CrdError::NameMismatch {
                metadata_name: metadata_name.clone(),
                spec_name: self.spec.name.clone(),
            });
        }
        let s = &self.spec;
        Ok(FunctionDeployment {
            service: s.name.clone(),
            image: s.image.clone(),
            namespace: self.metadata.namespace.clone(),
            env_process: s.handler.clone(),
            env_vars: s.environment.clone(),
            constraints: s.constraints.clone(),
            secrets: s.secrets.clone(),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            limits: resources_from_cr(&s.limits),
            requests: resources_from_cr(&s.requests),
            read_only_root_filesystem: s.read_only_root_filesystem,
            registry_auth: None,
            network: None,
        })
    }
}
