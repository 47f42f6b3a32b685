//! The NATS JetStream backend: several fjord processes share one queue through one NATS
//! server or cluster. Enabled by the `nats` feature.
//!
//! What lives where, for a prefix `P` (default [`DEFAULT_PREFIX`]) and `p`, its lower case:
//!
//! - Stream `P_CALLS` (subjects `p.calls.<function>`, work-queue retention, file storage): one
//!   message per call waiting or running, carrying the whole request (a JSON metadata line,
//!   `\n`, the raw body). It is published with `Nats-Msg-Id` = the call's key, so a publish
//!   retried within the stream's duplicate window (2 minutes) is stored once. Each function
//!   has a durable pull consumer (explicit ack, unlimited deliveries: fjord decides when a
//!   call is dead), created on the first claim; work-queue retention removes a message once
//!   it is acknowledged.
//! - Key-value bucket `P_CALL_STATE`: each call's [`CallRecord`] (JSON) under its key. It is
//!   the truth about states, attempts and outcomes; every change is a compare-and-set on the
//!   key's revision, so two processes racing on one call (a claim and a cancel, say) never
//!   both win.
//! - Stream `P_DEAD` (subjects `p.dead.<call>`): the requests of dead-lettered calls, for
//!   [`replay`](Queue::replay).
//!
//! Integrity (`nats/integrity.rs`): whoever can publish to NATS could otherwise queue a call
//! fjord runs (any function, any headers, any callback). Each call's message carries an
//! HMAC-SHA256 ([`QueueKey`]) over everything that decides what runs and where its result
//! goes: id, function, creation time, method, path, query, headers, callback URL and body;
//! each record carries one over its JSON and its key (so its state, attempts and the message
//! it points at cannot be edited). A message whose MAC is missing or wrong, or that sits on
//! another function's subject, or whose record was edited, is never run: the call is
//! dead-lettered with an "integrity check failed" reason and nothing goes to its callback. A
//! genuine message put back after its record is gone is adopted only if it is younger than
//! 10 minutes. Every fjord server sharing the queue needs the same key: the first
//! to start records the key's id and MAC under `_fjord.queue-key` in the bucket, and a server
//! with another key refuses to start. The MACs do not hide requests from someone who can read
//! the stream, nor stop them deleting calls: NATS authorization does (see [`NatsAuth`]).
//!
//! Function names are `name.namespace`, two DNS-1123 labels (`[a-z0-9-]`), so in subjects and
//! consumer names the dot becomes `_`, which such names never contain; any other byte (fjord
//! never produces one) is escaped as `=XX`, keeping the mapping one-to-one. Call ids made of
//! `[A-Za-z0-9_-]` are keys as they are; any other id is `=` + its base64url.
//!
//! Each process mirrors the records of active calls (queued, retrying, running) in memory,
//! fed by a watch on the bucket, so [`due_functions`](Queue::due_functions) and
//! [`depth`](Queue::depth) (called every few milliseconds by the dispatcher) cost no round
//! trip; the mirror holds about 100 bytes per active call. [`list`](Queue::list) and
//! [`prune`](Queue::prune) read the whole bucket.
//!
//! Leases: the consumers' `ack_wait` ([`NatsOptions::ack_wait`], 30 s) is a heartbeat
//! timeout, not the lease. While a claim's lease runs, its process tells the server every
//! `ack_wait / 3` that the call is still in progress; when the lease ends it stops, so the
//! server redelivers the call at most `ack_wait` later. A process that dies stops too: the
//! server redelivers its claims `ack_wait` after its last heartbeat, and
//! [`due_functions`](Queue::due_functions) of any process (the restarted one, say) reports
//! them within a sweep (every 5 s) after that, at the latest when their lease ends.
//! [`requeue_running`](Queue::requeue_running) and [`requeue_expired`](Queue::requeue_expired)
//! act on this process's claims only. Leases, due times and record times are read from
//! [`NatsOptions::clock`]; the server's timers (`ack_wait`, the delay of a retried call's
//! redelivery) always run in real time.
//!
//! Durability: `enqueue` returns once JetStream acknowledged the publish and the record write.
//! JetStream acknowledges a message once it is written to its file store (and, clustered, on a
//! quorum of replicas), so an acknowledged call survives a crash or restart of nats-server or
//! fjord (tests/nats.rs kills nats-server with SIGKILL right after acknowledgements). But by default nats-server fsyncs its files on an interval (2 minutes), not per message: a
//! power loss or kernel crash of a single server can lose the calls acknowledged since the
//! last sync. nats-server 2.10 and later fsync every write with `jetstream { sync_interval:
//! always }` in the server configuration (slower); 2.9 cannot be configured so. Replicated
//! streams (`--replicas 3` on a cluster) make such a loss need several machines to fail at once.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt as _;

