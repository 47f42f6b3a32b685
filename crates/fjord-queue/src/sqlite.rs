//! The embedded backend: one SQLite database (WAL, `synchronous=FULL`) in the data dir.
//!
//! Every write goes through one writer thread that owns the write connection. It takes
//! whatever jobs are waiting (up to [`MAX_BATCH`]), runs them all in one transaction and
//! commits once, so a burst of enqueues costs one fsync instead of one each (group commit);
//! only then are the callers answered, so an acknowledged call is on disk. Reads use a
//! second connection on tokio's blocking pool; WAL lets them run while the writer commits.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::{
    BoxFuture, CallRecord, CallRequest, CallState, CancelOutcome, Claimed, NewCall, Queue,
    QueueError,
};

/// Most jobs committed in one transaction: bounds how long the first caller of a burst waits.
pub const MAX_BATCH: usize = 1000;
/// How long the writer may hold deferrable jobs (recorded outcomes) to commit more at once.
const LINGER: Duration = Duration::from_millis(2);
/// A batch of deferrable jobs this large commits without lingering.
const LINGER_BATCH: usize = 256;
/// How long to wait for another process holding the database lock (e.g. a backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows [`SqliteQueue::prune`] deletes per transaction, so pruning a large backlog never
/// holds the writer (and the enqueues behind it) for long.
const PRUNE_CHUNK: i64 = 5000;

/// Schema migrations; after applying `MIGRATIONS[i]` the database's `user_version` is `i + 1`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &["CREATE TABLE calls (
        id              TEXT    NOT NULL PRIMARY KEY,
        function        TEXT    NOT NULL,
        state           TEXT    NOT NULL,
        method          TEXT    NOT NULL,
        path            TEXT    NOT NULL,
        -- The CallRequest as JSON, body base64 (see StoredRequest).
        request         TEXT    NOT NULL,
        callback_url    TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        status          INTEGER,
        last_error      TEXT,
        callback_result TEXT,
        created_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        next_attempt_ms INTEGER NOT NULL,
        lease_until_ms  INTEGER
    ) STRICT;
    -- due_functions, depth, requeue_*.
    CREATE INDEX calls_due ON calls (state, function, next_attempt_ms);
    -- claim: the pending calls of one function, oldest first, without sorting the backlog.
    CREATE INDEX calls_claim ON calls (function, created_at_ms, id)
        WHERE state IN ('queued', 'retrying');
    -- list(Some(state)) newest first, prune.
    CREATE INDEX calls_state_created ON calls (state, created_at_ms, id);
    -- list(None) newest first.
    CREATE INDEX calls_created ON calls (created_at_ms, id);"];

/// Marks a call done (`?1` id, `?2` status, `?3` now). A late answer for a call already
/// finished (its lease expired and another worker got there first) must not overwrite that
/// outcome: the first final state wins.
const COMPLETE: &str = "UPDATE calls SET state = 'done', status = ?2, lease_until_ms = NULL,
        updated_at_ms = ?3
     WHERE id = ?1 AND state IN ('queued', 'retrying', 'running')
     RETURNING function";

const RECORD_COLUMNS: &str = "id, function, state, method, path, attempts, status, last_error, \
     callback_url, callback_result, created_at_ms, updated_at_ms, next_attempt_ms";

/// The durable embedded queue. Share it behind the `Arc` [`open`](Self::open) returns.
///
/// Dropping the last reference lets the writer finish the jobs already sent, then joins it
/// (a few milliseconds at most), so a reopened database sees everything acknowledged.
pub struct SqliteQueue {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    clock: Clock,
    pending: Pending,
}

/// Active calls (queued, retrying, running) per function: what [`Queue::depth`] reports.
/// Counted once at open, then kept up to date by the writer after each commit, because
/// counting them with SQL at every `/metrics` scrape walked the whole backlog (~7 ms per
/// scrape with 45,000 calls queued, on the machine the drain figure is measured on).
type Pending = Arc<Mutex<HashMap<String, u64>>>;

/// Changes to [`Pending`] a write makes: (function, +1 or -1) per call.
type Deltas = Vec<(String, i64)>;

