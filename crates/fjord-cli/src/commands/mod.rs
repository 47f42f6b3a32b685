#[cfg(feature = "kubernetes")]
pub mod function_objects;
pub mod functions;
pub mod namespaces;
pub mod secrets;
pub mod serve;
pub mod stack;
pub mod trust;
