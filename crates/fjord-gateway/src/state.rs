//! The gateway's configuration (`fjord serve`'s settings) and the state every handler
//! shares; a leaf module, so handlers depend on it and not on the crate root.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fjord_control::ControlPlane;
use tokio_util::sync::CancellationToken;

use crate::callback::CallbackPolicy;
use crate::tls::TlsFiles;
use crate::{auth, conns};

/// Largest request head (request line and headers) accepted, HTTP/1 and HTTP/2: `431` beyond.
/// Go's net/http allows 1 MiB and nginx 32 KiB; 64 KiB fits large cookies and tokens.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// How long a client may take to send a request's headers (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a starting replica before it gets a 503.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of `fjord serve`. (Not `Debug`: `runtime` is a trait object.)
#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Where the dashboard listens (its own origin, apart from functions).
    pub ui_listen: crate::ui::UiListen,
    pub data_dir: PathBuf,
    /// Basic auth on `/system/*`.
    pub auth: bool,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// How long an update may take to become ready before it is abandoned.
    pub rollout_timeout: Duration,
    /// How long a request waits for a starting replica before a 503.
    pub ready_timeout: Duration,
    /// `pids.max` per replica.
    pub pids_max: u64,
    /// Size of each replica's `/tmp` tmpfs (default for `com.fjord.tmp-size`).
    pub tmp_size: u64,
    /// Memory limit of functions without `limits.memory` (`None`: unlimited).
    pub default_memory_limit: Option<u64>,
    /// HTTP worker threads (one per core by default).
    pub workers: usize,
    /// Limit on a request to a function that sets no `exec_timeout` (http mode; 504 beyond).
    pub exec_timeout: Option<Duration>,
    /// Limit on receiving a request body, for functions that set no `read_timeout` (408).
    pub read_timeout: Option<Duration>,
    /// Limit on sending a response body, for functions that set no `write_timeout`.
    pub write_timeout: Option<Duration>,
    /// Limit on receiving a request's headers (HTTP/1; the connection is closed beyond). Also
    /// how long an idle keep-alive connection stays open.
    pub header_timeout: Option<Duration>,
    /// How often the autoscaler and idler decide.
    pub autoscale_interval: Duration,
    /// Idle time before a `com.openfaas.scale.zero=true` function without a
    /// `com.openfaas.scale.zero-duration` label scales to zero.
    pub scale_zero_duration: Duration,
    /// Largest body accepted by `POST /async-function/...` (413 beyond).
    pub max_async_body: usize,
    /// Async calls keep their HTTP method (false: always POST, as OpenFaaS's queue worker).
    pub async_keep_method: bool,
    /// Let the runtime tune kernel settings that cut replica start time.
    pub tune_kernel: bool,
    /// Where async calls are queued.
    pub queue: QueueBackend,
    /// NATS credentials, TLS and the queue key (`queue` = NATS only).
    pub nats: NatsSettings,
    /// Brokers the topic connectors subscribe to (`--nats`).
    pub connectors: crate::connectors::ConnectorSettings,
    /// Serve HTTPS with this certificate and key (reloaded on SIGHUP and on change).
    pub tls: Option<TlsFiles>,
    /// Failed authentications per minute from one client address before it gets 429 for a
    /// minute (0: no limit).
    pub auth_fail_limit: u32,
    /// Functions' network namespaces and outbound access (as root).
    pub network: fjord_runtime::netns::NetworkConfig,
    /// Where async callbacks may go beyond public addresses (`--callback-allow`).
    pub callback: CallbackPolicy,
    /// `GET /metrics` needs the admin password or a token of scope `read`.
    pub metrics_auth: bool,
    /// Open connections above which the oldest are asked to close; `None`: 3/4 of the
    /// open-files limit.
    pub max_connections: Option<usize>,
    /// Open connections from one client address (429 and closed beyond; 0: no limit).
    pub max_connections_per_ip: u32,
    /// Fork-mode processes of one function running at once (429 beyond; 0: no limit).
    pub max_forks_per_function: u64,
    /// Fork-mode processes started for one client address running at once (429 beyond;
    /// 0: no limit).
    pub max_forks_per_ip: u32,
    /// Container images: whether, which OCI runtime, registries.
    pub containers: ContainerSettings,
    /// Content trust: the policy file (`--trust-policy`); `None`: unsigned code runs.
    pub trust_policy: Option<PathBuf>,
    /// A runtime that runs every function, made by the caller (`fjord serve --runtime
    /// kubernetes`): then no process or container runtime, uid block or image store is
    /// started here. `None`: functions run on this machine.
    pub runtime: Option<Arc<dyn fjord_runtime_api::Runtime>>,
    /// Triggers the caller adds once the control plane exists (`--runtime kubernetes`: the
    /// Function object controller); started and stopped with the others.
    pub more_triggers: Option<MoreTriggers>,
}

