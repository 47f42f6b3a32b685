//! fjord's HTTP gateway: the OpenFaaS REST API under `/system`, basic auth, and the invoke
//! path `/function/*`, on top of the process runtime and the state store.

mod api;
mod async_calls;
mod auth;
mod bundles;
mod callback;
pub mod connectors;
mod conns;
mod error;
mod guard;
mod images;
pub mod invoke;
mod logs;
mod namespaces;
mod openapi;
mod responses;
#[cfg(test)]
mod router_tests;
pub mod routes;
mod secrets;
mod state;
mod tls;
mod tokens;
pub mod trigger;
mod trust;
mod ui;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use fjord_runtime::netns::{FunctionNetwork, NetworkConfig};

use axum::Router;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

pub use api::version_info;
pub use auth::{ADMIN_USER, password_path};
pub use callback::{CallbackAllow, CallbackPolicy};
pub use error::ApiError;
pub use fjord_control::bundles::{Bundles, normalize_tag};
pub use fjord_control::secrets::{SecretKey, key_path as secrets_key_path};
pub use fjord_control::tokens::Scope;
pub use fjord_control::{ControlPlane, DeployMode};
pub use invoke::{split_function_path, strip_hop_by_hop};
pub use state::{
    AppState, ContainerMode, ContainerSettings, DEFAULT_HEADER_TIMEOUT, GatewayConfig,
    MAX_HEADER_BYTES, MoreTriggers, NatsSettings, QueueBackend,
};
pub use tls::{TlsError, TlsFiles};
pub use ui::UiListen;

/// Opens the async queue and starts its retention task: finished calls (done, dead,
/// cancelled) are kept a day for `GET /system/async-calls`, then pruned.
async fn open_queue(
    backend: &QueueBackend,
    nats: &NatsSettings,
    nats_connector: bool,
    data_dir: &std::path::Path,
) -> Result<
    (
        Arc<dyn fjord_queue::Queue>,
        tokio::task::JoinHandle<()>,
        Arc<dyn connectors::cron::Claims>,
    ),
    StartError,
> {
    match backend {
        QueueBackend::Embedded => {
            // The NATS connector (--nats) uses them too.
            if !nats_connector
                && (nats.creds.is_some() || nats.nkey.is_some() || nats.ca.is_some() || nats.tls)
            {
                tracing::warn!(
                    "--nats-* settings apply to a NATS queue (--queue nats://...): ignored with the embedded queue"
                );
            }
            let q = fjord_queue::sqlite::SqliteQueue::open(&data_dir.join("queue.db"))?;
            let p = q.clone();
            Ok((
                q,
                spawn_pruner(move |cutoff| {
                    let p = p.clone();
                    async move { fjord_queue::Queue::prune(&*p, cutoff).await }
                }),
                // One server owns its queue: its scheduled runs are its own.
                Arc::new(connectors::cron::Alone),
            ))
        }
        #[cfg(feature = "nats")]
        QueueBackend::Nats { url, prefix } => {
            // Only NATS needs the key: the embedded queue's file is in the data dir already.
            let key = match &nats.queue_key {
                Some(path) => fjord_queue::QueueKey::load(path),
                None => {
                    let path = fjord_queue::key::default_key_path(data_dir);
                    fjord_queue::QueueKey::load_or_create(&path).map(|(key, created)| {
                        if created {
                            tracing::info!(key_file = %path.display(), "generated the key that signs queued calls: every fjord server sharing this NATS queue needs the same file (copy it, and pass it with --queue-key)");
                        }
                        key
                    })
                }
            }
            .map_err(StartError::QueueKey)?;
            let key_id = key.id().to_owned();
            let options = fjord_queue::nats::NatsOptions {
                prefix: prefix.clone(),
                auth: fjord_queue::nats::NatsAuth {
                    creds_file: nats.creds.clone(),
                    nkey_file: nats.nkey.clone(),
                    ca_file: nats.ca.clone(),
                    tls: nats.tls,
                },
                ..fjord_queue::nats::NatsOptions::new(key)
            };
            let shown = fjord_queue::redact_url(url);
            let q = Arc::new(
                fjord_queue::nats::NatsQueue::connect_with(url, options)
                    .await
                    .map_err(|source| StartError::QueueConnect {
                        url: shown.clone(),
                        source,
                    })?,
            );
            if q.anonymous_allowed() {
                tracing::warn!(url = %shown, "NATS accepts clients without credentials: anyone who can reach its port can read every queued call (bodies, cookies, tokens), cancel calls and queue forged ones. Enable authorization in nats-server (an `authorization {{ user, password }}` block or nkeys/JWT) and give fjord the credentials (nats://user:password@host:4222 in FJORD_QUEUE, --nats-creds or --nats-nkey)");
            }
            tracing::info!(url = %shown, %prefix, queue_key = %key_id, "async calls queue in NATS JetStream");
            // Servers sharing the queue share the schedules' claims: each run runs once.
            let claims = connectors::cron::NatsClaims::open(&q.jetstream(), q.prefix())
                .await
                .map_err(|e| StartError::Queue(fjord_queue::QueueError::Storage(e)))?;
            let p = q.clone();
            Ok((
                q,
                spawn_pruner(move |cutoff| {
                    let p = p.clone();
                    async move { fjord_queue::Queue::prune(&*p, cutoff).await }
                }),
                Arc::new(claims),
            ))
        }
        #[cfg(not(feature = "nats"))]
        QueueBackend::Nats { url, .. } => Err(StartError::Queue(fjord_queue::QueueError::Storage(
            format!(
                "--queue {}: this fjord was built without NATS support (cargo feature `nats`)",
                fjord_queue::redact_url(url)
            ),
        ))),
    }
}