fn apply_deltas(pending: &Pending, deltas: Deltas) {
    if deltas.is_empty() {
        return;
    }
    let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
    for (function, delta) in deltas {
        // Only the functions touched: this runs once per committed enqueue.
        match p.get_mut(&function) {
            Some(n) => {
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    p.remove(&function);
                }
            }
            None => {
                if let Ok(n @ 1..) = u64::try_from(delta) {
                    p.insert(function, n);
                }
            }
        }
    }
}

/// The active calls per function, counted with SQL (at open).
fn count_pending(conn: &Connection) -> Result<HashMap<String, u64>, QueueError> {
    let mut stmt = conn
        .prepare(
            "SELECT function, COUNT(*) FROM calls
             WHERE state IN ('queued', 'retrying', 'running')
             GROUP BY function",
        )
        .db()?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(Iterator::collect)
        .db()?;
    Ok(rows
        .into_iter()
        .map(|(f, n)| (f, u64::try_from(n).unwrap_or(0)))
        .collect())
}

impl SqliteQueue {
    /// Opens or creates the queue database (the parent dir must exist) and starts its writer
    /// thread.
    ///
    /// The file is created mode 0600 (tightened if looser): request bodies and headers may
    /// carry secrets; SQLite gives `-wal`/`-shm` the same mode. `synchronous=FULL` because an
    /// acknowledged enqueue must survive a power loss, not only a crash of fjord; group commit
    /// keeps that affordable.
    pub fn open(path: &Path) -> Result<Arc<SqliteQueue>, QueueError> {
        Self::open_with_clock(path, Clock::system())
    }

    /// [`open`](Self::open) reading the time from `clock` (tests move a [`ManualClock`]
    /// instead of sleeping).
    ///
    /// [`ManualClock`]: crate::ManualClock
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Arc<SqliteQueue>, QueueError> {
        let mut conn = fjord_sqlite::open(path, fjord_sqlite::Synchronous::Full, BUSY_TIMEOUT)
            .map_err(open_failed)?;
        conn.set_prepared_statement_cache_capacity(32);
        fjord_sqlite::migrate(&mut conn, MIGRATIONS).map_err(open_failed)?;
        let pending: Pending = Arc::new(Mutex::new(count_pending(&conn)?));

        let reader = Connection::open(path).db()?;
        reader.busy_timeout(BUSY_TIMEOUT).db()?;
        // Reads must never write, e.g. through a bug; this makes SQLite refuse.
        reader.pragma_update(None, "query_only", true).db()?;

        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let writer = std::thread::Builder::new()
            .name("fjord-queue-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| QueueError::Storage(format!("cannot start the queue writer: {e}")))?;
        Ok(Arc::new(SqliteQueue {
            jobs: Some(tx),
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            clock,
            pending,
        }))
    }

    /// Runs `f` on the writer thread inside the current group transaction; answers only
    /// after that transaction committed (or with its error if it did not).
    async fn write<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        self.write_job(f, false).await
    }

    /// [`write`](Self::write) for work nobody waits on to make progress (recording an
    /// outcome): the writer may hold it up to [`LINGER`] so a burst shares one commit.
    async fn write_deferrable<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        self.write_job(f, true).await
    }

    /// [`write`](Self::write) (or, `deferrable`, [`write_deferrable`](Self::write_deferrable))
    /// of a job that changes how many calls are active: its deltas apply once its
    /// transaction committed, on the writer thread (also when the caller stopped waiting).
    async fn write_counted<T, F>(&self, f: F, deferrable: bool) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Deltas), QueueError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(QueueError::Closed)?;
        let job = WriteJob {
            f,
            tx,
            deferrable,
            pending: self.pending.clone(),
        };
        jobs.send(Box::new(job)).map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Marks calls finished (`sql` returns each changed call's function): one fewer active
    /// call for each.
    fn finish_counted<P>(
        &self,
        sql: &'static str,
        rows: Vec<P>,
    ) -> BoxFuture<'_, Result<(), QueueError>>
    where
        P: FnOnce(i64) -> Vec<rusqlite::types::Value> + Send + 'static,
    {
        let clock = self.clock.clone();
        Box::pin(self.write_counted(
            move |conn| {
                let mut stmt = conn.prepare_cached(sql).db()?;
                let now = to_sql(clock.now_ms());
                let mut deltas = Vec::new();
                for bind in rows {
                    let function: Option<String> = stmt
                        .query_row(rusqlite::params_from_iter(bind(now)), |r| r.get(0))
                        .optional()
                        .db()?;
                    deltas.extend(function.map(|f| (f, -1)));
                }
                Ok(((), deltas))
            },
            true,
        ))
    }

    async fn write_job<T, F>(&self, f: F, deferrable: bool) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        self.write_counted(move |conn| f(conn).map(|v| (v, Vec::new())), deferrable)
            .await
    }

    /// Runs `f` on the read connection on tokio's blocking pool (SQLite calls block).
    async fn read<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable: every statement
            // is self-contained.
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| QueueError::Storage(format!("queue read task failed: {e}")))?
    }
}