use crate::{
    BoxFuture, CallRecord, CallState, CancelOutcome, Claimed, Clock, NewCall, Queue, QueueError,
    QueueKey,
};

/// The hot path: enqueue, due work, claim, complete, retry, requeue, heartbeats.
mod calls;
/// Wire forms: a call's message, function names as subjects, call ids as keys.
mod codec;
/// URLs, credentials and TLS.
mod connect;
/// Dead letters, refused messages, cancellation and replay.
mod dead;
/// The MACs over messages and records, and the install's key check.
mod integrity;
/// The in-memory view of the active calls.
mod mirror;
/// Call records in the bucket: compare-and-set edits, scans (list, prune).
mod records;
/// Streams, bucket, consumers, and following the bucket's watch.
mod setup;
#[cfg(test)]
mod tests;

pub use integrity::INTEGRITY_FAILED;
#[cfg(feature = "testing")]
pub use integrity::signed_message;
use mirror::Mirror;
use setup::Names;

/// The prefix of the stream, bucket and subject names unless told otherwise.
pub const DEFAULT_PREFIX: &str = "FJORD";
/// How long the server waits for a heartbeat of a claimed call before redelivering it.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// Unacknowledged deliveries one function's consumer may have out at once, over all
/// processes; far above any sensible concurrency so it never throttles.
const MAX_ACK_PENDING: i64 = 100_000;
/// A message whose record does not exist is left alone this long (its enqueue may still be
/// writing the record); after that it is an orphan (the enqueuer died between its two writes)
/// and gets a record, so the call runs.
const ORPHAN_AFTER_MS: u64 = 10_000;
/// An orphan older than this is not adopted but dead-lettered: a genuine message put back in
/// the stream after its call's record was pruned or purged (a replay) looks like an orphan,
/// and the clients of real orphans never got their 202.
const ORPHAN_MAX_AGE_MS: u64 = 10 * 60 * 1000;
/// How often [`Queue::due_functions`] also looks for work the mirror cannot show as due:
/// orphaned messages no record points at, and calls of dead processes that the server has
/// redelivered before their lease ended.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a claim waits for a retry that just came due: the server releases NAK-delayed
/// messages on a timer that may fire a little after the due time.
const DUE_WAIT: Duration = Duration::from_millis(200);
/// A retry counts as just due (see [`DUE_WAIT`]) this long after its time.
const JUST_DUE_MS: u64 = 1000;
/// Compare-and-set attempts on one record (each failure means another writer got there first).
const CAS_ATTEMPTS: usize = 32;
/// Most pull rounds in one claim: a round's messages may all turn out stale or cancelled.
const CLAIM_ROUNDS: usize = 8;
/// A bucket read ([`prune`](Queue::prune), [`Queue::list`]) that receives nothing this long has
/// seen everything (guards against a bucket emptied between its status and its watch).
const SCAN_GAP: Duration = Duration::from_secs(5);