/// Every 10 minutes, deletes finished calls (done, dead, cancelled) older than a day with
/// `Queue::prune` (retention is the server's choice).
fn spawn_pruner<F, Fut>(prune: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, fjord_queue::QueueError>> + Send,
{
    const KEEP_MS: u64 = 24 * 3600 * 1000;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let cutoff = fjord_queue::now_ms().saturating_sub(KEEP_MS);
            if let Err(e) = prune(cutoff).await {
                tracing::warn!(error = %e, "pruning finished async calls failed");
            }
        }
    })
}

/// Errors that stop `fjord serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin credentials: {0}")]
    Auth(std::io::Error),
    #[error("secrets key: {0}")]
    SecretsKey(std::io::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("state store: {0}")]
    Store(#[from] fjord_store::StoreError),
    #[error("runtime: {0}")]
    Runtime(#[from] fjord_runtime::RuntimeError),
    #[error(
        "cannot listen on {addr}: {source} (is another fjord serve running? pick another with --listen)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the dashboard: {source} (pick another address with --ui-listen, or --ui-listen off)"
    )]
    UiListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] fjord_control::ControlError),
    #[error("async queue: {0}")]
    Queue(#[from] fjord_queue::QueueError),
    #[error("containers: {0}")]
    Containers(String),
    #[error("--trust-policy: {0}")]
    TrustPolicy(#[from] fjord_trust::TrustError),
    #[error("{0}")]
    Connector(String),
    #[error(
        "--trust-policy: not supported with the {runtime} runtime yet (fjord verifies the signatures of images it pulls itself, and that runtime pulls its own); remove --trust-policy"
    )]
    TrustPolicyUnsupported { runtime: &'static str },
    #[error("{0} (each fjord instance on a host needs its own block of function uids)")]
    UidRegistry(#[from] fjord_store::uid_registry::RegistryError),
    #[error("async queue: {0}")]
    QueueKey(std::io::Error),
    #[error(
        "async queue {url}: {source} (is nats-server running there with JetStream, -js? or use --queue embedded)"
    )]
    QueueConnect {
        /// Without credentials.
        url: String,
        source: fjord_queue::QueueError,
    },
}

/// Which listener a router serves.
#[derive(Clone, Copy, Debug)]
enum Listener {
    /// Functions and the API; `/ui/…` redirects to the dashboard's port (`None`: off).
    Main { ui_port: Option<u16> },
    /// The dashboard: its pages, browser sessions, the API (session cookie accepted) and
    /// functions for its invoke console, sandboxed.
    Ui,
}

/// The router, built from [`routes::table`]: `/system` routes behind the auth middleware
/// (which checks each route's scope from the same table), `/metrics` behind its own.
#[cfg(test)]
fn router(state: AppState) -> Router {
    router_for(state, Listener::Main { ui_port: None })
}

fn router_for(state: AppState, listener: Listener) -> Router {
    let mut system = Router::new();
    let mut open = Router::new();
    for e in routes::table() {
        match e.access {
            routes::Access::System(_) => system = system.route(e.path, e.handler),
            routes::Access::Open => open = open.route(e.path, e.handler),
            routes::Access::Metrics => {
                open = open.route(
                    e.path,
                    e.handler.route_layer(axum::middleware::from_fn_with_state(
                        state.clone(),
                        guard::require_metrics,
                    )),
                )
            }
        }
    }
    let (system, dashboard) = match listener {
        Listener::Main { ui_port } => (
            system.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                guard::require,
            )),
            ui::redirects(ui_port),
        ),
        Listener::Ui => (
            system.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                guard::require_session,
            )),
            ui::router(),
        ),
    };
    let app = Router::new()
        .merge(system)
        .merge(open)
        .merge(dashboard)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed);
    // Only the dashboard's listener pays for the extra layer.
    let app = match listener {
        Listener::Main { .. } => app,
        Listener::Ui => app.layer(axum::middleware::from_fn(ui::sandbox)),
    };
    app.with_state(state)
}

