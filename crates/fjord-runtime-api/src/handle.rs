//! A function's runtime state as the gateway reads it: the version that serves, its ready
//! endpoints (a lock-free snapshot), replica counts, rollout progress. Runtimes write it
//! through the `publish_*`/`set_*`/`count_*` methods; the invoke path only reads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use fjord_core::{FunctionKey, FunctionSpec};
use http::{HeaderMap, Method, Response};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::Notify;

use crate::BoxFuture;
use crate::body::Prefetched;
use crate::logs::LogBook;

/// The request body an in-process replica gets (read ahead, see [`crate::body::prefetch`]).
pub type InProcessRequestBody = Prefetched<InProcessRequestSource>;

/// A request body before it is read ahead.
pub type InProcessRequestSource = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The response body of an in-process call.
pub type InProcessBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The parts of a request an in-process replica sees.
pub struct InProcessRequest<'a> {
    pub method: &'a Method,
    /// The path after the function's name, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: InProcessRequestBody,
}

/// A replica the gateway calls directly instead of over HTTP (fork mode: one process per
/// request, as the classic watchdog does).
pub trait InProcess: Send + Sync {
    fn call<'a>(
        &'a self,
        handle: &'a FunctionHandle,
        serving: &'a Serving,
        req: InProcessRequest<'a>,
    ) -> BoxFuture<'a, Response<InProcessBody>>;
}

/// Reads a replica's resource use (for the CPU autoscaling rule).
pub trait CpuProbe: Send + Sync {
    /// CPU time the replica used so far (ns), when the runtime can tell.
    fn cpu_usage_ns(&self) -> Option<u64>;
    /// Memory the replica uses now (bytes), when the runtime can tell (the dashboard's graph).
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Where requests for one ready replica go.
pub enum EndpointKind {
    /// An HTTP replica the gateway proxies to. The authority may be a runtime-specific name
    /// the gateway's connector resolves (the process runtime's `n<netns id>:port`).
    Http { authority: http::uri::Authority },
    /// A replica called in process.
    InProcess(Arc<dyn InProcess>),
}

/// A ready replica as the gateway sees it.
pub struct Endpoint {
    pub replica: Arc<str>,
    pub kind: EndpointKind,
    inflight: AtomicUsize,
    probe: Option<Arc<dyn CpuProbe>>,
}

impl Endpoint {
    pub fn new(replica: Arc<str>, kind: EndpointKind, probe: Option<Arc<dyn CpuProbe>>) -> Self {
        Self {
            replica,
            kind,
            inflight: AtomicUsize::new(0),
            probe,
        }
    }

    /// CPU time the replica used so far (ns), when the runtime can tell.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        self.probe.as_ref().and_then(|p| p.cpu_usage_ns())
    }

    /// Memory the replica uses now (bytes), when the runtime can tell.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.probe.as_ref().and_then(|p| p.memory_bytes())
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
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// A function's runtime state, shared by its runtime (writer) and the gateway (reader).
pub struct FunctionHandle {
    pub key: FunctionKey,
    /// `name.namespace`, for logs and metrics.
    pub qualified: Arc<str>,
    pub logs: Arc<LogBook>,
    /// The runtime that runs it (`process`, `container`, …).
    pub runtime: &'static str,
    serving: ArcSwap<Serving>,
    ready: Notify,
    next: AtomicUsize,
    desired: AtomicU64,
    restarts: AtomicU64,
    oom_kills: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Generations handed out by [`begin_rollout`](Self::begin_rollout) (one per deploy).
    generations: AtomicU64,
    /// The latest deploy's progress (status API only, never the invoke path).
    rollout: Mutex<Rollout>,
    /// The memory limit enforced on functions without `limits.memory`, if any.
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
    /// A handle serving `spec` with no ready replica yet, `replicas` desired.
    pub fn new(
        spec: Arc<FunctionSpec>,
        replicas: u64,
        logs: Arc<LogBook>,
        runtime: &'static str,
        default_memory: Option<u64>,
    ) -> Self {
        let key = spec.key.clone();
        Self {
            qualified: Arc::from(key.to_string()),
            key,
            logs,
            runtime,
            serving: ArcSwap::from_pointee(Serving {
                spec,
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
            default_memory,
        }
    }

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

    /// Records a new desired count (the runtime's `scale`).
    pub fn set_desired(&self, replicas: u64) {
        self.desired.store(replicas, Ordering::Relaxed);
    }

    /// CPU time used so far by the ready replicas, in ns (`None` if the runtime cannot tell).
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

    /// Memory used now by the ready replicas, in bytes (`None` if the runtime cannot tell).
    pub fn memory_bytes(&self) -> Option<u64> {
        let serving = self.serving.load();
        serving
            .endpoints
            .iter()
            .filter_map(|e| e.memory_bytes())
            .reduce(|a, b| a + b)
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

    /// The version that serves and its ready endpoints.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Makes `serving` the version that takes traffic, and wakes requests waiting for a
    /// ready replica.
    pub fn publish(&self, serving: Serving) {
        self.serving.store(Arc::new(serving));
        self.ready.notify_waiters();
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

    /// The latest deploy's progress, for its runtime to update.
    pub fn rollout(&self) -> std::sync::MutexGuard<'_, Rollout> {
        self.rollout.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Numbers a new deploy and marks it progressing before the runtime works on it, so a
    /// client polling right after the deploy never reads the previous one's state.
    pub fn begin_rollout(&self, replicas: u64) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.rollout() = Rollout {
            generation,
            replicas,
            ..Rollout::default()
        };
        generation
    }

    /// Marks the update `generation` failed, once its caller has rolled back what it stored
    /// (the runtime has already stopped its replicas).
    pub fn rolled_back(&self, generation: u64) {
        let mut r = self.rollout();
        if r.generation == generation {
            r.state = RolloutState::Failed;
        }
    }

    pub fn count_oom_kill(&self) {
        self.oom_kills.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}
