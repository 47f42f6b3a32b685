//! fjord's `container` runtime: each replica of a function is an OCI container run by
//! `runc` (or another OCI runtime, `--oci-runtime`) from the function's image.
//!
//! It shares everything but the launch with the process runtime (reconciler, rollouts,
//! supervision with restarts and backoff, readiness probe, logs, cgroups, network
//! namespaces): a replica is `runc run --keep --bundle <dir> <id>` as fjord's child in the
//! foreground, its output piped into the function's logs.
//!
//! Per replica, under `/run/fjord/c-<instance>/<id>/` (0710, group the function's uid:
//! runc, already in the container's user namespace, must reach the mount points by path,
//! and the data dir may be private; other functions' uids cannot), with its overlay's
//! upper and work dirs under `<data-dir>/containers/<id>` (0700, on disk):
//! - `rootfs`: an overlay mounted by fjord over the image's layers (shared, never written)
//!   with a private upper dir; read-only without one (`readOnlyRootFilesystem`);
//! - `secrets`: a tmpfs with the function's secrets, bound read-only at
//!   `/var/openfaas/secrets`;
//! - `netns`: the replica's own network namespace (a bind of its descriptor), so every
//!   replica listens on the same port (8080) as in a pod; the gateway reaches it as
//!   `n<id>:<port>` like a process replica;
//! - `config.json` ([`spec`]): a user namespace mapping the container's ids 0..65535 to the
//!   function's own range ([`idmap`]; the image's layers are seen through idmapped mounts of
//!   it), the image's `User`, Docker's masked and read-only paths, fewer capabilities than
//!   Docker, no new privileges, fjord's seccomp deny-list, a `/tmp` tmpfs, the replica's
//!   cgroup.
//!
//! Nothing is left after the replica ends: `runc delete --force`, the mounts are detached
//! and the directory removed; a restart of fjord removes what a killed one left.

mod bundle;
pub(crate) mod idmap;
pub(crate) mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjord_core::{FunctionKey, FunctionSpec};
use fjord_runtime_api::{Applied, BoxFuture, ImageRootfs, SecretFiles};

pub(crate) use bundle::Bundle;
pub use idmap::{IdBlockSource, RANGE as IDS_PER_FUNCTION};

use crate::replica::{Launch, ReplicaArgs, ReplicaEnv};
use crate::{Engine, FunctionHandle, Runtime, RuntimeConfig, RuntimeError, Shared, Source};

/// `--oci-runtime` default: the distribution's runc.
pub const DEFAULT_OCI_RUNTIME: &str = "runc";

/// Parent of the bundle directories (shared with the network pool's subnet registry).
const RUN_DIR: &str = "/run/fjord";

/// The port a watchdog listens on unless the function sets `port` (OpenFaaS's).
pub const WATCHDOG_PORT: u16 = 8080;

/// Settings of the container runtime (the rest is the process runtime's [`RuntimeConfig`]).
#[derive(Clone)]
pub struct ContainerConfig {
    /// The OCI runtime program (`runc`, `crun`, `youki`): a name looked up in PATH, or a path.
    pub oci_runtime: PathBuf,
    /// Host ids for the functions' ranges (see [`idmap`]); without it (or without idmapped
    /// mounts on the data dir's filesystem), container root alone maps to the function's
    /// uid, and an image whose `User` is not root runs as container root without
    /// capabilities.
    pub id_block: Option<IdBlockSource>,
}

impl std::fmt::Debug for ContainerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerConfig")
            .field("oci_runtime", &self.oci_runtime)
            .field("id_block", &self.id_block.is_some())
            .finish()
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            oci_runtime: PathBuf::from(DEFAULT_OCI_RUNTIME),
            id_block: None,
        }
    }
}

/// What every container replica of this runtime shares.
#[derive(Debug)]
pub(crate) struct Host {
    /// The OCI runtime, resolved to a path.
    pub oci_runtime: PathBuf,
    /// The OCI runtime's state directory (`--root`): this instance's containers only.
    pub state: PathBuf,
    /// Where replicas' bundles (config and mount points) are made, reachable by path from
    /// the containers' user namespaces.
    pub bundles: PathBuf,
    /// Where replicas' overlay upper and work dirs are (on disk, private).
    pub disk: PathBuf,
    /// Network namespaces made ahead of need: making one (`ip` twice) is a quarter of a
    /// container's cold start.
    spare_netns: std::sync::Mutex<Vec<Arc<crate::netns::NetNs>>>,
    /// The write end of the reaper's pipe (see [`Host::start_reaper`]): closed by the kernel
    /// when fjord dies, by [`ContainerRuntime::stop_all`] at shutdown.
    reaper: std::sync::Mutex<Option<tokio::process::ChildStdin>>,
}

