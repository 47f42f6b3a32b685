//! Connecting: the streams, the bucket and the per-function consumers are created or reused,
//! and the mirror is loaded and kept current from the bucket's watch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use futures_util::StreamExt as _;

use super::calls::keep_alive;
use super::codec::encode_function;
use super::connect::{Target, authenticate, connect_failed, transport};
use super::integrity::check_key;
use super::mirror::Mirror;
use super::{Inner, MAX_ACK_PENDING, NatsOptions, NatsQueue, SCAN_GAP, failed};
use crate::{QueueError, QueueKey, redact_url};

pub(super) struct Names {
    /// The lower-case prefix the subjects start with.
    pub(super) root: String,
    pub(super) calls_stream: String,
    pub(super) dead_stream: String,
    pub(super) bucket: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Result<Names, QueueError> {
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

    pub(super) fn calls_prefix(&self) -> String {
        format!("{}.calls.", self.root)
    }

    pub(super) fn call_subject(&self, function: &str) -> String {
        format!("{}.calls.{}", self.root, encode_function(function))
    }

    pub(super) fn dead_subject(&self, key: &str) -> String {
        format!("{}.dead.{key}", self.root)
    }

    pub(super) fn record_subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
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
            clock: options.clock,
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
}

/// Keeps the mirror current from the bucket's watch; resumes after the last revision seen if
/// the watch ends (a connection loss the client could not ride out).
pub(super) async fn follow(inner: Arc<Inner>, mut watch: kv::Watch, mut next: u64) {
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

/// Messages in the bucket's stream now (the store's `status()` answers from a cached info).
pub(super) async fn record_count(kv_stream: &stream::Stream) -> Result<u64, QueueError> {
    Ok(kv_stream
        .get_info()
        .await
        .map_err(|e| failed("reading the bucket", e))?
        .state
        .messages)
}

impl Inner {
    pub(super) async fn consumer(&self, function: &str) -> Result<PullConsumer, QueueError> {
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
}
