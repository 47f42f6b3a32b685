//! A function's reconciler: the one task that starts, scales, rolls and stops its replicas,
//! and publishes the ready ones to the gateway's snapshot.

use std::sync::Arc;
use std::time::Duration;

use fjord_core::FunctionSpec;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::replica::{self, Event, Launch, ReplicaArgs};
use crate::{Endpoint, FunctionHandle, RolloutResult, RolloutState, Serving, Shared};

/// How long a replica being retired may keep finishing its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A new version whose replica ends this many times in a row before it was ever ready has
/// failed: waiting out `--rollout-timeout` would only delay the answer.
pub(crate) const CRASH_LOOP_STARTS: u32 = 3;

pub(crate) enum Command {
    Apply {
        spec: Arc<FunctionSpec>,
        launch: Launch,
        replicas: u64,
        /// Numbered by [`crate::Engine::apply`].
        generation: u64,
        done: oneshot::Sender<RolloutResult>,
    },
    Scale(u64),
    Stop {
        remove: bool,
        done: oneshot::Sender<()>,
    },
}

struct Replica {
    id: Arc<str>,
    endpoint: Option<Arc<Endpoint>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Generation {
    id: u64,
    spec: Arc<FunctionSpec>,
    launch: Launch,
    replicas: Vec<Replica>,
    /// The function's network namespace, shared by its replicas and kept across versions
    /// while `com.fjord.network` stays the same.
    net: Arc<crate::FunctionNet>,
}

impl Generation {
    fn find(&mut self, generation: u64, id: &str) -> Option<&mut Replica> {
        if self.id != generation {
            return None;
        }
        self.replicas.iter_mut().find(|r| &*r.id == id)
    }