impl Drop for SqliteQueue {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has run every job already sent.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the queue writer thread panicked");
        }
    }
}

impl Queue for SqliteQueue {
    fn enqueue(&self, call: NewCall) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            // Encode here, on the caller's task, to keep the single writer thread lean.
            let request = encode_request(&call.request)?;
            let clock = self.clock.clone();
            self.write_counted(
                move |conn| {
                    let now = to_sql(clock.now_ms());
                    let inserted = conn
                        .prepare_cached(
                            "INSERT INTO calls (id, function, state, method, path, request,
                            callback_url, attempts, created_at_ms, updated_at_ms, next_attempt_ms)
                         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, 0, ?7, ?7, ?7)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                call.id,
                                call.function,
                                call.request.method,
                                call.request.path,
                                request,
                                call.request.callback_url,
                                now
                            ])
                        });
                    match inserted {
                        Ok(_) => Ok(((), vec![(call.function, 1)])),
                        Err(e)
                            if e.sqlite_error_code()
                                == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                        {
                            Err(QueueError::Duplicate(call.id))
                        }
                        Err(e) => Err(storage(e)),
                    }
                },
                false,
            )
            .await
        })
    }

    fn due_functions(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        let clock = self.clock.clone();
        Box::pin(self.read(move |conn| {
            // A loose index scan: one indexed probe per function and state, instead of
            // reading (and sorting) every pending call of a large backlog.
            let mut next = conn
                .prepare_cached(
                    "SELECT function, next_attempt_ms FROM calls
                     WHERE state = ?1 AND function > ?2
                     ORDER BY function, next_attempt_ms LIMIT 1",
                )
                .db()?;
            let now = to_sql(clock.now_ms());
            let mut due = std::collections::BTreeSet::new();
            for state in ["queued", "retrying"] {
                let mut after = String::new();
                while let Some((function, at)) = next
                    .query_row(params![state, after], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()
                    .db()?
                {
                    // Ordered by next_attempt_ms within the function: its earliest call.
                    if at <= now {
                        due.insert(function.clone());
                    }
                    after = function;
                }
            }
            Ok(due.into_iter().collect())
        }))
    }

    fn claim(
        &self,
        function: &str,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, QueueError>> {
        let function = function.to_owned();
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let f = function.clone();
            let clock = self.clock.clone();
            let rows = self
                .write(move |conn| {
                    with_savepoint(conn, |conn| claim(conn, &f, max, lease, clock.now_ms()))
                })
                .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, request, attempt) in rows {
                let decoded = u32::try_from(attempt)
                    .map_err(|_| format!("attempts {attempt} out of range"))
                    .and_then(|a| decode_request(&request).map(|r| (a, r)));
                match decoded {
                    Ok((attempt, request)) => claimed.push(Claimed {
                        id,
                        function: function.clone(),
                        request,
                        attempt,
                    }),
                    // Erroring would wedge the function's queue on this row forever;
                    // dead-lettering it keeps the rest flowing and leaves the reason where
                    // operators look.
                    Err(reason) => {
                        tracing::error!(call = %id, %reason, "dead-lettering a corrupt queued call");
                        self.dead_letter(&id, None, &format!("corrupt stored request: {reason}"))
                            .await?;
                    }
                }
            }
            Ok(claimed)
        })
    }

    fn complete(&self, id: &str, status: u16) -> BoxFuture<'_, Result<(), QueueError>> {
        self.complete_many(vec![(id.to_owned(), status)])
    }

    fn complete_many(&self, done: Vec<(String, u16)>) -> BoxFuture<'_, Result<(), QueueError>> {
        use rusqlite::types::Value;
        let rows = done
            .into_iter()
            .map(|(id, status)| {
                move |now: i64| {
                    vec![
                        Value::Text(id),
                        Value::Integer(status.into()),
                        Value::Integer(now),
                    ]
                }
            })
            .collect();
        self.finish_counted(COMPLETE, rows)
    }

    fn retry_later(
        &self,
        id: &str,
        at_ms: u64,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let (id, error) = (id.to_owned(), error.to_owned());
        let at = to_sql(at_ms);
        self.update(
            "UPDATE calls SET state = 'retrying', next_attempt_ms = ?2, status = ?3,
                last_error = ?4, lease_until_ms = NULL, updated_at_ms = ?5
             WHERE id = ?1 AND state IN ('queued', 'retrying', 'running')",
            move |s, now| s.execute(params![id, at, status, error, now]),
        )
    }

    fn dead_letter(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        use rusqlite::types::Value;
        let (id, error) = (id.to_owned(), error.to_owned());
        let bind = move |now: i64| {
            vec![
                Value::Text(id),
                status.map_or(Value::Null, |s| Value::Integer(s.into())),
                Value::Text(error),
                Value::Integer(now),
            ]
        };
        self.finish_counted(
            "UPDATE calls SET state = 'dead', status = ?2, last_error = ?3, lease_until_ms = NULL,
                updated_at_ms = ?4
             WHERE id = ?1 AND state IN ('queued', 'retrying', 'running')
             RETURNING function",
            vec![bind],
        )
    }

    fn set_callback_result(&self, id: &str, result: &str) -> BoxFuture<'_, Result<(), QueueError>> {
        let (id, result) = (id.to_owned(), result.to_owned());
        self.update(
            "UPDATE calls SET callback_result = ?2, updated_at_ms = ?3 WHERE id = ?1",
            move |s, now| s.execute(params![id, result, now]),
        )
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, QueueError>> {
        let id = id.to_owned();
        Box::pin(self.read(move |conn| {
            let raw = conn
                .prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM calls WHERE id = ?1"))
                .and_then(|mut s| s.query_row([&id], RawRecord::read).optional())
                .db()?;
            raw.map(RawRecord::decode).transpose()
        }))
    }

    fn cancel(&self, id: &str) -> BoxFuture<'_, Result<CancelOutcome, QueueError>> {
        let id = id.to_owned();
        let clock = self.clock.clone();
        Box::pin(self.write_counted(
            move |conn| {
                let row: Option<(String, String)> = conn
                    .prepare_cached("SELECT state, function FROM calls WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .db()?;
                let Some((state, function)) = row else {
                    return Ok((CancelOutcome::NotFound, Vec::new()));
                };
                let state = parse_state(&id, &state)?;
                if !matches!(state, CallState::Queued | CallState::Retrying) {
                    return Ok((CancelOutcome::TooLate(state), Vec::new()));
                }
                conn.prepare_cached(
                    "UPDATE calls SET state = 'cancelled', updated_at_ms = ?2 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, to_sql(clock.now_ms())]))
                .db()?;
                Ok((CancelOutcome::Cancelled, vec![(function, -1)]))
            },
            false,
        ))
    }

    fn list(
        &self,
        state: Option<CallState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CallRecord>, QueueError>> {
        Box::pin(self.read(move |conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let raws: Vec<RawRecord> = match state {
                Some(state) => conn
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM calls WHERE state = ?1
                         ORDER BY created_at_ms DESC, id DESC LIMIT ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![state.as_str(), limit], RawRecord::read)?
                            .collect()
                    }),
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM calls
                         ORDER BY created_at_ms DESC, id DESC LIMIT ?1"
                    ))
                    .and_then(|mut s| s.query_map([limit], RawRecord::read)?.collect()),
            }
            .db()?;
            raws.into_iter().map(RawRecord::decode).collect()
        }))
    }

    fn replay(&self, id: &str) -> BoxFuture<'_, Result<bool, QueueError>> {
        let id = id.to_owned();
        let clock = self.clock.clone();
        // last_error is kept: it says why the call died, which matters if it dies again.
        Box::pin(self.write_counted(
            move |conn| {
                let now = to_sql(clock.now_ms());
                let function: Option<String> = conn
                    .prepare_cached(
                        "UPDATE calls SET state = 'queued', attempts = 0, next_attempt_ms = ?2,
                            lease_until_ms = NULL, updated_at_ms = ?2
                         WHERE id = ?1 AND state = 'dead'
                         RETURNING function",
                    )
                    .and_then(|mut s| s.query_row(params![id, now], |r| r.get(0)).optional())
                    .db()?;
                let replayed = function.is_some();
                Ok((replayed, function.map(|f| (f, 1)).into_iter().collect()))
            },
            false,
        ))
    }

    fn depth(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, QueueError>> {
        let mut depth: Vec<(String, u64)> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(f, n)| (f.clone(), *n))
            .collect();
        depth.sort();
        Box::pin(std::future::ready(Ok(depth)))
    }

    fn requeue_expired(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        // Attempts stay counted: the interrupted attempt may have run (at-least-once).
        self.requeue("AND lease_until_ms < ?1")
    }

    fn requeue_running(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.requeue("")
    }

    /// Deletes in chunks of [`PRUNE_CHUNK`] rows so enqueues are never held up behind one
    /// huge transaction.
    fn prune(&self, older_than_ms: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let cutoff = to_sql(older_than_ms);
            let mut total = 0u64;
            loop {
                let deleted = self
                    .write(move |conn| {
                        conn.prepare_cached(
                            "DELETE FROM calls WHERE rowid IN (
                            SELECT rowid FROM calls
                            WHERE state IN ('done', 'dead', 'cancelled') AND updated_at_ms < ?1
                            LIMIT ?2)",
                        )
                        .and_then(|mut s| s.execute(params![cutoff, PRUNE_CHUNK]))
                        .db()
                    })
                    .await?;
                total += deleted as u64;
                if (deleted as i64) < PRUNE_CHUNK {
                    return Ok(total);
                }
            }
        })
    }
}

