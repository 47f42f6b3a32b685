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
//! [`NatsQueue::prune`] read the whole bucket.
//!
//! Leases: the consumers' `ack_wait` ([`NatsOptions::ack_wait`], 30 s) is a heartbeat
//! timeout, not the lease. While a claim's lease runs, its process tells the server every
//! `ack_wait / 3` that the call is still in progress; when the lease ends it stops, so the
//! server redelivers the call at most `ack_wait` later. A process that dies stops too: the
//! server redelivers its claims `ack_wait` after its last heartbeat, and
//! [`due_functions`](Queue::due_functions) of any process (the restarted one, say) reports
//! them within a sweep (every 5 s) after that, at the latest when their lease ends.
//! [`requeue_running`](Queue::requeue_running) and [`requeue_expired`](Queue::requeue_expired)
//! act on this process's claims only.
//!
//! Durability: `enqueue` returns once JetStream acknowledged the publish and the record write.
//! JetStream acknowledges a message once it is written to its file store (and, clustered, on a
//! quorum of replicas), so an acknowledged call survives a crash or restart of nats-server or
//! fjord (tests/nats.rs kills nats-server with SIGKILL right after acknowledgements). But by default nats-server fsyncs its files on an interval (2 minutes), not per message: a
//! power loss or kernel crash of a single server can lose the calls acknowledged since the
//! last sync. nats-server 2.10 and later fsync every write with `jetstream { sync_interval:
//! always }` in the server configuration (slower); 2.9 cannot be configured so. Replicated
//! streams (`--replicas 3` on a cluster) make such a loss need several machines to fail at once.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{Display, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{
    BoxFuture, CallRecord, CallRequest, CallState, CancelOutcome, Claimed, NewCall, Queue,
    QueueError, QueueKey, now_ms, redact_url,
};

mod connect;
mod integrity;

use connect::{Target, authenticate, connect_failed, transport};
pub use integrity::INTEGRITY_FAILED;
#[cfg(feature = "testing")]
pub use integrity::signed_message;
use integrity::{BadRecord, KEY_CHECK, check_key, decode_stored, encode_stored};

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
/// A bucket read ([`NatsQueue::prune`], [`Queue::list`]) that receives nothing this long has
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
}

struct Names {
    /// The lower-case prefix the subjects start with.
    root: String,
    calls_stream: String,
    dead_stream: String,
    bucket: String,
}

impl Names {
    fn new(prefix: &str) -> Result<Names, QueueError> {
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(QueueError::Storage(format!(
                "NATS queue prefix {prefix:?} must be non-empty and made of [A-Za-z0-9_-]"
            )));
        }
        Ok(Names {
            root: prefix.to_ascii_lowercase(),
            calls_stream: format!("{prefix}_CALLS"),
            dead_stream: format!("{prefix}_DEAD"),
            bucket: format!("{prefix}_CALL_STATE"),
        })
    }

    fn calls_prefix(&self) -> String {
        format!("{}.calls.", self.root)
    }

    fn call_subject(&self, function: &str) -> String {
        format!("{}.calls.{}", self.root, encode_function(function))
    }

    fn dead_subject(&self, key: &str) -> String {
        format!("{}.dead.{key}", self.root)
    }

    fn record_subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }
}

/// What the bucket stores per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    #[serde(flatten)]
    record: CallRecord,
    /// The stream sequence of the message carrying the call's request now; a message with
    /// another sequence for the same call is a stale duplicate.
    seq: u64,
    /// When the running attempt's lease ends (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_until_ms: Option<u64>,
}

/// The first line of a call's message: everything but the body, which follows raw.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    id: String,
    function: String,
    created_at_ms: u64,
    method: String,
    path: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    callback_url: Option<String>,
    /// The [`QueueKey::id`] of the key that signed it (names the key in error messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// HMAC-SHA256 (base64url) over the fields above and the body ([`Envelope::signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl Stored {
    fn queued(envelope: &Envelope, seq: u64) -> Stored {
        let now = envelope.created_at_ms;
        Stored {
            record: CallRecord {
                id: envelope.id.clone(),
                function: envelope.function.clone(),
                state: CallState::Queued,
                method: envelope.method.clone(),
                path: envelope.path.clone(),
                attempts: 0,
                status: None,
                last_error: None,
                callback_url: envelope.callback_url.clone(),
                callback: None,
                created_at_ms: now,
                updated_at_ms: now,
                next_attempt_ms: now,
            },
            seq,
            lease_until_ms: None,
        }
    }
}

fn is_active(state: CallState) -> bool {
    matches!(
        state,
        CallState::Queued | CallState::Retrying | CallState::Running
    )
}

/// What a record edit decided: write the changed record (compare-and-set) or leave it.
enum Edit<T> {
    Write(T),
    Keep(T),
}

/// What [`Inner::take`] does with a delivered message.
enum Take {
    Run(u32),
    /// Another message carries the call now, or it is finished: drop this one.
    Drop,
    /// Dead-lettered while its message was queued: move the request to the dead letters.
    Bury,
    /// A retry not due yet (its record was rescheduled by a process not holding the message).
    NotYet(u64),
}

/// A call's state as the mirror needs it.
#[derive(Debug, Clone)]
struct Active {
    function: String,
    state: CallState,
    /// When it is due: `next_attempt_ms` if waiting, the lease's end if running.
    due_ms: u64,
    /// When it was last written (for a running call: claimed).
    since_ms: u64,
}

impl Active {
    fn of(stored: &Stored) -> Option<Active> {
        let r = &stored.record;
        let due_ms = match r.state {
            CallState::Queued | CallState::Retrying => r.next_attempt_ms,
            CallState::Running => stored.lease_until_ms.unwrap_or(u64::MAX),
            CallState::Done | CallState::Dead | CallState::Cancelled => return None,
        };
        Some(Active {
            function: r.function.clone(),
            state: r.state,
            due_ms,
            since_ms: r.updated_at_ms,
        })
    }
}

/// The active calls, from the bucket's watch plus this process's own writes (applied at once
/// so it reads them back without waiting for the watch). Each key keeps its revision and only
/// newer ones replace it, so a late watch event never undoes a newer local write.
#[derive(Default)]
struct Mirror {
    calls: HashMap<String, Mirrored>,
    /// Per function: (due_ms, key) of its active calls.
    functions: HashMap<String, BTreeSet<(u64, String)>>,
    /// The highest revision the watch delivered. The watch delivers in revision order, so
    /// once past a revision it never brings anything older.
    watched: u64,
    /// Calls finished by a local write ahead of the watch: (revision, key), kept until the
    /// watch passes the revision so its older events cannot bring the call back.
    tombstones: BTreeSet<(u64, String)>,
}

struct Mirrored {
    revision: u64,
    active: Option<Active>,
}

