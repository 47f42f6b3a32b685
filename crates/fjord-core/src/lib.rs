//! fjord's domain: the OpenFaaS wire types, and the validated [`FunctionSpec`] that every other
//! crate works with. Requests are parsed and checked here once; nothing downstream re-parses
//! names, quantities, durations or labels.

pub mod duration;
pub mod names;
pub mod openfaas;
pub mod policy;
pub mod quantity;
pub mod spec;

pub use names::{DEFAULT_NAMESPACE, FunctionKey};
pub use spec::{
    FunctionSpec, InvokeMode, ProcessDefaults, ScaleKind, ScalePolicy, ScaleRule, SpecError,
    WatchdogConfig,
};