    fn all_ready(&self, desired: u64) -> bool {
        self.replicas.len() as u64 == desired && self.replicas.iter().all(|r| r.endpoint.is_some())
    }
}

struct Pending {
    generation: Generation,
    deadline: Instant,
    done: Option<oneshot::Sender<RolloutResult>>,
    /// The last replica that went down, and why.
    last_reason: Option<(Arc<str>, String)>,
}

struct Reconciler {
    handle: Arc<FunctionHandle>,
    shared: Arc<Shared>,
    uid: u32,
    current: Option<Generation>,
    pending: Option<Pending>,
    events_tx: crate::mailbox::Sender<Event>,
}

pub(crate) fn spawn(
    handle: Arc<FunctionHandle>,
    shared: Arc<Shared>,
    uid: u32,
    commands: crate::mailbox::Receiver<Command>,
) {
    let (events_tx, events_rx) = crate::mailbox::unbounded();
    let control = shared.control.clone();
    let r = Reconciler {
        handle,
        shared,
        uid,
        current: None,
        pending: None,
        events_tx,
    };
    control.spawn(r.run(commands, events_rx));
}

impl Reconciler {
    async fn run(
        mut self,
        mut commands: crate::mailbox::Receiver<Command>,
        mut events: crate::mailbox::Receiver<Event>,
    ) {
        loop {
            let deadline = self.pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Apply { spec, launch, replicas, generation, done }) => {
                        self.apply(spec, launch, replicas, generation, done)
                    }
                    Some(Command::Scale(n)) => self.scale(n),
                    Some(Command::Stop { remove, done }) => {
                        self.stop_all(remove).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop_all(false).await;
                        return;
                    }
                },
                Some(ev) = events.recv() => self.on_event(ev),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let last = self.pending.as_ref().and_then(|p| p.last_reason.as_ref());
                    let why = format!(
                        "its replicas were not ready within {} s{}",
                        self.shared.config.rollout_timeout.as_secs(),
                        last.map(|(_, r)| format!(" ({r})")).unwrap_or_default()
                    );
                    self.rollout_failed(why);
                }
            }
            self.report();
        }
    }

    /// Updates the latest deploy's replica counts, and marks it ready once all its
    /// replicas are ready and it is the version serving.
    fn report(&self) {
        let desired = self.desired();
        let mut r = self.handle.rollout();
        let g = [
            self.pending.as_ref().map(|p| &p.generation),
            self.current.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|g| g.id == r.generation);
        let Some(g) = g else { return };
        r.replicas = g.replicas.len() as u64;
        r.ready = g.replicas.iter().filter(|x| x.endpoint.is_some()).count() as u64;
        let serving = self.current.as_ref().is_some_and(|c| c.id == g.id);
        if serving && r.state != RolloutState::Ready && g.all_ready(desired) {
            r.state = RolloutState::Ready;
            r.message = None;
            r.failed_replica = None;
        }
    }

    fn desired(&self) -> u64 {
        self.handle.desired()
    }

    fn start_replica(&self, generation: &Generation) -> Replica {
        let id: Arc<str> = Arc::from(format!(
            "{}-{:06x}",
            self.handle.key.name,
            rand::random::<u32>() & 0xff_ffff
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(replica::run(ReplicaArgs {
            shared: self.shared.clone(),
            handle: self.handle.clone(),
            spec: generation.spec.clone(),
            launch: generation.launch.clone(),
            generation: generation.id,
            id: id.clone(),
            uid: self.uid,
            net: generation.net.clone(),
            events: self.events_tx.clone(),
            stop: stop.clone(),
        }));
        Replica {
            id,
            endpoint: None,
            stop,
            task,
        }
    }

    fn new_generation(
        &mut self,
        spec: Arc<FunctionSpec>,
        launch: Launch,
        replicas: u64,
        id: u64,
    ) -> Generation {
        let net = match &self.current {
            Some(c) if c.spec.outbound_network == spec.outbound_network => c.net.clone(),
            _ => Arc::default(),
        };
        let mut g = Generation {
            id,
            spec,
            launch,
            replicas: Vec::new(),
            net,
        };
        for _ in 0..replicas {
            let r = self.start_replica(&g);
            g.replicas.push(r);
        }
        g
    }

    fn apply(
        &mut self,
        spec: Arc<FunctionSpec>,
        launch: Launch,
        replicas: u64,
        generation: u64,
        done: oneshot::Sender<RolloutResult>,
    ) {
        self.handle.set_desired(replicas);
        self.handle.logs.set_report_requests(
            spec.deployment
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::logs::ANNOTATION_LOG_REQUESTS))
                .is_some_and(|v| v.trim() == "true"),
        );
        if let Some(old) = self.pending.take() {
            if let Some(d) = old.done {
                let _ = d.send(Err("superseded by a newer update".into()));
            }
            stop_generation(old.generation, false);
        }
        if self.current.is_none() {
            let g = self.new_generation(spec, launch, replicas, generation);
            self.current = Some(g);
            self.publish();
            let _ = done.send(Ok(()));
            return;
        }
        let g = self.new_generation(spec, launch, replicas, generation);
        self.pending = Some(Pending {
            generation: g,
            deadline: Instant::now() + self.shared.config.rollout_timeout,
            done: Some(done),
            last_reason: None,
        });
        self.maybe_promote();
    }

    fn scale(&mut self, n: u64) {
        self.handle.set_desired(n);
        if let Some(mut g) = self.current.take() {
            self.resize(&mut g, n, true);
            self.current = Some(g);
        }
        if let Some(mut p) = self.pending.take() {
            self.resize(&mut p.generation, n, false);
            self.pending = Some(p);
        }
        // Publishing also wakes requests waiting for a replica, so they fail fast when
        // scaled to zero.
        self.publish();
        self.maybe_promote();
    }

    fn resize(&self, g: &mut Generation, n: u64, drain: bool) {
        while (g.replicas.len() as u64) < n {
            let r = self.start_replica(g);
            g.replicas.push(r);
        }
        while g.replicas.len() as u64 > n {
            // Retire not-ready replicas first, then the newest.
            let idx = g
                .replicas
                .iter()
                .rposition(|r| r.endpoint.is_none())
                .unwrap_or(g.replicas.len() - 1);
            let r = g.replicas.remove(idx);
            retire(r, drain);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready {
                generation,
                id,
                endpoint,
            } => {
                if let Some(r) = self.current.as_mut().and_then(|g| g.find(generation, &id)) {
                    r.endpoint = Some(endpoint);
                    self.publish();
                } else if let Some(r) = self
                    .pending
                    .as_mut()
                    .and_then(|p| p.generation.find(generation, &id))
                {
                    r.endpoint = Some(endpoint);
                    self.maybe_promote();
                }
            }
            Event::Down {
                generation,
                id,
                reason,
                startup_failures,
                retrying,
            } => {
                let gave_up = !retrying || startup_failures >= CRASH_LOOP_STARTS;
                let why = if retrying {
                    format!(
                        "replica {id} crashed {startup_failures} times before becoming ready (last: {reason})"
                    )
                } else {
                    format!("replica {id}: {reason}")
                };
                if let Some(r) = self.current.as_mut().and_then(|g| g.find(generation, &id)) {
                    r.endpoint = None;
                    self.handle
                        .set_last_error(Some(format!("replica {id}: {reason}")));
                    self.publish();
                    // A first deploy that cannot start: nothing older to keep, so its
                    // replicas keep retrying, but the deploy is reported as failed.
                    let mut r = self.handle.rollout();
                    if gave_up && r.generation == generation && r.state == RolloutState::Progressing
                    {
                        let msg = format!(
                            "image {} failed to start: {why}; fjord keeps retrying",
                            self.handle.spec().deployment.image
                        );
                        r.state = RolloutState::Failed;
                        r.message = Some(msg.clone());
                        r.failed_replica = Some(id.to_string());
                        drop(r);
                        self.handle.set_last_error(Some(msg));
                    }
                } else if let Some(p) = self.pending.as_mut()
                    && let Some(r) = p.generation.find(generation, &id)
                {
                    r.endpoint = None;
                    p.last_reason = Some((id.clone(), format!("replica {id}: {reason}")));
                    if gave_up {
                        self.rollout_failed(why);
                    }
                }
            }
        }
    }

    /// Publishes the current generation's ready replicas to the gateway.
    fn publish(&self) {
        let Some(g) = &self.current else { return };
        let endpoints: Vec<Arc<Endpoint>> = g
            .replicas
            .iter()
            .filter_map(|r| r.endpoint.clone())
            .collect();
        self.handle.publish(Serving {
            spec: g.spec.clone(),
            endpoints,
        });
    }

    /// Shifts traffic to the pending generation once all its replicas are ready.
    fn maybe_promote(&mut self) {
        let desired = self.desired();
        let Some(p) = &self.pending else { return };
        if !p.generation.all_ready(desired) {
            return;
        }
        let Some(mut p) = self.pending.take() else {
            return;
        };
        let image = p.generation.spec.deployment.image.clone();
        let old = self.current.replace(p.generation);
        self.publish();
        self.handle.set_last_error(None);
        let msg = format!("fjord: updated to image {image}; {desired} replica(s) ready");
        self.handle.logs.push(&Arc::from("fjord"), &msg);
        tracing::info!(function = %self.handle.qualified, image, "update rolled out");
        if let Some(d) = p.done.take() {
            let _ = d.send(Ok(()));
        }
        if let Some(old) = old {
            stop_generation(old, true);
        }
    }

    /// Abandons the pending update (`why`: what went wrong); the current version keeps serving.
    fn rollout_failed(&mut self, why: String) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        let msg = format!(
            "update to image {} failed: {why}; the previous version keeps serving",
            p.generation.spec.deployment.image,
        );
        {
            // Still `progressing`: the control plane marks it failed once it has rolled back
            // its stored state ([`FunctionHandle::rolled_back`]), so a client that sees
            // `failed` and restarts the server gets the old version.
            let mut r = self.handle.rollout();
            if r.generation == p.generation.id {
                r.message = Some(msg.clone());
                r.failed_replica = p.last_reason.as_ref().map(|(id, _)| id.to_string());
            }
        }
        tracing::warn!(function = %self.handle.qualified, "{msg}");
        self.handle
            .logs
            .push(&Arc::from("fjord"), &format!("fjord: {msg}"));
        self.handle.set_last_error(Some(msg.clone()));
        if let Some(cur) = &self.current {
            self.handle.set_desired(cur.replicas.len() as u64);
        }
        if let Some(d) = p.done.take() {
            let _ = d.send(Err(msg));
        }
        stop_generation(p.generation, false);
    }

    async fn stop_all(&mut self, remove: bool) {
        let mut replicas = Vec::new();
        if let Some(g) = self.current.take() {
            replicas.extend(g.replicas);
        }
        if let Some(p) = self.pending.take() {
            replicas.extend(p.generation.replicas);
        }
        let spec = self.handle.spec();
        self.handle.publish(Serving {
            spec,
            endpoints: Vec::new(),
        });
        // In-flight requests finish first: a function that moves to another runtime, or
        // is deleted, does not cut off the calls it already accepted. (At shutdown the
        // gateway has drained them already, with its own timeout.)
        if remove {
            futures_util::future::join_all(replicas.iter().map(|r| drain(r.endpoint.as_ref())))
                .await;
        }
        for r in &replicas {
            r.stop.cancel();
        }
        for r in replicas {
            let _ = r.task.await;
        }
        if remove {
            self.handle.logs.remove_files();
        }
    }
}

