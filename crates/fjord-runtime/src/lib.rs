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
pub mod container;
pub mod fork;
mod mailbox;
mod masks;
pub mod memory;
pub mod netns;
pub mod program;
mod reconcile;
mod replica;
mod sandbox;
mod seccomp;
pub mod secrets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_core::{FunctionKey, FunctionSpec};
use fjord_runtime_api::{Applied, BoxFuture};
use tokio::sync::oneshot;

pub use container::{ContainerConfig, ContainerRuntime};
pub use fjord_runtime_api::{
    Endpoint, EndpointKind, FunctionHandle, Inflight, Pick, ReplicaStatus, Rollout, RolloutResult,
    RolloutState, Runtime, RuntimeError, SecretFiles, Serving, Source, logs,
};
pub use program::{Program, ProgramError};
pub use secrets::{SECRETS_DIR_ENV, SECRETS_MOUNT};

use crate::cgroup::CgroupRoot;
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

/// What the process runtime keeps per function besides its handle.
pub(crate) struct ProcessFunction {
    pub handle: Arc<FunctionHandle>,
    commands: mailbox::Sender<reconcile::Command>,
}

impl fjord_runtime_api::CpuProbe for replica::ReplicaEnv {
    fn cpu_usage_ns(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|c| c.cpu_usage_ns())
    }
    fn memory_bytes(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|c| c.memory_bytes())
    }
}

/// A function's network namespace, made when its first replica starts and kept (no
/// process) while the function exists.
#[derive(Default)]
pub(crate) struct FunctionNet(tokio::sync::OnceCell<Arc<netns::NetNs>>);

impl FunctionNet {
    /// The function's network namespace (made on first use); `None` without namespaces.
    /// `outbound: false` (the spec's `com.fjord.network: none`) makes it loopback only; a
    /// function whose annotation changes gets a new `FunctionNet` with the new version.
    pub(crate) async fn get(
        &self,
        shared: &Shared,
        outbound: bool,
    ) -> std::io::Result<Option<Arc<netns::NetNs>>> {
        let Some(pool) = shared.sandbox.net.clone() else {
            return Ok(None);
        };
        let ns = self
            .0
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || pool.create_with(outbound))
                    .await
                    .map_err(std::io::Error::other)?
            })
            .await?;
        Ok(Some(ns.clone()))
    }
}

impl Shared {
    /// Sets up sandboxing as far as this machine allows and cleans up replicas left by an
    /// earlier run that was killed. Call it on the runtime that should run the control work.
    pub(crate) async fn new(config: RuntimeConfig) -> Result<Arc<Self>, RuntimeError> {
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
        Ok(Arc::new(Shared {
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
        }))
    }

    /// Undoes what [`Shared::new`] set up on the host, once no replica runs any more.
    async fn release(&self) {
        if let Some(cg) = &self.sandbox.cgroups {
            cg.remove_if_empty();
        }
        if self.sandbox.isolate {
            replicas_mount::clear(&self.config.data_dir.join("replicas"));
        }
        if self.restore_rcu {
            let _ = std::fs::write(RCU_EXPEDITED, "0");
        }
        if let Some(net) = &self.sandbox.net {
            net.remove_rules();
        }
    }
}

/// What every runtime of this crate shares: the functions it runs, each with its handle
/// and reconciler. Runtimes differ only in how a replica is launched ([`replica::Launch`]).
pub(crate) struct Engine {
    pub shared: Arc<Shared>,
    /// Shown in the function's status (`process`, `container`).
    name: &'static str,
    functions: Mutex<HashMap<FunctionKey, ProcessFunction>>,
}

impl Engine {
    pub(crate) fn new(shared: Arc<Shared>, name: &'static str) -> Self {
        Self {
            shared,
            name,
            functions: Mutex::new(HashMap::new()),
        }
    }

