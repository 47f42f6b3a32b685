//! Asynchronous invocations: accepted requests are stored durably, then run by workers,
//! retried, and their results posted to a callback. Backends implement [`Queue`]; the
//! embedded one ([`sqlite::SqliteQueue`]) keeps everything in the data dir.

pub mod clock;
#[cfg(feature = "testing")]
pub mod contract;
pub mod key;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "testing")]
pub mod nats_server;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock};
pub use key::QueueKey;

/// A boxed future, so [`Queue`] can be used as `dyn Queue`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The request as it was accepted by `POST /async-function/...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    pub method: String,
    /// The path after the function's name, starting with `/`.
    pub path: String,
    /// Raw query string without `?`.
    #[serde(default)]
    pub query: Option<String>,
    /// Header name → value (names lower-case).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Vec<u8>,
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// A call to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    /// The call id (`X-Call-Id`).
    pub id: String,
    /// `name.namespace`.
    pub function: String,
    pub request: CallRequest,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Queued,
    Running,
    Retrying,
    Done,
    Dead,
    Cancelled,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running => "running",
            CallState::Retrying => "retrying",
            CallState::Done => "done",
            CallState::Dead => "dead",
            CallState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => CallState::Queued,
            "running" => CallState::Running,
            "retrying" => CallState::Retrying,
            "done" => CallState::Done,
            "dead" => CallState::Dead,
            "cancelled" => CallState::Cancelled,
            _ => return None,
        })
    }
}

/// What the API shows of a call (never the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: String,
    pub function: String,
    pub state: CallState,
    pub method: String,
    pub path: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last attempt's HTTP status, if it got one.
    pub status: Option<u16>,
    pub last_error: Option<String>,
    pub callback_url: Option<String>,
    /// The callback's outcome: `delivered (200)`, or why it failed.
    pub callback: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// When the next attempt may start (Unix ms), for queued and retrying calls.
    pub next_attempt_ms: u64,
}

/// A call handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: String,
    pub function: String,
    pub request: CallRequest,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

/// The outcome of [`Queue::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// Running, done, dead or cancelled already.
    TooLate(CallState),
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage: {0}")]
    Storage(String),
    #[error("the queue is shutting down")]
    Closed,
    /// A call with this id is already stored (the caller reused an `X-Call-Id`).
    #[error("call {0} already exists")]
    Duplicate(String),
}

/// A durable queue of calls. Every method is safe to call from many tasks at once.
pub trait Queue: Send + Sync + 'static {
    /// Stores a call; returns only once it is durable (it survives `kill -9`).
    fn enqueue(&self, call: NewCall) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Functions that have calls ready to run now (queued or retrying, due).
    fn due_functions(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;
    /// Takes up to `max` due calls of `function`, oldest first, and marks them running
    /// with a lease: a worker that dies leaves them to [`requeue_expired`](Self::requeue_expired).
    fn claim(
        &self,
        function: &str,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, QueueError>>;
    /// Marks a call done with the function's status.
    fn complete(&self, id: &str, status: u16) -> BoxFuture<'_, Result<(), QueueError>>;
    /// [`complete`](Self::complete) for many calls at once (a busy worker's finished calls),
    /// which a backend should record in one write, or at least concurrently (this default
    /// is one after the other).
    fn complete_many(&self, done: Vec<(String, u16)>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            for (id, status) in done {
                self.complete(&id, status).await?;
            }
            Ok(())
        })
    }
    /// Schedules another attempt at `at_ms` (Unix ms).
    fn retry_later(
        &self,
        id: &str,
        at_ms: u64,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Gives up on a call after its last attempt.
    fn dead_letter(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Records what happened to the callback.
    fn set_callback_result(&self, id: &str, result: &str) -> BoxFuture<'_, Result<(), QueueError>>;
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, QueueError>>;
    /// Cancels a call that has not started (queued or retrying).
    fn cancel(&self, id: &str) -> BoxFuture<'_, Result<CancelOutcome, QueueError>>;
    /// Calls in a state (all when `None`), newest first, at most `limit`.
    fn list(
        &self,
        state: Option<CallState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CallRecord>, QueueError>>;
    /// Puts a dead-lettered call back in the queue with its attempts reset. `false` if it
    /// is not dead-lettered.
    fn replay(&self, id: &str) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Queued + retrying + running calls per function.
    fn depth(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, QueueError>>;
    /// Returns running calls whose lease expired to the queue (after a crash, and
    /// periodically). Returns how many.
    fn requeue_expired(&self) -> BoxFuture<'_, Result<u64, QueueError>>;
    /// Puts every running call back in the queue (graceful shutdown).
    fn requeue_running(&self) -> BoxFuture<'_, Result<u64, QueueError>>;
    /// Deletes finished calls (done, dead, cancelled) last updated before `older_than_ms`
    /// (Unix ms) and whatever the backend keeps for them; returns how many. Active calls are
    /// never touched. The server calls it periodically with its retention, so the queue does
    /// not grow forever.
    fn prune(&self, older_than_ms: u64) -> BoxFuture<'_, Result<u64, QueueError>>;
}

/// Milliseconds since the Unix epoch (the system clock; a queue reads its [`Clock`]).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A queue URL (or comma-separated list of URLs) without its credentials, for logs and
/// messages: `nats://user:pass@host:4222` → `nats://***@host:4222`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match one.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => one.to_owned(),
            },
            None => match one.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => one.to_owned(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}
