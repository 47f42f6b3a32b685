//! fjord's Kubernetes backend.
//!
//! - The parts that need no cluster: a function's objects ([`objects`]), its state read back
//!   from the cluster ([`status`]) and the `openfaas.com/v1` Function resource ([`crd`]).
//!   They are pure (objects in, objects out), so they are tested without a cluster.
//! - [`KubeRuntime`] ([`runtime`]): the `fjord_runtime_api::Runtime` that applies those
//!   objects with server-side apply, scales through the scale subresource and follows the
//!   functions' Deployments, EndpointSlices and pods with reflectors, publishing the ready pod
//!   addresses to each function's handle. Build it with [`KubeRuntime::connect`] (a kubeconfig
//!   or the in-cluster service account, checked by a first request: [`connect`]),
//!   [`KubeRuntime::from_env`] or [`KubeRuntime::new`] with any `kube::Client`. Its
//!   errors ([`KubeError`]) name the RBAC permission a 403 lacks.
//!
//! - [`controller`]: Function objects written by people and GitOps tools, deployed through
//!   fjord's control plane (a [`FunctionStore`]) with their outcome in their status.
//!
//! TLS to the API server goes through rustls with ring, the workspace's only crypto provider.
//!
//! The Kubernetes version of the types is chosen once, in the workspace's `k8s-openapi`
//! dependency (1.33: the oldest that crate release supports).

pub mod connect;
pub mod controller;
pub mod crd;
pub mod error;
mod logs;
pub mod names;
pub mod objects;
pub mod quantity;
pub mod runtime;
pub mod status;

pub use connect::ClusterConfig;
pub use controller::{ControllerConfig, FunctionStore, StoreError};
pub use crd::{CrdError, Function};
pub use error::{KubeError, Operation};
pub use objects::{FunctionObjects, ObjectError, function_objects};
pub use runtime::{KubeRuntime, KubeRuntimeConfig};
pub use status::{FunctionReplicas, function_replicas};