/// Stops a replica; with `drain`, first lets its in-flight requests finish.
fn retire(r: Replica, drain: bool) {
    tokio::spawn(async move {
        if drain {
            self::drain(r.endpoint.as_ref()).await;
        }
        r.stop.cancel();
        let _ = r.task.await;
    });
}

/// Waits until a replica that left the published endpoints has no request in flight
/// (at most `DRAIN_TIMEOUT`).
async fn drain(endpoint: Option<&Arc<Endpoint>>) {
    let Some(ep) = endpoint else { return };
    // A request may have picked this replica just before it left the snapshot.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while ep.inflight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stop_generation(g: Generation, drain: bool) {
    for r in g.replicas {
        retire(r, drain);
    }
}

/// The reconciler's decisions — start, publish, roll out, roll back, scale, time out — over
/// scripted replicas that touch nothing of the OS (no processes, mounts, cgroups or network
/// namespaces; no root), on tokio's paused clock where time matters.
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use fjord_core::openfaas::FunctionDeployment;
    use fjord_runtime_api::EndpointKind;

    use super::*;
    use crate::{Engine, RuntimeConfig, Sandbox};

    /// What a scripted replica does once started.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Act {
        /// Ready at once.
        Ready,
        /// Ends before it is ready, again and again (a crash loop).
        Crash,
        /// Never ready, never ends (a replica that hangs).
        Hang,
    }

    /// A version's replicas, as a script; counts what happened to them.
    pub(crate) struct Script {
        act: Act,
        started: AtomicUsize,
        stopped: AtomicUsize,
    }

    impl Script {
        fn new(act: Act) -> Arc<Self> {
            Arc::new(Self {
                act,
                started: AtomicUsize::new(0),
                stopped: AtomicUsize::new(0),
            })
        }

        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }

        fn stopped(&self) -> usize {
            self.stopped.load(Ordering::SeqCst)
        }

        /// The replica: reports to the reconciler as a real one would, then waits to stop.
        pub(crate) async fn run(self: Arc<Self>, args: ReplicaArgs) {
            self.started.fetch_add(1, Ordering::SeqCst);
            match self.act {
                Act::Ready => {
                    let endpoint = Endpoint::new(
                        args.id.clone(),
                        EndpointKind::Http {
                            authority: "127.0.0.1:9".parse().expect("authority"),
                        },
                        None,
                    );
                    let _ = args.events.send(Event::Ready {
                        generation: args.generation,
                        id: args.id.clone(),
                        endpoint: Arc::new(endpoint),
                    });
                }
                Act::Crash => {
                    for n in 1..=CRASH_LOOP_STARTS {
                        let _ = args.events.send(Event::Down {
                            generation: args.generation,
                            id: args.id.clone(),
                            reason: "exited with status 1".into(),
                            startup_failures: n,
                            retrying: true,
                        });
                    }
                }
                Act::Hang => {}
            }
            args.stop.cancelled().await;
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An engine whose sandbox does nothing (as for a server that is not root).
    fn engine(dir: &std::path::Path) -> Engine {
        let shared = Arc::new(Shared {
            config: RuntimeConfig {
                data_dir: dir.to_path_buf(),
                rollout_timeout: Duration::from_secs(60),
                stop_grace: Duration::from_secs(1),
                pids_max: 64,
                tune_kernel: false,
                network: Default::default(),
                tmp_size_bytes: 1 << 20,
                default_memory_bytes: None,
            },
            restore_rcu: false,
            control: tokio::runtime::Handle::current(),
            sandbox: Sandbox {
                isolate: false,
                cgroups: None,
                net: None,
                masks: None,
                seccomp: None,
                max_fd: 1024,
            },
            ports: Default::default(),
        });
        Engine::new(shared, "test")
    }

    fn spec(image: &str) -> Arc<FunctionSpec> {
        let d: FunctionDeployment = serde_json::from_value(serde_json::json!({
            "service": "f", "image": image, "envProcess": "true",
        }))
        .expect("deployment");
        Arc::new(FunctionSpec::from_deployment(d).expect("spec"))
    }

    fn key() -> fjord_core::FunctionKey {
        fjord_core::FunctionKey::new("f", None).expect("key")
    }

    /// Waits (on the test's clock) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn serving(engine: &Engine) -> (String, usize) {
        let s = engine.get(&key()).expect("handle").serving();
        (s.spec.deployment.image.clone(), s.endpoints.len())
    }

    fn apply(engine: &Engine, image: &str, script: &Arc<Script>, n: u64) -> crate::Applied {
        engine
            .apply(spec(image), Launch::Scripted(script.clone()), 0, n)
            .expect("apply")
    }

    /// Applies `image` with `n` replicas and waits until that rollout succeeded.
    async fn ready(engine: &Engine, image: &str, script: &Arc<Script>, n: u64) {
        let done = apply(engine, image, script, n).done.await.expect(image);
        assert_eq!(done, Ok(()), "{image} ready");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_function_starts_its_replicas_and_publishes_them() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let v1 = Script::new(Act::Ready);
        let a = apply(&e, "v1", &v1, 2);
        assert_eq!(a.done.await.expect("done"), Ok(()));
        assert_eq!(serving(&e), ("v1".into(), 2));
        assert_eq!(v1.started(), 2);
        let status = e.get(&key()).expect("handle").status();
        assert_eq!(status.rollout.state, RolloutState::Ready);
        assert_eq!((status.desired, status.available), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_update_replaces_every_old_replica_after_the_new_ones_are_ready() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let (v1, v2) = (Script::new(Act::Ready), Script::new(Act::Ready));
        ready(&e, "v1", &v1, 2).await;
        let a = apply(&e, "v2", &v2, 2);
        assert_eq!(a.done.await.expect("done"), Ok(()));
        assert_eq!(serving(&e), ("v2".into(), 2));
        until("the old replicas stopped", || v1.stopped() == 2).await;
        assert_eq!(v2.stopped(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_that_crash_loops_is_rolled_back_and_the_old_replicas_serve_on() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let (v1, v2) = (Script::new(Act::Ready), Script::new(Act::Crash));
        ready(&e, "v1", &v1, 2).await;
        let a = apply(&e, "v2", &v2, 2);
        let why = a.done.await.expect("done").expect_err("v2 fails");
        assert!(why.contains("crashed 3 times"), "{why}");
        assert_eq!(serving(&e), ("v1".into(), 2));
        until("the failed version's replicas stopped", || {
            v2.started() > 0 && v2.stopped() == v2.started()
        })
        .await;
        assert_eq!(v1.stopped(), 0, "the old version was never touched");
        // Still `progressing` with the reason: the control plane marks it failed once it has
        // rolled its stored state back (FunctionHandle::rolled_back).
        let h = e.get(&key()).expect("handle");
        let r = h.status().rollout;
        assert_eq!(r.state, RolloutState::Progressing);
        assert!(
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("the previous version keeps serving")),
            "{:?}",
            r.message
        );
        assert_eq!(h.desired(), 2, "the desired count is the old version's");
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_that_never_gets_ready_fails_at_the_rollout_timeout() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let (v1, v2) = (Script::new(Act::Ready), Script::new(Act::Hang));
        ready(&e, "v1", &v1, 1).await;
        let started = Instant::now();
        let why = apply(&e, "v2", &v2, 1)
            .done
            .await
            .expect("done")
            .expect_err("v2 times out");
        assert!(why.contains("not ready within 60 s"), "{why}");
        // The paused clock jumped to the deadline: no real minute was waited.
        assert!(started.elapsed() >= Duration::from_secs(60));
        assert_eq!(serving(&e), ("v1".into(), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_starts_and_stops_replicas_down_to_zero_and_back() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let v1 = Script::new(Act::Ready);
        ready(&e, "v1", &v1, 1).await;
        e.scale(&key(), 3).expect("scale up");
        until("3 replicas serve", || serving(&e).1 == 3).await;
        e.scale(&key(), 0).expect("scale to zero");
        until("no replica serves and all stopped", || {
            serving(&e).1 == 0 && v1.stopped() == 3
        })
        .await;
        e.scale(&key(), 1).expect("back from zero");
        until("one replica serves again", || serving(&e).1 == 1).await;
        assert_eq!(v1.started(), 4);
        e.remove(&key()).await.expect("remove");
        assert_eq!(v1.stopped(), 4, "remove returns once every replica stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn remove_lets_requests_in_flight_finish_before_it_stops_the_replicas() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let v1 = Script::new(Act::Ready);
        ready(&e, "v1", &v1, 1).await;
        let handle = e.get(&key()).expect("handle");
        // A call picked the replica just before the function moved elsewhere or was deleted.
        let (_, call) = handle.pick().expect("a ready replica");
        let started = Instant::now();
        let finish_call = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(v1.stopped(), 0, "stopped under a request in flight");
            drop(call);
        };
        let k = key();
        let (removed, ()) = tokio::join!(e.remove(&k), finish_call);
        removed.expect("remove");
        assert_eq!(v1.stopped(), 1);
        assert!(
            started.elapsed() < DRAIN_TIMEOUT,
            "waited for the call, not the timeout"
        );
    }
}
