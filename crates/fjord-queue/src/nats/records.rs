//! Call records in the key-value bucket: reading, compare-and-set edits, whole-bucket scans
//! (listing, pruning).

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::codec::{Envelope, key_of};
use super::integrity::{BadRecord, KEY_CHECK, decode_stored, encode_stored};
use super::mirror::Active;
use super::setup::record_count;
use super::{CAS_ATTEMPTS, Inner, SCAN_GAP, failed, is_active};
use crate::{CallRecord, CallState, QueueError};

/// What the bucket stores per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Stored {
    #[serde(flatten)]
    pub(super) record: CallRecord,
    /// The stream sequence of the message carrying the call's request now; a message with
    /// another sequence for the same call is a stale duplicate.
    pub(super) seq: u64,
    /// When the running attempt's lease ends (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lease_until_ms: Option<u64>,
}

impl Stored {
    pub(super) fn queued(envelope: &Envelope, seq: u64) -> Stored {
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

/// What a record edit decided: write the changed record (compare-and-set) or leave it.
pub(super) enum Edit<T> {
    Write(T),
    Keep(T),
}

impl Inner {
    pub(super) fn encode(&self, key: &str, stored: &Stored) -> Result<bytes::Bytes, QueueError> {
        encode_stored(&self.key, key, stored)
    }

    /// A record and its revision; `Err((revision, reason))` if it failed its integrity check.
    pub(super) async fn read_entry(
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

    pub(super) async fn read_record(&self, key: &str) -> Result<Option<(Stored, u64)>, QueueError> {
        match self.read_entry(key).await? {
            None => Ok(None),
            Some(Ok(found)) => Ok(Some(found)),
            Some(Err((_, why))) => Err(BadRecord::Forged(why).into_error(key)),
        }
    }

    /// Reads a record, lets `edit` decide, and writes the result only if nobody wrote in
    /// between (compare-and-set on the revision), else starts over. `None`: no such record.
    pub(super) async fn update_record<T>(
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
    pub(super) async fn update_checked<T>(
        &self,
        key: &str,
        edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Result<Option<T>, (u64, String)>, QueueError> {
        Ok(self
            .update_written(key, edit)
            .await?
            .map(|answer| answer.map(|(answer, _)| answer)))
    }

    /// [`update_checked`](Self::update_checked), also returning the record as written and its
    /// new revision (`None` when the edit kept it), to start a later update from.
    pub(super) async fn update_written<T>(
        &self,
        key: &str,
        edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Result<Option<(T, Option<(Stored, u64)>)>, (u64, String)>, QueueError> {
        self.update_from(key, None, edit).await
    }

    /// [`update_record`](Self::update_record), starting from `cached` (the record as this
    /// process last wrote it, and that revision) instead of reading it: one round trip to the
    /// server less when nobody wrote since, which the compare-and-set on the revision checks.
    pub(super) async fn update_from_cache<T>(
        &self,
        key: &str,
        cached: Option<(Stored, u64)>,
        edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Option<T>, QueueError> {
        match self.update_from(key, cached, edit).await? {
            Ok(answer) => Ok(answer.map(|(answer, _)| answer)),
            Err((_, why)) => Err(BadRecord::Forged(why).into_error(key)),
        }
    }

    /// The compare-and-set loop every record update goes through: read (or take `cached`),
    /// let `edit` decide, write only if the revision is still the one read, else start over.
    async fn update_from<T>(
        &self,
        key: &str,
        mut cached: Option<(Stored, u64)>,
        mut edit: impl FnMut(&mut Stored) -> Edit<T>,
    ) -> Result<Result<Option<(T, Option<(Stored, u64)>)>, (u64, String)>, QueueError> {
        for _ in 0..CAS_ATTEMPTS {
            let from_cache = cached.is_some();
            let (mut stored, revision) = match cached.take() {
                Some(found) => found,
                None => match self.read_entry(key).await? {
                    None => return Ok(Ok(None)),
                    Some(Err(forged)) => return Ok(Err(forged)),
                    Some(Ok(found)) => found,
                },
            };
            let answer = match edit(&mut stored) {
                // A cached copy may be stale: only the stored record may decide to keep it.
                Edit::Keep(_) if from_cache => continue,
                Edit::Keep(answer) => return Ok(Ok(Some((answer, None)))),
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
                    return Ok(Ok(Some((answer, Some((stored, revision))))));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(failed("writing a call record", e)),
            }
        }
        Err(QueueError::Storage(format!(
            "call record {key} kept changing under {CAS_ATTEMPTS} attempts to update it"
        )))
    }

    pub(super) async fn set_callback_result(
        &self,
        id: &str,
        result: &str,
    ) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        self.update_record(&key_of(id), |s| {
            s.record.callback = Some(result.to_owned());
            s.record.updated_at_ms = now;
            Edit::Write(())
        })
        .await?;
        Ok(())
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        Ok(self.read_record(&key_of(id)).await?.map(|(s, _)| s.record))
    }

    /// Calls `each` with every record (and its revision): reads the whole bucket.
    pub(super) async fn scan(&self, mut each: impl FnMut(Stored, u64)) -> Result<(), QueueError> {
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

    pub(super) async fn list(
        &self,
        state: Option<CallState>,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        pub(super) fn newest_first(records: &mut Vec<CallRecord>, limit: usize) {
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

    pub(super) async fn prune(&self, older_than_ms: u64) -> Result<u64, QueueError> {
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
