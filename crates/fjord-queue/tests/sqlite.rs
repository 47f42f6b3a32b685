//! What only the SQLite backend promises: durability across reopen and `kill -9`, file
//! permissions, schema handling, corrupt rows, retention, and its enqueue rate.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_queue::contract::call;
use fjord_queue::sqlite::SqliteQueue;
use fjord_queue::{CallState, Queue, now_ms};
use rusqlite::Connection;

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

#[test]
fn file_is_private_and_durable_settings_hold() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(q);

    // A looser existing file is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _q = SqliteQueue::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let conn = raw(&path);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteQueue::open(&path).err().expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn claim_and_due_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    drop(SqliteQueue::open(&path).unwrap());
    let conn = raw(&path);
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let claim = plan(
        "SELECT id, request, attempts FROM calls
         WHERE function = 'f' AND state IN ('queued', 'retrying') AND next_attempt_ms <= 5
         ORDER BY created_at_ms, id LIMIT 10",
    );
    assert!(claim.contains("calls_claim"), "{claim}");
    assert!(
        !claim.contains("TEMP B-TREE"),
        "claim must not sort: {claim}"
    );
    // due_functions' loose index scan: one probe per function, no sorting.
    let due = plan(
        "SELECT function, next_attempt_ms FROM calls
         WHERE state = 'queued' AND function > 'a'
         ORDER BY function, next_attempt_ms LIMIT 1",
    );
    assert!(due.contains("calls_due"), "{due}");
    assert!(
        !due.contains("TEMP B-TREE"),
        "due scan must not sort: {due}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    for i in 0..20 {
        q.enqueue(call(&format!("r{i:02}"), "f")).await.unwrap();
    }
    let claimed = q.claim("f", 3, Duration::from_secs(60)).await.unwrap();
    q.complete("r00", 200).await.unwrap();
    q.set_callback_result("r00", "delivered (200)")
        .await
        .unwrap();
    q.dead_letter("r01", Some(500), "boom").await.unwrap();
    let before = q.list(None, 100).await.unwrap();
    drop(q);

    let q = SqliteQueue::open(&path).unwrap();
    assert_eq!(q.list(None, 100).await.unwrap(), before);
    assert_eq!(
        q.get("r00").await.unwrap().unwrap().callback.as_deref(),
        Some("delivered (200)")
    );
    // The lease survives too: r02 is still running until requeued.
    assert_eq!(q.requeue_running().await.unwrap(), 1);
    let again = q.claim("f", 1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again[0].id, "r02");
    assert_eq!(again[0].request, claimed[2].request);
    assert_eq!(again[0].attempt, 2);
}

