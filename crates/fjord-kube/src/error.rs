//! What can go wrong talking to the Kubernetes API, in words that say what to do about it, and
//! how it maps onto the [`RuntimeError`] variants the control plane knows.

use std::fmt;

use fjord_runtime_api::RuntimeError;

use crate::objects::ObjectError;

/// Where fjord's RBAC is defined; every "forbidden" error points there.
pub const RBAC_MANIFEST: &str = "deploy/kubernetes/rbac.yaml";

/// One request to the API server: what fjord tried to do to which object. Errors carry it so
/// that a 403 can name the permission that is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The RBAC verb (`patch`, `delete`, `get`, `list`, `watch`).
    pub verb: &'static str,
    /// The RBAC resource with its API group, as a Role lists it: `deployments.apps`,
    /// `deployments.apps/scale`, `services`, `secrets`.
    pub resource: &'static str,
    pub namespace: String,
    /// The object's name; empty for lists and watches.
    pub name: String,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        write!(f, " in namespace {:?}", self.namespace)
    }
}

/// Errors from the Kubernetes runtime's calls to the API server. Each names the operation
/// ([`Operation`]) that failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The function's objects could not be made: the user's mistake.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// 403: fjord's service account lacks a permission. `hint` adds what else the verb needs.
    #[error(
        "forbidden: fjord's service account may not {op} ({message}); grant `{verb}` on `{resource}` in the namespace's Role (see {RBAC_MANIFEST}){hint}",
        verb = op.verb,
        resource = op.resource
    )]
    Forbidden {
        op: Box<Operation>,
        message: String,
        hint: &'static str,
    },
    /// The API server could not be reached (connection refused, DNS, TLS, timeout).
    #[error("cannot reach the Kubernetes API server to {op}: {reason}")]
    Unreachable { op: Box<Operation>, reason: String },
    /// 409 on every attempt: something else keeps changing the object.
    #[error("{op}: conflict on each of {attempts} attempts ({message}); try again")]
    Conflict {
        op: Box<Operation>,
        attempts: u32,
        message: String,
    },
    /// Any other answer the API server refused the request with.
    #[error("the Kubernetes API server refused to {op}: {code} {reason}: {message}")]
    Api {
        op: Box<Operation>,
        code: u16,
        reason: String,
        message: String,
    },
    /// The client failed in a way that is neither the server's answer nor the network.
    #[error("{op}: {reason}")]
    Client { op: Box<Operation>, reason: String },
    /// `KubeRuntime::from_env` found neither an in-cluster service account nor a kubeconfig.
    #[error(
        "cannot configure the Kubernetes client from the in-cluster service account or a kubeconfig: {0}"
    )]
    Config(#[source] kube::Error),
    /// A kubeconfig that cannot be read or used.
    #[error("kubeconfig {}: {reason}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The API server did not answer fjord's first request, or refused its credentials.
    #[error("the Kubernetes API server at {server} cannot be used: {reason}")]
    ApiServer { server: String, reason: String },
    /// The runtime needs a Tokio runtime for its watches and API calls.
    #[error("the Kubernetes runtime must be created inside a Tokio runtime")]
    NoTokioRuntime,
}

impl KubeError {
    /// Classifies a client error for `op`. A 409 becomes [`KubeError::Conflict`] with one
    /// attempt; callers that retry overwrite the count.
    pub fn from_kube(op: Operation, e: kube::Error) -> Self {
        // Boxed: keeps `Result<_, KubeError>` small on the happy path.
        let op = Box::new(op);
        match e {
            kube::Error::Api(status) if status.code == 403 => KubeError::Forbidden {
                hint: if op.verb == "patch" && !op.resource.ends_with("/scale") {
                    // Server-side apply of an object that does not exist yet is a create.
                    "; server-side apply also needs `create` for a new object"
                } else {
                    ""
                },
                op,
                message: status.message,
            },
            kube::Error::Api(status) if status.code == 409 => KubeError::Conflict {
                op,
                attempts: 1,
                message: status.message,
            },
            kube::Error::Api(status) => KubeError::Api {
                op,
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            kube::Error::HyperError(e) => KubeError::Unreachable {
                op,
                reason: e.to_string(),
            },
            kube::Error::Service(e) => KubeError::Unreachable {
                op,
                reason: e.to_string(),
            },
            other => KubeError::Client {
                op,
                reason: other.to_string(),
            },
        }
    }

    /// Whether the error is the API server's 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { code: 404, .. })
    }
}

impl From<KubeError> for RuntimeError {
    /// Bad objects are the user's (`Invalid`, a 400); the rest are the cluster's, as I/O
    /// errors whose kind says which and whose message is the [`KubeError`]'s (which stays
    /// reachable through `get_ref`).
    fn from(e: KubeError) -> Self {
        use std::io::{Error, ErrorKind};
        let kind = match &e {
            KubeError::Object(o) => return RuntimeError::Invalid(o.to_string()),
            KubeError::Forbidden { .. } => ErrorKind::PermissionDenied,
            KubeError::Unreachable { .. } | KubeError::ApiServer { .. } => ErrorKind::NotConnected,
            _ => ErrorKind::Other,
        };
        RuntimeError::Io(Error::new(kind, e))
    }
}