/// Each connection and each replica's pipes use descriptors: lift the soft limit to the
/// hard one, and as root the hard one too (up to `fs.nr_open`, at most 1M): a host's default
/// hard limit (here 20,000) is what idle connections exhausted.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const WANT: u64 = 1 << 20;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut target = hard;
    if hard < WANT && nix::unistd::geteuid().is_root() {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(WANT);
        target = WANT.min(nr_open).max(hard);
    }
    if soft < target
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, target)
    {
        tracing::warn!(error = %e, soft, hard, wanted = target, "cannot raise the open-files limit (raising the hard limit needs CAP_SYS_RESOURCE; or set LimitNOFILE= in the service unit): --max-connections defaults to 3/4 of it");
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Longest a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the TLS certificate and key files are checked for changes.
const TLS_POLL: Duration = Duration::from_secs(2);

/// After start-up, when the binary's pages are released a second time.
const STARTUP_SETTLE: Duration = Duration::from_secs(2);

/// How often the server checks whether it is quiet enough to trim its heap.
const HEAP_TRIM_CHECK: Duration = Duration::from_secs(5);

/// How often each worker's [`keep_an_earlier_timer`] fires, at most.
const TIMER_FLOOR_PERIOD: Duration = Duration::from_secs(1);

/// A timer due sooner than any per-request one, for the worker's lifetime. tokio wakes its
/// own driver (an eventfd write, then one more epoll round) whenever a timer is set earlier
/// than all the others; hyper sets the header-read timeout anew for each request on a
/// connection, and with few connections that timer is each time the earliest. Measured at
/// c=1: ~15 µs of the gateway's added latency per request. With this one due within `period`
/// (no longer than the header timeout), those settings wake nothing.
async fn keep_an_earlier_timer(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// One HTTP worker: a thread with its own single-threaded runtime, listening socket
/// (SO_REUSEPORT) and connection pools, like one nginx worker. Nothing on the invoke path
/// crosses threads, so there are no cross-thread wake-ups per request.
#[derive(Clone)]
struct Worker {
    bind: SocketAddr,
    control: Arc<ControlPlane>,
    queue: Arc<dyn fjord_queue::Queue>,
    dispatch: Arc<tokio::sync::Notify>,
    config: Arc<GatewayConfig>,
    auth: Arc<auth::Auth>,
    tls: Option<Arc<tls::Tls>>,
    shutdown: CancellationToken,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, StartError>>,
    /// This worker's index in `limits`.
    index: usize,
    limits: Arc<conns::ConnLimits>,
    forks: Arc<conns::ForkLimits>,
    /// The dashboard's sessions, shared by every worker.
    sessions: Arc<ui::Sessions>,
    listener: Listener,
}

/// Starts `worker` on a thread of its own and waits for the address it bound; on failure
/// stops what started before it (`error` names the listener in the startup error).
fn spawn_worker(
    worker: Worker,
    name: String,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
    bound: &std::sync::mpsc::Receiver<Result<SocketAddr, StartError>>,
    error: impl Fn(std::io::Error) -> StartError,
) -> Result<SocketAddr, StartError> {
    let shutdown = worker.shutdown.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || worker.run())
        .map_err(&error)?;
    threads.push(thread);
    let fail = |e| {
        shutdown.cancel();
        Err(e)
    };
    match bound.recv() {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => fail(e),
        Err(_) => fail(error(std::io::Error::other("HTTP worker thread died"))),
    }
}

impl Worker {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(source) => {
                let _ = self.ready.send(Err(self.listen_error(source)));
                return;
            }
        };
        if let Some(t) = self.config.header_timeout {
            rt.spawn(keep_an_earlier_timer(t.min(TIMER_FLOOR_PERIOD)));
        }
        rt.block_on(self.serve());
    }

    fn listen_error(&self, source: std::io::Error) -> StartError {
        match self.listener {
            Listener::Main { .. } => StartError::Listen {
                addr: self.bind,
                source,
            },
            Listener::Ui => StartError::UiListen {
                addr: self.bind,
                source,
            },
        }
    }

    fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    }

    /// Limits on what a client may send before a request reaches a handler; set once per
    /// worker, so they cost nothing per request.
    fn connection_builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // The request head must fit the read buffer: beyond it hyper answers 431 (also with
        // more than 100 headers, hyper's default; setting max_headers would move every
        // request's header array to the heap). Bodies are streamed in reads of this size.
        http.http1()
            .max_buf_size(MAX_HEADER_BYTES)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.config.header_timeout);
        http.http2()
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .timer(hyper_util::rt::TokioTimer::new());
        http
    }

    async fn serve(self) {
        let listener = match Self::listen(self.bind) {
            Ok(l) => l,
            Err(source) => {
                let _ = self.ready.send(Err(self.listen_error(source)));
                return;
            }
        };
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(source) => {
                let _ = self.ready.send(Err(self.listen_error(source)));
                return;
            }
        };
        let state = AppState {
            control: self.control.clone(),
            queue: self.queue.clone(),
            dispatch: self.dispatch.clone(),
            config: self.config.clone(),
            shutdown: self.shutdown.clone(),
            auth: self.auth.clone(),
            forks: self.forks.clone(),
            sessions: self.sessions.clone(),
        };
        let app = router_for(state, self.listener);
        let _ = self.ready.send(Ok(local));

        let http = Arc::new(self.connection_builder());
        let first_bytes = self.config.header_timeout;
        loop {
            let (stream, remote) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let guard = match self.limits.admit(self.index, remote.ip()) {
                Ok(g) => g,
                Err(why) => {
                    tracing::debug!(client = %remote, ?why, "connection refused");
                    if self.tls.is_none() {
                        self.limits.refuse(stream, why);
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let svc = tower::ServiceExt::map_request(
                app.clone(),
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(remote));
                    req
                },
            );
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let http = http.clone();
            // Plain HTTP is served exactly as without TLS support: no extra boxing.
            let Some(tls) = &self.tls else {
                tokio::spawn(async move {
                    let closing = guard.entry.closing();
                    tokio::pin!(closing);
                    // hyper's header timeout starts once it knows the protocol: until the
                    // first bytes arrive, the connection would be held forever.
                    if let Some(t) = first_bytes {
                        let mut first = [0u8; 1];
                        tokio::select! {
                            // A peek: one recv(MSG_PEEK) when the request is already there.
                            r = tokio::time::timeout(t, stream.peek(&mut first)) => if !matches!(r, Ok(Ok(1))) { return },
                            _ = &mut closing => return,
                        }
                    }
                    let conn = http
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
                    serve_until_closed(conn, closing).await;
                });
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
            tokio::spawn(async move {
                let closing = guard.entry.closing();
                tokio::pin!(closing);
                // A client that never finishes its handshake must not hold the socket.
                let stream = tokio::select! {
                    r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match r {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %remote, "TLS handshake timed out");
                            return;
                        }
                    },
                    _ = &mut closing => return,
                };
                let conn =
                    http.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
                serve_until_closed(conn, closing).await;
            });
        }
        drop(listener);
        if tokio::time::timeout(self.config.shutdown_timeout, self.limits.drain(self.index))
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
}