impl Mirror {
    fn apply(&mut self, key: &str, revision: u64, active: Option<Active>, from_watch: bool) {
        if from_watch {
            self.watched = self.watched.max(revision);
            while let Some((rev, _)) = self.tombstones.first()
                && *rev <= self.watched
            {
                let Some((rev, k)) = self.tombstones.pop_first() else {
                    break;
                };
                if self
                    .calls
                    .get(&k)
                    .is_some_and(|m| m.revision == rev && m.active.is_none())
                {
                    self.calls.remove(&k);
                }
            }
        }
        if self.calls.get(key).is_some_and(|m| m.revision >= revision) {
            return;
        }
        if let Some(old) = self.calls.remove(key)
            && let Some(a) = old.active
            && let Some(set) = self.functions.get_mut(&a.function)
        {
            set.remove(&(a.due_ms, key.to_owned()));
            if set.is_empty() {
                self.functions.remove(&a.function);
            }
        }
        match active {
            Some(a) => {
                self.functions
                    .entry(a.function.clone())
                    .or_default()
                    .insert((a.due_ms, key.to_owned()));
                self.calls.insert(
                    key.to_owned(),
                    Mirrored {
                        revision,
                        active: Some(a),
                    },
                );
            }
            None if !from_watch && revision > self.watched => {
                self.calls.insert(
                    key.to_owned(),
                    Mirrored {
                        revision,
                        active: None,
                    },
                );
                self.tombstones.insert((revision, key.to_owned()));
            }
            None => {}
        }
    }

    fn apply_entry(&mut self, entry: &kv::Entry, qkey: &QueueKey) {
        if entry.key == KEY_CHECK {
            return;
        }
        let active = match entry.operation {
            Operation::Put => match decode_stored(qkey, &entry.key, &entry.value) {
                Ok(stored) => Active::of(&stored),
                Err(e) => {
                    // A claim of its message finds out and dead-letters the call.
                    let e = e.into_error(&entry.key);
                    tracing::warn!(error = %e, "ignoring an unusable call record");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        self.apply(&entry.key, entry.revision, active, true);
    }

    fn due(&self, now: u64) -> impl Iterator<Item = &String> {
        self.functions
            .iter()
            .filter(move |(_, set)| set.first().is_some_and(|(due, _)| *due <= now))
            .map(|(f, _)| f)
    }

    fn depth_of(&self, function: &str) -> u64 {
        self.functions.get(function).map_or(0, |s| s.len() as u64)
    }

    /// How many retries of `function` came due within [`JUST_DUE_MS`].
    fn retries_just_due(&self, function: &str, now: u64) -> usize {
        let Some(set) = self.functions.get(function) else {
            return 0;
        };
        let from = (now.saturating_sub(JUST_DUE_MS), String::new());
        let to = (now.saturating_add(1), String::new());
        set.range(from..to)
            .filter(|(_, key)| {
                self.calls
                    .get(key)
                    .and_then(|m| m.active.as_ref())
                    .is_some_and(|a| a.state == CallState::Retrying)
            })
            .count()
    }
}

impl NatsQueue {
    /// Connects to NATS at `url` (e.g. `nats://user:pass@127.0.0.1:4222`; `tls://` works,
    /// with rustls and the system's roots; several URLs separated by commas) and creates what
    /// is missing of the streams and bucket named by `prefix` (e.g. [`DEFAULT_PREFIX`]), or
    /// reuses them: every process of an install connects the same way, with the same `key`.
    /// Other settings are [`NatsOptions::new`]'s defaults.
    pub async fn connect(url: &str, prefix: &str, key: QueueKey) -> Result<NatsQueue, QueueError> {
        Self::connect_with(
            url,
            NatsOptions {
                prefix: prefix.to_owned(),
                ..NatsOptions::new(key)
            },
        )
        .await
    }

    /// Whether the server let a client without credentials connect (checked once, when this
    /// queue connected): if so, anyone who can reach its port can read and forge calls.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous_allowed
    }

    /// [`connect`](Self::connect) with every setting.
    pub async fn connect_with(url: &str, options: NatsOptions) -> Result<NatsQueue, QueueError> {
        let names = Names::new(&options.prefix)?;
        if options.ack_wait < Duration::from_millis(300) {
            return Err(QueueError::Storage(format!(
                "NATS queue ack_wait {:?} is too short (at least 300ms)",
                options.ack_wait
            )));
        }
        let shown = redact_url(url);
        let target = Target::parse(url)?;
        let base = transport(&options.auth);
        let (authed, credentials) = authenticate(base.clone(), &target, &options.auth).await?;
        let client = authed
            .name("fjord")
            .connect(target.servers.clone())
            .await
            .map_err(|e| connect_failed(&shown, credentials, e))?;
        // Once more without credentials: a server that lets that in is open to anyone who
        // reaches its port (fjord without credentials just proved it is).
        let anonymous_allowed = !credentials
            || base
                .name("fjord-anonymous-check")
                .connection_timeout(Duration::from_secs(5))
                .connect(target.servers.clone())
                .await
                .is_ok();
        let js = jetstream::new(client);
        let replicas = options.replicas.max(1);

        let calls = js
            .get_or_create_stream(stream::Config {
                name: names.calls_stream.clone(),
                description: Some("fjord: async calls waiting or running".into()),
                subjects: vec![format!("{}>", names.calls_prefix())],
                // A message goes once acknowledged: the stream holds only the backlog.
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&format!("cannot set up stream {}", names.calls_stream), e))?;
        let dead = js
            .get_or_create_stream(stream::Config {
                name: names.dead_stream.clone(),
                description: Some("fjord: requests of dead-lettered async calls".into()),
                subjects: vec![format!("{}.dead.>", names.root)],
                retention: RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&format!("cannot set up stream {}", names.dead_stream), e))?;
        // The bucket's stream, as async-nats's create_key_value would make it. Made directly
        // because create_key_value first reads the account info, which async-nats 0.51 cannot
        // parse from nats-server 2.9.
        let kv_stream = js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{}", names.bucket),
                description: Some("fjord: async call records".into()),
                subjects: vec![format!("$KV.{}.>", names.bucket)],
                // Only the latest revision of each record is kept.
                max_messages_per_subject: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&format!("cannot set up bucket {}", names.bucket), e))?;
        let kv = js
            .get_key_value(names.bucket.as_str())
            .await
            .map_err(|e| failed(&format!("cannot open bucket {}", names.bucket), e))?;
        check_key(&kv, &options.key).await?;

        // Load the active calls before answering, so the first due_functions sees the backlog.
        let mut mirror = Mirror::default();
        let records = record_count(&kv_stream).await?;
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| failed("watching the call records", e))?;
        let mut next = 1;
        if records > 0 {
            loop {
                match tokio::time::timeout(SCAN_GAP, watch.next()).await {
                    Err(_) => break,
                    Ok(None) => return Err(QueueError::Storage("the record watch ended".into())),
                    Ok(Some(Err(e))) => return Err(failed("loading the call records", e)),
                    Ok(Some(Ok(entry))) => {
                        next = entry.revision + 1;
                        mirror.apply_entry(&entry, &options.key);
                        if entry.delta == 0 {
                            break;
                        }
                    }
                }
            }
        }

