//! The behaviour every [`Queue`] backend must have, as backend-independent async checks
//! (they panic on a violation). Enabled by the `testing` feature.
//!
//! Each check expects a fresh, empty queue reading its time from the [`ManualClock`] the check
//! is given, which stands still unless the check advances it: "the lease is not over yet" and
//! "not due yet" hold however long the machine stalls, and no check sleeps to let time pass.
//! A backend runs them all with [`contract_tests!`](crate::contract_tests), e.g. in its
//! `tests/contract.rs`:
//!
//! ```text
//! fjord_queue::contract_tests!(async |clock: Clock| {
//!     let dir = tempfile::tempdir().unwrap();
//!     let queue = SqliteQueue::open_with_clock(&dir.path().join("queue.db"), clock).unwrap();
//!     (queue, dir) // the second value is kept alive for the test's duration
//! });
//! ```
//!
//! A backend whose server keeps real-time timers of its own (NATS holds a retried call's
//! message until its delay has passed in real time) may hand a call out a little after the
//! clock says it is due: the one check where that happens waits for the claim, with a
//! generous bound, rather than asserting on its first answer.
//!
//! Durability (reopen, `kill -9`) is backend-specific and tested by each backend.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::{CallRequest, CallState, CancelOutcome, Claimed, ManualClock, NewCall, Queue};

/// Generates one `#[tokio::test]` per contract check. `$make` is an async closure taking the
/// [`Clock`](crate::Clock) the queue must read (a [`ManualClock`] the check drives) and
/// returning `(queue, guard)`: the queue (anything that derefs to a [`Queue`], e.g.
/// `Arc<SqliteQueue>`) and a value kept alive until the check ends (a temp dir, a server).
#[macro_export]
macro_rules! contract_tests {
    ($make:expr) => {
        $crate::contract_tests!(@cases $make;
            enqueue_then_get,
            claim_marks_running_and_counts_attempts,
            claim_respects_max_order_and_function,
            complete_marks_done,
            complete_many_marks_each_done,
            retry_later_waits_until_due,
            dead_letter_list_and_replay,
            cancel_outcomes,
            requeue_expired_after_lease,
            requeue_running_returns_all,
            depth_counts_active_calls,
            list_is_newest_first_and_limited,
            concurrent_enqueue_stores_each_once,
            prune_deletes_only_old_finished_calls,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // At the real now, so stored times look real (message ages, retention).
                let clock = $crate::ManualClock::at_system_now();
                let (queue, _guard) = ($make)(clock.clock()).await;
                $crate::contract::$case(&*queue, &clock).await;
            }
        )*
    };
}

/// A small call to `function`.
pub fn call(id: &str, function: &str) -> NewCall {
    NewCall {
        id: id.to_owned(),
        function: function.to_owned(),
        request: CallRequest {
            method: "POST".into(),
            path: "/run".into(),
            query: Some("a=1&b=2".into()),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-trace".into(), "abc".into()),
            ],
            body: format!("{{\"id\":\"{id}\",\"bin\":\"\u{0}\u{ff}\"}}").into_bytes(),
            callback_url: Some(format!("http://callback.example/{id}")),
        },
    }
}

/// Enqueues one after the other, a millisecond apart, so "oldest first" is by time.
async fn enqueue_all(q: &dyn Queue, clock: &ManualClock, ids: &[&str], function: &str) {
    for id in ids {
        q.enqueue(call(id, function)).await.expect("enqueue");
        clock.advance(Duration::from_millis(1));
    }
}

/// Claims until `function` hands out something, for at most 10 s of real time: for a backend
/// whose server releases a call on a real-time timer after the clock made it due.
async fn claim_once_released(q: &dyn Queue, function: &str) -> Vec<Claimed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let claimed = q
            .claim(function, 10, Duration::from_secs(60))
            .await
            .unwrap();
        if !claimed.is_empty() {
            return claimed;
        }
        assert!(
            Instant::now() < deadline,
            "{function}: a due call was not handed out within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state_of(q: &dyn Queue, id: &str) -> CallState {
    q.get(id).await.expect("get").expect("call exists").state
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| id(i).to_owned()).collect()
}

