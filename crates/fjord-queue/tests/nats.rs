//! The NATS JetStream backend against a real `nats-server` (started per test, on a free port
//! and its own store dir): the backend-independent contract, then what only this backend
//! promises — several processes sharing one queue, redelivery after a process dies, calls
//! surviving a restart of the server.
//!
//! Needs `nats-server` (2.9 or later) on the PATH, in /usr/sbin, or named by `NATS_SERVER`.
#![cfg(feature = "nats")]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fjord_queue::contract::call;
use fjord_queue::nats::{INTEGRITY_FAILED, NatsAuth, NatsOptions, NatsQueue, signed_message};
use fjord_queue::nats_server::NatsServer;
use fjord_queue::{CallState, Clock, ManualClock, Queue, QueueKey, now_ms};

/// The key every queue of these tests shares (as the fjord servers of one install do).
fn key() -> QueueKey {
    QueueKey::from_bytes(b"fjord queue tests: a shared key..").unwrap()
}

/// A prefix of its own per queue set, so nothing could leak between tests.
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "T{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(server: &NatsServer, prefix: &str) -> NatsQueue {
    NatsQueue::connect(&server.url(), prefix, key())
        .await
        .unwrap()
}

async fn connect_with_ack_wait(server: &NatsServer, prefix: &str, ack_wait: Duration) -> NatsQueue {
    NatsQueue::connect_with(
        &server.url(),
        NatsOptions {
            prefix: prefix.to_owned(),
            ack_wait,
            ..NatsOptions::new(key())
        },
    )
    .await
    .unwrap()
}

