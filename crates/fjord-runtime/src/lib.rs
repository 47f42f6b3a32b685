//! fjord's embedded `process` runtime: a function's replicas are supervised child processes.
//!
//! - `http` mode: one long-running process per replica, given a free port in `PORT`; the
//!   gateway proxies straight to it once it accepts connections (or its ready path answers).
//! - fork mode: a replica is a sandboxed slot (cgroup, private `/tmp`, uid) that forks the
//!   function's process per request, like the classic watchdog.
//!
//! Each function has a reconciler task that owns its replicas; the gateway reads the set of
//! ready endpoints from a lock-free snapshot ([`FunctionHandle::pick`]).

pub mod cgroup;
pub mod fork;
pub mod logs;
mod masks;
pub mod netns;
pub mod program;
mod reconcile;
mod replica;
mod sandbox;
mod seccomp;
pub mod secrets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use fjord_core::{FunctionKey, FunctionSpec};
use tokio::sync::{Notify, mpsc, oneshot};

pub use program::{Program, ProgramError};
pub use secrets::{SECRETS_DIR_ENV, SECRETS_MOUNT, SecretFiles};

use crate::cgroup::CgroupRoot;
use crate::fork::ForkSlot;
use crate::logs::LogBook;

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    /// How long an update may take to become ready before it is abandoned.
    pub rollout_timeout: Duration,
    /// How long a replica gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// `pids.max` for each replica's cgroup (stops fork bombs).
    pub pids_max: u64,
    /// Set `/sys/kernel/rcu_expedited` while fjord runs (see [`tune_kernel`]).
    pub tune_kernel: bool,
    /// Functions' network namespaces and outbound access (root only).
    pub network: netns::NetworkConfig,
    /// Size of each replica's `/tmp` tmpfs (and of its private `/dev/shm`, `/var/tmp`)
    /// unless the function sets `com.fjord.tmp-size`.
    pub tmp_size_bytes: u64,
    /// Memory limit of functions without `limits.memory` (`None`: unlimited).
    pub default_memory_bytes: Option<u64>,
}

/// `--tmp-size` default: like a container's `/tmp` of a few hundred MB; it is memory, counted
/// in the function's memory limit.
pub const DEFAULT_TMP_SIZE: u64 = 256 << 20;
/// `--default-memory-limit` default: OpenFaaS's and Lambda's defaults are 128–256 MiB; 256 fits
/// the example functions and templates (Pillow resizing, node, python).
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;

/// As root, moves fjord into a mount namespace of its own (a slave of the host's), so the
/// mounts it makes for replicas (their `/tmp` tmpfs) vanish with it even on `kill -9`, and
/// the host's mount table stays clean. Call it before any thread starts: a mount namespace
/// is per thread. Returns whether it did.
pub fn private_mount_namespace() -> bool {
    use nix::mount::{MsFlags, mount};
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let done = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).and_then(|()| {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
    });
    match done {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot get a private mount namespace: replicas' /tmp mounts are made in the host's");
            false
        }
    }
}

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Moving a process into a cgroup waits for an RCU grace period when no other move happened
/// recently: ~10 ms on this kind of machine, paid by every cold start. Expedited grace
/// periods cut that to ~0.2 ms. Returns whether fjord changed the setting (and so should
/// restore it at shutdown).
fn tune_kernel() -> bool {
    match std::fs::read_to_string(RCU_EXPEDITED) {
        Ok(v) if v.trim() == "0" => match std::fs::write(RCU_EXPEDITED, "1") {
            Ok(()) => {
                tracing::info!(
                    "set {RCU_EXPEDITED}=1 while fjord runs: replica starts skip a ~10 ms cgroup wait (--tune-kernel=false leaves the kernel alone)"
                );
                true
            }
            Err(e) => {
                tracing::info!(error = %e, "cannot set {RCU_EXPEDITED}: replica starts may wait ~10 ms for a cgroup move");
                false
            }
        },
        _ => false,
    }
}