/// A stored call reads back queued, with its request's visible fields; unknown ids are `None`.
pub async fn enqueue_then_get(q: &dyn Queue, clock: &ManualClock) {
    let now = clock.now_ms();
    q.enqueue(call("c1", "echo.fn")).await.unwrap();
    let r = q.get("c1").await.unwrap().expect("stored");
    assert_eq!(r.id, "c1");
    assert_eq!(r.function, "echo.fn");
    assert_eq!(r.state, CallState::Queued);
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/run"));
    assert_eq!(r.attempts, 0);
    assert_eq!(r.status, None);
    assert_eq!(r.last_error, None);
    assert_eq!(
        r.callback_url.as_deref(),
        Some("http://callback.example/c1")
    );
    assert_eq!(r.callback, None);
    assert_eq!((r.created_at_ms, r.updated_at_ms), (now, now));
    assert!(r.next_attempt_ms <= now);
    assert!(q.get("nope").await.unwrap().is_none());
    assert_eq!(q.due_functions().await.unwrap(), vec!["echo.fn".to_owned()]);
    // Same id twice is refused rather than silently replacing the first call.
    assert!(q.enqueue(call("c1", "echo.fn")).await.is_err());
}

/// Claiming hands out the full request, marks the call running and counts the attempt.
pub async fn claim_marks_running_and_counts_attempts(q: &dyn Queue, _clock: &ManualClock) {
    q.enqueue(call("c1", "f")).await.unwrap();
    let claimed = q.claim("f", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "c1");
    assert_eq!(claimed[0].function, "f");
    assert_eq!(claimed[0].attempt, 1);
    assert_eq!(claimed[0].request, call("c1", "f").request);
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (CallState::Running, 1));
    // Running calls are neither due nor claimable again.
    assert!(q.due_functions().await.unwrap().is_empty());
    assert!(
        q.claim("f", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        q.claim("f", 0, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// At most `max` calls, oldest first (calls created in the same millisecond: by id), only
/// of the asked function.
pub async fn claim_respects_max_order_and_function(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["a0", "a1"], "a").await;
    q.enqueue(call("b0", "b")).await.unwrap();
    enqueue_all(q, clock, &["a2", "a3", "a4"], "a").await;
    let mut due = q.due_functions().await.unwrap();
    due.sort();
    assert_eq!(due, vec!["a".to_owned(), "b".to_owned()]);

    let lease = Duration::from_secs(60);
    let first = q.claim("a", 2, lease).await.unwrap();
    assert_eq!(ids(&first, |c| &c.id), ["a0", "a1"]);
    let rest = q.claim("a", 10, lease).await.unwrap();
    assert_eq!(ids(&rest, |c| &c.id), ["a2", "a3", "a4"]);
    assert_eq!(state_of(q, "b0").await, CallState::Queued);
    assert_eq!(q.due_functions().await.unwrap(), vec!["b".to_owned()]);
    let b = q.claim("b", 10, lease).await.unwrap();
    assert_eq!(ids(&b, |c| &c.id), ["b0"]);
    assert!(q.claim("unknown", 10, lease).await.unwrap().is_empty());
}

/// Completing records the status; a done call is no longer active. Callback results stick.
pub async fn complete_marks_done(q: &dyn Queue, clock: &ManualClock) {
    q.enqueue(call("c1", "f")).await.unwrap();
    q.claim("f", 1, Duration::from_secs(60)).await.unwrap();
    q.complete("c1", 201).await.unwrap();
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.status, r.attempts),
        (CallState::Done, Some(201), 1)
    );
    q.set_callback_result("c1", "delivered (200)")
        .await
        .unwrap();
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!(r.callback.as_deref(), Some("delivered (200)"));
    assert_eq!(r.state, CallState::Done);
    assert!(q.depth().await.unwrap().is_empty());
    assert!(q.due_functions().await.unwrap().is_empty());
    // A stale worker's late outcome does not overwrite the final state.
    q.retry_later("c1", clock.now_ms(), Some(500), "late")
        .await
        .unwrap();
    q.dead_letter("c1", Some(500), "late").await.unwrap();
    assert_eq!(state_of(q, "c1").await, CallState::Done);
    // Outcomes for unknown calls (e.g. already pruned) are no-ops.
    q.complete("nope", 200).await.unwrap();
    assert!(q.get("nope").await.unwrap().is_none());
}

/// Completing a batch records each call's own status; unknown ids and calls already
/// finished are left alone, as with `complete`.
pub async fn complete_many_marks_each_done(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["m1", "m2", "m3"], "f").await;
    assert_eq!(
        q.claim("f", 3, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        3
    );
    q.complete("m3", 200).await.unwrap();
    q.complete_many(vec![
        ("m1".into(), 200),
        ("m2".into(), 404),
        ("m3".into(), 500),
        ("nope".into(), 200),
    ])
    .await
    .unwrap();
    for (id, status) in [("m1", 200), ("m2", 404), ("m3", 200)] {
        let r = q.get(id).await.unwrap().unwrap();
        assert_eq!((r.state, r.status), (CallState::Done, Some(status)), "{id}");
    }
    assert!(q.get("nope").await.unwrap().is_none());
    assert!(q.depth().await.unwrap().is_empty());
    q.complete_many(Vec::new()).await.unwrap();
}