        let inner = Arc::new(Inner {
            js,
            key: options.key,
            names,
            calls,
            dead,
            kv,
            kv_stream,
            ack_wait: options.ack_wait,
            consumers: Mutex::default(),
            held: Mutex::default(),
            mirror: Mutex::new(mirror),
            last_sweep: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(follow(Arc::clone(&inner), watch, next)).abort_handle(),
            tokio::spawn(keep_alive(Arc::clone(&inner))).abort_handle(),
        ];
        Ok(NatsQueue {
            inner,
            tasks,
            anonymous_allowed,
        })
    }

    /// Deletes finished calls (done, dead, cancelled) last updated before `older_than_ms`
    /// (Unix ms), and their dead-letter copies; returns how many. Retention is not part of
    /// [`Queue`]: call this periodically, as with the SQLite backend. Reads the whole bucket.
    pub async fn prune(&self, older_than_ms: u64) -> Result<u64, QueueError> {
        self.inner.prune(older_than_ms).await
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps the mirror current from the bucket's watch; resumes after the last revision seen if
/// the watch ends (a connection loss the client could not ride out).
async fn follow(inner: Arc<Inner>, mut watch: kv::Watch, mut next: u64) {
    loop {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => {
                    next = entry.revision + 1;
                    inner.mirror().apply_entry(&entry, &inner.key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the NATS call record watch failed; resuming");
                    break;
                }
            }
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match inner.kv.watch_all_from_revision(next.max(1)).await {
                Ok(w) => {
                    watch = w;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume the NATS call record watch"),
            }
        }
    }
}

/// Tells the server the calls this process runs are still in progress, while their lease
/// lasts; forgets calls whose lease ended long enough ago that the server has redelivered them.
async fn keep_alive(inner: Arc<Inner>) {
    let ack_wait_ms = millis(inner.ack_wait);
    loop {
        tokio::time::sleep(inner.ack_wait / 3).await;
        let now = now_ms();
        let replies: Vec<Subject> = {
            let mut held = inner.held();
            held.retain(|_, h| h.lease_until_ms.saturating_add(ack_wait_ms) > now);
            held.values()
                .filter(|h| h.lease_until_ms > now)
                .map(|h| h.reply.clone())
                .collect()
        };
        for reply in replies {
            if let Err(e) = inner.acker(reply).ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "NATS in-progress heartbeat failed");
            }
        }
    }
}

