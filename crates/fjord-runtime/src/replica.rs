//! One replica's life: its sandbox (directory, cgroup, uid), and for http mode the
//! supervised process: start, probe until ready, restart with backoff when it dies.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_core::{FunctionSpec, InvokeMode};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::cgroup::{Cgroup, Limits};
use crate::fork::ForkSlot;
use crate::logs::{LogBook, MAX_LINE_BYTES};
use crate::program::{self, Program};
use crate::sandbox::{PidNs, SandboxPlan};
use crate::{Endpoint, EndpointKind, FunctionHandle, Shared};

/// Backoff between restarts of a crashing replica.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A replica that ran this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// How a version's replicas are launched: what differs between the runtimes of this crate
/// (everything else, from rollouts to supervision and logs, is shared).
#[derive(Clone)]
pub(crate) enum Launch {
    /// The process runtime: the function's program, exec'd in fjord's own sandbox.
    Process(Arc<Program>),
    /// The container runtime: `runc run` of a bundle made from an image.
    Container(Arc<crate::container::Plan>),
    /// Tests of the reconciler: a replica that touches nothing of the OS and reports what
    /// its script says (see `reconcile::tests`).
    #[cfg(test)]
    Scripted(Arc<crate::reconcile::tests::Script>),
}

/// What a replica tells its function's reconciler.
pub(crate) enum Event {
    Ready {
        generation: u64,
        id: Arc<str>,
        endpoint: Arc<Endpoint>,
    },
    Down {
        generation: u64,
        id: Arc<str>,
        reason: String,
        /// Times in a row the replica ended before it was ever ready (0: it had been
        /// ready), so the reconciler sees a crash loop without waiting for a timeout.
        startup_failures: u32,
        /// `false`: the replica will not try again (its sandbox could not be made).
        retrying: bool,
    },
}

/// The sandbox of one replica: its directory (with its private `/tmp`), cgroup and user.
pub(crate) struct ReplicaEnv {
    pub id: Arc<str>,
    dir: PathBuf,
    pub tmp: PathBuf,
    /// Sandboxed: `tmp` is a tmpfs mounted for this replica (unmounted at the end).
    tmp_mounted: bool,
    pub cgroup: Option<Cgroup>,
    /// Not sandboxed: the private directory holding the secret files.
    secrets_dir: Option<PathBuf>,
    /// The function's network namespace, which every process of the replica joins.
    pub netns: Option<Arc<crate::netns::NetNs>>,
    /// What each process does between fork and exec, prepared once (fork mode forks per
    /// request: nothing is built per call).
    plan: Arc<SandboxPlan>,
    /// Not sandboxed: the working directory (the bundle, else `tmp`).
    cwd: Option<PathBuf>,
    /// Sandboxed: processes run in a PID namespace ([`ReplicaEnv::pid_namespace`]).
    pidns: bool,
    /// A container replica: its runc bundle (the OCI runtime does the sandboxing).
    pub(crate) container: Option<crate::container::Bundle>,
}

/// tmpfs options for a replica's `/tmp` (owned by the function's uid) or, `uid` `None`, for
/// the private scratch directories (sticky, world-writable within the namespace). The
/// inode count is bounded too: inodes are memory.
fn tmpfs_options(size: u64, uid: Option<u32>) -> std::io::Result<CString> {
    let inodes = (size / 4096).clamp(1024, 1 << 20);
    let owner = match uid {
        Some(u) => format!("mode=0700,uid={u},gid={u}"),
        None => "mode=1777".to_string(),
    };
    CString::new(format!("{owner},size={size},nr_inodes={inodes}")).map_err(std::io::Error::other)
}