impl SqliteQueue {
    /// A single-statement write recording a call's outcome (deferrable: it may share a
    /// later commit); `bind` gets the statement and now (Unix ms). A call that no longer
    /// exists (pruned) is not an error: there is nothing left to update.
    fn update<F>(&self, sql: &'static str, bind: F) -> BoxFuture<'_, Result<(), QueueError>>
    where
        F: FnOnce(&mut rusqlite::CachedStatement<'_>, i64) -> rusqlite::Result<usize>
            + Send
            + 'static,
    {
        let clock = self.clock.clone();
        Box::pin(self.write_deferrable(move |conn| {
            let mut stmt = conn.prepare_cached(sql).db()?;
            bind(&mut stmt, to_sql(clock.now_ms())).db()?;
            Ok(())
        }))
    }

    fn requeue(&self, condition: &'static str) -> BoxFuture<'_, Result<u64, QueueError>> {
        let clock = self.clock.clone();
        Box::pin(self.write(move |conn| {
            let sql = format!(
                "UPDATE calls SET state = 'queued', next_attempt_ms = ?1, lease_until_ms = NULL,
                    updated_at_ms = ?1
                 WHERE state = 'running' {condition}"
            );
            let n = conn
                .prepare_cached(&sql)
                .and_then(|mut s| s.execute([to_sql(clock.now_ms())]))
                .db()?;
            Ok(n as u64)
        }))
    }
}

/// Marks up to `max` due calls of `function` running and returns them as stored
/// (id, request, attempt number); decoding happens outside the writer thread.
fn claim(
    conn: &Connection,
    function: &str,
    max: usize,
    lease: Duration,
    now: u64,
) -> Result<Vec<(String, String, i64)>, QueueError> {
    let lease_until =
        to_sql(now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)));
    let now = to_sql(now);
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut due: Vec<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT id, request, attempts FROM calls
             WHERE function = ?1 AND state IN ('queued', 'retrying') AND next_attempt_ms <= ?2
             ORDER BY created_at_ms, id LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![function, now, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .db()?;
    let mut mark = conn
        .prepare_cached(
            "UPDATE calls SET state = 'running', attempts = ?2, lease_until_ms = ?3,
                updated_at_ms = ?4
             WHERE id = ?1",
        )
        .db()?;
    for (id, _, attempts) in &mut due {
        *attempts = attempts.saturating_add(1);
        mark.execute(params![&*id, *attempts, lease_until, now])
            .db()?;
    }
    Ok(due)
}

/// Runs `f` so that either all or none of its statements take effect, even though it shares
/// the group transaction with other jobs.
fn with_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, QueueError>,
) -> Result<T, QueueError> {
    conn.execute_batch("SAVEPOINT job").db()?;
    let result = f(conn);
    let end = if result.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    // If SQLite already rolled back the whole transaction there is no savepoint left; the
    // writer notices that and fails the batch.
    if !conn.is_autocommit() {
        conn.execute_batch(end).db()?;
    }
    result
}

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs inside the open group transaction; returns how to answer once its fate is known
    /// (`None`: committed; `Some(error)`: rolled back).
    fn run(self: Box<Self>, conn: &Connection) -> Answer;
    /// Answers without running (the transaction could not even start).
    fn fail(self: Box<Self>, error: &str);
    /// Nobody waits on it to make progress: it may wait [`LINGER`] to share a commit.
    fn deferrable(&self) -> bool;
}