/// Waits for EOF on stdin (fjord gone), then deletes every container in the OCI runtime's
/// state directory. `$1` the OCI runtime, `$2` the state directory.
const REAPER: &str = r#"while read -r _; do :; done
for c in "$2"/*; do [ -e "$c" ] && "$1" --root "$2" delete --force "${c##*/}"; done
exit 0"#;

/// How many network namespaces are kept ready.
const SPARE_NETNS: usize = 2;
/// How long the spare namespaces wait for the replica that took one to be ready before
/// they are made anyway (a replica that never gets ready must not starve the pool).
const REFILL_AFTER_AT_MOST: std::time::Duration = std::time::Duration::from_secs(5);

impl Host {
    /// A fresh network namespace for a replica: a spare one if there is one (then another
    /// is made in the background, once the function has a ready replica: making one runs
    /// `ip` twice, which would compete with this cold start for the CPU), else a new one.
    /// `outbound: false` (`com.fjord.network: none`) makes a loopback-only one (spares have
    /// the server's network).
    async fn netns(
        self: &Arc<Self>,
        pool: &Arc<crate::netns::NetPool>,
        function: &Arc<crate::FunctionHandle>,
        outbound: bool,
    ) -> std::io::Result<Arc<crate::netns::NetNs>> {
        if !outbound {
            let pool = pool.clone();
            return tokio::task::spawn_blocking(move || pool.create_with(false))
                .await
                .map_err(std::io::Error::other)?;
        }
        let spare = self
            .spare_netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let ns = match spare {
            Some(ns) => ns,
            None => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || pool.create())
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        let (host, pool, function) = (self.clone(), pool.clone(), function.clone());
        tokio::spawn(async move {
            function.wait_ready(REFILL_AFTER_AT_MOST).await;
            Self::refill(&host, &pool).await;
        });
        Ok(ns)
    }

    /// Makes spare namespaces until there are [`SPARE_NETNS`].
    async fn refill(host: &Arc<Self>, pool: &Arc<crate::netns::NetPool>) {
        let (host, pool) = (host.clone(), pool.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let short = || {
                host.spare_netns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len()
                    < SPARE_NETNS
            };
            while short() {
                match pool.create() {
                    Ok(ns) => host
                        .spare_netns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ns),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot make a spare network namespace");
                        break;
                    }
                }
            }
        })
        .await;
    }

    /// `<oci-runtime> --root <state> ARGS…`, quiet, waited for.
    pub(crate) async fn run(&self, args: &[&str]) -> std::io::Result<()> {
        let out = tokio::process::Command::new(&self.oci_runtime)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .env_clear()
            .env("PATH", crate::program::DEFAULT_PATH)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{} {}: {}",
                self.oci_runtime.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Starts the reaper: a shell that outlives a fjord killed with `kill -9` and then
    /// deletes this instance's containers (runc's own processes survive their parent, and a
    /// container outlives its `runc run`). In its own process group, so a Ctrl-C meant for
    /// fjord does not stop it first. Mounts and bundle directories wait for the next start.
    fn start_reaper(&self) -> std::io::Result<()> {
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", REAPER, "fjord-container-reaper"])
            .arg(&self.oci_runtime)
            .arg(&self.state)
            .env_clear()
            .env("PATH", crate::program::DEFAULT_PATH)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        *self.reaper.lock().unwrap_or_else(|p| p.into_inner()) = child.stdin.take();
        // Tokio reaps it once it exits (after shutdown closes the pipe).
        drop(child);
        Ok(())
    }

    /// Removes containers, mounts and bundles an earlier run left (killed before it could).
    async fn clean_stale(&self) -> usize {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&self.state) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = self.run(&["delete", "--force", id]).await;
                    n += 1;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            for e in entries.flatten() {
                bundle::unmount_all(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.disk) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        n
    }
}