/// Serves a connection until it ends; when asked to close (too many connections, or
/// shutdown), closes it gracefully: at once if idle, else after its current request.
async fn serve_until_closed<C, E>(conn: C, closing: Pin<&mut conns::Closing<'_>>)
where
    C: std::future::Future<Output = Result<(), E>> + GracefulClose,
{
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing => {}
    }
    conn.as_mut().close_gracefully();
    let _ = conn.await;
}

/// hyper-util's connection types, whose `graceful_shutdown` is inherent, not a trait.
trait GracefulClose {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulClose
    for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Refuses a data dir that cannot work, with why and what to do: one fjord cannot write, or
/// (not root, and functions run here: `runs_functions`) one on a `noexec` filesystem, where
/// functions run their bundle's programs from. As root the bundle's bind mount allows exec
/// whatever the data dir's mount says.
fn check_data_dir(dir: &std::path::Path, runs_functions: bool) -> std::io::Result<()> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let user = || {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name)
    };
    let created = std::fs::create_dir_all(dir);
    if let Err(e) = &created
        && e.kind() != std::io::ErrorKind::PermissionDenied
    {
        return created;
    }
    if created.is_err()
        || nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_err()
    {
        return Err(std::io::Error::other(format!(
            "is not writable by user {}; choose a data dir that user owns with --data-dir (or FJORD_DATA_DIR), or run fjord as the data dir's owner",
            user()
        )));
    }
    if runs_functions
        && !nix::unistd::geteuid().is_root()
        && statvfs(dir).is_ok_and(|s| s.flags().contains(FsFlags::ST_NOEXEC))
    {
        return Err(std::io::Error::other(
            "is on a filesystem mounted noexec, so functions could not run the programs in their bundles; choose a data dir on another filesystem with --data-dir (or FJORD_DATA_DIR)",
        ));
    }
    Ok(())
}

/// The container runtime and its image store, as `--containers` asks: `auto` runs them when
/// fjord is root and the OCI runtime is installed (else one log line says why not), `on`
/// refuses to start without them.
async fn containers(
    config: &GatewayConfig,
    process: &fjord_runtime::ProcessRuntime,
    data_dir: &std::path::Path,
) -> Result<Option<fjord_control::Containers>, StartError> {
    let c = &config.containers;
    if c.mode == ContainerMode::Off {
        return Ok(None);
    }
    // Each container function maps its image's users to its own 65,536 host ids, from a
    // block of the host-wide uid registry reserved on the first container function.
    const _: () = assert!(
        fjord_store::uid_registry::CONTAINER_RANGE == fjord_runtime::container::IDS_PER_FUNCTION
    );
    let id_block: fjord_runtime::container::IdBlockSource = {
        let data_dir = data_dir.to_path_buf();
        std::sync::Arc::new(move || {
            use fjord_store::uid_registry as reg;
            reg::reserve_containers(std::path::Path::new(reg::DEFAULT_REGISTRY_DIR), &data_dir)
                .map(|b| {
                    tracing::info!(ids = %b, "id ranges reserved for this instance's container functions");
                    (b.first, reg::CONTAINER_RANGES)
                })
                .map_err(|e| e.to_string())
        })
    };
    let runtime = match process
        .container(fjord_runtime::ContainerConfig {
            oci_runtime: c.oci_runtime.clone(),
            id_block: Some(id_block),
        })
        .await
    {
        Ok(r) => r,
        Err(e) if c.mode == ContainerMode::Auto => {
            tracing::info!(reason = %e, "container images will not run here (functions need envProcess or a bundle); --containers on makes this an error");
            return Ok(None);
        }
        Err(e) => return Err(StartError::Containers(e.to_string())),
    };
    let docker_config = c
        .registry_config
        .clone()
        .or_else(|| fjord_oci::default_docker_config().filter(|p| p.is_file()));
    if let Some(p) = &c.registry_config
        && !p.is_file()
    {
        return Err(StartError::Containers(format!(
            "--registry-config {}: no such file (a Docker config.json, as `docker login` writes)",
            p.display()
        )));
    }
    let store = fjord_oci::ImageStore::open(
        data_dir.join("images"),
        fjord_oci::StoreConfig {
            insecure: c.insecure_registries.clone(),
            docker_config,
            limits: fjord_oci::Limits {
                max_unpacked: c.max_layer_bytes,
                ..fjord_oci::Limits::default()
            },
        },
    )
    .map_err(|e| StartError::Containers(format!("image store: {e}")))?;
    tracing::info!(oci_runtime = %c.oci_runtime.display(), images = %data_dir.join("images").display(), "container images run here");
    Ok(Some(fjord_control::Containers {
        runtime: Arc::new(runtime),
        images: Arc::new(images::OciImages::new(Arc::new(store))),
    }))
}

