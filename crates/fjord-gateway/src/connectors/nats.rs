//! The NATS connector (`fjord serve --nats nats://…`): each function's `topic` subjects are
//! subscribed to on core NATS, and each message invokes the function with its payload as the
//! body (`X-Connector: nats`, `X-Topic: <subject>`). At most once: a message that arrives
//! while fjord is down, or whose call fails, is not redelivered.
//!
//! Subscriptions use one queue group per function (`fjord.<namespace>.<name>`), so several
//! fjord servers deploying the same function share its messages instead of each running
//! every one. A message with a reply subject gets the function's response body as the reply
//! (header `Fjord-Status`); `com.fjord.topic.response` publishes successful responses to a
//! subject. Calls per function run at most `com.openfaas.queue.max_inflight` at a time
//! (default 10); beyond that the subscription waits (NATS buffers, then drops as a slow
//! consumer).

use std::collections::HashMap;
use std::sync::Arc;

use fjord_control::ControlPlane;
use fjord_control::metrics::TriggerOutcome;
use fjord_core::FunctionKey;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{RESPONSE_SUBJECT, rfc3339};
use crate::invoke::Invoker;
use crate::trigger::{BoxFuture, Trigger};

pub const KIND: &str = "nats";

/// What a subscription needs from the deployment; a change restarts it.
#[derive(Clone, PartialEq, Eq)]
struct Sub {
    response: Option<String>,
    max_inflight: usize,
    /// The annotations (retry policy and the rest): a change restarts the subscription.
    annotations: std::collections::BTreeMap<String, String>,
}

/// Where a JetStream message the function kept failing goes: `fjord.dead.<ns>.<name>`.
pub fn dead_letter_subject(key: &FunctionKey) -> String {
    format!("fjord.dead.{}.{}", key.namespace, key.name)
}

/// How long JetStream waits for an ack before redelivering; a call in progress extends it
/// every [`PROGRESS_EVERY`].
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The broker's state, shown in `/healthz` detail and logged once per change.
#[derive(Default)]
pub struct BrokerState {
    connected: std::sync::atomic::AtomicBool,
}

impl BrokerState {
    pub fn connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Connects to `url` with the `--nats-*` credentials; the first connection must succeed.
pub async fn connect(
    url: &str,
    auth: &fjord_queue::nats::NatsAuth,
) -> Result<(async_nats::Client, Arc<BrokerState>), String> {
    let state = Arc::new(BrokerState::default());
    let events = state.clone();
    let shown = fjord_queue::redact_url(url);
    let logged = shown.clone();
    let client = fjord_queue::nats::connect_client(url, auth, move |o| {
        o.name("fjord-connector").event_callback(move |e| {
            let events = events.clone();
            let url = logged.clone();
            async move {
                use std::sync::atomic::Ordering;
                match e {
                    async_nats::Event::Connected => {
                        if !events.connected.swap(true, Ordering::Relaxed) {
                            tracing::info!(url = %url, "nats connector: connected");
                        }
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        if events.connected.swap(false, Ordering::Relaxed) {
                            tracing::warn!(url = %url, "nats connector: disconnected, reconnecting with backoff");
                        }
                    }
                    other => tracing::debug!(url = %url, event = %other, "nats connector"),
                }
            }
        })
    })
    .await
    .map_err(|e| format!("--nats {shown}: {e}"))?;
    state
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(url = %shown, "nats connector: subscribing to functions' topic subjects");
    Ok((client, state))
}

pub struct NatsTrigger {
    pub client: async_nats::Client,
    pub control: Arc<ControlPlane>,
}

impl Trigger for NatsTrigger {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn run(
        self: Box<Self>,
        invoker: Invoker,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut watch = self.control.watch_routes();
            let mut tasks = super::Tasks::new();
            loop {
                watch.borrow_and_update();
                let mut desired: HashMap<(FunctionKey, String), Sub> = HashMap::new();
                for d in super::deployed(&self.control) {
                    let subjects = super::subscriptions(&d.deployment);
                    d.route.metrics.triggers.set_sources(KIND, &subjects);
                    let a = d.deployment.annotations.as_ref();
                    let sub = Sub {
                        response: a
                            .and_then(|a| a.get(RESPONSE_SUBJECT))
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty()),
                        max_inflight: fjord_core::policy::max_inflight(a)
                            .unwrap_or(fjord_core::policy::DEFAULT_MAX_INFLIGHT)
                            .max(1),
                        annotations: a.cloned().unwrap_or_default(),
                    };
                    for s in subjects {
                        desired.insert((d.key.clone(), s), sub.clone());
                    }
                }
                tasks.sync(desired, |(key, subject), sub, stop| {
                    tokio::spawn(subscribe(
                        self.client.clone(),
                        invoker.clone(),
                        key.clone(),
                        subject.clone(),
                        sub.clone(),
                        stop,
                    ))
                });
                if !super::changed(&mut watch, &shutdown).await {
                    break;
                }
            }
            tasks.stop_all().await;
        })
    }
}