/// A call scheduled for later is not due (or claimable) until then, and then is.
pub async fn retry_later_waits_until_due(q: &dyn Queue, clock: &ManualClock) {
    q.enqueue(call("c1", "f")).await.unwrap();
    q.claim("f", 1, Duration::from_secs(60)).await.unwrap();
    let at = clock.now_ms() + 300;
    q.retry_later("c1", at, Some(503), "busy").await.unwrap();
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Retrying);
    assert_eq!(r.next_attempt_ms, at);
    assert_eq!(
        (r.status, r.last_error.as_deref()),
        (Some(503), Some("busy"))
    );
    assert!(q.due_functions().await.unwrap().is_empty());
    assert!(
        q.claim("f", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    // Still active while waiting.
    assert_eq!(q.depth().await.unwrap(), vec![("f".to_owned(), 1)]);

    // A millisecond early: still waiting.
    clock.advance(Duration::from_millis(299));
    assert!(q.due_functions().await.unwrap().is_empty());
    assert!(
        q.claim("f", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    // Due at `at` itself.
    clock.advance(Duration::from_millis(1));
    assert_eq!(q.due_functions().await.unwrap(), vec!["f".to_owned()]);
    let again = claim_once_released(q, "f").await;
    assert_eq!(ids(&again, |c| &c.id), ["c1"]);
    assert_eq!(again[0].attempt, 2);
}

/// Dead-lettered calls are listed as dead and can be replayed with fresh attempts.
pub async fn dead_letter_list_and_replay(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["c1", "c2"], "f").await;
    q.claim("f", 1, Duration::from_secs(60)).await.unwrap();
    q.dead_letter("c1", None, "connection refused")
        .await
        .unwrap();
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!(r.state, CallState::Dead);
    assert_eq!(r.last_error.as_deref(), Some("connection refused"));
    let dead = q.list(Some(CallState::Dead), 10).await.unwrap();
    assert_eq!(ids(&dead, |r| &r.id), ["c1"]);

    assert!(!q.replay("c2").await.unwrap(), "c2 is queued, not dead");
    assert!(!q.replay("nope").await.unwrap());
    assert!(q.replay("c1").await.unwrap());
    let r = q.get("c1").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (CallState::Queued, 0));
    assert_eq!(r.last_error.as_deref(), Some("connection refused"));
    assert!(r.next_attempt_ms <= clock.now_ms());
    assert!(q.list(Some(CallState::Dead), 10).await.unwrap().is_empty());
    assert!(!q.replay("c1").await.unwrap(), "already replayed");
    let claimed = q.claim("f", 10, Duration::from_secs(60)).await.unwrap();
    let mut got = ids(&claimed, |c| &c.id);
    got.sort();
    assert_eq!(got, ["c1", "c2"]);
    let c1 = claimed.iter().find(|c| c.id == "c1").unwrap();
    assert_eq!(c1.attempt, 1);
}

/// Only calls that have not started can be cancelled.
pub async fn cancel_outcomes(q: &dyn Queue, clock: &ManualClock) {
    let lease = Duration::from_secs(60);
    // Oldest first: the first four are claimed, "c5-queued" stays queued.
    enqueue_all(
        q,
        clock,
        &[
            "c1-retrying",
            "c2-running",
            "c3-done",
            "c4-dead",
            "c5-queued",
        ],
        "f",
    )
    .await;
    assert_eq!(q.claim("f", 4, lease).await.unwrap().len(), 4);
    q.retry_later("c1-retrying", clock.now_ms() + 60_000, None, "later")
        .await
        .unwrap();
    q.complete("c3-done", 200).await.unwrap();
    q.dead_letter("c4-dead", Some(500), "boom").await.unwrap();
    for (id, state) in [
        ("c5-queued", CallState::Queued),
        ("c1-retrying", CallState::Retrying),
        ("c2-running", CallState::Running),
        ("c3-done", CallState::Done),
        ("c4-dead", CallState::Dead),
    ] {
        assert_eq!(state_of(q, id).await, state, "{id}");
    }

    assert_eq!(
        q.cancel("c5-queued").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        q.cancel("c1-retrying").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(state_of(q, "c5-queued").await, CallState::Cancelled);
    assert_eq!(state_of(q, "c1-retrying").await, CallState::Cancelled);
    assert_eq!(
        q.cancel("c2-running").await.unwrap(),
        CancelOutcome::TooLate(CallState::Running)
    );
    assert_eq!(
        q.cancel("c3-done").await.unwrap(),
        CancelOutcome::TooLate(CallState::Done)
    );
    assert_eq!(
        q.cancel("c4-dead").await.unwrap(),
        CancelOutcome::TooLate(CallState::Dead)
    );
    assert_eq!(
        q.cancel("c5-queued").await.unwrap(),
        CancelOutcome::TooLate(CallState::Cancelled)
    );
    assert_eq!(q.cancel("c-nope").await.unwrap(), CancelOutcome::NotFound);
    assert_eq!(state_of(q, "c2-running").await, CallState::Running);

    // Cancelled calls are never handed out (not even once due), nor replayed, nor counted.
    q.requeue_running().await.unwrap();
    let left = q.claim("f", 10, lease).await.unwrap();
    assert_eq!(ids(&left, |c| &c.id), ["c2-running"]);
    assert!(!q.replay("c5-queued").await.unwrap());
    assert_eq!(q.depth().await.unwrap(), vec![("f".to_owned(), 1)]);
}

/// A running call whose lease ran out goes back to the queue; its attempt stays counted.
pub async fn requeue_expired_after_lease(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["a-short", "b-long"], "f").await;
    let c = q.claim("f", 1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(ids(&c, |c| &c.id), ["a-short"]);
    let c = q.claim("f", 1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&c, |c| &c.id), ["b-long"]);
    assert_eq!(q.requeue_expired().await.unwrap(), 0, "lease not over yet");
    clock.advance(Duration::from_millis(99));
    assert_eq!(q.requeue_expired().await.unwrap(), 0, "lease not over yet");
    assert_eq!(state_of(q, "a-short").await, CallState::Running);
    clock.advance(Duration::from_millis(2));
    assert_eq!(q.requeue_expired().await.unwrap(), 1);
    assert_eq!(state_of(q, "a-short").await, CallState::Queued);
    assert_eq!(state_of(q, "b-long").await, CallState::Running);
    let r = q.get("a-short").await.unwrap().unwrap();
    assert_eq!(r.attempts, 1);
    assert!(r.next_attempt_ms <= clock.now_ms());
    let again = q.claim("f", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&again, |c| &c.id), ["a-short"]);
    assert_eq!(again[0].attempt, 2);
}