/// The active calls per function as SQL counts them: what `depth` must say.
fn counted(path: &Path) -> Vec<(String, u64)> {
    let conn = raw(path);
    let mut stmt = conn
        .prepare(
            "SELECT function, COUNT(*) FROM calls WHERE state IN ('queued', 'retrying', 'running')
             GROUP BY function ORDER BY function",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `depth` is kept in memory (no scan of the backlog per scrape): it follows every state
/// change, duplicates and calls already finished change nothing, and a reopen counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_follows_every_state_change_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    for i in 0..6 {
        q.enqueue(call(&format!("a{i}"), "a")).await.unwrap();
    }
    q.enqueue(call("b0", "b")).await.unwrap();
    assert!(q.enqueue(call("a0", "a")).await.is_err(), "duplicate");
    let e = expected(&[("a", 6), ("b", 1)]);
    assert_eq!(q.depth().await.unwrap(), e);
    assert_eq!(counted(&path), e);

    let claimed = q.claim("a", 4, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    q.complete("a0", 200).await.unwrap();
    q.complete_many(vec![("a1".into(), 200), ("a0".into(), 200)])
        .await
        .unwrap();
    q.retry_later("a2", now_ms() + 60_000, Some(503), "busy")
        .await
        .unwrap();
    q.dead_letter("a3", Some(500), "boom").await.unwrap();
    q.dead_letter("a3", Some(500), "again").await.unwrap();
    assert!(matches!(
        q.cancel("a4").await.unwrap(),
        fjord_queue::CancelOutcome::Cancelled
    ));
    let e = expected(&[("a", 2), ("b", 1)]);
    assert_eq!(q.depth().await.unwrap(), e);
    assert_eq!(counted(&path), e);

    assert!(q.replay("a3").await.unwrap());
    assert!(!q.replay("a3").await.unwrap());
    q.complete("b0", 200).await.unwrap();
    let e = expected(&[("a", 3)]);
    assert_eq!(q.depth().await.unwrap(), e);
    assert_eq!(counted(&path), e);
    drop(q);

    let q = SqliteQueue::open(&path).unwrap();
    assert_eq!(q.depth().await.unwrap(), vec![("a".to_owned(), 3)]);
}

fn expected(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_works_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(&dir.path().join("queue.db")).unwrap();
    let n = 12_000;
    let futs = (0..n).map(|i| {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.enqueue(call(&format!("p{i}"), "f")).await })
    });
    for f in futs.collect::<Vec<_>>() {
        f.await.unwrap().unwrap();
    }
    loop {
        let c = q.claim("f", 1000, Duration::from_secs(60)).await.unwrap();
        if c.is_empty() {
            break;
        }
        for c in c {
            q.complete(&c.id, 200).await.unwrap();
        }
    }
    assert_eq!(q.prune(now_ms() + 1).await.unwrap(), n);
    assert!(q.list(None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    for id in ["bad-state", "bad-attempts", "bad-request", "good"] {
        q.enqueue(call(id, "f")).await.unwrap();
    }
    let conn = raw(&path);
    conn.execute_batch(
        "UPDATE calls SET state = 'exploded' WHERE id = 'bad-state';
         UPDATE calls SET attempts = -3 WHERE id = 'bad-attempts';
         UPDATE calls SET request = '{\"method\": 7' WHERE id = 'bad-request';",
    )
    .unwrap();

    let err = q.get("bad-state").await.unwrap_err().to_string();
    assert!(err.contains("bad-state is corrupt"), "{err}");
    assert!(q.get("bad-attempts").await.is_err());
    assert!(q.list(None, 10).await.is_err());
    assert!(q.cancel("bad-state").await.is_err());

    // Claim skips past corrupt requests by dead-lettering them, so one bad row cannot
    // wedge the function's queue.
    let claimed = q.claim("f", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    for id in ["bad-attempts", "bad-request"] {
        let (state, error): (String, String) = conn
            .query_row(
                "SELECT state, last_error FROM calls WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(state, "dead", "{id}");
        assert!(error.starts_with("corrupt stored request"), "{error}");
    }
    let r = q.get("bad-request").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Dead);
}

/// Set in the child process of [`acknowledged_calls_survive_sigkill`]: the database to fill.
const CRASH_CHILD_DB: &str = "FJORD_QUEUE_CRASH_CHILD_DB";

/// The child of [`acknowledged_calls_survive_sigkill`] (this test binary run again with
/// [`CRASH_CHILD_DB`] set): enqueues from many tasks and prints `ACK <id>` for every
/// acknowledged call until it is killed. It never returns: if nobody kills it, it exits with
/// status 3, which the parent reports as a failure.
fn crash_child(path: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = SqliteQueue::open(path).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    // Bounded, so an orphaned child cannot run forever.
                    for i in 0..100_000 {
                        let id = format!("k{t}-{i}");
                        q.enqueue(call(&id, "crash")).await.unwrap();
                        // Stdout is line-buffered: the line is out once it returns.
                        println!("ACK {id}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    std::process::exit(3);
}

/// Kills the child with SIGKILL on drop so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real durability test: a process acknowledging enqueues is `kill -9`ed mid-stream;
/// every call it acknowledged must be in the database afterwards.
///
/// The child is this very test, run again in a new process of this test binary with
/// [`CRASH_CHILD_DB`] set, so it cannot pass without doing its part.
#[test]
fn acknowledged_calls_survive_sigkill() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_DB) {
        crash_child(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_calls_survive_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = Vec::new();
    let mut read_ack = |out: &mut BufReader<_>, acked: &mut Vec<String>| -> bool {
        line.clear();
        if out.read_until(b'\n', &mut line).unwrap() == 0 {
            return false;
        }
        // A line cut short by the kill has no newline; its call may not have been acked.
        if let Some(id) = line
            .strip_suffix(b"\n")
            .and_then(|l| l.strip_prefix(b"ACK "))
        {
            acked.push(String::from_utf8(id.to_vec()).unwrap());
        }
        true
    };
    while acked.len() < 3000 {
        assert!(read_ack(&mut out, &mut acked), "child ended early");
    }
    child.0.kill().unwrap(); // SIGKILL
    while read_ack(&mut out, &mut acked) {}
    let status = child.0.wait().unwrap();
    // Killed by our SIGKILL mid-stream, not ended some other way (a panic, exit 3).
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child did not die of SIGKILL: {status}"
    );

    let conn = raw(&path);
    let mut missing = 0;
    let mut stmt = conn
        .prepare("SELECT count(*) FROM calls WHERE id = ?1")
        .unwrap();
    for id in &acked {
        let n: i64 = stmt.query_row([id], |r| r.get(0)).unwrap();
        missing += usize::from(n != 1);
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged calls lost",
        acked.len()
    );
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    println!("kill -9: {} acknowledged, {stored} stored", acked.len());
    assert!(stored as usize >= acked.len());
    drop(stmt);
    drop(conn);
    // And the queue opens normally afterwards.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = SqliteQueue::open(&path).unwrap();
        let depth = q.depth().await.unwrap();
        assert_eq!(depth, vec![("crash".to_owned(), stored as u64)]);
    });
}

/// Prints the accepted-enqueue rate with many concurrent enqueuers (no timing assertion:
/// CI machines vary). `FJORD_QUEUE_BENCH_CALLS`/`_TASKS`/`_DIR` set the number of calls,
/// of concurrent enqueuers and where the database goes; run with
/// `cargo test --release -p fjord-queue --test sqlite enqueue_rate -- --nocapture`.
#[test]
fn enqueue_rate() {
    let calls: usize = std::env::var("FJORD_QUEUE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let enqueuers: usize = std::env::var("FJORD_QUEUE_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir_in(
        std::env::var_os("FJORD_QUEUE_BENCH_DIR")
            .unwrap_or_else(|| std::env::temp_dir().into_os_string()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = SqliteQueue::open(&dir.path().join("queue.db")).unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = (0..enqueuers)
            .map(|t| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let mut i = t;
                    while i < calls {
                        let mut c = call(&format!("b{i:08}"), "bench.fn");
                        c.request.body = vec![b'x'; 128];
                        q.enqueue(c).await.unwrap();
                        i += enqueuers;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        println!(
            "enqueue rate: {calls} calls from {enqueuers} tasks in {elapsed:.2?} = {:.0} calls/s",
            calls as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(
            q.depth().await.unwrap(),
            vec![("bench.fn".to_owned(), calls as u64)]
        );
    });
}

/// Prints how fast a backlog drains through claim + complete alone, as the dispatcher uses
/// them: batches of claims while completions of the previous batch are being committed.
/// No timing assertion; run with
/// `cargo test --release -p fjord-queue --test sqlite drain_rate -- --nocapture`.
#[test]
fn drain_rate() {
    let calls: usize = std::env::var("FJORD_QUEUE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir_in(
        std::env::var_os("FJORD_QUEUE_BENCH_DIR")
            .unwrap_or_else(|| std::env::temp_dir().into_os_string()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = SqliteQueue::open(&dir.path().join("queue.db")).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let mut i = t;
                    while i < calls {
                        q.enqueue(call(&format!("d{i:08}"), "bench.fn"))
                            .await
                            .unwrap();
                        i += 64;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let start = Instant::now();
        let mut completions = tokio::task::JoinSet::new();
        let mut done = 0;
        loop {
            let batch = q
                .claim("bench.fn", 128, Duration::from_secs(60))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for c in batch {
                let q = Arc::clone(&q);
                completions.spawn(async move { q.complete(&c.id, 200).await.unwrap() });
            }
            while completions.len() > 256 {
                completions.join_next().await.unwrap().unwrap();
                done += 1;
            }
        }
        while let Some(r) = completions.join_next().await {
            r.unwrap();
            done += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(done, calls);
        assert!(q.depth().await.unwrap().is_empty());
        println!(
            "drain rate: {calls} calls claimed and completed in {elapsed:.2?} = {:.0} calls/s",
            calls as f64 / elapsed.as_secs_f64()
        );
    });
}