/// Shows on the function's trigger board whether `subject` is subscribed now.
fn mark_active(invoker: &Invoker, key: &FunctionKey, subject: &str, active: bool) {
    if let Some(r) = invoker.lookup(key) {
        r.metrics.triggers.set_active(KIND, subject, active);
    }
}

async fn subscribe(
    client: async_nats::Client,
    invoker: Invoker,
    key: FunctionKey,
    subject: String,
    sub: Sub,
    stop: CancellationToken,
) {
    let board = |active: bool| mark_active(&invoker, &key, &subject, active);
    // A subject some stream captures is consumed from that stream (at least once).
    let js = async_nats::jetstream::new(client.clone());
    if let Ok(stream) = js.stream_by_subject(subject.clone()).await {
        return consume(js, stream, invoker, key, subject, sub, stop).await;
    }
    let group = format!("fjord.{}.{}", key.namespace, key.name);
    let mut messages = match client.queue_subscribe(subject.clone(), group).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(function = %key, %subject, error = %e, "nats connector: cannot subscribe");
            board(false);
            return;
        }
    };
    board(true);
    tracing::info!(function = %key, %subject, "nats connector: subscribed");
    let permits = Arc::new(tokio::sync::Semaphore::new(sub.max_inflight));
    let sub = Arc::new(sub);
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            () = stop.cancelled() => break,
        };
        let Some(m) = m else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, invoker, key, subject, sub) = (
            client.clone(),
            invoker.clone(),
            key.clone(),
            subject.clone(),
            sub.clone(),
        );
        tokio::spawn(async move {
            handle(&client, &invoker, &key, &subject, &sub, m).await;
            drop(permit);
        });
    }
    let _ = messages.unsubscribe().await;
    tracing::info!(function = %key, %subject, "nats connector: unsubscribed");
}