/// How one version of a function runs as a container, decided at deploy time.
#[derive(Debug)]
pub(crate) struct Plan {
    pub host: Arc<Host>,
    pub image: Arc<ImageRootfs>,
    /// `process.args`: Entrypoint + Cmd, else envProcess.
    pub args: Vec<String>,
    /// `KEY=value`: the image's, then fjord's, then `envVars` (later ones win).
    pub env: Vec<String>,
    pub cwd: String,
    /// The image runs as a user other than root: its process gets no capabilities.
    pub unprivileged: bool,
    /// The process's user inside (root without `ids`).
    pub user: spec::ImageUser,
    /// The function's id range, seen through idmapped layers; `None`: container root alone
    /// is mapped.
    pub ids: Option<Arc<idmap::IdMap>>,
    /// The host uid (and gid) container root is mapped to: its range's first, else the
    /// function's own.
    pub host_uid: u32,
    pub port: u16,
    pub secrets: SecretFiles,
    pub read_only: bool,
    pub tmp_size: u64,
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids_max: u64,
    /// The overlay's lower layers, made by the first replica that starts.
    lowers: std::sync::Mutex<Option<Arc<bundle::Lowers>>>,
}

impl Plan {
    /// The lower layers every replica of this version mounts its overlay on (blocking: the
    /// first call makes them).
    pub(crate) fn lowers(&self) -> std::io::Result<Arc<bundle::Lowers>> {
        let mut slot = self.lowers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = &*slot {
            return Ok(l.clone());
        }
        let made = Arc::new(bundle::Lowers::new(self)?);
        *slot = Some(made.clone());
        Ok(made)
    }

    pub(crate) fn oci_runtime(&self) -> &Path {
        &self.host.oci_runtime
    }
}

/// Resolves a program name through PATH (`runc` → `/usr/sbin/runc`).
fn resolve_program(p: &Path) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |q: &Path| {
        q.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if p.components().count() > 1 {
        return if executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(RuntimeError::Invalid(format!(
                "--oci-runtime {}: not an executable file",
                p.display()
            )))
        };
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(crate::program::DEFAULT_PATH.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(p))
        .find(|q| executable(q))
        .ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "--oci-runtime {}: not found in PATH; install runc (apt install runc) or give the program's path",
                p.display()
            ))
        })
}

/// The `container` runtime.
pub struct ContainerRuntime {
    engine: Engine,
    host: Arc<Host>,
    /// The functions' id ranges; `None`: container root alone is mapped.
    ranges: Option<idmap::Ranges>,
    /// Made its own [`Shared`] (else the process runtime's, released by it).
    owns_shared: bool,
}

impl ContainerRuntime {
    /// A container runtime with its own sandbox setup (cgroup root, network pool). A server
    /// that also runs processes makes it with [`crate::ProcessRuntime::container`] instead,
    /// so both share one network pool.
    pub async fn new(
        config: RuntimeConfig,
        container: ContainerConfig,
    ) -> Result<Self, RuntimeError> {
        let shared = Shared::new(config).await?;
        Self::with_shared(shared, container, true).await
    }