/// How [`NatsQueue::connect_with`] sets the queue up.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Signs every call this process queues and checks every call before it runs. Every
    /// process sharing the queue must hold the same key.
    pub key: QueueKey,
    /// Credentials and TLS beyond what the URL says.
    pub auth: NatsAuth,
    /// Names the streams, bucket and subjects (`[A-Za-z0-9_-]`), so several installs can share
    /// one NATS. Every process of one install must use the same prefix.
    pub prefix: String,
    /// The consumers' `ack_wait`: how long after a dead process's last heartbeat its claimed
    /// calls are redelivered. Applies when a function's consumer is created (by the first
    /// process to claim for it); existing consumers keep theirs.
    pub ack_wait: Duration,
    /// Replicas of the streams and bucket when they are created (1 on a single server, 3 on a
    /// cluster for a queue that survives a lost machine).
    pub replicas: usize,
    /// Where leases, due times and record times come from: the system clock unless a test
    /// moves a [`ManualClock`](crate::ManualClock). The server's own timers (`ack_wait`,
    /// delayed redelivery of a retry) run on real time regardless.
    pub clock: Clock,
}

impl NatsOptions {
    /// The defaults, with this key.
    pub fn new(key: QueueKey) -> Self {
        NatsOptions {
            key,
            auth: NatsAuth::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ack_wait: DEFAULT_ACK_WAIT,
            replicas: 1,
            clock: Clock::system(),
        }
    }
}

/// How fjord proves who it is to NATS, beyond a user and password or token in the URL
/// (`nats://user:pass@host:4222`, `nats://token@host:4222`; percent-encode special
/// characters). At most one way of authenticating may be given.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// A `.creds` file (a user JWT and its nkey seed), as `nsc` writes for servers in operator
    /// (JWT) mode.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`), for servers that list users by nkey.
    pub nkey_file: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the server's certificate, instead of the system's
    /// roots. Implies TLS.
    pub ca_file: Option<PathBuf>,
    /// Require TLS even with `nats://` URLs (`tls://` always does).
    pub tls: bool,
}

/// The queue on NATS JetStream. Cheap to share behind an `Arc`; dropping it stops its
/// background tasks without touching the calls it holds (the server redelivers them).
pub struct NatsQueue {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
    anonymous_allowed: bool,
}

struct Inner {
    js: jetstream::Context,
    key: QueueKey,
    names: Names,
    calls: stream::Stream,
    dead: stream::Stream,
    kv: kv::Store,
    /// The bucket's underlying stream, for conditional purges.
    kv_stream: stream::Stream,
    ack_wait: Duration,
    clock: Clock,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    /// Calls this process claimed and has not finished, by key: their messages, to ack or NAK.
    held: Mutex<HashMap<String, Held>>,
    mirror: Mutex<Mirror>,
    /// When due_functions last swept (`None`: never, so the first call does).
    last_sweep: Mutex<Option<Instant>>,
}

struct Held {
    /// The message's ack subject.
    reply: Subject,
    /// Its stream sequence.
    seq: u64,
    lease_until_ms: u64,
    /// The call's record as the claim wrote it, and its revision: finishing the call starts
    /// from it instead of reading the record again (see `update_from_cache`).
    record: Option<(records::Stored, u64)>,
}