/// What the process runtime can isolate on this machine.
pub(crate) struct Sandbox {
    /// Running as root: functions get their own uid and a private `/tmp`.
    pub isolate: bool,
    pub cgroups: Option<CgroupRoot>,
    /// Each function's own network namespace (root only).
    pub net: Option<Arc<netns::NetPool>>,
    /// The host's world-writable directories, hidden from functions (root only).
    pub masks: Option<Arc<sandbox::HostMasks>>,
    /// The seccomp filter, compiled once.
    pub seccomp: Option<Arc<seccomp::Filters>>,
    /// Highest descriptor number for the close-on-exec fallback on old kernels.
    pub max_fd: i32,
}

pub(crate) struct Shared {
    pub config: RuntimeConfig,
    /// fjord set `rcu_expedited` and restores it at shutdown.
    pub restore_rcu: bool,
    /// The control runtime: reconcilers and replica supervisors run here, whichever
    /// thread's request created them (the gateway's HTTP threads have runtimes of their own).
    pub control: tokio::runtime::Handle,
    pub sandbox: Sandbox,
    /// Ports handed to replicas and not yet released, so two replicas never get the same.
    pub ports: Mutex<std::collections::HashSet<u16>>,
}

impl Drop for Shared {
    /// Also when `fjord serve` fails to start after the runtime was made.
    fn drop(&mut self) {
        if self.restore_rcu {
            let _ = std::fs::write(RCU_EXPEDITED, "0");
        }
    }
}

impl Shared {
    pub fn allocate_port(&self) -> std::io::Result<u16> {
        for _ in 0..64 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if self
                .ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(port)
            {
                return Ok(port);
            }
        }
        Err(std::io::Error::other("no free port on 127.0.0.1"))
    }

    pub fn release_port(&self, port: u16) {
        self.ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
    }
}

/// Where requests for one ready replica go.
pub enum EndpointKind {
    /// An http-mode replica: `n<netns id>:port` (its port on the loopback of its function's
    /// network namespace, see [`netns::connect`]), or `127.0.0.1:port` without namespaces.
    Http { authority: http::uri::Authority },
    /// A fork-mode slot.
    Fork(Arc<ForkSlot>),
}

/// A ready replica as the gateway sees it.
pub struct Endpoint {
    pub replica: Arc<str>,
    pub kind: EndpointKind,
    inflight: AtomicUsize,
    sandbox: Arc<replica::ReplicaEnv>,
}

impl Endpoint {
    pub(crate) fn new(
        replica: Arc<str>,
        kind: EndpointKind,
        sandbox: Arc<replica::ReplicaEnv>,
    ) -> Self {
        Self {
            replica,
            kind,
            inflight: AtomicUsize::new(0),
            sandbox,
        }
    }

    /// CPU time the replica used so far (ns), when cgroups are available.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        self.sandbox.cgroup.as_ref().and_then(|c| c.cpu_usage_ns())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight on its replica until dropped.
pub struct Inflight(Arc<Endpoint>);

impl Inflight {
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The version of a function that takes traffic, and its ready replicas.
pub struct Serving {
    pub spec: Arc<FunctionSpec>,
    pub program: Arc<Program>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// A function's runtime state, shared by the reconciler (writer) and the gateway (reader).
pub struct FunctionHandle {
    pub key: FunctionKey,
    /// `name.namespace`, for logs and metrics.
    pub qualified: Arc<str>,
    pub logs: Arc<LogBook>,
    serving: ArcSwap<Serving>,
    ready: Notify,
    next: AtomicUsize,
    desired: AtomicU64,
    restarts: AtomicU64,
    oom_kills: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Generations handed out by [`ProcessRuntime::apply`] (one per deploy).
    generations: AtomicU64,
    /// The latest deploy's progress (status API only, never the invoke path).
    rollout: Mutex<Rollout>,
    commands: mpsc::UnboundedSender<reconcile::Command>,
    /// The function's network namespace, made when its first replica starts and kept (no
    /// process) while the function exists.
    netns: tokio::sync::OnceCell<Arc<netns::NetNs>>,
    /// `--default-memory-limit`, for functions without `limits.memory`.
    default_memory: Option<u64>,
}

/// A function's replica counts and health, for the status API.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub spec: Arc<FunctionSpec>,
    pub desired: u64,
    pub available: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_error: Option<String>,
    /// The memory limit enforced: `limits.memory`, else the server's default.
    pub memory_limit_bytes: Option<u64>,
    pub rollout: Rollout,
}

/// How far a deploy (one generation of replicas) got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RolloutState {
    #[default]
    Progressing,
    /// All its replicas were ready and it took the traffic.
    Ready,
    /// An update that was rolled back, or a first deploy whose replica crash-loops.
    Failed,
}

impl RolloutState {
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Ready => "ready",
            RolloutState::Failed => "failed",
        }
    }
}