/// Takes `<data-dir>/serve.lock` (an exclusive `flock`, with this server's pid in it), or
/// says which server holds it. The kernel drops the lock when the process ends, however.
///
/// A server killed with SIGKILL may hold the lock a little past its own death (a process
/// sharing its descriptor table: a replica's PID-namespace init in the microseconds before
/// it leaves fjord's table, see `PidNs`; the kernel still tearing the process down). So while
/// the recorded holder is gone (or a zombie), the lock is tried again for a few seconds
/// rather than refused: a restart right after a crash must not fail.
fn lock_data_dir(data_dir: &std::path::Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    const EXITING_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(data_dir.join("serve.lock"))?;
    let started = std::time::Instant::now();
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                lock.set_len(0)?;
                // From the start: a refused try above read the old holder's pid.
                (&*lock).rewind()?;
                (&*lock).write_all(format!("{}\n", std::process::id()).as_bytes())?;
                return Ok(lock);
            }
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                f.rewind()?;
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim().parse::<i32>().ok();
                let exiting = pid.is_some_and(|p| fjord_runtime::process_start(p).is_none());
                if exiting && started.elapsed() < EXITING_HOLDER_WAIT {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                let holder = match pid {
                    None => "another fjord serve".to_string(),
                    Some(p) if exiting => format!(
                        "processes of a fjord serve that ended (pid {p}; they did not exit in {} s)",
                        EXITING_HOLDER_WAIT.as_secs()
                    ),
                    Some(p) => format!("another fjord serve (pid {p})"),
                };
                return Err(std::io::Error::other(format!(
                    "is in use by {holder}: stop it, or give this server a data dir of its own with --data-dir"
                )));
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// Runs the gateway until `shutdown` is cancelled, then drains and stops every replica.
pub async fn serve(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let data_dir = &config.data_dir.clone();
    let dd_err = |source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    };
    // `--runtime kubernetes`: functions run elsewhere, none of this machine's runtimes start.
    let local = config.runtime.is_none();
    if let (Some(runtime), Some(_)) = (&config.runtime, &config.trust_policy) {
        return Err(StartError::TrustPolicyUnsupported {
            runtime: runtime.name(),
        });
    }
    check_data_dir(data_dir, local).map_err(dd_err)?;
    // Sandboxed functions get a private /tmp: under it they could not see their bundles.
    if local
        && nix::unistd::geteuid().is_root()
        && std::fs::canonicalize(data_dir)
            .map(|p| p.starts_with("/tmp"))
            .unwrap_or(false)
    {
        return Err(StartError::DataDir {
            path: data_dir.clone(),
            source: std::io::Error::other(
                "is under /tmp, which every function sees as its own private directory, so they could not reach their code there; choose a data dir elsewhere, e.g. --data-dir /var/lib/fjord",
            ),
        });
    }
    // Private: sandboxed functions see their bundle bound at /home/app in their own mount
    // namespace and never walk the data dir.
    std::fs::set_permissions(
        data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(dd_err)?;
    // Held until this server ends: a second server on the same data dir would remove this
    // one's replicas as "left by an earlier run" and share its state database.
    // On a blocking thread: it may wait (up to seconds) for a dead holder's lock.
    let _data_dir_lock = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || lock_data_dir(&dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(dd_err)?
    };

    let creds = if config.auth {
        let (creds, created) = auth::load_or_create(data_dir).map_err(StartError::Auth)?;
        let path = auth::password_path(data_dir);
        if created {
            tracing::info!(user = auth::ADMIN_USER, password_file = %path.display(), "generated the admin password for /system/*");
        } else {
            tracing::info!(user = auth::ADMIN_USER, password_file = %path.display(), "basic auth on /system/*");
        }
        Some(creds)
    } else {
        tracing::warn!(
            "--auth=false: /system/* is open to anyone who can reach {}",
            config.listen
        );
        None
    };

    let (secret_key, key_created) =
        SecretKey::load_or_create(data_dir).map_err(StartError::SecretsKey)?;
    if key_created {
        tracing::info!(key_file = %secrets_key_path(data_dir).display(), "generated the key that encrypts function secrets: back it up, without it stored secrets cannot be read");
    }
    // Before anything starts: a certificate that cannot be loaded is a startup error.
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(tls::Tls::new(files.clone())?)),
        None => None,
    };
    let store = fjord_store::Store::open(&data_dir.join("state.db"))?;
    let auth = Arc::new(auth::Auth {
        basic: creds,
        tokens: fjord_control::tokens::Tokens::load(&store)?,
        limiter: auth::FailLimiter::new(config.auth_fail_limit),
    });
    // Functions run as their own uids only as root; then those uids must be this instance's
    // alone on the host, or a function could read another instance's functions. Before the
    // runtime, like the queue: a failed start leaves nothing behind.
    let uids = if local && nix::unistd::geteuid().is_root() {
        let block = fjord_store::uid_registry::reserve(
            std::path::Path::new(fjord_store::uid_registry::DEFAULT_REGISTRY_DIR),
            data_dir,
        )?;
        tracing::info!(uids = %block, registry = fjord_store::uid_registry::DEFAULT_REGISTRY_DIR, "function uids reserved for this instance");
        block
    } else {
        fjord_store::uid_registry::UidBlock::unrestricted()
    };
    // Before the runtime: a queue that cannot be reached must not leave anything behind.
    let (queue, pruner, cron_claims) = open_queue(
        &config.queue,
        &config.nats,
        config.connectors.nats.is_some(),
        data_dir,
    )
    .await?;
    // Before the runtime too: a broker that cannot be reached is a startup error.
    let brokers = connectors::Brokers::connect(&config.connectors, &config.nats, data_dir).await?;
    // The one place the server picks its runtimes: the one it was given runs everything;
    // otherwise processes always, containers beside them when this server can run them
    // (`--containers`).
    let (runtimes, isolates) = match &config.runtime {
        Some(runtime) => {
            if config.containers.mode == ContainerMode::On {
                tracing::warn!(
                    runtime = runtime.name(),
                    "--containers on: ignored, every function runs on the given runtime"
                );
            }
            tracing::info!(
                runtime = runtime.name(),
                "every function runs on the {} runtime, from its image",
                runtime.name()
            );
            (
                fjord_control::Runtimes::Only(runtime.clone()),
                runtime.isolates(),
            )
        }
        None => {
            let process = fjord_runtime::ProcessRuntime::new(fjord_runtime::RuntimeConfig {
                data_dir: data_dir.clone(),
                rollout_timeout: config.rollout_timeout,
                stop_grace: Duration::from_secs(5),
                pids_max: config.pids_max,
                tune_kernel: config.tune_kernel,
                network: config.network.clone(),
                tmp_size_bytes: config.tmp_size,
                default_memory_bytes: config.default_memory_limit,
            })
            .await?;
            let containers = containers(&config, &process, data_dir).await?;
            let isolates = fjord_runtime_api::Runtime::isolates(&process);
            (
                fjord_control::Runtimes::Local {
                    process: Arc::new(process),
                    containers,
                },
                isolates,
            )
        }
    };
    let bundles = Bundles::new(data_dir, isolates).map_err(dd_err)?;
    let control = ControlPlane::from_parts(fjord_control::Parts {
        store,
        runtimes,
        bundles,
        secret_key,
        uids,
        switch_timeout: config.rollout_timeout,
    });
    let dispatch = Arc::new(tokio::sync::Notify::new());
    // Before restore: deploys from now on must pass the connectors' checks.
    control.add_deploy_check(Arc::new(brokers.checks()));
    // Before restore: stored functions are verified again under the policy.
    control.set_trust_policy(trust::policy(&config)?);
    let restored = control.restore().await?;
    if restored > 0 {
        tracing::info!(
            functions = restored,
            "restored functions from the state store"
        );
    }

    raise_nofile_limit();
    // SO_REUSEPORT would silently share the port with another fjord serve: refuse instead.
    if config.listen.port() != 0 {
        std::net::TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    }
    let ui_bind = config.ui_listen.resolve(config.listen);
    // SO_REUSEPORT would let both listeners share one port, each taking a random share of
    // the connections.
    if let Some(addr) = ui_bind
        && addr.port() != 0
        && addr.port() == config.listen.port()
    {
        return Err(StartError::UiListen {
            addr,
            source: std::io::Error::other("it is --listen's port; the dashboard needs its own"),
        });
    }
    let ui_bind = match ui_bind {
        Some(addr) if addr.port() != 0 => match std::net::TcpListener::bind(addr) {
            Ok(_) => Some(addr),
            // Only the default moves (a second server on the next port, say): an address
            // the operator named must be that one.
            Err(source) if config.ui_listen == UiListen::Default => {
                tracing::warn!(%addr, error = %source, "the dashboard's default port (--listen's + 1) is taken: it is served on a free port instead, written to <data-dir>/ui.addr (choose one with --ui-listen)");
                Some(SocketAddr::new(addr.ip(), 0))
            }
            Err(source) => return Err(StartError::UiListen { addr, source }),
        },
        other => other,
    };
    let config = Arc::new(config);
    let workers = config.workers.max(1);
    let max_connections = config
        .max_connections
        .unwrap_or_else(conns::default_max_connections);
    // One table per worker, the dashboard's included.
    let limits =
        conns::ConnLimits::new(workers + 1, max_connections, config.max_connections_per_ip);
    let forks = conns::ForkLimits::new(config.max_forks_per_function, config.max_forks_per_ip);
    tracing::info!(
        max_connections,
        per_address = config.max_connections_per_ip,
        "connection limits"
    );
    let sessions = Arc::new(ui::Sessions::new());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr, StartError>>();
    let mut threads = Vec::with_capacity(workers + 1);
    // What every worker shares; each gets its own bind address, index and listener.
    let template = Worker {
        bind: config.listen,
        control: control.clone(),
        queue: queue.clone(),
        dispatch: dispatch.clone(),
        config: config.clone(),
        auth: auth.clone(),
        tls: tls.clone(),
        shutdown: shutdown.clone(),
        ready: addr_tx.clone(),
        index: 0,
        limits: limits.clone(),
        forks: forks.clone(),
        sessions: sessions.clone(),
        listener: Listener::Ui,
    };
    // The dashboard first: the main listener's redirects need its port. One worker is
    // plenty for a few browsers.
    let ui_local = match ui_bind {
        None => None,
        Some(bind) => Some(spawn_worker(
            Worker {
                bind,
                index: workers,
                listener: Listener::Ui,
                ..template.clone()
            },
            "fjord-http-ui".into(),
            &mut threads,
            &addr_rx,
            |source| StartError::UiListen { addr: bind, source },
        )?),
    };
    let main = Listener::Main {
        ui_port: ui_local.map(|a| a.port()),
    };
    let mut local = config.listen;
    for i in 0..workers {
        // Every worker binds the port the first one got (SO_REUSEPORT), so port 0 works.
        let bind = local;
        local = spawn_worker(
            Worker {
                bind,
                index: i,
                listener: main,
                ..template.clone()
            },
            format!("fjord-http-{i}"),
            &mut threads,
            &addr_rx,
            |source| StartError::Listen { addr: bind, source },
        )?;
    }
    // Callbacks are never sent to this gateway itself (unless allowed), nor its dashboard.
    config.callback.set_listening(local);
    if let Some(ui) = ui_local {
        config.callback.set_dashboard(ui);
    }
    // Lets scripts and tests that asked for port 0 find the gateway (and, written first, its
    // dashboard).
    let scheme = if tls.is_some() { "https" } else { "http" };
    match ui_local {
        Some(ui) => {
            let _ = std::fs::write(data_dir.join("ui.addr"), ui.to_string());
            tracing::info!(addr = %ui, "dashboard on {scheme}://{ui}/ui/ (its own port: functions' pages cannot reach it)");
        }
        None => {
            let _ = std::fs::remove_file(data_dir.join("ui.addr"));
            tracing::info!("no dashboard (--ui-listen off)");
        }
    }
    let _ = std::fs::write(data_dir.join("gateway.addr"), local.to_string());
    tracing::info!(addr = %local, workers, data_dir = %data_dir.display(), "fjord serve listening on {scheme}://{local}");
    let tls_watch = tls.map(|t| tokio::spawn(t.watch(TLS_POLL)));

    let app = AppState {
        control: control.clone(),
        queue: queue.clone(),
        dispatch: dispatch.clone(),
        config: config.clone(),
        shutdown: shutdown.clone(),
        auth: auth.clone(),
        forks: forks.clone(),
        sessions: sessions.clone(),
    };
    // The triggers besides HTTP. A connector is one more entry here.
    let mut triggers: Vec<Box<dyn trigger::Trigger>> = vec![
        Box::new(async_calls::Dispatcher {
            queue: queue.clone(),
            app: app.clone(),
            keep_method: config.async_keep_method,
            exclusive: config.queue == QueueBackend::Embedded,
        }),
        Box::new(connectors::cron::CronTrigger {
            control: control.clone(),
            claims: cron_claims,
            clock: Arc::new(connectors::cron::SystemClock),
        }),
    ];
    triggers.extend(brokers.triggers(&control));
    if let Some(more) = &config.more_triggers {
        triggers.extend(more(&control));
    }
    let triggers = trigger::start(triggers, &invoke::Invoker::new(app), &shutdown);
    let autoscaler = {
        let control = control.clone();
        let interval = config.autoscale_interval;
        let defaults = fjord_control::autoscale::Defaults {
            zero_duration: config.scale_zero_duration,
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The only wall clock the decisions see.
                control.autoscale_tick(fjord_control::metrics::now_ms(), &defaults);
            }
        })
    };
    // The dashboard's graphs: every function's history, sampled on its own task.
    let history = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(fjord_control::history::INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                control.sample_history(fjord_control::metrics::now_ms());
            }
        })
    };
    // Start-up is over: its code need not stay mapped (see `fjord_runtime::memory`). Once
    // now, and once more when what start-up left running (the first ticks, restored
    // functions' rollouts, the other workers) has settled.
    let release = tokio::spawn(async {
        for wait in [Duration::ZERO, STARTUP_SETTLE] {
            tokio::time::sleep(wait).await;
            match tokio::task::spawn_blocking(fjord_runtime::memory::release_binary_pages).await {
                Ok(Ok(kb)) => {
                    tracing::debug!(resident_kib = kb, "released the binary's start-up pages")
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not release the binary's start-up pages")
                }
                Err(_) => {}
            }
        }
    });
    // The free heap a load leaves behind goes back to the kernel once the server is quiet.
    let trimmer = tokio::spawn(async {
        let mut trimmer = fjord_runtime::memory::HeapTrimmer::new();
        let mut tick = tokio::time::interval(HEAP_TRIM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (t, trimmed) = match tokio::task::spawn_blocking(move || {
                let trimmed = trimmer.tick();
                (trimmer, trimmed)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            trimmer = t;
            if let Some(bytes) = trimmed {
                tracing::debug!(
                    free_heap_kib = bytes / 1024,
                    "returned free heap to the kernel"
                );
            }
        }
    });
    shutdown.cancelled().await;
    trimmer.abort();
    release.abort();
    history.abort();
    autoscaler.abort();
    pruner.abort();
    if let Some(t) = tls_watch {
        t.abort();
    }
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: draining in-flight requests");
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
    for t in triggers {
        let _ = t.await;
    }
    control.shutdown().await;
    let _ = std::fs::remove_file(data_dir.join("gateway.addr"));
    let _ = std::fs::remove_file(data_dir.join("ui.addr"));
    tracing::info!("stopped");
    Ok(())
}

/// An app over the in-memory fake runtime, for in-process tests of the router, the invoker
/// and triggers (no processes, no root, no network).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct TestApp {
        pub app: AppState,
        pub runtime: Arc<fjord_runtime_api::fake::FakeRuntime>,
        pub password: String,
        _dir: tempfile::TempDir,
    }

    impl TestApp {
        pub async fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let data = dir.path().to_path_buf();
            let store = fjord_store::Store::open(&data.join("state.db")).expect("store");
            let runtime = fjord_runtime_api::fake::FakeRuntime::new();
            let bundles = Bundles::new(&data, false).expect("bundles");
            let (key, _) = SecretKey::load_or_create(&data).expect("secrets key");
            let queue =
                fjord_queue::sqlite::SqliteQueue::open(&data.join("queue.db")).expect("queue");
            let (creds, _) = auth::load_or_create(&data).expect("admin credentials");
            let password = std::fs::read_to_string(auth::password_path(&data))
                .expect("password file")
                .trim()
                .to_string();
            let auth = Arc::new(auth::Auth {
                basic: Some(creds),
                tokens: fjord_control::tokens::Tokens::load(&store).expect("tokens"),
                limiter: auth::FailLimiter::new(1000),
            });
            let control = ControlPlane::new(store, runtime.clone(), bundles, key);
            let config = GatewayConfig::new("127.0.0.1:0".parse().expect("addr"), data);
            let app = AppState {
                control,
                queue,
                dispatch: Arc::new(tokio::sync::Notify::new()),
                config: Arc::new(config),
                shutdown: CancellationToken::new(),
                auth,
                forks: conns::ForkLimits::new(64, 64),
                sessions: Default::default(),
            };
            Self {
                app,
                runtime,
                password,
                _dir: dir,
            }
        }

        pub fn router(&self) -> Router {
            router(self.app.clone())
        }

        /// Deploys a function on the fake runtime (see its docs for `image` conventions).
        pub async fn deploy(&self, name: &str, image: &str, marker: &str) {
            let d: fjord_core::openfaas::FunctionDeployment =
                serde_json::from_value(serde_json::json!({
                    "service": name, "image": image, "envProcess": "fake",
                    "envVars": {"MARKER": marker},
                }))
                .expect("a deployment");
            self.app
                .control
                .deploy(d, DeployMode::CreateOrUpdate)
                .await
                .expect("deploy");
        }
    }
}