impl Inner {
    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        // Every mirror update is self-contained: a panic elsewhere leaves it usable.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acker(&self, reply: Subject) -> Acker {
        Acker::new(self.js.clone(), Some(reply))
    }

    /// Acknowledges (or terminates) a delivery. A lost ack only means a redelivery, which
    /// [`take`](Self::take) recognises, so failures are logged, not returned.
    async fn ack(&self, reply: Subject) {
        if let Err(e) = self.acker(reply).ack_with(AckKind::Ack).await {
            tracing::warn!(error = %e, "acknowledging a NATS queue message failed");
        }
    }

    /// Releases a delivery for redelivery after `delay_ms`. Waits for the server's answer, so
    /// a claim right after sees the message released.
    async fn nak(&self, reply: Subject, delay_ms: u64) {
        let delay = (delay_ms > 0).then(|| Duration::from_millis(delay_ms));
        if let Err(e) = self.acker(reply).double_ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(error = %e, "releasing a NATS queue message failed; the server redelivers it after ack_wait");
        }
    }

    async fn consumer(&self, function: &str) -> Result<PullConsumer, QueueError> {
        if let Some(c) = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
        {
            return Ok(c.clone());
        }
        let name = encode_function(function);
        let consumer = self
            .calls
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("fjord: async calls of {function}")),
                    filter_subject: self.names.call_subject(function),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    // fjord decides when a call is dead; the server must never drop one.
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(&format!("cannot set up the consumer for {function}"), e))?;
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(function.to_owned(), consumer.clone());
        Ok(consumer)
    }

    fn encode(&self, key: &str, stored: &Stored) -> Result<bytes::Bytes, QueueError> {
        encode_stored(&self.key, key, stored)
    }

    /// A record and its revision; `Err((revision, reason))` if it failed its integrity check.
    async fn read_entry(
        &self,
        key: &str,
    ) -> Result<Option<Result<(Stored, u64), (u64, String)>>, QueueError> {
        match self
            .kv
            .entry(key)
            .await
            .map_err(|e| failed("reading a call record", e))?
        {
            Some(entry) if entry.operation == Operation::Put => {
                match decode_stored(&self.key, key, &entry.value) {
                    Ok(stored) => Ok(Some(Ok((stored, entry.revision)))),
                    Err(BadRecord::Forged(why)) => Ok(Some(Err((entry.revision, why)))),
                    Err(bad) => Err(bad.into_error(key)),
                }
            }
            _ => Ok(None),
        }
    }

    async fn read_record(&self, key: &str) -> Result<Option<(Stored, u64)>, QueueError> {
        match self.read_entry(key).await? {
            None => Ok(None),
            Some(Ok(found)) => Ok(Some(found)),
            Some(Err((_, why))) => Err(BadRecord::Forged(why).into_error(key)),
        }
    }

    /// Reads a record, lets `edit` decide, and writes the result only if nobody wrote in
    /// between (compare-and-set on the revision), else starts over. `None`: no such record.
    async fn update_record<T>(
        &self,
        key: &str,
        edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Option<T>, QueueError> {
        match self.update_checked(key, edit).await? {
            Ok(answer) => Ok(answer),
            Err((_, why)) => Err(BadRecord::Forged(why).into_error(key)),
        }
    }

    /// [`update_record`](Self::update_record), but a record that fails its integrity check is
    /// returned (`Err((revision, reason))`) for the caller to replace.
    async fn update_checked<T>(
        &self,
        key: &str,
        mut edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Result<Option<T>, (u64, String)>, QueueError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut stored, revision) = match self.read_entry(key).await? {
                None => return Ok(Ok(None)),
                Some(Err(forged)) => return Ok(Err(forged)),
                Some(Ok(found)) => found,
            };
            let answer = match edit(&mut stored) {
                Edit::Keep(answer) => return Ok(Ok(Some(answer))),
                Edit::Write(answer) => answer,
            };
            match self
                .kv
                .update(key, self.encode(key, &stored)?, revision)
                .await
            {
                Ok(revision) => {
                    self.mirror()
                        .apply(key, revision, Active::of(&stored), false);
                    return Ok(Ok(Some(answer)));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(failed("writing a call record", e)),
            }
        }
        Err(QueueError::Storage(format!(
            "call record {key} kept changing under {CAS_ATTEMPTS} attempts to update it"
        )))
    }

    async fn enqueue(&self, call: NewCall) -> Result<(), QueueError> {
        if call.function.is_empty() {
            return Err(QueueError::Storage("a call needs a function".into()));
        }
        let key = key_of(&call.id);
        let mut envelope = Envelope {
            id: call.id,
            function: call.function,
            created_at_ms: now_ms(),
            method: call.request.method,
            path: call.request.path,
            query: call.request.query,
            headers: call.request.headers,
            callback_url: call.request.callback_url,
            kid: None,
            mac: None,
        };
        envelope.sign(&self.key, &call.request.body);
        let payload = encode_message(&envelope, &call.request.body)?;
        let subject = self.names.call_subject(&envelope.function);
        let mut ack = self.publish(&subject, payload.clone(), &key).await?;
        if ack.duplicate {
            // A publish with this id is in the duplicate window: a retried enqueue (its message
            // is there; the record decides below), the same id again (refused below), or the
            // id of a call finished since (its message is gone: publish under a fresh id).
            match self.calls.get_raw_message(ack.sequence).await {
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    let fresh = format!("{key}/{}", envelope.created_at_ms);
                    ack = self.publish(&subject, payload, &fresh).await?;
                }
                Err(e) => return Err(failed("checking an earlier publish of the call", e)),
                Ok(_) => {}
            }
        }
        let stored = Stored::queued(&envelope, ack.sequence);
        let exists = || QueueError::Duplicate(envelope.id.clone());
        match self.kv.create(&key, self.encode(&key, &stored)?).await {
            Ok(revision) => {
                self.mirror()
                    .apply(&key, revision, Active::of(&stored), false);
                Ok(())
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // A record pointing at this very message: the create went through but its
                // answer was lost, or a claim adopted the message first. Anything else is
                // another call with this id; a message stored anew for it must go.
                match self.read_record(&key).await? {
                    Some((s, revision)) if s.seq == ack.sequence && !ack.duplicate => {
                        self.mirror().apply(&key, revision, Active::of(&s), false);
                        Ok(())
                    }
                    _ if !ack.duplicate => {
                        self.delete_message(ack.sequence).await;
                        Err(exists())
                    }
                    _ => Err(exists()),
                }
            }
            Err(e) => Err(failed("storing the call record", e)),
        }
    }

    /// Publishes a call's message and waits for JetStream's acknowledgement.
    async fn publish(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        message_id: &str,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        self.js
            .send_publish(
                subject.to_owned(),
                PublishMessage::build()
                    .payload(payload)
                    .message_id(message_id),
            )
            .await
            .map_err(|e| failed("publishing the call", e))?
            .await
            .map_err(|e| failed("publishing the call", e))
    }

    /// Deletes a message from the calls stream, best effort: a message left behind is
    /// recognised as stale when delivered, so failing here costs only space.
    async fn delete_message(&self, seq: u64) {
        if let Err(e) = self.calls.delete_message(seq).await {
            tracing::debug!(error = %e, seq, "cannot delete a NATS queue message");
        }
    }

    async fn due_functions(&self) -> Result<Vec<String>, QueueError> {
        let mut due: BTreeSet<String> = self.mirror().due(now_ms()).cloned().collect();
        let sweep = {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let sweep = last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
            if sweep {
                *last = Some(Instant::now());
            }
            sweep
        };
        if sweep {
            due.extend(self.long_running_elsewhere());
            match self.unaccounted_functions().await {
                Ok(found) => due.extend(found),
                Err(e) => tracing::warn!(error = %e, "cannot count the NATS queue's messages"),
            }
        }
        Ok(due.into_iter().collect())
    }

    /// Functions with a call another process claimed more than `ack_wait` ago. If that
    /// process died, the server has redelivered the call (no heartbeat) long before its lease
    /// ends; a claim finds out. If it lives, the claim finds nothing: one pull per sweep.
    fn long_running_elsewhere(&self) -> BTreeSet<String> {
        let mine: std::collections::HashSet<String> = self.held().keys().cloned().collect();
        let cutoff = now_ms().saturating_sub(millis(self.ack_wait));
        let mirror = self.mirror();
        mirror
            .calls
            .iter()
            .filter_map(|(key, m)| Some((key, m.active.as_ref()?)))
            .filter(|(key, a)| {
                a.state == CallState::Running && a.since_ms <= cutoff && !mine.contains(*key)
            })
            .map(|(_, a)| a.function.clone())
            .collect()
    }

    /// Functions with more messages in the stream than active records: calls whose enqueue
    /// died between its two writes. Reporting them due lets a claim adopt them.
    async fn unaccounted_functions(&self) -> Result<Vec<String>, QueueError> {
        let prefix = self.names.calls_prefix();
        let mut subjects = self
            .calls
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| failed("reading the calls stream", e))?;
        let mut counts = Vec::new();
        while let Some(item) = subjects.next().await {
            let (subject, n) = item.map_err(|e| failed("reading the calls stream", e))?;
            if let Some(function) = subject.strip_prefix(&prefix).and_then(decode_function) {
                counts.push((function, n as u64));
            }
        }
        let mirror = self.mirror();
        Ok(counts
            .into_iter()
            .filter(|(f, n)| *n > mirror.depth_of(f))
            .map(|(f, _)| f)
            .collect())
    }

    async fn claim(
        &self,
        function: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        if max == 0 || function.is_empty() {
            return Ok(Vec::new());
        }
        let consumer = self.consumer(function).await?;
        let mut claimed: Vec<(u64, Claimed)> = Vec::new();
        let mut first_error = None;
        // Some((n, how long)): wait for n messages instead of taking what is there.
        let mut wait: Option<(usize, Duration)> = None;
        let mut waited = false;
        for _ in 0..CLAIM_ROUNDS {
            let mut want = max - claimed.len();
            if let Some((n, _)) = wait {
                // A pull answers once it has all it asked for: ask for what is expected.
                want = want.min(n);
            }
            let messages = match fetch(&consumer, want, wait.take().map(|(_, d)| d)).await {
                Ok(m) => m,
                Err(e) => {
                    // The consumer may have been deleted on the server: look it up again next time.
                    self.consumers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(function);
                    first_error.get_or_insert(e);
                    break;
                }
            };
            let fetched = messages.len();
            let taken = futures_util::future::join_all(
                messages.into_iter().map(|m| self.take(m, function, lease)),
            )
            .await;
            for t in taken {
                match t {
                    Ok(Some(c)) => claimed.push(c),
                    Ok(None) => {}
                    // Not held, so no heartbeat: the server redelivers it after ack_wait.
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if claimed.len() >= max || first_error.is_some() {
                break;
            }
            if fetched == want {
                // Everything asked for came but some could not run: look further.
                continue;
            }
            // Nothing else is deliverable now, unless a retry just came due and the server's
            // timer has not released it yet.
            let expected = self.mirror().retries_just_due(function, now_ms());
            if !waited && expected > 0 {
                waited = true;
                wait = Some((expected, DUE_WAIT));
                continue;
            }
            break;
        }
        if claimed.is_empty()
            && let Some(e) = first_error
        {
            return Err(e);
        }
        if let Some(e) = first_error {
            tracing::warn!(error = %e, "some NATS queue messages could not be claimed");
        }
        // Oldest first: redeliveries and new messages may arrive interleaved.
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// Decides what a delivered message is: a call to run (recorded as running, held), or a
    /// stale, finished, dead or not-yet-due one (acknowledged, buried or released).
    async fn take(
        &self,
        message: jetstream::Message,
        function: &str,
        lease: Duration,
    ) -> Result<Option<(u64, Claimed)>, QueueError> {
        let seq = message
            .info()
            .map_err(|e| failed("reading a delivery", e))?
            .stream_sequence;
        let reply = message
            .message
            .reply
            .clone()
            .ok_or_else(|| QueueError::Storage("a delivery without an ack subject".into()))?;
        let payload = message.message.payload.clone();
        let (envelope, body) = match decode_message(&payload) {
            Ok(decoded) => decoded,
            Err(reason) => {
                // Running or retrying it cannot work; keeping it would wedge nothing but waste
                // a delivery per ack_wait forever. Its record (if any) says why it is gone.
                tracing::error!(seq, %reason, "dropping a corrupt NATS queue message");
                if let Some(id) = message
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                {
                    // The call's key, before any `/replay/...` or `/<ms>` suffix.
                    let key = id.as_str().split('/').next().unwrap_or_default().to_owned();
                    let now = now_ms();
                    let marked = self
                        .update_record(&key, |s| {
                            if s.seq == seq && is_active(s.record.state) {
                                s.record.state = CallState::Dead;
                                s.record.last_error =
                                    Some(format!("corrupt stored request: {reason}"));
                                s.record.updated_at_ms = now;
                                s.lease_until_ms = None;
                                Edit::Write(())
                            } else {
                                Edit::Keep(())
                            }
                        })
                        .await;
                    // The header is anyone's to set (a forged record behind it, say): the
                    // message goes all the same.
                    if let Err(e) = marked {
                        tracing::warn!(error = %e, "cannot mark a corrupt message's call dead");
                    }
                }
                self.acker(reply)
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(|e| failed("dropping a corrupt message", e))?;
                return Ok(None);
            }
        };
        if let Err(reason) = envelope.check(&self.key, &body, function) {
            return self
                .refuse(seq, reply, &envelope, function, payload, &reason)
                .await;
        }
        let key = key_of(&envelope.id);
        // A second pass after adopting an orphan.
        for _ in 0..2 {
            let now = now_ms();
            let lease_until = now.saturating_add(millis(lease));
            let decided = self
                .update_checked(&key, |s| {
                    if s.seq != seq {
                        return Edit::Keep(Take::Drop);
                    }
                    match s.record.state {
                        CallState::Done | CallState::Cancelled => Edit::Keep(Take::Drop),
                        CallState::Dead => Edit::Keep(Take::Bury),
                        CallState::Retrying if s.record.next_attempt_ms > now => {
                            Edit::Keep(Take::NotYet(s.record.next_attempt_ms - now))
                        }
                        // Running: its last holder's lease ended or it died; this is the
                        // next attempt.
                        CallState::Queued | CallState::Retrying | CallState::Running => {
                            s.record.state = CallState::Running;
                            s.record.attempts = s.record.attempts.saturating_add(1);
                            s.record.updated_at_ms = now;
                            s.lease_until_ms = Some(lease_until);
                            Edit::Write(Take::Run(s.record.attempts))
                        }
                    }
                })
                .await?;
            let decided = match decided {
                Ok(decided) => decided,
                Err((revision, why)) => {
                    // The request is genuine, its record is not: whether it already ran, or
                    // was cancelled, is unknown.
                    let reason = format!(
                        "{INTEGRITY_FAILED} (its record was altered in NATS: {why}): not run, \
                         as its true state is unknown; replay it if it should run"
                    );
                    tracing::error!(call = %envelope.id, function, seq, %reason, "refusing a queued call");
                    if !self
                        .record_dead(&key, Some(revision), &envelope, seq, function, &reason)
                        .await?
                    {
                        self.nak(reply, 1000).await;
                        return Ok(None);
                    }
                    self.bury(&key, payload).await?;
                    self.ack(reply).await;
                    return Ok(None);
                }
            };
            match decided {
                Some(Take::Run(attempt)) => {
                    self.held().insert(
                        key.clone(),
                        Held {
                            reply,
                            seq,
                            lease_until_ms: lease_until,
                        },
                    );
                    let request = CallRequest {
                        method: envelope.method,
                        path: envelope.path,
                        query: envelope.query,
                        headers: envelope.headers,
                        body: body.to_vec(),
                        callback_url: envelope.callback_url,
                    };
                    return Ok(Some((
                        seq,
                        Claimed {
                            id: envelope.id,
                            function: function.to_owned(),
                            request,
                            attempt,
                        },
                    )));
                }
                Some(Take::Drop) => {
                    self.ack(reply).await;
                    return Ok(None);
                }
                Some(Take::Bury) => {
                    self.bury(&key, payload).await?;
                    self.ack(reply).await;
                    return Ok(None);
                }
                Some(Take::NotYet(ms)) => {
                    self.nak(reply, ms).await;
                    return Ok(None);
                }
                None => {
                    let age = now.saturating_sub(envelope.created_at_ms);
                    if age < ORPHAN_AFTER_MS {
                        self.nak(reply, ORPHAN_AFTER_MS - age).await;
                        return Ok(None);
                    }
                    if age > ORPHAN_MAX_AGE_MS {
                        let reason = format!(
                            "not adopted: its record is missing and it was queued {} s ago, too \
                             long ago for an interrupted enqueue (a copy of an old call put back \
                             in NATS?); replay it if it should run",
                            age / 1000
                        );
                        tracing::error!(call = %envelope.id, function, seq, %reason, "refusing a queued call");
                        if self
                            .record_dead(&key, None, &envelope, seq, function, &reason)
                            .await?
                        {
                            self.bury(&key, payload).await?;
                        }
                        self.ack(reply).await;
                        return Ok(None);
                    }
                    let stored = Stored::queued(&envelope, seq);
                    match self.kv.create(&key, self.encode(&key, &stored)?).await {
                        Ok(revision) => {
                            tracing::warn!(call = %envelope.id, "adopting a queued call whose record was never written (its enqueue was interrupted)");
                            self.mirror()
                                .apply(&key, revision, Active::of(&stored), false);
                        }
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                        Err(e) => return Err(failed("adopting an orphaned call", e)),
                    }
                }
            }
        }
        Ok(None)
    }

    /// Dead-letters a message that failed its integrity check: it never runs and nothing is
    /// sent to its callback. The call's record (the one pointing at this message, or a new
    /// one) says why, and the request is kept with the dead letters for inspection; a record
    /// of another message with the same id (a forgery reusing a real call's id) is left alone.
    async fn refuse(
        &self,
        seq: u64,
        reply: Subject,
        envelope: &Envelope,
        function: &str,
        payload: bytes::Bytes,
        reason: &str,
    ) -> Result<Option<(u64, Claimed)>, QueueError> {
        tracing::error!(call = %envelope.id, function, seq, %reason, "refusing a queued call");
        let key = key_of(&envelope.id);
        let now = now_ms();
        let ours = match self
            .update_checked(&key, |s| {
                if s.seq != seq {
                    return Edit::Keep(false);
                }
                if !is_active(s.record.state) {
                    return Edit::Keep(true);
                }
                s.record.state = CallState::Dead;
                s.record.last_error = Some(reason.to_owned());
                s.record.updated_at_ms = now;
                s.lease_until_ms = None;
                Edit::Write(true)
            })
            .await?
        {
            Ok(Some(ours)) => ours,
            Ok(None) => {
                self.record_dead(&key, None, envelope, seq, function, reason)
                    .await?
            }
            // A forged record (its message too, or it would not be here): replaced.
            Err((revision, _)) => {
                self.record_dead(&key, Some(revision), envelope, seq, function, reason)
                    .await?
            }
        };
        if ours {
            self.bury(&key, payload).await?;
        }
        self.acker(reply)
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| failed("dropping a refused message", e))?;
        Ok(None)
    }

    /// Writes a dead record for a refused message: created (`revision` `None`), or in place of
    /// a forged record at `revision`. `false` if someone else wrote the key first.
    async fn record_dead(
        &self,
        key: &str,
        revision: Option<u64>,
        envelope: &Envelope,
        seq: u64,
        function: &str,
        reason: &str,
    ) -> Result<bool, QueueError> {
        let now = now_ms();
        let mut stored = Stored::queued(envelope, seq);
        stored.record.function = function.to_owned();
        stored.record.state = CallState::Dead;
        stored.record.last_error = Some(reason.to_owned());
        stored.record.updated_at_ms = now;
        let value = self.encode(key, &stored)?;
        let written =
            match revision {
                None => self.kv.create(key, value).await.map_err(|e| {
                    (e.kind() != CreateErrorKind::AlreadyExists).then(|| e.to_string())
                }),
                Some(revision) => self.kv.update(key, value, revision).await.map_err(|e| {
                    (e.kind() != UpdateErrorKind::WrongLastRevision).then(|| e.to_string())
                }),
            };
        match written {
            Ok(revision) => {
                self.mirror().apply(key, revision, None, false);
                Ok(true)
            }
            Err(None) => Ok(false),
            Err(Some(e)) => Err(failed("recording a refused call", e)),
        }
    }

    /// Keeps a dead-lettered call's request (the message payload) for replay.
    async fn bury(&self, key: &str, payload: bytes::Bytes) -> Result<(), QueueError> {
        self.js
            .publish(self.names.dead_subject(key), payload)
            .await
            .map_err(|e| failed("keeping a dead letter", e))?
            .await
            .map_err(|e| failed("keeping a dead letter", e))?;
        Ok(())
    }

    async fn complete(&self, id: &str, status: u16) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = now_ms();
        // A late answer for a call already finished (its lease expired and another worker got
        // there first) must not overwrite that outcome: the first final state wins.
        self.update_record(&key, |s| {
            if !is_active(s.record.state) {
                return Edit::Keep(());
            }
            s.record.state = CallState::Done;
            s.record.status = Some(status);
            s.record.updated_at_ms = now;
            s.lease_until_ms = None;
            Edit::Write(())
        })
        .await?;
        let held = self.held().remove(&key);
        if let Some(h) = held {
            self.ack(h.reply).await;
        }
        Ok(())
    }

    async fn retry_later(
        &self,
        id: &str,
        at_ms: u64,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = now_ms();
        let rescheduled = self
            .update_record(&key, |s| {
                if !is_active(s.record.state) {
                    return Edit::Keep(false);
                }
                s.record.state = CallState::Retrying;
                s.record.next_attempt_ms = at_ms;
                s.record.status = status;
                s.record.last_error = Some(error.to_owned());
                s.record.updated_at_ms = now;
                s.lease_until_ms = None;
                Edit::Write(true)
            })
            .await?
            .unwrap_or(false);
        let held = self.held().remove(&key);
        if let Some(h) = held {
            if rescheduled {
                // The server holds the message back until then.
                self.nak(h.reply, at_ms.saturating_sub(now_ms())).await;
            } else {
                self.ack(h.reply).await;
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = now_ms();
        let buried = self
            .update_record(&key, |s| {
                if !is_active(s.record.state) {
                    return Edit::Keep(None);
                }
                s.record.state = CallState::Dead;
                s.record.status = status;
                s.record.last_error = Some(error.to_owned());
                s.record.updated_at_ms = now;
                s.lease_until_ms = None;
                Edit::Write(Some(s.seq))
            })
            .await?
            .flatten();
        let held = self.held().remove(&key);
        if let Some(seq) = buried {
            // Copy the request (its message is still in the stream: not acknowledged yet).
            // If this fails the message stays, is redelivered and buried by that claim.
            match self.calls.get_raw_message(seq).await {
                Ok(m) => {
                    self.bury(&key, m.payload).await?;
                    if held.is_none() {
                        self.delete_message(seq).await;
                    }
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(failed("reading a dead call's request", e)),
            }
        }
        if let Some(h) = held {
            self.ack(h.reply).await;
        }
        Ok(())
    }

    async fn set_callback_result(&self, id: &str, result: &str) -> Result<(), QueueError> {
        let now = now_ms();
        self.update_record(&key_of(id), |s| {
            s.record.callback = Some(result.to_owned());
            s.record.updated_at_ms = now;
            Edit::Write(())
        })
        .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        Ok(self.read_record(&key_of(id)).await?.map(|(s, _)| s.record))
    }

    async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        let now = now_ms();
        let outcome = self
            .update_record(&key_of(id), |s| match s.record.state {
                CallState::Queued | CallState::Retrying => {
                    s.record.state = CallState::Cancelled;
                    s.record.updated_at_ms = now;
                    Edit::Write(Ok(s.seq))
                }
                state => Edit::Keep(Err(state)),
            })
            .await?;
        Ok(match outcome {
            None => CancelOutcome::NotFound,
            Some(Err(state)) => CancelOutcome::TooLate(state),
            Some(Ok(seq)) => {
                // It would be dropped when delivered anyway; deleting it frees the space now.
                self.delete_message(seq).await;
                CancelOutcome::Cancelled
            }
        })
    }

    /// Calls `each` with every record (and its revision): reads the whole bucket.
    async fn scan(&self, mut each: impl FnMut(Stored, u64)) -> Result<(), QueueError> {
        if record_count(&self.kv_stream).await? == 0 {
            return Ok(());
        }
        let mut watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| failed("reading the call records", e))?;
        loop {
            match tokio::time::timeout(SCAN_GAP, watch.next()).await {
                Err(_) | Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(failed("reading the call records", e)),
                Ok(Some(Ok(entry))) => {
                    if entry.operation == Operation::Put && entry.key != KEY_CHECK {
                        match decode_stored(&self.key, &entry.key, &entry.value) {
                            Ok(stored) => each(stored, entry.revision),
                            Err(e) => {
                                let e = e.into_error(&entry.key);
                                tracing::warn!(error = %e, "skipping an unusable call record")
                            }
                        }
                    }
                    if entry.delta == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list(
        &self,
        state: Option<CallState>,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        fn newest_first(records: &mut Vec<CallRecord>, limit: usize) {
            records.sort_by(|a, b| {
                b.created_at_ms
                    .cmp(&a.created_at_ms)
                    .then_with(|| b.id.cmp(&a.id))
            });
            records.truncate(limit);
        }
        let mut found = Vec::new();
        self.scan(|s, _| {
            if state.is_none_or(|st| s.record.state == st) {
                found.push(s.record);
                // Bounded memory on a big bucket: keep only what can still make the cut.
                if found.len() >= limit.saturating_mul(2).saturating_add(1024) {
                    newest_first(&mut found, limit);
                }
            }
        })
        .await?;
        newest_first(&mut found, limit);
        Ok(found)
    }

    async fn replay(&self, id: &str) -> Result<bool, QueueError> {
        let key = key_of(id);
        let Some((stored, revision)) = self.read_record(&key).await? else {
            return Ok(false);
        };
        if stored.record.state != CallState::Dead {
            return Ok(false);
        }
        // The dead letter, or, if the dead-lettering process has not copied it yet, the
        // original message (still in the stream until then).
        let dead_subject = self.names.dead_subject(&key);
        let payload = match self
            .dead
            .get_last_raw_message_by_subject(&dead_subject)
            .await
        {
            Ok(m) => m.payload,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                match self.calls.get_raw_message(stored.seq).await {
                    Ok(m) => m.payload,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        return Err(QueueError::Storage(format!(
                            "the request of dead call {id} is gone"
                        )));
                    }
                    Err(e) => return Err(failed("reading a dead call's request", e)),
                }
            }
            Err(e) => return Err(failed("reading a dead letter", e)),
        };
        // A fresh message id: the original's may still be in the duplicate window.
        let ack = self
            .publish(
                &self.names.call_subject(&stored.record.function),
                payload,
                &format!("{key}/replay/{revision}"),
            )
            .await?;
        let now = now_ms();
        // last_error is kept: it says why the call died, which matters if it dies again.
        let replayed = self
            .update_record(&key, |s| {
                if s.record.state != CallState::Dead {
                    return Edit::Keep(false);
                }
                s.record.state = CallState::Queued;
                s.record.attempts = 0;
                s.record.next_attempt_ms = now;
                s.record.updated_at_ms = now;
                s.seq = ack.sequence;
                s.lease_until_ms = None;
                Edit::Write(true)
            })
            .await?
            .unwrap_or(false);
        if replayed {
            if let Err(e) = self.dead.purge().filter(dead_subject).await {
                tracing::debug!(error = %e, "cannot delete a replayed dead letter");
            }
        } else {
            // Replayed or removed by someone else in between.
            self.delete_message(ack.sequence).await;
        }
        Ok(replayed)
    }

    fn depth(&self) -> Vec<(String, u64)> {
        let mirror = self.mirror();
        let mut depth: Vec<(String, u64)> = mirror
            .functions
            .iter()
            .map(|(f, set)| (f.clone(), set.len() as u64))
            .collect();
        depth.sort();
        depth
    }

    /// Puts calls this process holds back in the queue: all, or those whose lease ended.
    /// Calls claimed by other (or dead) processes are theirs, or the server's to redeliver.
    async fn requeue(&self, only_expired: bool) -> Result<u64, QueueError> {
        let now = now_ms();
        let mut picked: Vec<(String, Held)> = {
            let mut held = self.held();
            let keys: Vec<String> = held
                .iter()
                .filter(|(_, h)| !only_expired || h.lease_until_ms <= now)
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter()
                .filter_map(|key| held.remove_entry(&key))
                .collect()
        };
        picked.sort_by_key(|(_, h)| h.seq);
        // Record first: while it says queued the message is still ours, so no other process
        // can claim the call before the NAK; the other order could overwrite that claim.
        // Only our own claim is undone (same message, same lease).
        let updates = futures_util::future::join_all(picked.iter().map(|(key, h)| {
            self.update_record(key, move |s| {
                if s.record.state == CallState::Running
                    && s.seq == h.seq
                    && s.lease_until_ms == Some(h.lease_until_ms)
                {
                    s.record.state = CallState::Queued;
                    s.record.next_attempt_ms = now;
                    s.record.updated_at_ms = now;
                    s.lease_until_ms = None;
                    Edit::Write(true)
                } else {
                    Edit::Keep(false)
                }
            })
        }))
        .await;
        let mut requeued = 0;
        let mut first_error = None;
        for ((_, h), update) in picked.into_iter().zip(updates) {
            match update {
                Ok(Some(true)) => requeued += 1,
                Ok(_) => {}
                // Released all the same: the next claim sees it running and takes it over.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            self.nak(h.reply, 0).await;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(requeued),
        }
    }

    async fn prune(&self, older_than_ms: u64) -> Result<u64, QueueError> {
        let mut victims = Vec::new();
        self.scan(|s, revision| {
            if !is_active(s.record.state) && s.record.updated_at_ms < older_than_ms {
                victims.push((
                    key_of(&s.record.id),
                    revision,
                    s.record.state == CallState::Dead,
                ));
            }
        })
        .await?;
        let mut pruned = 0;
        for (key, revision, dead) in victims {
            // Only the revision read: a record changed since (a replay, a late callback
            // result) is newer and stays. No delete marker is left behind.
            let purged = self
                .kv_stream
                .purge()
                .filter(self.names.record_subject(&key))
                .sequence(revision + 1)
                .await
                .map_err(|e| failed("pruning a call record", e))?;
            if purged.purged == 0 {
                continue;
            }
            pruned += 1;
            if dead
                && let Err(e) = self
                    .dead
                    .purge()
                    .filter(self.names.dead_subject(&key))
                    .await
            {
                tracing::debug!(error = %e, "cannot delete a pruned call's dead letter");
            }
        }
        Ok(pruned)
    }
}

/// Messages in the bucket's stream now (the store's `status()` answers from a cached info).
async fn record_count(kv_stream: &stream::Stream) -> Result<u64, QueueError> {
    Ok(kv_stream
        .get_info()
        .await
        .map_err(|e| failed("reading the bucket", e))?
        .state
        .messages)
}

/// Pulls up to `want` messages: what is deliverable now, or (`wait`) what arrives until then.
async fn fetch(
    consumer: &PullConsumer,
    want: usize,
    wait: Option<Duration>,
) -> Result<Vec<jetstream::Message>, QueueError> {
    let batch = match wait {
        None => consumer.fetch().max_messages(want).messages().await,
        Some(wait) => {
            consumer
                .batch()
                .max_messages(want)
                .expires(wait)
                .messages()
                .await
        }
    };
    let mut batch = batch.map_err(|e| failed("pulling calls", e))?;
    let mut messages = Vec::new();
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => messages.push(m),
            // E.g. the consumer's max_ack_pending is reached: nothing more for now.
            Err(e) if !messages.is_empty() => {
                tracing::debug!(error = %e, "pulling calls stopped early");
                break;
            }
            Err(e) => return Err(failed("pulling calls", e)),
        }
    }
    Ok(messages)
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
}

/// `name.namespace` → subject token and consumer name: `[a-z0-9-]` kept, `.` → `_` (never in
/// DNS-1123 names), any other byte `=XX`, so distinct names stay distinct.
fn encode_function(function: &str) -> String {
    let mut out = String::with_capacity(function.len());
    for b in function.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            b'.' => out.push('_'),
            _ => {
                let _ = write!(out, "={b:02X}");
            }
        }
    }
    out
}

