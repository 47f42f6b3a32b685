//! The hot path: enqueue, finding due work, claim (with its checks of each delivered
//! message), complete, retry, requeue, and the heartbeats that hold claimed calls.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt as _;

use super::codec::{Envelope, decode_function, decode_message, encode_message, key_of};
use super::integrity::INTEGRITY_FAILED;
use super::mirror::Active;
use super::records::{Edit, Stored};
use super::{
    CLAIM_ROUNDS, DUE_WAIT, Held, Inner, ORPHAN_AFTER_MS, ORPHAN_MAX_AGE_MS, SWEEP_EVERY, failed,
    is_active, millis,
};
use crate::{CallRequest, CallState, Claimed, NewCall, QueueError};

/// What [`Inner::take`] does with a delivered message.
pub(super) enum Take {
    Run(u32),
    /// Another message carries the call now, or it is finished: drop this one.
    Drop,
    /// Dead-lettered while its message was queued: move the request to the dead letters.
    Bury,
    /// A retry not due yet (its record was rescheduled by a process not holding the message).
    NotYet(u64),
}

/// Tells the server the calls this process runs are still in progress, while their lease
/// lasts; forgets calls whose lease ended long enough ago that the server has redelivered them.
pub(super) async fn keep_alive(inner: Arc<Inner>) {
    let ack_wait_ms = millis(inner.ack_wait);
    loop {
        tokio::time::sleep(inner.ack_wait / 3).await;
        let now = inner.clock.now_ms();
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
    pub(super) fn acker(&self, reply: Subject) -> Acker {
        Acker::new(self.js.clone(), Some(reply))
    }

    /// Acknowledges (or terminates) a delivery. A lost ack only means a redelivery, which
    /// [`take`](Self::take) recognises, so failures are logged, not returned.
    pub(super) async fn ack(&self, reply: Subject) {
        if let Err(e) = self.acker(reply).ack_with(AckKind::Ack).await {
            tracing::warn!(error = %e, "acknowledging a NATS queue message failed");
        }
    }

    /// Releases a delivery for redelivery after `delay_ms`. Waits for the server's answer, so
    /// a claim right after sees the message released.
    pub(super) async fn nak(&self, reply: Subject, delay_ms: u64) {
        let delay = (delay_ms > 0).then(|| Duration::from_millis(delay_ms));
        if let Err(e) = self.acker(reply).double_ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(error = %e, "releasing a NATS queue message failed; the server redelivers it after ack_wait");
        }
    }

    pub(super) async fn enqueue(&self, call: NewCall) -> Result<(), QueueError> {
        if call.function.is_empty() {
            return Err(QueueError::Storage("a call needs a function".into()));
        }
        let key = key_of(&call.id);
        let mut envelope = Envelope {
            id: call.id,
            function: call.function,
            created_at_ms: self.clock.now_ms(),
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
    pub(super) async fn publish(
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
    pub(super) async fn delete_message(&self, seq: u64) {
        if let Err(e) = self.calls.delete_message(seq).await {
            tracing::debug!(error = %e, seq, "cannot delete a NATS queue message");
        }
    }

    pub(super) async fn due_functions(&self) -> Result<Vec<String>, QueueError> {
        let mut due: BTreeSet<String> = self.mirror().due(self.clock.now_ms()).cloned().collect();
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
    pub(super) fn long_running_elsewhere(&self) -> BTreeSet<String> {
        let mine: HashSet<String> = self.held().keys().cloned().collect();
        let cutoff = self.clock.now_ms().saturating_sub(millis(self.ack_wait));
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
    pub(super) async fn unaccounted_functions(&self) -> Result<Vec<String>, QueueError> {
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

    pub(super) async fn claim(
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
            let expected = self
                .mirror()
                .retries_just_due(function, self.clock.now_ms());
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
    pub(super) async fn take(
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
                    let now = self.clock.now_ms();
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
            let now = self.clock.now_ms();
            let lease_until = now.saturating_add(millis(lease));
            let decided = self
                .update_written(&key, |s| {
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
            let (decided, written) = match decided {
                Ok(Some((decided, written))) => (Some(decided), written),
                Ok(None) => (None, None),
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
                            record: written,
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

    pub(super) async fn complete(&self, id: &str, status: u16) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = self.clock.now_ms();
        // A late answer for a call already finished (its lease expired and another worker got
        // there first) must not overwrite that outcome: the first final state wins.
        let cached = self.held().get_mut(&key).and_then(|h| h.record.take());
        self.update_from_cache(&key, cached, |s| {
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

    pub(super) async fn retry_later(
        &self,
        id: &str,
        at_ms: u64,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = self.clock.now_ms();
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
                self.nak(h.reply, at_ms.saturating_sub(self.clock.now_ms()))
                    .await;
            } else {
                self.ack(h.reply).await;
            }
        }
        Ok(())
    }

    pub(super) fn depth(&self) -> Vec<(String, u64)> {
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
    pub(super) async fn requeue(&self, only_expired: bool) -> Result<u64, QueueError> {
        let now = self.clock.now_ms();
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
}

/// Pulls up to `want` messages: what is deliverable now, or (`wait`) what arrives until then.
pub(super) async fn fetch(
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