impl ReplicaEnv {
    pub fn create(
        shared: &Shared,
        spec: &FunctionSpec,
        program: &Program,
        id: &Arc<str>,
        uid: u32,
        netns: Option<Arc<crate::netns::NetNs>>,
    ) -> std::io::Result<Self> {
        let dir = shared.config.data_dir.join("replicas").join(&**id);
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let isolate = shared.sandbox.isolate;
        let user = isolate.then_some((uid, uid));
        let tmp_size = spec.tmp_size_bytes.unwrap_or(shared.config.tmp_size_bytes);
        if isolate {
            // A tmpfs per replica, mounted here rather than in each process: fork mode's
            // processes share it, so /tmp lasts as long as the replica (as in http mode).
            // Its pages are charged to the memory cgroup of the process that writes them.
            use nix::mount::{MsFlags, mount};
            mount(
                Some("tmpfs"),
                &tmp,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(tmpfs_options(tmp_size, Some(uid))?.as_c_str()),
            )
            .map_err(std::io::Error::from)?;
        }
        let memory_bytes = spec
            .memory_limit_bytes
            .or(shared.config.default_memory_bytes);
        let cgroup = match &shared.sandbox.cgroups {
            Some(root) => Some(
                root.create(
                    &format!("{}.{}", spec.key.namespace, id),
                    &Limits {
                        memory_bytes,
                        cpu_millis: spec.cpu_limit_millis,
                        pids_max: Some(shared.config.pids_max),
                    },
                )
                .map_err(std::io::Error::other)?,
            ),
            None => None,
        };
        let tmp_c = if isolate {
            Some(CString::new(tmp.as_os_str().as_bytes()).map_err(std::io::Error::other)?)
        } else {
            None
        };
        let (secrets, secrets_dir) = if program.secrets.is_empty() {
            (None, None)
        } else if isolate {
            (
                crate::secrets::SecretMount::new(&program.secrets, uid)?.map(Arc::new),
                None,
            )
        } else {
            let d = crate::secrets::write_private_dir(&program.secrets, id, &dir.join("secrets"))?;
            (None, Some(d))
        };
        // Sandboxed, the bundle is bound at a fixed path: its host path's parents (the data
        // dir's, maybe /root at 0700) need not be reachable by the function's uid.
        let bundle = program
            .workdir
            .as_ref()
            .filter(|_| isolate)
            .and_then(|w| CString::new(w.as_os_str().as_bytes()).ok());
        let plan = Arc::new(SandboxPlan {
            workdir: if bundle.is_some() {
                CString::new(crate::program::BUNDLE_MOUNT).ok()
            } else {
                program
                    .workdir
                    .as_ref()
                    .and_then(|w| CString::new(w.as_os_str().as_bytes()).ok())
            },
            bundle,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_fds()).unwrap_or_default(),
            readonly_root: spec.deployment.read_only_root_filesystem && isolate,
            user,
            secrets,
            masks: shared.sandbox.masks.clone().filter(|_| isolate),
            scratch_options: if isolate {
                Some(tmpfs_options(tmp_size, None)?)
            } else {
                None
            },
            drop_caps: isolate,
            seccomp: shared.sandbox.seccomp.clone(),
            max_fd: shared.sandbox.max_fd,
            private_tmp: tmp_c,
            netns: netns.as_ref().map(|n| n.raw_fd()),
        });
        let cwd = (!isolate).then(|| program.workdir.clone().unwrap_or_else(|| tmp.clone()));
        Ok(Self {
            id: id.clone(),
            dir,
            tmp,
            tmp_mounted: isolate,
            cgroup,
            secrets_dir,
            netns,
            plan,
            cwd,
            pidns: isolate,
            container: None,
        })
    }

    /// The environment of a container replica: runc sandboxes it, so fjord's own plan is
    /// empty; the cgroup (made by fjord, joined by runc) gives limits, OOM kills and CPU.
    pub(crate) fn for_container(
        id: Arc<str>,
        cgroup: Option<Cgroup>,
        netns: Option<Arc<crate::netns::NetNs>>,
        bundle: crate::container::Bundle,
    ) -> Self {
        let dir = bundle.dir().to_path_buf();
        Self {
            id,
            tmp: dir.clone(),
            dir,
            tmp_mounted: false,
            cgroup,
            secrets_dir: None,
            netns,
            plan: Arc::default(),
            cwd: None,
            pidns: false,
            container: Some(bundle),
        }
    }

    /// A new PID namespace for this replica's processes, when sandboxed: one per process
    /// start in http mode, one per replica in fork mode.
    pub fn pid_namespace(&self) -> std::io::Result<Option<PidNs>> {
        if self.pidns {
            PidNs::new().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Where the function finds its secret files, if it has any.
    pub fn secrets_env(&self) -> Option<(OsString, OsString)> {
        let dir: &Path = if self.plan.secrets.is_some() {
            Path::new(crate::secrets::SECRETS_MOUNT)
        } else {
            self.secrets_dir.as_deref()?
        };
        Some((
            crate::secrets::SECRETS_DIR_ENV.into(),
            dir.as_os_str().to_os_string(),
        ))
    }

    /// `/tmp` inside the sandbox, else the replica's own directory.
    pub fn home(&self) -> &Path {
        if self.plan.private_tmp.is_some() {
            Path::new("/tmp")
        } else {
            &self.tmp
        }
    }

    /// A command for the function's program, inside this replica's sandbox.
    pub fn command(
        &self,
        program: &Program,
        env: &[(OsString, OsString)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&program.path);
        cmd.args(&program.args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        self.plan.install(&mut cmd);
        cmd
    }

    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.oom_kills())
    }

    /// Kills what is left and removes the replica's cgroup, `/tmp` and directory.
    pub async fn destroy(&self) {
        if let Some(b) = &self.container {
            // runc's state and cgroups, then the rootfs mounts.
            b.destroy().await;
        }
        if let Some(cg) = &self.cgroup {
            cg.remove().await;
        }
        if self.tmp_mounted {
            // Detached: also from the (slave) namespaces of processes still alive elsewhere.
            let _ = nix::mount::umount2(&self.tmp, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(d) = &self.secrets_dir {
            crate::secrets::remove_private_dir(d);
        }
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

pub(crate) struct ReplicaArgs {
    pub shared: Arc<Shared>,
    pub handle: Arc<FunctionHandle>,
    pub spec: Arc<FunctionSpec>,
    pub launch: Launch,
    pub generation: u64,
    pub id: Arc<str>,
    pub uid: u32,
    pub net: Arc<crate::FunctionNet>,
    pub events: crate::mailbox::Sender<Event>,
    pub stop: CancellationToken,
}

impl ReplicaArgs {
    /// The replica cannot start and will not try again.
    pub(crate) fn down(&self, reason: String) {
        self.down_after(reason, 1, false);
    }

    fn down_after(&self, reason: String, startup_failures: u32, retrying: bool) {
        let _ = self.events.send(Event::Down {
            generation: self.generation,
            id: self.id.clone(),
            reason,
            startup_failures,
            retrying,
        });
    }

    fn ready(&self, kind: EndpointKind, env: &Arc<ReplicaEnv>) {
        let _ = self.events.send(Event::Ready {
            generation: self.generation,
            id: self.id.clone(),
            endpoint: Arc::new(Endpoint::new(self.id.clone(), kind, Some(env.clone()))),
        });
    }
}

/// Runs a replica until `stop` is cancelled.
pub(crate) async fn run(args: ReplicaArgs) {
    let program = match &args.launch {
        Launch::Process(p) => p.clone(),
        Launch::Container(plan) => {
            let plan = plan.clone();
            return crate::container::run_replica(args, plan).await;
        }
        #[cfg(test)]
        Launch::Scripted(script) => {
            let script = script.clone();
            return script.run(args).await;
        }
    };
    let t0 = Instant::now();
    let netns = match args.net.get(&args.shared, args.spec.outbound_network).await {
        Ok(n) => n,
        Err(e) => {
            let reason = format!("cannot create the function's network namespace: {e}");
            args.handle.logs.push(&args.id, &format!("fjord: {reason}"));
            args.down(reason);
            args.stop.cancelled().await;
            return;
        }
    };
    let env = match ReplicaEnv::create(
        &args.shared,
        &args.spec,
        &program,
        &args.id,
        args.uid,
        netns,
    ) {
        Ok(env) => Arc::new(env),
        Err(e) => {
            let reason = format!("cannot create the replica's sandbox: {e}");
            args.handle.logs.push(&args.id, &format!("fjord: {reason}"));
            args.down(reason);
            args.stop.cancelled().await;
            return;
        }
    };
    tracing::debug!(replica = %args.id, elapsed_us = t0.elapsed().as_micros() as u64, "sandbox ready");
    match args.spec.mode {
        InvokeMode::Fork => {
            let mut base_env = program::base_env(&args.spec, &args.id, env.home(), None);
            base_env.extend(env.secrets_env());
            let pidns = match env.pid_namespace() {
                Ok(ns) => ns,
                Err(e) => {
                    let reason = format!("cannot create the replica's PID namespace: {e}");
                    args.handle.logs.push(&args.id, &format!("fjord: {reason}"));
                    args.down(reason);
                    args.stop.cancelled().await;
                    env.destroy().await;
                    return;
                }
            };
            let slot = Arc::new(ForkSlot::new(env.clone(), base_env, program, pidns));
            args.ready(EndpointKind::InProcess(slot.clone()), &env);
            args.stop.cancelled().await;
            // Calls still running and whatever they left behind go with the replica.
            slot.stop();
        }
        InvokeMode::Http { upstream_port } => {
            let port = match upstream_port {
                Some(p) => Ok(p),
                None => args.shared.allocate_port(),
            };
            match port {
                Ok(port) => {
                    supervise_http(&args, &env, port).await;
                    if upstream_port.is_none() {
                        args.shared.release_port(port);
                    }
                }
                Err(e) => {
                    args.down(format!("no port for the replica: {e}"));
                    args.stop.cancelled().await;
                }
            }
        }
    }
    env.destroy().await;
}

enum Outcome {
    Stopped,
    /// The process ended; `was_ready`: after it had been ready.
    Exited {
        reason: String,
        was_ready: bool,
    },
}

pub(crate) async fn supervise_http(args: &ReplicaArgs, env: &Arc<ReplicaEnv>, port: u16) {
    let host = match &env.netns {
        Some(ns) => crate::netns::authority_host(ns.id),
        None => "127.0.0.1".to_string(),
    };
    let authority: http::uri::Authority = match format!("{host}:{port}").parse() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut base_env = program::base_env(&args.spec, &args.id, env.home(), Some(port));
    base_env.extend(env.secrets_env());
    let mut backoff = BACKOFF_START;
    let mut startup_failures = 0u32;
    loop {
        let started = Instant::now();
        let ooms_before = env.oom_kills();
        match run_once(args, env, &base_env, port, &authority).await {
            Outcome::Stopped => return,
            Outcome::Exited {
                mut reason,
                was_ready,
            } => {
                startup_failures = if was_ready { 0 } else { startup_failures + 1 };
                if env.oom_kills() > ooms_before {
                    args.handle.count_oom_kill();
                    let limit = args
                        .spec
                        .memory_limit_bytes
                        .or(args.shared.config.default_memory_bytes)
                        .map_or_else(|| "?".into(), fjord_core::quantity::format_memory);
                    reason = format!(
                        "OOMKilled: used more memory than limits.memory ({limit}) and was killed"
                    );
                }
                args.handle.count_restart();
                if started.elapsed() > BACKOFF_RESET_AFTER {
                    backoff = BACKOFF_START;
                }
                let msg = format!(
                    "fjord: replica {}: {reason}; restarting in {} ms",
                    args.id,
                    backoff.as_millis()
                );
                tracing::warn!(function = %args.handle.qualified, "{}", &msg[7..]);
                args.handle.logs.push(&args.id, &msg);
                args.down_after(reason, startup_failures, true);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = args.stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("exited ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

async fn run_once(
    args: &ReplicaArgs,
    env: &Arc<ReplicaEnv>,
    base_env: &[(OsString, OsString)],
    port: u16,
    authority: &http::uri::Authority,
) -> Outcome {
    let before_spawn = Instant::now();
    // Per process start: what a process leaves behind dies with it (dropped at the end),
    // never reaching the next start of the replica.
    let pidns = match env.pid_namespace() {
        Ok(ns) => ns,
        Err(e) => {
            return Outcome::Exited {
                reason: format!("cannot create a PID namespace: {e}"),
                was_ready: false,
            };
        }
    };
    let mut cmd = match (&env.container, &args.launch) {
        (Some(bundle), _) => match bundle.command().await {
            Ok(cmd) => cmd,
            Err(e) => {
                return Outcome::Exited {
                    reason: format!("cannot start the container: {e}"),
                    was_ready: false,
                };
            }
        },
        (None, Launch::Process(program)) => env.command(program, base_env),
        (None, Launch::Container(_)) => {
            return Outcome::Exited {
                reason: "a container replica without its bundle".into(),
                was_ready: false,
            };
        }
        #[cfg(test)]
        (_, Launch::Scripted(_)) => unreachable!("scripted replicas never start a process"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = match &pidns {
        Some(ns) => ns.spawn(&mut cmd),
        None => cmd.spawn(),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let what = match &args.launch {
                Launch::Process(p) => p.path.display().to_string(),
                Launch::Container(p) => p.oci_runtime().display().to_string(),
                #[cfg(test)]
                Launch::Scripted(_) => unreachable!("scripted replicas never start a process"),
            };
            return Outcome::Exited {
                reason: format!("cannot start {what}: {e}"),
                was_ready: false,
            };
        }
    };
    drop(cmd);
    let spawned = Instant::now();
    tracing::debug!(replica = %args.id, spawn_us = (spawned - before_spawn).as_micros() as u64, "replica process started");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, args.handle.logs.clone(), args.id.clone(), false));
    }
    let stderr = child.stderr.take().map(|err| {
        let tail = env.container.is_some();
        tokio::spawn(pump(err, args.handle.logs.clone(), args.id.clone(), tail))
    });
    let pid = child.id().map(|p| p as i32);
    let container = env.container.as_ref();
    tokio::select! {
        biased;
        _ = args.stop.cancelled() => {
            terminate(&mut child, pid, args.shared.config.stop_grace, container).await;
            return Outcome::Stopped;
        }
        status = child.wait() => {
            let mut reason = format!("{} before it was ready", describe(status));
            // A container's own errors (and runc's) are all there is to see: give the
            // last lines its process wrote to stderr, as the status shows them.
            if container.is_some()
                && let Some(task) = stderr
                && let Ok(Ok(tail)) = tokio::time::timeout(Duration::from_secs(2), task).await
                && !tail.is_empty()
            {
                reason = format!("{reason}: {}", tail.join(" | "));
            }
            return Outcome::Exited {
                reason,
                was_ready: false,
            };
        }
        _ = probe(env.netns.as_deref(), port, args.spec.ready_path.as_deref()) => {}
    }
    tracing::debug!(replica = %args.id, after_spawn_us = spawned.elapsed().as_micros() as u64, "replica ready");
    args.ready(
        EndpointKind::Http {
            authority: authority.clone(),
        },
        env,
    );
    tokio::select! {
        _ = args.stop.cancelled() => {
            terminate(&mut child, pid, args.shared.config.stop_grace, container).await;
            Outcome::Stopped
        }
        status = child.wait() => Outcome::Exited {
            reason: describe(status),
            was_ready: true,
        },
    }
}

/// SIGTERM to the replica's process group, SIGKILL after `grace`. A container: runc
/// forwards the SIGTERM to the container's process; after `grace`, `runc kill KILL` ends
/// the container (SIGKILL to runc alone would leave it running).
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<i32>,
    grace: Duration,
    container: Option<&crate::container::Bundle>,
) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Some(pid) = pid else { return };
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(b) = container {
            b.kill().await;
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

/// Polls until the replica accepts connections (and, with a ready path, answers it 2xx).
/// Fine-grained at first: cold start time is what users feel. With a network namespace, only
/// the function's own processes can be listening there.
async fn probe(netns: Option<&crate::netns::NetNs>, port: u16, ready_path: Option<&str>) {
    let started = Instant::now();
    loop {
        let connected = match netns {
            Some(ns) => crate::netns::connect_in(ns.fd(), port).await,
            None => TcpStream::connect(("127.0.0.1", port)).await,
        };
        if let Ok(stream) = connected {
            match ready_path {
                None => return,
                Some(path) => {
                    if http_get_ok(stream, path).await {
                        return;
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        if elapsed < PROBE_FINE_FOR {
            // tokio's timer has 1 ms ticks (a 1 ms sleep lasts 1–2 ms): a thread's sleep
            // is exact. Most compiled functions listen within this window.
            let _ = tokio::task::spawn_blocking(|| std::thread::sleep(PROBE_FINE)).await;
        } else if elapsed < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The readiness probe's interval while a replica is young, and for how long: a cold start
/// waits on average half an interval past the moment the function listens, and a refused
/// loopback connect costs a few µs.
const PROBE_FINE: Duration = Duration::from_micros(250);
const PROBE_FINE_FOR: Duration = Duration::from_millis(100);

async fn http_get_ok(mut stream: TcpStream, path: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let io = async {
        stream.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 16];
        stream.read_exact(&mut buf[..12]).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(2), io).await {
        Ok(Ok(buf)) => buf.starts_with(b"HTTP/1.") && buf[9] == b'2',
        _ => false,
    }
}

/// How many of the last output lines [`pump`] returns.
const TAIL_LINES: usize = 3;

/// Copies a child's output into the function's logs, a line at a time (long lines cut).
/// With `tail`, returns the last few lines (for a start failure's reason).
pub(crate) async fn pump(
    reader: impl AsyncRead + Unpin,
    logs: Arc<LogBook>,
    instance: Arc<str>,
    tail: bool,
) -> Vec<String> {
    let keep_tail = tail;
    let mut r = BufReader::with_capacity(8 << 10, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
    let mut keep = |text: String| {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    };
    loop {
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (take, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if complete || line.len() >= MAX_LINE_BYTES {
            let text = String::from_utf8_lossy(&line);
            logs.push(&instance, &text);
            let text = text.trim_end();
            if keep_tail && !text.is_empty() {
                keep(text.to_string());
            }
            line.clear();
        }
    }
    if !line.is_empty() {
        let text = String::from_utf8_lossy(&line);
        logs.push(&instance, &text);
        if keep_tail {
            keep(text.trim_end().to_string());
        }
    }
    tail.into()
}
