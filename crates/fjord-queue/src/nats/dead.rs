//! Dead letters, cancellation and replay: refusing messages that fail their integrity
//! check, keeping dead calls' requests, and putting them back.

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream::LastRawMessageErrorKind;

use super::codec::{Envelope, key_of};
use super::records::{Edit, Stored};
use super::{Inner, failed, is_active};
use crate::{CallState, CancelOutcome, Claimed, QueueError};

impl Inner {
    /// Dead-letters a message that failed its integrity check: it never runs and nothing is
    /// sent to its callback. The call's record (the one pointing at this message, or a new
    /// one) says why, and the request is kept with the dead letters for inspection; a record
    /// of another message with the same id (a forgery reusing a real call's id) is left alone.
    pub(super) async fn refuse(
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
        let now = self.clock.now_ms();
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
    pub(super) async fn record_dead(
        &self,
        key: &str,
        revision: Option<u64>,
        envelope: &Envelope,
        seq: u64,
        function: &str,
        reason: &str,
    ) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
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
    pub(super) async fn bury(&self, key: &str, payload: bytes::Bytes) -> Result<(), QueueError> {
        self.js
            .publish(self.names.dead_subject(key), payload)
            .await
            .map_err(|e| failed("keeping a dead letter", e))?
            .await
            .map_err(|e| failed("keeping a dead letter", e))?;
        Ok(())
    }

    pub(super) async fn dead_letter(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), QueueError> {
        let key = key_of(id);
        let now = self.clock.now_ms();
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

    pub(super) async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        let now = self.clock.now_ms();
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

    pub(super) async fn replay(&self, id: &str) -> Result<bool, QueueError> {
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
        let now = self.clock.now_ms();
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
}