type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// A write; its [`Deltas`] apply to the active-call counts once its transaction committed.
struct WriteJob<F, T> {
    f: F,
    tx: oneshot::Sender<Result<T, QueueError>>,
    deferrable: bool,
    pending: Pending,
}

impl<F, T> Job for WriteJob<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<(T, Deltas), QueueError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Answer {
        let WriteJob { f, tx, pending, .. } = *self;
        let result = f(conn);
        Box::new(move |rolled_back: Option<&str>| {
            let answer = match rolled_back {
                None => result.map(|(value, deltas)| {
                    apply_deltas(&pending, deltas);
                    value
                }),
                Some(e) => Err(QueueError::Storage(e.to_owned())),
            };
            // The caller may have given up waiting (its future dropped); nothing to do.
            let _ = tx.send(answer);
        })
    }

    fn fail(self: Box<Self>, error: &str) {
        let _ = self.tx.send(Err(QueueError::Storage(error.to_owned())));
    }

    fn deferrable(&self) -> bool {
        self.deferrable
    }
}

/// The writer: waits for a job, takes everything else already waiting, and commits the lot
/// in one transaction. Ends when the queue is dropped.
fn writer_loop(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        let mut all_deferrable = first.deferrable();
        batch.push(first);
        let linger_until = std::time::Instant::now() + LINGER;
        loop {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => {
                        all_deferrable &= job.deferrable();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if !all_deferrable || batch.len() >= LINGER_BATCH {
                break;
            }
            // Only outcomes to record: wait briefly so many share one commit (and fsync).
            let left = linger_until.saturating_duration_since(std::time::Instant::now());
            match jobs.recv_timeout(left) {
                Ok(job) => {
                    all_deferrable &= job.deferrable();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        run_batch(&conn, &mut batch);
    }
    // Dropping `conn` checkpoints the WAL if this is the last connection.
}

fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let error = format!("cannot begin a queue transaction: {e}");
        tracing::error!("{error}");
        batch.drain(..).for_each(|job| job.fail(&error));
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut jobs = batch.drain(..);
    let mut outcome = Ok(());
    for job in jobs.by_ref() {
        answers.push(job.run(conn));
        // Some errors (disk full, I/O) make SQLite roll back the whole transaction; what
        // the earlier jobs did is gone, so none of them may be acknowledged.
        if conn.is_autocommit() {
            outcome =
                Err("the queue transaction was rolled back (disk full or I/O error?)".to_owned());
            break;
        }
    }
    if outcome.is_ok() {
        outcome = conn
            .execute_batch("COMMIT")
            .map_err(|e| format!("cannot commit the queue transaction: {e}"));
    }
    match outcome {
        Ok(()) => answers.into_iter().for_each(|answer| answer(None)),
        Err(error) => {
            tracing::error!("{error}");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            answers.into_iter().for_each(|answer| answer(Some(&error)));
            jobs.for_each(|job| job.fail(&error));
        }
    }
}

/// The stored form of a [`CallRequest`]: JSON (readable with the sqlite3 shell) with the
/// body in base64.
#[derive(Serialize, Deserialize)]
struct StoredRequest<'a> {
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    callback_url: Option<String>,
}

/// Encodes a request as the `calls.request` column stores it: JSON, the body in base64.
pub fn encode_request(r: &CallRequest) -> Result<String, QueueError> {
    serde_json::to_string(&StoredRequest {
        method: r.method.as_str().into(),
        path: r.path.as_str().into(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: BASE64.encode(&r.body),
        callback_url: r.callback_url.clone(),
    })
    .map_err(|e| QueueError::Storage(format!("cannot encode the request: {e}")))
}

/// Decodes a stored `calls.request` column, as [`Queue::claim`] does before handing a call to
/// a worker; the error says why the row is corrupt. Public for the fuzz targets (`fuzz/`).
pub fn decode_request(s: &str) -> Result<CallRequest, String> {
    let stored: StoredRequest<'_> = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let body = BASE64
        .decode(stored.body.as_bytes())
        .map_err(|e| format!("body: {e}"))?;
    Ok(CallRequest {
        method: stored.method.into_owned(),
        path: stored.path.into_owned(),
        query: stored.query,
        headers: stored.headers,
        body,
        callback_url: stored.callback_url,
    })
}

/// A `calls` row as SQLite returns it; [`decode`](Self::decode) checks it.
struct RawRecord {
    id: String,
    function: String,
    state: String,
    method: String,
    path: String,
    attempts: i64,
    status: Option<i64>,
    last_error: Option<String>,
    callback_url: Option<String>,
    callback: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    next_attempt_ms: i64,
}

impl RawRecord {
    fn read(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            id: r.get(0)?,
            function: r.get(1)?,
            state: r.get(2)?,
            method: r.get(3)?,
            path: r.get(4)?,
            attempts: r.get(5)?,
            status: r.get(6)?,
            last_error: r.get(7)?,
            callback_url: r.get(8)?,
            callback: r.get(9)?,
            created_at_ms: r.get(10)?,
            updated_at_ms: r.get(11)?,
            next_attempt_ms: r.get(12)?,
        })
    }

    fn decode(self) -> Result<CallRecord, QueueError> {
        let id = &self.id;
        let ms = |v: i64, what: &str| {
            u64::try_from(v).map_err(|_| corrupt(id, &format!("{what} {v} out of range")))
        };
        Ok(CallRecord {
            state: parse_state(id, &self.state)?,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| corrupt(id, &format!("attempts {} out of range", self.attempts)))?,
            status: self
                .status
                .map(|s| {
                    u16::try_from(s).map_err(|_| corrupt(id, &format!("status {s} out of range")))
                })
                .transpose()?,
            created_at_ms: ms(self.created_at_ms, "created_at_ms")?,
            updated_at_ms: ms(self.updated_at_ms, "updated_at_ms")?,
            next_attempt_ms: ms(self.next_attempt_ms, "next_attempt_ms")?,
            function: self.function,
            method: self.method,
            path: self.path,
            last_error: self.last_error,
            callback_url: self.callback_url,
            callback: self.callback,
            id: self.id,
        })
    }
}