/// The latest deploy of a function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub generation: u64,
    pub state: RolloutState,
    /// Replicas of that generation, and how many are ready.
    pub replicas: u64,
    pub ready: u64,
    pub message: Option<String>,
    pub failed_replica: Option<String>,
}

/// The outcome of [`FunctionHandle::pick_within`].
pub enum Pick {
    Ready(Arc<Serving>, Inflight),
    /// Every ready replica already has `max_inflight` requests.
    Saturated,
    /// No replica is ready.
    NoneReady,
}

impl FunctionHandle {
    /// Like [`pick`](Self::pick), but a replica with the function's `max_inflight` requests
    /// in flight takes no more (the watchdogs' `max_inflight`).
    pub fn pick_within(&self) -> Pick {
        match self.pick() {
            None => Pick::NoneReady,
            Some((serving, inflight)) => match serving.spec.watchdog.max_inflight {
                // `pick` counted this request already.
                Some(max) if inflight.endpoint().inflight() as u64 > max => Pick::Saturated,
                _ => Pick::Ready(serving, inflight),
            },
        }
    }

    /// Desired replicas.
    pub fn desired(&self) -> u64 {
        self.desired.load(Ordering::Relaxed)
    }

    /// CPU time used so far by the ready replicas, in ns (`None` without cgroups).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        let serving = self.serving.load();
        let mut total = None;
        for e in &serving.endpoints {
            if let Some(ns) = e.cpu_usage_ns() {
                total = Some(total.unwrap_or(0) + ns);
            }
        }
        total
    }

    /// Picks the ready replica with the fewest requests in flight (ties broken round-robin,
    /// so keep-alive connections do not pin traffic to one replica).
    pub fn pick(&self) -> Option<(Arc<Serving>, Inflight)> {
        let serving = self.serving.load_full();
        let n = serving.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = serving.endpoints[start].inflight();
        for i in 1..n {
            let j = (start + i) % n;
            let load = serving.endpoints[j].inflight();
            if load < best_load {
                best = j;
                best_load = load;
            }
        }
        let ep = serving.endpoints[best].clone();
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        Some((serving, Inflight(ep)))
    }

    /// Waits until a replica is ready, up to `timeout`; false if none became ready or the
    /// function wants no replicas.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.serving.load().endpoints.is_empty() {
                return true;
            }
            if self.desired.load(Ordering::Relaxed) == 0 {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.serving.load().spec.clone()
    }

    pub fn status(&self) -> ReplicaStatus {
        let serving = self.serving.load();
        ReplicaStatus {
            spec: serving.spec.clone(),
            desired: self.desired.load(Ordering::Relaxed),
            available: serving.endpoints.len() as u64,
            restarts: self.restarts.load(Ordering::Relaxed),
            oom_kills: self.oom_kills.load(Ordering::Relaxed),
            memory_limit_bytes: serving.spec.memory_limit_bytes.or(self.default_memory),
            rollout: self.rollout().clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    pub(crate) fn rollout(&self) -> std::sync::MutexGuard<'_, Rollout> {
        self.rollout.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// The function's network namespace (made on first use); `None` without namespaces.
    pub(crate) async fn netns(
        &self,
        shared: &Shared,
    ) -> std::io::Result<Option<Arc<netns::NetNs>>> {
        let Some(pool) = shared.sandbox.net.clone() else {
            return Ok(None);
        };
        let ns = self
            .netns
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || pool.create())
                    .await
                    .map_err(std::io::Error::other)?
            })
            .await?;
        Ok(Some(ns.clone()))
    }

    /// Numbers a new deploy and marks it progressing before the reconciler sees it, so a
    /// client polling right after the deploy never reads the previous one's state.
    fn begin_rollout(&self, replicas: u64) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.rollout() = Rollout {
            generation,
            replicas,
            ..Rollout::default()
        };
        generation
    }

    /// Marks the update `generation` failed, once its caller has rolled back what it stored
    /// (the reconciler has already stopped its replicas).
    pub fn rolled_back(&self, generation: u64) {
        let mut r = self.rollout();
        if r.generation == generation {
            r.state = RolloutState::Failed;
        }
    }

    pub(crate) fn count_oom_kill(&self) {
        self.oom_kills.fetch_add(1, Ordering::Relaxed);
    }
}