fn is_active(state: CallState) -> bool {
    matches!(
        state,
        CallState::Queued | CallState::Retrying | CallState::Running
    )
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl NatsQueue {
    /// The queue's JetStream context, for other users of the same server (the cron
    /// connector claims each scheduled run in a bucket of its own there).
    pub fn jetstream(&self) -> jetstream::Context {
        self.inner.js.clone()
    }

    /// The prefix of the queue's streams and bucket (upper case as given, e.g. `FJORD`).
    pub fn prefix(&self) -> &str {
        self.inner.names.calls_stream.trim_end_matches("_CALLS")
    }
}

/// A client of the NATS server(s) at `url` with the same credentials rules as the queue
/// (URL login, `.creds` or nkey, TLS), for connectors that subscribe to subjects there.
/// `more` adds the caller's settings (name, event callback); the first connection must
/// succeed, later ones are retried with async-nats's backoff.
pub async fn connect_client(
    url: &str,
    auth: &NatsAuth,
    more: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> Result<async_nats::Client, QueueError> {
    let shown = crate::redact_url(url);
    let target = connect::Target::parse(url)?;
    let (options, credentials) =
        connect::authenticate(connect::transport(auth), &target, auth).await?;
    more(options)
        .connect(target.servers.clone())
        .await
        .map_err(|e| connect::connect_failed(&shown, credentials, e))
}

impl Inner {
    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        // Every mirror update is self-contained: a panic elsewhere leaves it usable.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue for NatsQueue {
    fn enqueue(&self, call: NewCall) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.inner.enqueue(call))
    }

    fn due_functions(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(self.inner.due_functions())
    }

    fn claim(
        &self,
        function: &str,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, QueueError>> {
        let function = function.to_owned();
        Box::pin(async move { self.inner.claim(&function, max, lease).await })
    }

    fn complete(&self, id: &str, status: u16) -> BoxFuture<'_, Result<(), QueueError>> {
        let id = id.to_owned();
        Box::pin(async move { self.inner.complete(&id, status).await })
    }

    fn complete_many(&self, done: Vec<(String, u16)>) -> BoxFuture<'_, Result<(), QueueError>> {
        // One compare-and-set per call (records are separate keys): in parallel, so a batch
        // costs about one round trip, not one per call.
        Box::pin(async move {
            let results = futures_util::stream::iter(done)
                .map(|(id, status)| async move { self.inner.complete(&id, status).await })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            results.into_iter().collect()
        })
    }

    fn retry_later(
        &self,
        id: &str,
        at_ms: u64,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let (id, error) = (id.to_owned(), error.to_owned());
        Box::pin(async move { self.inner.retry_later(&id, at_ms, status, &error).await })
    }

    fn dead_letter(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let (id, error) = (id.to_owned(), error.to_owned());
        Box::pin(async move { self.inner.dead_letter(&id, status, &error).await })
    }

    fn set_callback_result(&self, id: &str, result: &str) -> BoxFuture<'_, Result<(), QueueError>> {
        let (id, result) = (id.to_owned(), result.to_owned());
        Box::pin(async move { self.inner.set_callback_result(&id, &result).await })
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, QueueError>> {
        let id = id.to_owned();
        Box::pin(async move { self.inner.get(&id).await })
    }

    fn cancel(&self, id: &str) -> BoxFuture<'_, Result<CancelOutcome, QueueError>> {
        let id = id.to_owned();
        Box::pin(async move { self.inner.cancel(&id).await })
    }

    fn list(
        &self,
        state: Option<CallState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CallRecord>, QueueError>> {
        Box::pin(self.inner.list(state, limit))
    }

    fn replay(&self, id: &str) -> BoxFuture<'_, Result<bool, QueueError>> {
        let id = id.to_owned();
        Box::pin(async move { self.inner.replay(&id).await })
    }

    fn depth(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, QueueError>> {
        Box::pin(async move { Ok(self.inner.depth()) })
    }

    /// NAKs the calls this process claimed whose lease ended (their records say queued
    /// again). A dead process's calls are redelivered by the server `ack_wait` after its last
    /// heartbeat, and reported due once their lease is over; they are not counted here.
    fn requeue_expired(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.inner.requeue(true))
    }

    /// NAKs every call this process claimed (graceful shutdown). Other processes' calls are
    /// left alone: they are running.
    fn requeue_running(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.inner.requeue(false))
    }

    /// Also deletes the dead-letter copies of pruned dead calls. Reads the whole bucket.
    fn prune(&self, older_than_ms: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.inner.prune(older_than_ms))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A NATS error with what was being done.
fn failed(context: &str, e: impl Display) -> QueueError {
    QueueError::Storage(format!("NATS: {context}: {e}"))
}