/// Makes the caller's triggers from the control plane (see [`GatewayConfig::more_triggers`]).
pub type MoreTriggers = Arc<
    dyn Fn(&Arc<fjord_control::ControlPlane>) -> Vec<Box<dyn crate::trigger::Trigger>>
        + Send
        + Sync,
>;

/// Whether `fjord serve` runs container images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ContainerMode {
    /// When fjord runs as root and the OCI runtime is installed (else one log line says why
    /// not).
    #[default]
    Auto,
    /// Refuse to start without them.
    On,
    Off,
}

/// Where container images come from and what runs them.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    pub mode: ContainerMode,
    /// `runc`, `crun`, `youki`: a name looked up in PATH, or a path.
    pub oci_runtime: PathBuf,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Docker config.json with registry credentials (`None`: the usual places, if present).
    pub registry_config: Option<PathBuf>,
    /// Largest uncompressed image layer.
    pub max_layer_bytes: u64,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            mode: ContainerMode::Auto,
            oci_runtime: PathBuf::from("runc"),
            insecure_registries: Vec::new(),
            registry_config: None,
            max_layer_bytes: 16 << 30,
        }
    }
}

/// How fjord authenticates to NATS and signs the calls it queues there.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    /// `.creds` file (user JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// nkey seed file.
    pub nkey: Option<PathBuf>,
    /// CA certificate(s) of the server's certificate (implies TLS).
    pub ca: Option<PathBuf>,
    /// Require TLS with nats:// URLs.
    pub tls: bool,
    /// The queue key file; `None`: `<data-dir>/secrets/queue.key`, made on first start.
    pub queue_key: Option<PathBuf>,
}

/// Where async calls are queued.
#[derive(Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// `<data-dir>/queue.db`, owned by this server.
    Embedded,
    /// NATS JetStream at this URL (`nats://host:4222`), shared with other fjord servers that
    /// use the same `prefix` for their stream and bucket names.
    Nats { url: String, prefix: String },
}

/// Never shows the URL's credentials.
impl std::fmt::Debug for QueueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueBackend::Embedded => f.write_str("Embedded"),
            QueueBackend::Nats { url, prefix } => f
                .debug_struct("Nats")
                .field("url", &fjord_queue::redact_url(url))
                .field("prefix", prefix)
                .finish(),
        }
    }
}

impl QueueBackend {
    /// Parses `--queue`: `embedded`, or a `nats://` / `tls://` server URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "embedded" {
            return Ok(QueueBackend::Embedded);
        }
        let shown = fjord_queue::redact_url(s);
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "{shown:?} is not a queue: use `embedded` or a NATS URL such as nats://127.0.0.1:4222"
            ));
        };
        if !matches!(scheme, "nats" | "tls") || rest.is_empty() {
            return Err(format!(
                "{shown:?}: the queue URL must start with nats:// or tls:// and name a host, e.g. nats://127.0.0.1:4222"
            ));
        }
        Ok(QueueBackend::Nats {
            url: s.to_string(),
            prefix: "FJORD".to_string(),
        })
    }
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            ui_listen: crate::ui::UiListen::Default,
            data_dir,
            auth: true,
            shutdown_timeout: Duration::from_secs(10),
            rollout_timeout: Duration::from_secs(60),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            pids_max: 1024,
            tmp_size: fjord_runtime::DEFAULT_TMP_SIZE,
            default_memory_limit: Some(fjord_runtime::DEFAULT_MEMORY_LIMIT),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            tune_kernel: true,
            exec_timeout: Some(Duration::from_secs(300)),
            read_timeout: Some(Duration::from_secs(60)),
            write_timeout: None,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            autoscale_interval: Duration::from_secs(1),
            scale_zero_duration: fjord_control::autoscale::Defaults::default().zero_duration,
            max_async_body: 8 << 20,
            async_keep_method: true,
            queue: QueueBackend::Embedded,
            nats: NatsSettings::default(),
            connectors: Default::default(),
            tls: None,
            auth_fail_limit: 10,
            network: Default::default(),
            callback: CallbackPolicy::default(),
            metrics_auth: false,
            max_connections: None,
            max_connections_per_ip: 1000,
            max_forks_per_function: 256,
            max_forks_per_ip: 64,
            containers: ContainerSettings::default(),
            trust_policy: None,
            runtime: None,
            more_triggers: None,
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<ControlPlane>,
    pub queue: Arc<dyn fjord_queue::Queue>,
    /// Wakes the async dispatcher when a call is queued.
    pub dispatch: Arc<tokio::sync::Notify>,
    pub config: Arc<GatewayConfig>,
    pub shutdown: CancellationToken,
    pub auth: Arc<auth::Auth>,
    /// Bounds on fork-mode processes running at once.
    pub forks: Arc<conns::ForkLimits>,
    /// The dashboard's browser sessions.
    pub sessions: Arc<crate::ui::Sessions>,
}