/// Errors from the runtime's control operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("function {0} is not deployed")]
    NotFound(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The outcome of an update's rollout: `Err` carries the reason the new version never
/// became ready (the previous version keeps serving).
pub type RolloutResult = Result<(), String>;

/// The embedded process runtime.
pub struct ProcessRuntime {
    shared: Arc<Shared>,
    functions: Mutex<HashMap<FunctionKey, Arc<FunctionHandle>>>,
}

impl ProcessRuntime {
    /// Sets up sandboxing as far as this machine allows and cleans up replicas left by an
    /// earlier run that was killed. Call it on the runtime that should run the control work.
    pub async fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        for private in ["replicas", "logs"] {
            let dir = config.data_dir.join(private);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        let isolate = nix::unistd::geteuid().is_root();
        let cgroups = if isolate {
            let instance = instance_id(&config.data_dir);
            match CgroupRoot::new(&instance) {
                Ok(root) => {
                    let stale = root.clean_stale().await;
                    if stale > 0 {
                        tracing::info!(stale, "removed replicas left by an earlier run");
                    }
                    Some(root)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cgroups unavailable: limits.memory, limits.cpu and the pids limit are not enforced");
                    None
                }
            }
        } else {
            tracing::warn!(
                "not running as root: functions run as this user, without their own uid, private /tmp or cgroup limits"
            );
            None
        };
        if isolate && let Err(e) = program::ensure_bundle_mount() {
            tracing::warn!(error = %e, "cannot create {}: functions that run a bundle will not start", program::BUNDLE_MOUNT);
        }
        if isolate && let Err(e) = secrets::ensure_mount_point() {
            tracing::warn!(error = %e, "cannot create {}: functions with secrets will not start", secrets::SECRETS_MOUNT);
        }
        let net = if isolate {
            match netns::NetPool::new(&config.network, &instance_id(&config.data_dir)) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    tracing::warn!(error = %e, "network namespaces unavailable: function replicas listen on the host's loopback, where other functions can reach them");
                    None
                }
            }
        } else {
            None
        };
        let restore_rcu = cgroups.is_some() && config.tune_kernel && tune_kernel();
        // Replica directories of an earlier run are stale by now.
        let replicas = config.data_dir.join("replicas");
        if isolate {
            replicas_mount::clear(&replicas);
        }
        if let Ok(entries) = std::fs::read_dir(&replicas) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        if isolate && let Err(e) = replicas_mount::share(&replicas) {
            tracing::warn!(error = %e, dir = %replicas.display(), "cannot make the replicas directory a shared mount: a process may keep an ended replica's /tmp in memory until it exits");
        }
        let masks = isolate.then(|| Arc::new(masks::discover(&config.data_dir)));
        if let Some(m) = &masks {
            tracing::debug!(?m, "host directories hidden from functions");
        }
        let seccomp = match seccomp::build() {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::warn!(error = %e, "functions run without a seccomp filter");
                None
            }
        };
        let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(65536) as i32);
        Ok(Self {
            shared: Arc::new(Shared {
                restore_rcu,
                config,
                control: tokio::runtime::Handle::current(),
                sandbox: Sandbox {
                    isolate,
                    cgroups,
                    net,
                    masks,
                    seccomp,
                    max_fd,
                },
                ports: Mutex::new(Default::default()),
            }),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Whether functions run sandboxed (own uid, private /tmp).
    pub fn isolates(&self) -> bool {
        self.shared.sandbox.isolate
    }

    /// Checks that a spec can run here (its program exists and is reachable), before anything
    /// is stored or started. `bundle`: the unpacked bundle it runs from, if any.
    pub fn prepare(
        &self,
        spec: &FunctionSpec,
        bundle: Option<&std::path::Path>,
    ) -> Result<Program, RuntimeError> {
        Ok(program::resolve(spec, self.shared.sandbox.isolate, bundle)?)
    }

    /// Starts a new function, or rolls an existing one to `spec` without downtime.
    /// Returns the function's handle, the deploy's generation (see [`Rollout`]) and a
    /// receiver for the rollout's outcome.
    pub fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        program: Program,
        replicas: u64,
        uid: u32,
    ) -> (Arc<FunctionHandle>, u64, oneshot::Receiver<RolloutResult>) {
        let (done_tx, done_rx) = oneshot::channel();
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let program = Arc::new(program);
        if let Some(h) = functions.get(&spec.key) {
            let generation = h.begin_rollout(replicas);
            let _ = h.commands.send(reconcile::Command::Apply {
                spec,
                program,
                replicas,
                generation,
                done: done_tx,
            });
            return (h.clone(), generation, done_rx);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let key = spec.key.clone();
        let logs = Arc::new(LogBook::new(Some(logs::log_path(
            &self.shared.config.data_dir,
            &key.namespace,
            &key.name,
        ))));
        let handle = Arc::new(FunctionHandle {
            qualified: Arc::from(key.to_string()),
            key: key.clone(),
            logs,
            serving: ArcSwap::from_pointee(Serving {
                spec: spec.clone(),
                program: program.clone(),
                endpoints: Vec::new(),
            }),
            ready: Notify::new(),
            next: AtomicUsize::new(0),
            desired: AtomicU64::new(replicas),
            restarts: AtomicU64::new(0),
            oom_kills: AtomicU64::new(0),
            last_error: Mutex::new(None),
            generations: AtomicU64::new(0),
            rollout: Mutex::new(Rollout::default()),
            commands: tx,
            netns: tokio::sync::OnceCell::new(),
            // Shown only where it is enforced.
            default_memory: self
                .shared
                .sandbox
                .cgroups
                .as_ref()
                .and(self.shared.config.default_memory_bytes),
        });
        let generation = handle.begin_rollout(replicas);
        let _ = handle.commands.send(reconcile::Command::Apply {
            spec,
            program,
            replicas,
            generation,
            done: done_tx,
        });
        reconcile::spawn(handle.clone(), self.shared.clone(), uid, rx);
        functions.insert(key, handle.clone());
        (handle, generation, done_rx)
    }

    /// Sets the desired replica count.
    pub fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        let h = self
            .get(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        h.desired.store(replicas, Ordering::Relaxed);
        let _ = h.commands.send(reconcile::Command::Scale(replicas));
        Ok(())
    }

    /// Stops and forgets a function (its log files too). Returns once its replicas stopped.
    pub async fn remove(&self, key: &FunctionKey) -> Result<(), RuntimeError> {
        let h = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        h.desired.store(0, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let _ = h.commands.send(reconcile::Command::Stop {
            remove: true,
            done: tx,
        });
        let _ = rx.await;
        Ok(())
    }

    pub fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Stops every replica (graceful shutdown of `fjord serve`); state stays stored.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        let mut waits = Vec::new();
        for h in handles {
            let (tx, rx) = oneshot::channel();
            let _ = h.commands.send(reconcile::Command::Stop {
                remove: false,
                done: tx,
            });
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
        if let Some(cg) = &self.shared.sandbox.cgroups {
            cg.remove_if_empty();
        }
        if self.shared.sandbox.isolate {
            replicas_mount::clear(&self.shared.config.data_dir.join("replicas"));
        }
        if self.shared.restore_rcu {
            let _ = std::fs::write(RCU_EXPEDITED, "0");
        }
        if let Some(net) = &self.shared.sandbox.net {
            net.remove_rules();
        }
    }
}

/// A short stable id for this data dir, so several `fjord serve` on one machine keep their
/// cgroups apart and each cleans up only its own.
fn instance_id(data_dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let canon = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = canon
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// `<data-dir>/replicas` is a shared bind mount of itself, so that function processes (whose
/// mount namespaces are slaves) see the unmount of an ended replica's `/tmp` tmpfs.
mod replicas_mount {
    use std::path::Path;

    use nix::mount::{MntFlags, MsFlags, mount, umount2};

    /// Unmounts what an earlier run left there (the bind and every replica tmpfs under it).
    pub fn clear(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = umount2(&e.path().join("tmp"), MntFlags::MNT_DETACH);
            }
        }
        for _ in 0..16 {
            if umount2(dir, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }

    pub fn share(dir: &Path) -> nix::Result<()> {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
    }
}