    pub(crate) async fn with_shared(
        shared: Arc<Shared>,
        config: ContainerConfig,
        owns_shared: bool,
    ) -> Result<Self, RuntimeError> {
        if !shared.sandbox.isolate {
            return Err(RuntimeError::Invalid(
                "the container runtime needs root (it mounts root filesystems and runs runc)"
                    .into(),
            ));
        }
        let oci_runtime = resolve_program(&config.oci_runtime)?;
        let data = std::fs::canonicalize(&shared.config.data_dir)?;
        let host = Host {
            oci_runtime,
            state: data.join("runc"),
            bundles: Path::new(RUN_DIR)
                .join(format!("c-{}", crate::instance_id(&shared.config.data_dir))),
            disk: data.join("containers"),
            spare_netns: Default::default(),
            reaper: Default::default(),
        };
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [
            (&host.state, 0o700),
            (&host.disk, 0o700),
            (&host.bundles, 0o711),
        ] {
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?;
        }
        // Searchable (not listable) down to the bundles.
        let run = std::fs::metadata(RUN_DIR)?.permissions().mode();
        if run & 0o001 == 0 {
            std::fs::set_permissions(RUN_DIR, std::fs::Permissions::from_mode(run | 0o111))?;
        }
        let stale = host.clean_stale().await;
        if stale > 0 {
            tracing::info!(stale, "removed containers left by an earlier run");
        }
        // Idmapped layers need the kernel's and the filesystem's support: tried once.
        let ranges = match config.id_block {
            None => None,
            Some(source) => match idmap::supported(&host.disk) {
                Ok(()) => Some(idmap::Ranges::new(source)),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %host.disk.display(), "idmapped mounts do not work here: container root alone maps to each function's uid, and images whose USER is not root run as container root without capabilities");
                    None
                }
            },
        };
        host.start_reaper()?;
        Ok(Self {
            engine: Engine::new(shared, "container"),
            host: Arc::new(host),
            ranges,
            owns_shared,
        })
    }

    /// The plan of `spec`; `ids`: the function's range, `None` when validating (it is given
    /// one when applied) or when container root alone is mapped.
    fn plan(
        &self,
        spec: &FunctionSpec,
        source: &Source,
        ids: Option<Arc<idmap::IdMap>>,
    ) -> Result<Plan, RuntimeError> {
        let image_ref = &spec.deployment.image;
        let Some(image) = source.image.clone() else {
            return Err(RuntimeError::Invalid(format!(
                "image {image_ref:?} has not been pulled: the container runtime runs pulled images only"
            )));
        };
        if image.layers.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "image {image_ref:?} ({}) has no layers",
                image.digest
            )));
        }
        for l in &image.layers {
            if !l.is_dir() {
                return Err(RuntimeError::Invalid(format!(
                    "image {image_ref:?}: layer {} is missing from the layer store; pull the image again",
                    l.display()
                )));
            }
        }
        let c = &image.config;
        let mut args: Vec<String> = c.entrypoint.iter().chain(&c.cmd).cloned().collect();
        if args.is_empty() {
            args = spec.argv.clone();
        }
        if args.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "envProcess: image {image_ref:?} has no Entrypoint or Cmd, so there is nothing to run: set envProcess (fprocess in stack.yml) to the command to run inside the image, or build the image with a CMD (e.g. the OpenFaaS watchdog)"
            )));
        }
        let port = spec::watchdog_port(spec, c).map_err(RuntimeError::Invalid)?;
        let user = spec::image_user(c, &image.layers, idmap::RANGE - 1)
            .map_err(|e| RuntimeError::Invalid(format!("image {image_ref:?}: {e}")))?;
        let unprivileged = user.uid != 0;
        // Without a range the process is container root (its files are root's).
        let (user, host_uid) = match (&ids, self.ranges.is_some()) {
            (Some(ids), _) => (user, ids.first),
            (None, true) => (user, source.uid),
            (None, false) => (spec::ImageUser::default(), source.uid),
        };
        let shared = &self.engine.shared;
        Ok(Plan {
            host: self.host.clone(),
            env: spec::environment(spec, c),
            cwd: c
                .working_dir
                .clone()
                .filter(|w| w.starts_with('/'))
                .unwrap_or_else(|| "/".into()),
            image,
            args,
            unprivileged,
            user,
            ids,
            host_uid,
            port,
            secrets: source.secrets.clone(),
            read_only: spec.deployment.read_only_root_filesystem,
            tmp_size: spec.tmp_size_bytes.unwrap_or(shared.config.tmp_size_bytes),
            memory_bytes: spec
                .memory_limit_bytes
                .or(shared.config.default_memory_bytes),
            cpu_millis: spec.cpu_limit_millis,
            pids_max: shared.config.pids_max,
            lowers: Default::default(),
        })
    }

    /// Frees the function's id range unless it (still, or again) runs here.
    fn release_range(&self, key: &FunctionKey) {
        if let Some(r) = &self.ranges
            && self.engine.get(key).is_none()
        {
            r.release(key);
        }
    }

    async fn stop_all(&self) {
        self.engine.stop_all().await;
        self.host
            .spare_netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Every container is gone: the reaper finds none and exits.
        drop(
            self.host
                .reaper
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        // Empty once every replica is gone (it is this instance's, under /run).
        let _ = std::fs::remove_dir(&self.host.bundles);
        // runc made this instance's directory in every v1 controller (devices, freezer…),
        // not only in those fjord's cgroup root knows.
        let instance = crate::instance_id(&self.engine.shared.config.data_dir);
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join("fjord").join(&instance));
            }
        }
        if self.owns_shared {
            self.engine.shared.release().await;
        }
    }
}