/// One message: the call, the reply, the response subject, the board.
async fn handle(
    client: &async_nats::Client,
    invoker: &Invoker,
    key: &FunctionKey,
    subscription: &str,
    sub: &Sub,
    m: async_nats::Message,
) {
    let at = chrono::Utc::now();
    let headers = [
        (super::HEADER_CONNECTOR, KIND.to_string()),
        (super::HEADER_TOPIC, m.subject.to_string()),
    ];
    let answer = super::call(invoker, key, &headers, m.payload.clone()).await;
    let outcome = match &answer {
        Ok(a) => a.outcome(),
        Err(e) => TriggerOutcome::Failed(e.clone()),
    };
    if let Some(reply) = &m.reply {
        let (status, body) = match &answer {
            Ok(a) => (a.status, a.body.clone()),
            Err(e) => (502, bytes::Bytes::from(e.clone())),
        };
        let mut h = async_nats::HeaderMap::new();
        // The function's own headers (Content-Type, X-Call-Id, …) come along.
        if let Ok(a) = &answer {
            for (k, v) in &a.headers {
                if let Ok(v) = v.to_str() {
                    h.append(k.as_str(), v);
                }
            }
        }
        h.insert("Fjord-Status", status.to_string().as_str());
        if let Err(e) = client.publish_with_headers(reply.clone(), h, body).await {
            tracing::warn!(function = %key, error = %e, "nats connector: cannot send the reply");
        }
    }
    if let (Ok(a), Some(to), TriggerOutcome::Ok) = (&answer, &sub.response, &outcome) {
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Topic", m.subject.as_str());
        h.insert("X-Function", key.to_string().as_str());
        if let Err(e) = client
            .publish_with_headers(to.clone(), h, a.body.clone())
            .await
        {
            tracing::warn!(function = %key, subject = %to, error = %e, "nats connector: cannot publish the response");
        }
    }
    match (&answer, &outcome) {
        (Ok(a), TriggerOutcome::Failed(why)) if a.refused.is_some() => {
            // Too large to call with: kept for whoever can act on it, as JetStream's are.
            tracing::warn!(function = %key, subject = %m.subject, reason = %why, "nats connector: message dead-lettered");
            let mut h = async_nats::HeaderMap::new();
            h.insert("X-Topic", m.subject.as_str());
            h.insert("Fjord-Reason", why.as_str());
            h.insert("Fjord-Status", "413");
            if let Err(e) = client
                .publish_with_headers(dead_letter_subject(key), h, m.payload.clone())
                .await
            {
                tracing::warn!(function = %key, error = %e, "nats connector: cannot publish the dead letter");
            }
        }
        (_, TriggerOutcome::Failed(why)) => {
            tracing::debug!(function = %key, subject = %m.subject, reason = %why, "nats connector: call failed");
        }
        _ => {}
    }
    if let Some(r) = invoker.lookup(key) {
        r.metrics
            .triggers
            .record(KIND, subscription, rfc3339(at), outcome);
    }
}

/// A subject that belongs to a JetStream stream: a durable pull consumer per function and
/// subject (`fjord_<ns>_<name>_<hash>`, shared by the servers deploying the function), acked
/// after a 2xx answer; failures are retried with the function's retry policy
/// (`com.openfaas.retry.*`, NAK with its backoff) and, after the last attempt or for a status
/// not to retry, published to [`dead_letter_subject`] and terminated.
async fn consume(
    js: async_nats::jetstream::Context,
    stream: String,
    invoker: Invoker,
    key: FunctionKey,
    subject: String,
    sub: Sub,
    stop: CancellationToken,
) {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use sha2::Digest;
    let board = |active: bool| mark_active(&invoker, &key, &subject, active);
    let hash = sha2::Sha256::digest(subject.as_bytes());
    let name = format!(
        "fjord_{}_{}_{:02x}{:02x}{:02x}{:02x}",
        key.namespace, key.name, hash[0], hash[1], hash[2], hash[3]
    );
    let consumer = async {
        let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
        s.get_or_create_consumer::<pull::Config>(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("fjord: {key} on {subject}")),
                filter_subject: subject.clone(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(sub.max_inflight).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    let consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(function = %key, %subject, %stream, error = %e, "nats connector: cannot make the JetStream consumer");
            board(false);
            return;
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(function = %key, %subject, %stream, error = %e, "nats connector: cannot consume");
            board(false);
            return;
        }
    };
    board(true);
    tracing::info!(function = %key, %subject, %stream, consumer = %name, "nats connector: consuming from JetStream");
    let policy = fjord_core::policy::RetryPolicy::from_annotations(Some(&sub.annotations))
        .unwrap_or_default();
    let permits = Arc::new(tokio::sync::Semaphore::new(sub.max_inflight));
    let shared = Arc::new((
        js,
        invoker.clone(),
        key.clone(),
        subject.clone(),
        sub,
        policy,
    ));
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            () = stop.cancelled() => break,
        };
        let m = match m {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Missed heartbeats and the like while the broker is away: the stream
                // recovers by itself; do not spin on the errors meanwhile.
                tracing::debug!(function = %key, %subject, error = %e, "nats connector: JetStream pull");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (js, invoker, key, subject, sub, policy) = &*shared;
            handle_jetstream(js, invoker, key, subject, sub, policy, m).await;
            drop(permit);
        });
    }
    tracing::info!(function = %key, %subject, "nats connector: stopped consuming");
}

