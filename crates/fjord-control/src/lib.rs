//! The control plane: what fjord does with functions, independent of how requests arrive
//! (the gateway's HTTP handlers, the async worker and every trigger call it) and of where
//! replicas run (it drives a [`fjord_runtime_api::Runtime`], never a runtime crate).
//!
//! - [`ControlPlane`]: deploy, update and rollback, scale, restore at startup, the routing
//!   snapshot the invoke path reads, the autoscaler's and idler's ticks.
//! - [`autoscale`]: the scaling rules as pure functions of (state, spec, observation).
//! - [`metrics`]: per-function counters and the Prometheus rendering; [`history`]: their last
//!   15 minutes in memory, for the dashboard.
//! - [`bundles`], [`secrets`], [`tokens`]: the bundle store, the secrets vault, the API token
//!   registry.
//!
//! Errors are [`ControlError`]; the gateway maps them to HTTP statuses in one place.

pub mod autoscale;
pub mod bundles;
mod error;
pub mod history;
pub mod images;
pub mod metrics;
#[cfg(test)]
mod placement_tests;
mod plane;
#[cfg(test)]
mod plane_tests;
pub mod secrets;
pub mod tokens;
pub mod trust;
#[cfg(test)]
mod trust_tests;

pub use error::ControlError;
pub use plane::{
    Containers, ControlPlane, Demand, DeployCheck, DeployMode, Deployed, Parts, QueueSignal,
    RUNTIME_ANNOTATION, Route, Runtimes, Scaling, TrustReport, not_found,
};