/// How many of `ids` are in each state; `None` if the queue cannot answer (yet).
async fn states(q: &NatsQueue, ids: &[String]) -> Option<BTreeMap<&'static str, usize>> {
    let mut counts = BTreeMap::new();
    for id in ids {
        let r = q.get(id).await.ok()??;
        *counts.entry(r.state.as_str()).or_default() += 1;
    }
    Some(counts)
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut check: F) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Leases and due times follow the check's manual clock; the server's real-time timers (a
// retry's delayed redelivery) are waited for by the contract, never raced.
fjord_queue::contract_tests!(async |clock: Clock| {
    let server = NatsServer::start();
    let queue = NatsQueue::connect_with(
        &server.url(),
        NatsOptions {
            prefix: prefix(),
            clock,
            ..NatsOptions::new(key())
        },
    )
    .await
    .unwrap();
    (Arc::new(queue), server)
});

/// Two processes (as two `fjord serve`s on one NATS) drain one backlog: each call is claimed
/// exactly once, and the second process learns of calls it did not enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_drain_one_backlog_once() {
    const N: usize = 2000;
    let server = NatsServer::start();
    let prefix = prefix();
    let a = Arc::new(connect(&server, &prefix).await);
    let b = Arc::new(connect(&server, &prefix).await);
    let all: Vec<String> = (0..N).map(|i| format!("d-{i:05}")).collect();
    let enqueued = futures_util::future::join_all(all.iter().map(|id| a.enqueue(call(id, "f.ns"))));
    for r in enqueued.await {
        r.unwrap();
    }
    // b never enqueued anything: it knows the backlog through the record watch.
    eventually(
        Duration::from_secs(10),
        "b to see the backlog",
        async || {
            b.depth().await.unwrap() == vec![("f.ns".to_owned(), N as u64)]
                && b.due_functions().await.unwrap() == vec!["f.ns".to_owned()]
        },
    )
    .await;

    let drain = |q: Arc<NatsQueue>| async move {
        let mut mine = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "draining took too long");
            if !q
                .due_functions()
                .await
                .unwrap()
                .contains(&"f.ns".to_owned())
            {
                if q.depth().await.unwrap().is_empty() {
                    return mine;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let batch = q.claim("f.ns", 50, Duration::from_secs(60)).await.unwrap();
            if batch.is_empty() {
                // The other process got there first; our mirror has not heard yet.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for c in batch {
                assert_eq!(c.attempt, 1);
                assert_eq!(c.request, call(&c.id, "f.ns").request);
                q.complete(&c.id, 200).await.unwrap();
                mine.push(c.id);
            }
        }
    };
    let (by_a, by_b) = tokio::join!(drain(a.clone()), drain(b.clone()));
    assert!(
        !by_a.is_empty() && !by_b.is_empty(),
        "both processes took part: a {}, b {}",
        by_a.len(),
        by_b.len()
    );
    let mut seen = HashSet::new();
    for id in by_a.iter().chain(&by_b) {
        assert!(seen.insert(id.clone()), "{id} claimed twice");
    }
    assert_eq!(seen, all.iter().cloned().collect::<HashSet<_>>());
    let done = a.list(Some(CallState::Done), N * 2).await.unwrap();
    assert_eq!(done.len(), N);
    assert!(
        done.iter()
            .all(|r| r.attempts == 1 && r.status == Some(200))
    );
    assert!(
        b.claim("f.ns", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A process that dies holding a call (no ack, no NAK) stops its heartbeats: the server
/// redelivers the call after `ack_wait`, and the process started in its place (or any
/// other) finds it within a sweep, long before its lease would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_a_crashed_process_are_redelivered() {
    let server = NatsServer::start();
    let prefix = prefix();
    let ack_wait = Duration::from_secs(2);
    let lease = Duration::from_secs(600);
    let a = connect_with_ack_wait(&server, &prefix, ack_wait).await;
    a.enqueue(call("crash", "f")).await.unwrap();
    a.enqueue(call("done", "f")).await.unwrap();
    // ack_wait runs from the delivery (the claim), not from the crash: the window below is
    // measured from just before the claim, so a slow step in between cannot shrink it.
    let delivered_at = Instant::now();
    let claimed = a.claim("f", 2, lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    a.complete("done", 200).await.unwrap();
    let crashed_at = Instant::now();
    drop(a);
    let b = connect_with_ack_wait(&server, &prefix, ack_wait).await;
    assert_eq!(b.depth().await.unwrap(), vec![("f".to_owned(), 1)]);

    // Within ack_wait the server still counts it as the dead process's. Only answers that
    // arrived well inside the window count: on a loaded machine a check may end after it.
    let window = ack_wait / 2;
    let mut early = None;
    while delivered_at.elapsed() < window {
        let claimed = b.claim("f", 10, lease).await.unwrap();
        let due = b.due_functions().await.unwrap();
        if delivered_at.elapsed() < window {
            // The guarantee: nobody runs the call twice. `due` is only a hint for the
            // dispatcher and may over-report while a new process's mirror of the records
            // catches up (a claim then finds nothing), so it is not checked here.
            let _ = due;
            assert!(claimed.is_empty(), "claimed within ack_wait: {claimed:?}");
            assert_eq!(
                b.get("crash").await.unwrap().unwrap().state,
                CallState::Running
            );
        } else if !claimed.is_empty() {
            early = Some(claimed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The dispatcher's way: claim what due_functions reports.
    let again = if let Some(c) = early {
        c
    } else {
        loop {
            assert!(
                crashed_at.elapsed() < ack_wait + Duration::from_secs(5 + 5),
                "the crashed process's call did not come back within ack_wait and a sweep"
            );
            if b.due_functions().await.unwrap() == vec!["f".to_owned()] {
                let c = b.claim("f", 10, lease).await.unwrap();
                if !c.is_empty() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(again.len(), 1, "only the unfinished call comes back");
    assert_eq!((again[0].id.as_str(), again[0].attempt), ("crash", 2));
    b.complete("crash", 200).await.unwrap();
    let r = b.get("crash").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (CallState::Done, 2));
    assert_eq!(b.get("done").await.unwrap().unwrap().attempts, 1);
    assert!(b.depth().await.unwrap().is_empty());
}

/// A live process keeps a call past `ack_wait` while its lease lasts (heartbeats), and lets
/// it go once the lease is over, even if the worker never reports. The leases run on a manual
/// clock both processes share, so "not over yet" does not depend on how fast this machine
/// is; only the server's `ack_wait` runs in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_hold_a_call_for_its_lease_only() {
    let server = NatsServer::start();
    let prefix = prefix();
    // 3 s: heartbeats every second tolerate a loaded machine's scheduling stalls.
    let ack_wait = Duration::from_secs(3);
    let clock = ManualClock::at_system_now();
    let connect = async || {
        NatsQueue::connect_with(
            &server.url(),
            NatsOptions {
                prefix: prefix.clone(),
                ack_wait,
                clock: clock.clock(),
                ..NatsOptions::new(key())
            },
        )
        .await
        .unwrap()
    };
    let a = connect().await;
    let b = connect().await;
    a.enqueue(call("long", "f")).await.unwrap();
    a.enqueue(call("stuck", "f")).await.unwrap();
    assert_eq!(
        a.claim("f", 1, Duration::from_secs(30)).await.unwrap()[0].id,
        "long"
    );
    assert_eq!(
        a.claim("f", 1, Duration::from_secs(1)).await.unwrap()[0].id,
        "stuck"
    );

    // Both leases last while the clock stands still: well past ack_wait, the server keeps
    // both calls with a (heartbeats), so b gets nothing.
    let held_since = Instant::now();
    while held_since.elapsed() < ack_wait + Duration::from_millis(1500) {
        let claimed = b.claim("f", 10, Duration::from_secs(30)).await.unwrap();
        assert!(
            claimed.is_empty(),
            "handed out during its lease: {claimed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // "stuck"'s lease ends: a stops its heartbeats, the server redelivers it after ack_wait.
    clock.advance(Duration::from_millis(1001));
    let deadline = Instant::now() + ack_wait * 2 + Duration::from_secs(10);
    let back = loop {
        let claimed = b.claim("f", 10, Duration::from_secs(30)).await.unwrap();
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the call whose lease ended did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let back: Vec<(&str, u32)> = back.iter().map(|c| (c.id.as_str(), c.attempt)).collect();
    assert_eq!(back, [("stuck", 2)], "only the call whose lease ended");
    a.complete("long", 200).await.unwrap();
    let r = b.get("long").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (CallState::Done, 1));
    // The stale worker's late answer for "stuck" is taken (first final state wins), and b's
    // own answer then changes nothing.
    a.complete("stuck", 500).await.unwrap();
    b.complete("stuck", 200).await.unwrap();
    assert_eq!(b.get("stuck").await.unwrap().unwrap().status, Some(500));
}

/// nats-server killed with SIGKILL and started again on the same store: every acknowledged
/// call is still there in its state, the running process reconnects and carries on, and a
/// process connecting afresh sees the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_a_server_crash() {
    const N: usize = 200;
    let mut server = NatsServer::start();
    let prefix = prefix();
    let q = connect(&server, &prefix).await;
    let all: Vec<String> = (0..N).map(|i| format!("s-{i:03}")).collect();
    for id in &all {
        q.enqueue(call(id, "f")).await.unwrap();
    }
    let lease = Duration::from_secs(600);
    let claimed = q.claim("f", 52, lease).await.unwrap();
    assert_eq!(claimed.len(), 52);
    for c in &claimed[..20] {
        q.complete(&c.id, 200).await.unwrap();
    }
    q.retry_later(&claimed[20].id, now_ms() + 600_000, Some(503), "later")
        .await
        .unwrap();
    q.dead_letter(&claimed[21].id, Some(500), "boom")
        .await
        .unwrap();
    // 20 done, 1 retrying, 1 dead, 30 running, 148 queued.
    let expected: BTreeMap<&'static str, usize> = [
        (CallState::Done.as_str(), 20),
        (CallState::Retrying.as_str(), 1),
        (CallState::Dead.as_str(), 1),
        (CallState::Running.as_str(), 30),
        (CallState::Queued.as_str(), 148),
    ]
    .into_iter()
    .collect();
    assert_eq!(states(&q, &all).await, Some(expected.clone()));
    // The last acknowledgements come right before the kill: acknowledged means stored.
    let late: Vec<String> = (0..100).map(|i| format!("late-{i:03}")).collect();
    for r in futures_util::future::join_all(late.iter().map(|id| q.enqueue(call(id, "g")))).await {
        r.unwrap();
    }

    server.crash_and_restart();

    // The running process reconnects by itself.
    eventually(
        Duration::from_secs(30),
        "the queue to reconnect",
        async || states(&q, &all).await.as_ref() == Some(&expected),
    )
    .await;
    // Its mirror catches up through the resumed watch.
    eventually(
        Duration::from_secs(30),
        "the mirror to catch up",
        async || q.depth().await.unwrap() == vec![("f".to_owned(), 179), ("g".to_owned(), 100)],
    )
    .await;
    // A process starting now loads the same.
    let fresh = connect(&server, &prefix).await;
    assert_eq!(
        fresh.depth().await.unwrap(),
        vec![("f".to_owned(), 179), ("g".to_owned(), 100)]
    );
    let queued = [(CallState::Queued.as_str(), 100)].into_iter().collect();
    assert_eq!(states(&fresh, &late).await, Some(queued));
    assert_eq!(
        fresh.list(Some(CallState::Done), 100).await.unwrap().len(),
        20
    );

    // The held messages survived too: graceful shutdown releases them, and everything not
    // finished runs exactly once more.
    assert_eq!(q.requeue_running().await.unwrap(), 30);
    let mut rest = HashSet::new();
    loop {
        let batch = fresh.claim("f", 100, lease).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            assert!(rest.insert(c.id.clone()), "{} claimed twice", c.id);
            fresh.complete(&c.id, 200).await.unwrap();
        }
    }
    assert_eq!(rest.len(), 178);
    // Enqueued concurrently: stream order is whatever order they arrived in.
    let g = fresh.claim("g", 1000, lease).await.unwrap();
    assert_eq!(
        g.iter().map(|c| c.id.clone()).collect::<HashSet<_>>(),
        late.iter().cloned().collect::<HashSet<_>>(),
        "the calls acknowledged just before the kill"
    );
    // The dead letter's request survived: it can be replayed.
    assert!(fresh.replay(&claimed[21].id).await.unwrap());
    let replayed = fresh.claim("f", 10, lease).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].request, call(&claimed[21].id, "f").request);
}

/// Call ids that are not valid NATS keys or subject tokens work all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_call_id_works() {
    let server = NatsServer::start();
    let q = connect(&server, &prefix()).await;
    let ids = ["a.b", "with space", "=x", "x", "ünï", "a/b*>", ""];
    for id in ids {
        q.enqueue(call(id, "echo.openfaas-fn")).await.unwrap();
    }
    assert!(q.enqueue(call("=x", "echo.openfaas-fn")).await.is_err());
    let claimed = q
        .claim("echo.openfaas-fn", 20, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ids
    );
    for c in &claimed {
        assert_eq!(c.request, call(&c.id, "echo.openfaas-fn").request);
        q.dead_letter(&c.id, None, "x").await.unwrap();
        assert!(q.replay(&c.id).await.unwrap());
        assert_eq!(
            q.get(&c.id).await.unwrap().unwrap().state,
            CallState::Queued
        );
    }
}

/// A message whose enqueue died before writing its record is adopted by a claim once it is
/// old enough (a young one may still be getting its record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_messages_are_adopted() {
    let server = NatsServer::start();
    let prefix = prefix();
    let q = connect(&server, &prefix).await;
    // Publish the way enqueue does, without the record.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let subject = format!("{}.calls.f_ns", prefix.to_lowercase());
    for (id, age_ms) in [("old", 60_000), ("young", 0)] {
        let mut request = call(id, "f.ns").request;
        request.method = "PUT".into();
        request.body = format!("body of {id}").into_bytes();
        let payload = signed_message(&key(), id, "f.ns", now_ms() - age_ms, &request);
        js.publish(subject.clone(), payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let claimed = q.claim("f.ns", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id.as_str(), claimed[0].attempt), ("old", 1));
    assert_eq!(claimed[0].request.body, b"body of old");
    assert_eq!(claimed[0].request.method, "PUT");
    let r = q.get("old").await.unwrap().unwrap();
    assert_eq!((r.state, r.function.as_str()), (CallState::Running, "f.ns"));
    assert!(q.get("young").await.unwrap().is_none());
}

/// Pruning removes finished calls older than the cutoff (and dead letters), nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_finished_calls() {
    let server = NatsServer::start();
    let q = connect(&server, &prefix()).await;
    for id in ["done", "dead", "running", "cancelled", "queued"] {
        q.enqueue(call(id, "f")).await.unwrap();
    }
    q.cancel("cancelled").await.unwrap();
    let lease = Duration::from_secs(60);
    assert_eq!(q.claim("f", 3, lease).await.unwrap().len(), 3);
    q.complete("done", 200).await.unwrap();
    q.dead_letter("dead", None, "x").await.unwrap();
    assert_eq!(q.prune(now_ms() - 60_000).await.unwrap(), 0);
    assert_eq!(q.prune(now_ms() + 1).await.unwrap(), 3);
    for id in ["done", "dead", "cancelled"] {
        assert!(q.get(id).await.unwrap().is_none(), "{id}");
    }
    assert!(!q.replay("dead").await.unwrap());
    assert_eq!(
        q.get("queued").await.unwrap().unwrap().state,
        CallState::Queued
    );
    assert_eq!(
        q.get("running").await.unwrap().unwrap().state,
        CallState::Running
    );
    assert_eq!(q.list(None, 10).await.unwrap().len(), 2);
    assert_eq!(q.prune(now_ms() + 1).await.unwrap(), 0);
    // A pruned id can be used again, even within the stream's duplicate window.
    q.enqueue(call("done", "f")).await.unwrap();
    assert_eq!(
        q.get("done").await.unwrap().unwrap().state,
        CallState::Queued
    );
    let again = q.claim("f", 10, lease).await.unwrap();
    let ids: Vec<&str> = again.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["queued", "done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused() {
    let server = NatsServer::start();
    for prefix in ["", "a.b", "a b", "a*"] {
        assert!(
            NatsQueue::connect(&server.url(), prefix, key())
                .await
                .is_err(),
            "{prefix:?}"
        );
    }
    let err = NatsQueue::connect("nats://127.0.0.1:1", "P", key())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let err = NatsQueue::connect("nats://user:secret@127.0.0.1:1", "P", key())
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("secret"), "{err}");
}

/// What an attacker with NATS access (a leaked credential, a function reaching the port) but
/// without the queue key writes: a call for a function, straight into the stream, with a
/// callback of their own, old enough that an orphan would be adopted, and one with a record
/// pointing at it too. Plus a call signed with another key, and a genuine call of another
/// function moved onto this function's subject. None is ever claimed; each is dead-lettered
/// with the integrity reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_calls_are_dead_lettered_never_run() {
    let server = NatsServer::start();
    let prefix = prefix();
    let q = connect(&server, &prefix).await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    let root = prefix.to_lowercase();
    let subject = format!("{root}.calls.f_ns");
    let created = now_ms() - 60_000;
    let forged = |id: &str| {
        let line = serde_json::json!({
            "id": id, "function": "f.ns", "createdAtMs": created, "method": "POST",
            "path": "/", "callbackUrl": "http://127.0.0.1:9/steal",
            "headers": [["authorization", "Bearer forged"]],
        });
        format!("{line}\nforged body")
    };
    let publish = async |payload: bytes::Bytes| {
        js.publish(subject.clone(), payload)
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    publish(forged("no-record").into()).await;
    let seq = publish(forged("with-record").into()).await;
    // The record a claim would trust, as enqueue writes it.
    let kv = js
        .get_key_value(format!("{prefix}_CALL_STATE"))
        .await
        .unwrap();
    let record = serde_json::json!({
        "id": "with-record", "function": "f.ns", "state": "queued", "method": "POST",
        "path": "/", "attempts": 0, "status": null, "lastError": null,
        "callbackUrl": "http://127.0.0.1:9/steal", "callback": null,
        "createdAtMs": created, "updatedAtMs": created, "nextAttemptMs": created, "seq": seq,
    });
    kv.create("with-record", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let other_key = QueueKey::from_bytes(&[9; 32]).unwrap();
    let request = call("other-key", "f.ns").request;
    publish(signed_message(
        &other_key,
        "other-key",
        "f.ns",
        created,
        &request,
    ))
    .await;
    let request = call("moved", "g.ns").request;
    publish(signed_message(&key(), "moved", "g.ns", created, &request)).await;

    let ids = ["no-record", "with-record", "other-key", "moved"];
    eventually(
        Duration::from_secs(20),
        "the forged calls to be refused",
        async || {
            let claimed = q.claim("f.ns", 10, Duration::from_secs(60)).await.unwrap();
            assert!(claimed.is_empty(), "a forged call was claimed: {claimed:?}");
            states(&q, &ids.map(String::from)).await == Some(BTreeMap::from([("dead", 4)]))
        },
    )
    .await;
    for id in ids {
        let r = q.get(id).await.unwrap().unwrap();
        let why = r.last_error.unwrap_or_default();
        assert!(why.starts_with(INTEGRITY_FAILED), "{id}: {why}");
        assert_eq!(r.attempts, 0, "{id}");
    }
    let q = &q;
    let why = async |id| q.get(id).await.unwrap().unwrap().last_error.unwrap();
    assert!(why("no-record").await.contains("no MAC"));
    let other = why("other-key").await;
    assert!(
        other.contains(other_key.id()) && other.contains("--queue-key"),
        "{other}"
    );
    assert!(why("moved").await.contains("queued for f.ns"));
    assert!(q.depth().await.unwrap().is_empty());
    // Replaying one runs nothing either: the request is still not signed.
    assert!(q.replay("no-record").await.unwrap());
    eventually(
        Duration::from_secs(20),
        "the replayed forgery to die again",
        async || {
            let claimed = q.claim("f.ns", 10, Duration::from_secs(60)).await.unwrap();
            assert!(claimed.is_empty(), "a forged call was claimed: {claimed:?}");
            q.get("no-record").await.unwrap().unwrap().state == CallState::Dead
        },
    )
    .await;
}

/// A genuine call whose stored request is altered (new body, same MAC) and put back in the
/// stream with its record repointed at the altered copy is dead-lettered, not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_calls_are_dead_lettered_never_run() {
    let server = NatsServer::start();
    let prefix = prefix();
    let q = connect(&server, &prefix).await;
    let mut genuine = call("real", "f.ns");
    genuine.request.body = b"pay 10 to alice".to_vec();
    q.enqueue(genuine).await.unwrap();

    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let calls = js.get_stream(format!("{prefix}_CALLS")).await.unwrap();
    let subject = format!("{}.calls.f_ns", prefix.to_lowercase());
    let original = calls
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let payload = String::from_utf8(original.payload.to_vec()).unwrap();
    let altered = payload.replace("pay 10 to alice", "pay 9999 to mallory");
    assert_ne!(altered, payload);
    let seq = js
        .publish(subject, altered.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    calls.delete_message(original.sequence).await.unwrap();
    let kv = js
        .get_key_value(format!("{prefix}_CALL_STATE"))
        .await
        .unwrap();
    // The record is JSON, then its MAC on a line of its own (kept as it was).
    let entry = kv.entry("real").await.unwrap().unwrap();
    let text = String::from_utf8(entry.value.to_vec()).unwrap();
    let (json, mac) = text.split_once('\n').unwrap();
    let mut record: serde_json::Value = serde_json::from_str(json).unwrap();
    record["seq"] = seq.into();
    kv.update("real", format!("{record}\n{mac}").into(), entry.revision)
        .await
        .unwrap();

    eventually(
        Duration::from_secs(20),
        "the altered call to be refused",
        async || {
            let claimed = q.claim("f.ns", 10, Duration::from_secs(60)).await.unwrap();
            assert!(
                claimed.is_empty(),
                "an altered call was claimed: {claimed:?}"
            );
            q.get("real").await.unwrap().unwrap().state == CallState::Dead
        },
    )
    .await;
    let r = q.get("real").await.unwrap().unwrap();
    let why = r.last_error.unwrap();
    assert!(
        why.starts_with(INTEGRITY_FAILED) && why.contains("does not match"),
        "{why}"
    );
    assert_eq!(r.attempts, 0);
}

/// A server that requires authorization: fjord connects with a user and password or a token
/// in the URL, or an nkey seed file, and sees that anonymous clients are refused; without
/// credentials (or with wrong ones) it gets a clear error that shows no secret. A server
/// without authorization is reported as open to anonymous clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_anonymous_access_is_detected() {
    let open = NatsServer::start();
    let q = connect(&open, &prefix()).await;
    assert!(q.anonymous_allowed());
    // Credentials are ignored by an open server: still open.
    let q = NatsQueue::connect(&open.url_with("u:p"), &prefix(), key())
        .await
        .unwrap();
    assert!(q.anonymous_allowed());

    let locked = NatsServer::start_with_auth("fjord", "pa:ss@w/rd");
    let q = NatsQueue::connect(&locked.url_with("fjord:pa%3Ass%40w%2Frd"), &prefix(), key())
        .await
        .unwrap();
    assert!(!q.anonymous_allowed());
    q.enqueue(call("c1", "f")).await.unwrap();
    assert_eq!(
        q.claim("f", 1, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );
    // A raw client without credentials cannot even connect.
    assert!(async_nats::connect(locked.url()).await.is_err());
    let err = NatsQueue::connect(&locked.url(), &prefix(), key())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("requires authentication"), "{err}");
    let err = NatsQueue::connect(&locked.url_with("fjord:wrong-secret"), &prefix(), key())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("refused fjord's credentials") && !err.contains("wrong-secret"),
        "{err}"
    );

    let token = NatsServer::start_with_config(Some("authorization { token: \"t0ken\" }\n"));
    let q = NatsQueue::connect(&token.url_with("t0ken"), &prefix(), key())
        .await
        .unwrap();
    assert!(!q.anonymous_allowed());

    let user = nkeys::KeyPair::new_user();
    let nkey = NatsServer::start_with_config(Some(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    )));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("fjord.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let with_nkey = |file: std::path::PathBuf| NatsOptions {
        prefix: prefix(),
        auth: NatsAuth {
            nkey_file: Some(file),
            ..NatsAuth::default()
        },
        ..NatsOptions::new(key())
    };
    let q = NatsQueue::connect_with(&nkey.url(), with_nkey(seed.clone()))
        .await
        .unwrap();
    assert!(!q.anonymous_allowed());
    let err = NatsQueue::connect_with(&nkey.url(), with_nkey(dir.path().join("missing")))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nkey seed file") && err.contains("missing"),
        "{err}"
    );
    // A .creds file that is not there, or is not one, is named in the error.
    for (name, text) in [
        ("missing.creds", None),
        ("bad.creds", Some("not a creds file")),
    ] {
        let path = dir.path().join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let options = NatsOptions {
            prefix: prefix(),
            auth: NatsAuth {
                creds_file: Some(path),
                ..NatsAuth::default()
            },
            ..NatsOptions::new(key())
        };
        let err = NatsQueue::connect_with(&nkey.url(), options)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("NATS credentials file") && err.contains(name),
            "{err}"
        );
    }
    // Two ways at once is a mistake.
    let err = NatsQueue::connect_with(&nkey.url_with("u:p"), with_nkey(seed))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("one way to authenticate"), "{err}");
}