#[cfg(test)]
mod data_dir_lock_tests {
    use super::lock_data_dir;
    use std::io::Write as _;

    /// The lock as another server holds it: a second open file description, with `pid`
    /// recorded in it.
    fn hold(dir: &std::path::Path, pid: u32) -> nix::fcntl::Flock<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("serve.lock"))
            .unwrap();
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        (&*lock).write_all(format!("{pid}\n").as_bytes()).unwrap();
        lock
    }

    #[test]
    fn a_running_holder_is_named_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let _held = hold(dir.path(), std::process::id());
        let t0 = std::time::Instant::now();
        let e = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("another fjord serve (pid {})", std::process::id())),
            "{e}"
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(2), "waited");
    }

    /// A server killed with SIGKILL: its pid is gone, but processes that shared its
    /// descriptors keep the lock until they end a moment later.
    #[test]
    fn a_dead_holders_lock_is_awaited_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = gone.id();
        gone.wait().unwrap();
        let held = hold(dir.path(), dead_pid);
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let lock = lock_data_dir(dir.path()).expect("the lock, once released");
        release.join().unwrap();
        let recorded = std::fs::read_to_string(dir.path().join("serve.lock")).unwrap();
        assert_eq!(recorded.trim(), std::process::id().to_string());
        drop(lock);
    }
}
