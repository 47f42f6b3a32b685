//! The `Runtime` seam: what a runtime (the embedded process runtime today; containers and
//! Kubernetes next) gives the control plane and the invoke path, with no OS code.
//!
//! A runtime runs a function's replicas and publishes, per function, a [`FunctionHandle`]:
//! the version that serves and its ready [`Endpoint`]s, read lock-free on every request.
//! An endpoint is either an HTTP address the gateway proxies to, or an [`InProcess`] replica
//! the gateway calls directly (fork mode).
//!
//! Adding a runtime: implement [`Runtime`], run [`runtime_contract_tests!`] against it, and
//! pick it where the server builds its runtimes (see docs/architecture.md).

pub mod body;
pub mod contract;
pub mod fake;
mod handle;
pub mod logs;
mod secrets;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use fjord_core::{FunctionKey, FunctionSpec};
use tokio::sync::oneshot;

pub use handle::{
    CpuProbe, Endpoint, EndpointKind, FunctionHandle, InProcess, InProcessBody, InProcessRequest,
    InProcessRequestBody, InProcessRequestSource, Inflight, Pick, ReplicaStatus, Rollout,
    RolloutState, Serving,
};
pub use secrets::SecretFiles;

/// A boxed future, as the trait's async methods return (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a function runs besides its spec: where its code is and what it gets at run time.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The unpacked bundle on the host, when the function runs one.
    pub bundle: Option<PathBuf>,
    /// Decrypted secrets, given to the function as files.
    pub secrets: SecretFiles,
    /// The function's own uid (and gid) on this host, when the runtime isolates functions.
    pub uid: u32,
    /// The container image, pulled and unpacked on this host, when the function runs one.
    pub image: Option<Arc<ImageRootfs>>,
}

/// A container image ready to run: its layers unpacked in the host's layer store (shared by
/// every replica and function using them, never written to) and its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRootfs {
    /// The manifest digest (`sha256:<hex>`) the deployment is pinned to.
    pub digest: String,
    /// Unpacked layer directories, lowest first (the overlay's lower dirs). Whiteouts and
    /// opaque directories are already in overlayfs form (0/0 character devices,
    /// `trusted.overlay.opaque=y`), so the layers stack as they are.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// The parts of an OCI image configuration (`config` in the image config JSON) a runtime
/// needs to start a container the way the image's author meant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries, in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image says.
    pub user: Option<String>,
    /// `ExposedPorts` keys, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
}

/// The outcome of an update's rollout: `Err` carries the reason the new version never
/// became ready (the previous version keeps serving).
pub type RolloutResult = Result<(), String>;

/// What [`Runtime::apply`] returns: the function's handle, the deploy's generation (see
/// [`Rollout`]) and the rollout's outcome once known.
pub struct Applied {
    pub handle: Arc<FunctionHandle>,
    pub generation: u64,
    pub done: oneshot::Receiver<RolloutResult>,
}

/// Errors from a runtime's control operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec cannot run here (its program is missing, an image reference is invalid…):
    /// the user's mistake, shown as a 400.
    #[error("{0}")]
    Invalid(String),
    #[error("function {0} is not deployed")]
    NotFound(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A place where function replicas run. Implementations: `fjord_runtime::ProcessRuntime`,
/// [`fake::FakeRuntime`]; each passes [`runtime_contract_tests!`].
pub trait Runtime: Send + Sync + 'static {
    /// Shown in `GET /system/function/{name}` and logs: `process`, `container`, …
    fn name(&self) -> &'static str;

    /// Whether functions run isolated from each other (own uid, …); bundles are then
    /// unpacked for the function's uid.
    fn isolates(&self) -> bool;

    /// Checks that a spec can run here with `source`, before anything is stored or started
    /// ([`RuntimeError::Invalid`] names the field and the reason).
    fn validate(&self, spec: &FunctionSpec, source: &Source) -> Result<(), RuntimeError>;

    /// Starts a new function, or rolls an existing one to `spec` without downtime (the old
    /// version serves until the new one is ready).
    fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        source: Source,
        replicas: u64,
    ) -> Result<Applied, RuntimeError>;

    /// Sets the desired replica count (0 stops every replica; the handle stays).
    fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError>;

    /// Stops and forgets a function; returns once its replicas stopped.
    fn remove<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// The handle of a function this runtime runs.
    fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>>;

    /// Stops every replica (graceful shutdown of the server); functions stay stored.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