fn decode_function(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut it = token.bytes();
    while let Some(b) = it.next() {
        match b {
            b'_' => bytes.push(b'.'),
            b'=' => {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// A call id as a bucket key, subject token and message id: kept if made of `[A-Za-z0-9_-]`,
/// else `=` + base64url (a kept id never starts with `=`).
fn key_of(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_owned()
    } else {
        format!("={}", URL_SAFE_NO_PAD.encode(id))
    }
}

/// A call's message: the envelope as one JSON line (serde_json never writes a raw newline),
/// `\n`, then the body as it came.
fn encode_message(envelope: &Envelope, body: &[u8]) -> Result<bytes::Bytes, QueueError> {
    let mut out = serde_json::to_vec(envelope)
        .map_err(|e| QueueError::Storage(format!("cannot encode the call: {e}")))?;
    out.reserve(body.len() + 1);
    out.push(b'\n');
    out.extend_from_slice(body);
    Ok(out.into())
}

fn decode_message(payload: &bytes::Bytes) -> Result<(Envelope, bytes::Bytes), String> {
    let newline = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no metadata line")?;
    let envelope = serde_json::from_slice(&payload[..newline]).map_err(|e| e.to_string())?;
    Ok((envelope, payload.slice(newline + 1..)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A NATS error with what was being done.
fn failed(context: &str, e: impl Display) -> QueueError {
    QueueError::Storage(format!("NATS: {context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_round_trip_and_stay_distinct() {
        for f in ["echo.openfaas-fn", "a", "f", "x_y.z", "Ü.ns", "a=41", ""] {
            let token = encode_function(f);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{token}"
            );
            assert_eq!(decode_function(&token).as_deref(), Some(f));
        }
        assert_eq!(encode_function("echo.openfaas-fn"), "echo_openfaas-fn");
        assert_ne!(encode_function("a_b"), encode_function("a.b"));
    }

    #[test]
    fn keys_are_safe_and_distinct() {
        assert_eq!(key_of("3f2a-uuid_1"), "3f2a-uuid_1");
        for id in ["a.b", "a b", "", "=x", "ä", "a/b", "*", ">"] {
            let key = key_of(id);
            assert!(key.starts_with('='), "{id}: {key}");
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
            );
        }
        assert_ne!(key_of("=x"), key_of("x"));
    }

    #[test]
    fn messages_round_trip() {
        let envelope = Envelope {
            id: "c1".into(),
            function: "f.ns".into(),
            created_at_ms: 7,
            method: "POST".into(),
            path: "/a\nb".into(),
            query: Some("x=1".into()),
            headers: vec![("x-a".into(), "line\nbreak".into())],
            callback_url: None,
            kid: None,
            mac: None,
        };
        let body = b"\n\0binary\n\xff";
        let payload = encode_message(&envelope, body).unwrap();
        let (back, got) = decode_message(&payload).unwrap();
        assert_eq!(&got[..], body);
        assert_eq!(back.path, "/a\nb");
        assert_eq!(back.headers, envelope.headers);
        assert!(decode_message(&bytes::Bytes::from_static(b"{}")).is_err());
        assert!(decode_message(&bytes::Bytes::from_static(b"nope\nbody")).is_err());
    }

    #[test]
    fn mirror_ignores_older_events() {
        let mut m = Mirror::default();
        let active = |state, due_ms| {
            Some(Active {
                function: "f".into(),
                state,
                due_ms,
                since_ms: 0,
            })
        };
        m.apply("k", 1, active(CallState::Queued, 10), true);
        // A local write finishes the call ahead of the watch.
        m.apply("k", 3, None, false);
        assert_eq!(m.depth_of("f"), 0);
        // The watch then delivers the older running state: ignored.
        m.apply("k", 2, active(CallState::Running, 99), true);
        assert_eq!(m.depth_of("f"), 0);
        m.apply("k", 3, None, true);
        assert!(m.calls.is_empty() && m.tombstones.is_empty());
        m.apply("j", 4, active(CallState::Retrying, 50), false);
        assert!(m.due(49).next().is_none());
        assert_eq!(m.due(50).collect::<Vec<_>>(), ["f"]);
        assert_eq!(m.retries_just_due("f", 60), 1);
        assert_eq!(m.retries_just_due("f", 49), 0);
    }
}