async fn handle_jetstream(
    js: &async_nats::jetstream::Context,
    invoker: &Invoker,
    key: &FunctionKey,
    subscription: &str,
    sub: &Sub,
    policy: &fjord_core::policy::RetryPolicy,
    m: async_nats::jetstream::Message,
) {
    use async_nats::jetstream::AckKind;
    let at = chrono::Utc::now();
    let (attempt, pending) = m
        .info()
        .map(|i| (i.delivered.max(1) as u32, Some(i.pending)))
        .unwrap_or((1, None));
    if let (Some(p), Some(r)) = (pending, invoker.lookup(key)) {
        r.metrics.triggers.set_lag(KIND, subscription, p);
    }
    let headers = [
        (super::HEADER_CONNECTOR, KIND.to_string()),
        (super::HEADER_TOPIC, m.subject.to_string()),
    ];
    let call = super::call(invoker, key, &headers, m.payload.clone());
    tokio::pin!(call);
    // Tells JetStream the call is still going, so a long call is not redelivered.
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let answer = loop {
        tokio::select! {
            a = &mut call => break a,
            _ = progress.tick() => { let _ = m.ack_with(AckKind::Progress).await; }
        }
    };
    let (outcome, retry) = match &answer {
        Ok(a) => (a.outcome(), a.retryable(&policy.codes)),
        Err(e) => (TriggerOutcome::Failed(e.clone()), true),
    };
    match &outcome {
        TriggerOutcome::Ok => {
            if let (Ok(a), Some(to)) = (&answer, &sub.response) {
                let mut h = async_nats::HeaderMap::new();
                h.insert("X-Topic", m.subject.as_str());
                h.insert("X-Function", key.to_string().as_str());
                if let Err(e) = js
                    .client()
                    .publish_with_headers(to.clone(), h, a.body.clone())
                    .await
                {
                    tracing::warn!(function = %key, subject = %to, error = %e, "nats connector: cannot publish the response");
                }
            }
            if let Err(e) = m.ack().await {
                tracing::warn!(function = %key, error = %e, "nats connector: cannot ack (the message will come again)");
            }
        }
        TriggerOutcome::Failed(why) if retry && attempt < policy.attempts => {
            let wait = policy.wait(attempt, None, rand::random::<f64>());
            tracing::info!(function = %key, subject = %m.subject, attempt, reason = %why, ?wait, "nats connector: call failed, retrying");
            let _ = m.ack_with(AckKind::Nak(Some(wait))).await;
        }
        TriggerOutcome::Failed(why) | TriggerOutcome::Skipped(why) => {
            let status = answer.as_ref().map(|a| a.status).unwrap_or(0);
            let refused = answer.as_ref().is_ok_and(|a| a.refused.is_some());
            let reason = if refused {
                why.clone()
            } else if retry {
                format!("{why} after {attempt} attempt(s)")
            } else {
                format!("{why}, a status not retried (com.openfaas.retry.codes)")
            };
            tracing::warn!(function = %key, subject = %m.subject, %reason, "nats connector: message dead-lettered");
            let mut h = async_nats::HeaderMap::new();
            h.insert("X-Topic", m.subject.as_str());
            h.insert("Fjord-Reason", reason.as_str());
            h.insert("Fjord-Status", status.to_string().as_str());
            h.insert("Fjord-Attempts", attempt.to_string().as_str());
            if let Err(e) = js
                .client()
                .publish_with_headers(dead_letter_subject(key), h, m.payload.clone())
                .await
            {
                tracing::warn!(function = %key, error = %e, "nats connector: cannot publish the dead letter");
            }
            let _ = m.ack_with(AckKind::Term).await;
        }
    }
    if let Some(r) = invoker.lookup(key) {
        r.metrics
            .triggers
            .record(KIND, subscription, rfc3339(at), outcome);
    }
}