fn parse_state(id: &str, state: &str) -> Result<CallState, QueueError> {
    CallState::parse(state).ok_or_else(|| corrupt(id, &format!("unknown state {state:?}")))
}

fn corrupt(id: &str, reason: &str) -> QueueError {
    QueueError::Storage(format!("call {id} is corrupt: {reason}"))
}

fn storage(e: rusqlite::Error) -> QueueError {
    QueueError::Storage(e.to_string())
}

/// `?`-friendly conversion of SQLite errors without a public `From` impl.
trait Db<T> {
    fn db(self) -> Result<T, QueueError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, QueueError> {
        self.map_err(storage)
    }
}

/// SQLite integers are i64; times past year 292 million saturate rather than wrap.
fn to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn open_failed(e: fjord_sqlite::Error) -> QueueError {
    QueueError::Storage(match e {
        fjord_sqlite::Error::UnsupportedSchema { .. } => format!("queue database has {e}"),
        e => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = CallRequest {
            method: "POST".into(),
            path: "/a/b".into(),
            query: Some("x=1".into()),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: vec![0, 1, 2, 255],
            callback_url: Some("http://cb".into()),
        };
        assert_eq!(decode_request(&encode_request(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn corrupt_requests_are_errors() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"method":"GET"}"#,
            r#"{"method":"GET","path":"/","body":"!!"}"#,
        ] {
            assert!(decode_request(bad).is_err(), "{bad}");
        }
    }
}