/// Graceful shutdown: every running call goes back to the queue, others are untouched.
pub async fn requeue_running_returns_all(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["r1", "r2", "r3"], "f").await;
    q.enqueue(call("other", "g")).await.unwrap();
    q.claim("f", 2, Duration::from_secs(60)).await.unwrap();
    q.claim("g", 1, Duration::from_secs(60)).await.unwrap();
    q.complete("other", 200).await.unwrap();
    assert_eq!(q.requeue_running().await.unwrap(), 2);
    for id in ["r1", "r2", "r3"] {
        assert_eq!(state_of(q, id).await, CallState::Queued);
    }
    assert_eq!(state_of(q, "other").await, CallState::Done);
    assert_eq!(q.requeue_running().await.unwrap(), 0);
    let c = q.claim("f", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&c, |c| &c.id), ["r1", "r2", "r3"]);
    assert_eq!(c.iter().map(|c| c.attempt).collect::<Vec<_>>(), [2, 2, 1]);
}

/// Depth counts queued, retrying and running calls per function, nothing else.
pub async fn depth_counts_active_calls(q: &dyn Queue, clock: &ManualClock) {
    assert!(q.depth().await.unwrap().is_empty());
    enqueue_all(q, clock, &["a1", "a2", "a3", "a4", "a5"], "a").await;
    enqueue_all(q, clock, &["b1", "b2"], "b").await;
    let lease = Duration::from_secs(60);
    q.claim("a", 4, lease).await.unwrap();
    q.retry_later("a1", clock.now_ms() + 60_000, None, "x")
        .await
        .unwrap(); // retrying
    q.complete("a2", 200).await.unwrap(); // done
    q.dead_letter("a3", None, "x").await.unwrap(); // dead
    // a4 running, a5 queued; b1 cancelled, b2 queued.
    q.cancel("b1").await.unwrap();
    let mut depth = q.depth().await.unwrap();
    depth.sort();
    assert_eq!(depth, vec![("a".to_owned(), 3), ("b".to_owned(), 1)]);
}

