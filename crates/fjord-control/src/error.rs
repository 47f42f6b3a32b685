//! The control plane's errors, by whose fault and what kind: the gateway turns each kind into
//! one HTTP status (fjord_gateway::error), the CLI into an exit code.

use fjord_core::SpecError;
use fjord_runtime_api::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is wrong (a field, a name, a bundle's content): the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// Refused by the server's trust policy (unsigned, an untrusted key, a signature over
    /// another digest, a tampered bundle): shown as 403.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with what exists (a secret already there, one still in use).
    #[error("{0}")]
    Conflict(String),
    /// A service fjord depends on failed (a container registry down or answering errors).
    #[error("{0}")]
    Upstream(String),
    /// Ours, not the caller's: the disk, the state store, a bundle gone missing.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::images::ImageError> for ControlError {
    fn from(e: crate::images::ImageError) -> Self {
        use crate::images::ImageError;
        match e {
            ImageError::Invalid(m) => ControlError::BadRequest(m),
            ImageError::Unreachable(m) => ControlError::Upstream(m),
            ImageError::Internal(m) => ControlError::Internal(m),
        }
    }
}

impl From<SpecError> for ControlError {
    fn from(e: SpecError) -> Self {
        ControlError::BadRequest(e.to_string())
    }
}

impl From<fjord_core::names::NameError> for ControlError {
    fn from(e: fjord_core::names::NameError) -> Self {
        ControlError::BadRequest(e.to_string())
    }
}

impl From<RuntimeError> for ControlError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Invalid(p) => ControlError::BadRequest(p),
            RuntimeError::NotFound(n) => ControlError::NotFound(format!("function {n} not found")),
            RuntimeError::Io(e) => ControlError::Internal(format!("runtime error: {e}")),
        }
    }
}

impl From<fjord_store::StoreError> for ControlError {
    fn from(e: fjord_store::StoreError) -> Self {
        ControlError::Internal(format!("state store error: {e}"))
    }
}
