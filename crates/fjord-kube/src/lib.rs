//! fjord's Kubernetes backend, the parts that need no cluster: a function's objects
//! ([`objects`]), its state read back from the cluster ([`status`]) and the
//! `openfaas.com/v1` Function resource ([`crd`]). Everything here is pure: objects in, objects
//! out, so it is tested without a cluster; the client that applies and watches them comes
//! later.
//!
//! The Kubernetes version of the types is chosen once, in the workspace's `k8s-openapi`
//! dependency (1.33: the oldest that crate release supports).

pub mod crd;
pub mod names;
pub mod objects;
pub mod quantity;
pub mod status;

pub use crd::{CrdError, Function};
pub use objects::{FunctionObjects, ObjectError, function_objects};
pub use status::{FunctionReplicas, function_replicas};