impl Runtime for ContainerRuntime {
    fn name(&self) -> &'static str {
        "container"
    }

    fn isolates(&self) -> bool {
        true
    }

    fn validate(&self, spec: &FunctionSpec, source: &Source) -> Result<(), RuntimeError> {
        self.plan(spec, source, None).map(|_| ())
    }

    fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        source: Source,
        replicas: u64,
    ) -> Result<Applied, RuntimeError> {
        let ids = match &self.ranges {
            Some(r) => Some(r.get_or_assign(&spec.key).map_err(|e| {
                RuntimeError::Invalid(format!("image {:?}: {e}", spec.deployment.image))
            })?),
            None => None,
        };
        let plan = match self.plan(&spec, &source, ids) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.release_range(&spec.key);
                return Err(e);
            }
        };
        let uid = plan.host_uid;
        self.engine
            .apply(spec, Launch::Container(plan), uid, replicas)
    }

    fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        self.engine.scale(key, replicas)
    }

    fn remove<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let removed = self.engine.remove(key).await;
            // Every replica is gone: the range may go to another function.
            self.release_range(key);
            removed
        })
    }

    fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.engine.get(key)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }
}

/// Runs a container replica until `stop` is cancelled: its own network namespace, its
/// cgroup, its bundle, then the process runtime's supervision of an HTTP replica.
pub(crate) async fn run_replica(args: ReplicaArgs, plan: Arc<Plan>) {
    let t0 = std::time::Instant::now();
    let shared = args.shared.clone();
    let fail = |reason: String| {
        args.handle.logs.push(&args.id, &format!("fjord: {reason}"));
        args.down(reason);
    };
    // A namespace per replica (not per function): every replica of an image listens on
    // the same port, as each pod does.
    let netns = match shared.sandbox.net.clone() {
        None => {
            fail("network namespaces are unavailable on this host (is iproute2 installed?), and a container replica needs its own".into());
            args.stop.cancelled().await;
            return;
        }
        Some(pool) => match plan
            .host
            .netns(&pool, &args.handle, args.spec.outbound_network)
            .await
        {
            Ok(ns) => ns,
            Err(e) => {
                fail(format!(
                    "cannot create the replica's network namespace: {e}"
                ));
                args.stop.cancelled().await;
                return;
            }
        },
    };
    let cg_name = format!("{}.{}", args.spec.key.namespace, args.id);
    let cgroup = match &shared.sandbox.cgroups {
        Some(root) => match root.create(
            &cg_name,
            &crate::cgroup::Limits {
                memory_bytes: plan.memory_bytes,
                cpu_millis: plan.cpu_millis,
                pids_max: Some(plan.pids_max),
            },
        ) {
            Ok(cg) => Some((cg, root.oci_path(&cg_name))),
            Err(e) => {
                fail(format!("cannot create the replica's cgroup: {e}"));
                args.stop.cancelled().await;
                return;
            }
        },
        None => None,
    };
    let (cgroup, cgroups_path) = match cgroup {
        Some((cg, p)) => (Some(cg), Some(p)),
        None => (None, None),
    };
    let made = {
        let plan = plan.clone();
        let id = args.id.clone();
        let ns = netns.clone();
        tokio::task::spawn_blocking(move || Bundle::create(&plan, &id, &ns, cgroups_path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    };
    let bundle = match made {
        Ok(b) => b,
        Err(e) => {
            fail(format!("cannot create the container's bundle: {e}"));
            args.stop.cancelled().await;
            if let Some(cg) = &cgroup {
                cg.remove().await;
            }
            return;
        }
    };
    tracing::debug!(replica = %args.id, elapsed_us = t0.elapsed().as_micros() as u64, "container bundle ready");
    let env = Arc::new(ReplicaEnv::for_container(
        args.id.clone(),
        cgroup,
        Some(netns),
        bundle,
    ));
    crate::replica::supervise_http(&args, &env, plan.port).await;
    env.destroy().await;
}