/// `--nats-ca`: TLS to a server whose certificate that CA signed; without it the server's
/// self-signed certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let server = NatsServer::start_with_config(Some(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    )));
    let tls = |ca: Option<std::path::PathBuf>| NatsOptions {
        prefix: prefix(),
        auth: NatsAuth {
            ca_file: ca,
            tls: true,
            ..NatsAuth::default()
        },
        ..NatsOptions::new(key())
    };
    let q = NatsQueue::connect_with(&server.url(), tls(Some(cert_file)))
        .await
        .unwrap();
    q.enqueue(call("c1", "f")).await.unwrap();
    let err = NatsQueue::connect_with(&server.url(), tls(None))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("TLS") || err.contains("cannot connect"),
        "{err}"
    );
}

/// Records are signed too. A genuine call whose record is edited in NATS (cancelled, or a
/// finished call set queued again and pointed at a copy of its request: a replay) is
/// dead-lettered, not run; an old genuine request put back without a record (a replay after
/// its record was pruned or purged) is not adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_records_and_replays_never_run() {
    let server = NatsServer::start();
    let prefix = prefix();
    let q = connect(&server, &prefix).await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let kv = js
        .get_key_value(format!("{prefix}_CALL_STATE"))
        .await
        .unwrap();
    let calls = js.get_stream(format!("{prefix}_CALLS")).await.unwrap();
    let subject = format!("{}.calls.f_ns", prefix.to_lowercase());
    // Edits a record's JSON as an attacker would (keeping whatever follows it).
    let edit = async |id: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let entry = kv.entry(id).await.unwrap().unwrap();
        let text = String::from_utf8(entry.value.to_vec()).unwrap();
        let (json, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let mut record: serde_json::Value = serde_json::from_str(json).unwrap();
        change(&mut record);
        let value = format!("{record}\n{rest}");
        kv.update(id, value.into(), entry.revision).await.unwrap();
    };

    // Cancelled behind fjord's back: dead-lettered (visibly), not silently dropped.
    q.enqueue(call("edited", "f.ns")).await.unwrap();
    edit("edited", &|r| r["state"] = "cancelled".into()).await;
    // Runs once; the attacker keeps a copy of its request.
    q.enqueue(call("paid", "f.ns")).await.unwrap();
    let copy = calls
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap()
        .payload;
    let lease = Duration::from_secs(60);
    let ran = q.claim("f.ns", 10, lease).await.unwrap();
    assert_eq!(
        ran.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["paid"]
    );
    q.complete("paid", 200).await.unwrap();
    let r = q.get("edited").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Dead);
    let why = r.last_error.unwrap();
    assert!(
        why.starts_with(INTEGRITY_FAILED) && why.contains("record was altered"),
        "{why}"
    );

    // The replay: the copy put back, the record set queued and pointed at it.
    let seq = js
        .publish(subject.clone(), copy)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    edit("paid", &|r| {
        r["state"] = "queued".into();
        r["seq"] = seq.into();
    })
    .await;
    let ran = q.claim("f.ns", 10, lease).await.unwrap();
    assert!(ran.is_empty(), "the replay ran: {ran:?}");
    let r = q.get("paid").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Dead);
    assert!(r.last_error.unwrap().contains("record was altered"));

    // A genuine request from 20 minutes ago, put back with no record.
    let request = call("ancient", "f.ns").request;
    let old = signed_message(&key(), "ancient", "f.ns", now_ms() - 20 * 60_000, &request);
    js.publish(subject, old).await.unwrap().await.unwrap();
    let ran = q.claim("f.ns", 10, lease).await.unwrap();
    assert!(ran.is_empty(), "the replay ran: {ran:?}");
    let r = q.get("ancient").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Dead);
    assert!(r.last_error.unwrap().starts_with("not adopted"));
    assert!(q.depth().await.unwrap().is_empty());
}

/// A process with another queue key than the one the install started with refuses to
/// connect (it would dead-letter every call the others queue), naming both keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_key_does_not_start() {
    let server = NatsServer::start();
    let prefix = prefix();
    let first = connect(&server, &prefix).await;
    first.enqueue(call("c1", "f")).await.unwrap();
    let other = QueueKey::from_bytes(&[5; 32]).unwrap();
    let err = NatsQueue::connect(&server.url(), &prefix, other.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(key().id()) && err.contains(other.id()) && err.contains("--queue-key"),
        "{err}"
    );
    // The same key connects, and the check entry is no call.
    let again = connect(&server, &prefix).await;
    assert_eq!(again.list(None, 10).await.unwrap().len(), 1);
    assert_eq!(again.depth().await.unwrap(), vec![("f".to_owned(), 1)]);
}