/// `list` is newest first, honours the state filter and the limit.
pub async fn list_is_newest_first_and_limited(q: &dyn Queue, clock: &ManualClock) {
    enqueue_all(q, clock, &["l1", "l2", "l3", "l4"], "f").await;
    q.claim("f", 1, Duration::from_secs(60)).await.unwrap(); // l1 running
    let all = q.list(None, 100).await.unwrap();
    assert_eq!(ids(&all, |r| &r.id), ["l4", "l3", "l2", "l1"]);
    let two = q.list(None, 2).await.unwrap();
    assert_eq!(ids(&two, |r| &r.id), ["l4", "l3"]);
    let queued = q.list(Some(CallState::Queued), 100).await.unwrap();
    assert_eq!(ids(&queued, |r| &r.id), ["l4", "l3", "l2"]);
    let running = q.list(Some(CallState::Running), 100).await.unwrap();
    assert_eq!(ids(&running, |r| &r.id), ["l1"]);
    assert!(q.list(None, 0).await.unwrap().is_empty());
    assert!(q.list(Some(CallState::Done), 100).await.unwrap().is_empty());
}

/// 5,000 calls enqueued concurrently are each stored exactly once and claimed exactly once.
pub async fn concurrent_enqueue_stores_each_once(q: &dyn Queue, _clock: &ManualClock) {
    const N: usize = 5000;
    let all: Vec<String> = (0..N).map(|i| format!("cc-{i:05}")).collect();
    // 50 concurrent enqueuers, each with 100 calls in flight at once.
    let results = futures_util::future::join_all(all.chunks(100).map(|chunk| async move {
        futures_util::future::join_all(chunk.iter().map(|id| q.enqueue(call(id, "conc")))).await
    }))
    .await;
    for r in results.into_iter().flatten() {
        r.expect("enqueue");
    }
    assert_eq!(
        q.depth().await.unwrap(),
        vec![("conc".to_owned(), N as u64)]
    );
    let listed = q.list(Some(CallState::Queued), N * 2).await.unwrap();
    assert_eq!(listed.len(), N);
    let listed: HashSet<String> = listed.into_iter().map(|r| r.id).collect();
    assert_eq!(listed, all.iter().cloned().collect::<HashSet<_>>());

    let mut claimed = HashSet::new();
    loop {
        let batch = q.claim("conc", 700, Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            assert_eq!(c.attempt, 1);
            assert!(claimed.insert(c.id.clone()), "{} claimed twice", c.id);
            assert_eq!(c.request, call(&c.id, "conc").request);
        }
    }
    assert_eq!(claimed.len(), N);
}

/// Pruning deletes finished calls (done, dead, cancelled) last updated strictly before the
/// cutoff, and nothing active; outcomes for pruned calls are then harmless no-ops.
pub async fn prune_deletes_only_old_finished_calls(q: &dyn Queue, clock: &ManualClock) {
    let t0 = clock.now_ms();
    for id in ["done", "dead", "cancelled", "running", "retrying"] {
        q.enqueue(call(id, "f")).await.unwrap();
    }
    q.cancel("cancelled").await.unwrap();
    assert_eq!(
        q.claim("f", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        4
    );
    q.complete("done", 200).await.unwrap();
    q.dead_letter("dead", None, "x").await.unwrap();
    q.retry_later("retrying", t0, None, "x").await.unwrap();
    q.enqueue(call("queued", "f")).await.unwrap();
    assert_eq!(
        q.prune(0).await.unwrap(),
        0,
        "nothing is older than the epoch"
    );
    assert_eq!(q.prune(t0).await.unwrap(), 0, "finished at t0, not before");

    clock.advance(Duration::from_secs(1));
    let cutoff = clock.now_ms();
    q.enqueue(call("new-done", "g")).await.unwrap();
    q.claim("g", 1, Duration::from_secs(60)).await.unwrap();
    q.complete("new-done", 200).await.unwrap();
    assert_eq!(q.prune(cutoff).await.unwrap(), 3);
    for id in ["done", "dead", "cancelled"] {
        assert!(q.get(id).await.unwrap().is_none(), "{id} pruned");
    }
    for id in ["running", "queued", "retrying", "new-done"] {
        assert!(q.get(id).await.unwrap().is_some(), "{id} kept");
    }
    let mut depth = q.depth().await.unwrap();
    depth.sort();
    assert_eq!(depth, vec![("f".to_owned(), 3)]);
    assert!(
        !q.replay("dead").await.unwrap(),
        "pruned, nothing to replay"
    );
    // Outcomes for pruned calls are harmless no-ops.
    q.complete("done", 200).await.unwrap();
    assert!(q.get("done").await.unwrap().is_none());
    assert_eq!(q.prune(cutoff).await.unwrap(), 0);
}