    fn get_function(
        &self,
        key: &FunctionKey,
    ) -> Option<(Arc<FunctionHandle>, mailbox::Sender<reconcile::Command>)> {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|f| (f.handle.clone(), f.commands.clone()))
    }

    pub(crate) async fn remove(&self, key: &FunctionKey) -> Result<(), RuntimeError> {
        let f = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        f.handle.set_desired(0);
        let (tx, rx) = oneshot::channel();
        let _ = f.commands.send(reconcile::Command::Stop {
            remove: true,
            done: tx,
        });
        let _ = rx.await;
        Ok(())
    }

    /// Stops every function's replicas (they stay stored).
    pub(crate) async fn stop_all(&self) {
        let functions: Vec<_> = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, f)| f)
            .collect();
        let mut waits = Vec::new();
        for f in functions {
            let (tx, rx) = oneshot::channel();
            let _ = f.commands.send(reconcile::Command::Stop {
                remove: false,
                done: tx,
            });
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
    }

    pub(crate) fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        launch: replica::Launch,
        uid: u32,
        replicas: u64,
    ) -> Result<Applied, RuntimeError> {
        let (done_tx, done) = oneshot::channel();
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = functions.get(&spec.key) {
            let generation = f.handle.begin_rollout(replicas);
            let _ = f.commands.send(reconcile::Command::Apply {
                spec,
                launch,
                replicas,
                generation,
                done: done_tx,
            });
            return Ok(Applied {
                handle: f.handle.clone(),
                generation,
                done,
            });
        }
        let (tx, rx) = mailbox::unbounded();
        let key = spec.key.clone();
        let logs = Arc::new(LogBook::new(Some(logs::log_path(
            &self.shared.config.data_dir,
            &key.namespace,
            &key.name,
        ))));
        // Shown only where it is enforced.
        let default_memory = self
            .shared
            .sandbox
            .cgroups
            .as_ref()
            .and(self.shared.config.default_memory_bytes);
        let handle = Arc::new(FunctionHandle::new(
            spec.clone(),
            replicas,
            logs,
            self.name,
            default_memory,
        ));
        let generation = handle.begin_rollout(replicas);
        let _ = tx.send(reconcile::Command::Apply {
            spec,
            launch,
            replicas,
            generation,
            done: done_tx,
        });
        reconcile::spawn(handle.clone(), self.shared.clone(), uid, rx);
        functions.insert(
            key,
            ProcessFunction {
                handle: handle.clone(),
                commands: tx,
            },
        );
        Ok(Applied {
            handle,
            generation,
            done,
        })
    }

    pub(crate) fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        let (h, commands) = self
            .get_function(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        h.set_desired(replicas);
        let _ = commands.send(reconcile::Command::Scale(replicas));
        Ok(())
    }

    pub(crate) fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.get_function(key).map(|(h, _)| h)
    }
}

/// The embedded process runtime.
pub struct ProcessRuntime {
    engine: Engine,
}

impl ProcessRuntime {
    /// Sets up sandboxing as far as this machine allows and cleans up replicas left by an
    /// earlier run that was killed. Call it on the runtime that should run the control work.
    pub async fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Ok(Self {
            engine: Engine::new(Shared::new(config).await?, "process"),
        })
    }

    /// A container runtime beside this one, sharing its sandbox: cgroup root, network pool
    /// (one nftables table, one address range), ports. Stop it before this one.
    pub async fn container(
        &self,
        config: ContainerConfig,
    ) -> Result<ContainerRuntime, RuntimeError> {
        ContainerRuntime::with_shared(self.engine.shared.clone(), config, false).await
    }

    fn program(&self, spec: &FunctionSpec, source: &Source) -> Result<Program, RuntimeError> {
        let mut program = program::resolve(
            spec,
            self.engine.shared.sandbox.isolate,
            source.bundle.as_deref(),
        )
        .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        program.secrets = source.secrets.clone();
        Ok(program)
    }

    async fn stop_all(&self) {
        self.engine.stop_all().await;
        self.engine.shared.release().await;
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    /// Whether functions run sandboxed (own uid, private /tmp).
    fn isolates(&self) -> bool {
        self.engine.shared.sandbox.isolate
    }

    /// Checks that the program exists and is reachable (by the function's uid when
    /// sandboxed).
    fn validate(&self, spec: &FunctionSpec, source: &Source) -> Result<(), RuntimeError> {
        self.program(spec, source).map(|_| ())
    }

    fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        source: Source,
        replicas: u64,
    ) -> Result<Applied, RuntimeError> {
        let program = Arc::new(self.program(&spec, &source)?);
        self.engine.apply(
            spec,
            replica::Launch::Process(program),
            source.uid,
            replicas,
        )
    }

    fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        self.engine.scale(key, replicas)
    }

    fn remove<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.engine.remove(key))
    }

    fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.engine.get(key)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }
}

/// When process `pid` started (clock ticks after boot), if it still runs (a zombie has
/// ended): with the pid, it names one process, whose pid may be reused after it ends.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold any byte.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    if matches!(rest.next()?, "Z" | "X") {
        return None;
    }
    // `starttime` is field 22 of the line; the state was field 3.
    rest.nth(18)?.parse().ok()
}

/// A short stable id for this data dir, so several `fjord serve` on one machine keep their
/// cgroups apart and each cleans up only its own. The directory's device and inode count
/// too: the same path can name different directories (another mount namespace, a
/// filesystem mounted over it), whose servers must not take each other's replicas as stale.
fn instance_id(data_dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let canon = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let identity = std::fs::metadata(&canon)
        .map(|m| format!("\0{}:{}", m.dev(), m.ino()))
        .unwrap_or_default();
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = canon
        .as_os_str()
        .as_bytes()
        .iter()
        .chain(identity.as_bytes())
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
