//! The in-memory mirror of the active calls' records, fed by the bucket's watch and this
//! process's own writes, so `due_functions` and `depth` cost no round trip.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::kv::{self, Operation};

use super::JUST_DUE_MS;
use super::integrity::{KEY_CHECK, decode_stored};
use super::records::Stored;
use crate::{CallState, QueueKey};

/// A call's state as the mirror needs it.
#[derive(Debug, Clone)]
pub(super) struct Active {
    pub(super) function: String,
    pub(super) state: CallState,
    /// When it is due: `next_attempt_ms` if waiting, the lease's end if running.
    pub(super) due_ms: u64,
    /// When it was last written (for a running call: claimed).
    pub(super) since_ms: u64,
}

impl Active {
    pub(super) fn of(stored: &Stored) -> Option<Active> {
        let r = &stored.record;
        let due_ms = match r.state {
            CallState::Queued | CallState::Retrying => r.next_attempt_ms,
            CallState::Running => stored.lease_until_ms.unwrap_or(u64::MAX),
            CallState::Done | CallState::Dead | CallState::Cancelled => return None,
        };
        Some(Active {
            function: r.function.clone(),
            state: r.state,
            due_ms,
            since_ms: r.updated_at_ms,
        })
    }
}

/// The active calls, from the bucket's watch plus this process's own writes (applied at once
/// so it reads them back without waiting for the watch). Each key keeps its revision and only
/// newer ones replace it, so a late watch event never undoes a newer local write.
#[derive(Default)]
pub(super) struct Mirror {
    pub(super) calls: HashMap<String, Mirrored>,
    /// Per function: (due_ms, key) of its active calls.
    pub(super) functions: HashMap<String, BTreeSet<(u64, String)>>,
    /// The highest revision the watch delivered. The watch delivers in revision order, so
    /// once past a revision it never brings anything older.
    pub(super) watched: u64,
    /// Calls finished by a local write ahead of the watch: (revision, key), kept until the
    /// watch passes the revision so its older events cannot bring the call back.
    pub(super) tombstones: BTreeSet<(u64, String)>,
}

pub(super) struct Mirrored {
    pub(super) revision: u64,
    pub(super) active: Option<Active>,
}

impl Mirror {
    pub(super) fn apply(
        &mut self,
        key: &str,
        revision: u64,
        active: Option<Active>,
        from_watch: bool,
    ) {
        if from_watch {
            self.watched = self.watched.max(revision);
            while let Some((rev, _)) = self.tombstones.first()
                && *rev <= self.watched
            {
                let Some((rev, k)) = self.tombstones.pop_first() else {
                    break;
                };
                if self
                    .calls
                    .get(&k)
                    .is_some_and(|m| m.revision == rev && m.active.is_none())
                {
                    self.calls.remove(&k);
                }
            }
        }
        if self.calls.get(key).is_some_and(|m| m.revision >= revision) {
            return;
        }
        if let Some(old) = self.calls.remove(key)
            && let Some(a) = old.active
            && let Some(set) = self.functions.get_mut(&a.function)
        {
            set.remove(&(a.due_ms, key.to_owned()));
            if set.is_empty() {
                self.functions.remove(&a.function);
            }
        }
        match active {
            Some(a) => {
                self.functions
                    .entry(a.function.clone())
                    .or_default()
                    .insert((a.due_ms, key.to_owned()));
                self.calls.insert(
                    key.to_owned(),
                    Mirrored {
                        revision,
                        active: Some(a),
                    },
                );
            }
            None if !from_watch && revision > self.watched => {
                self.calls.insert(
                    key.to_owned(),
                    Mirrored {
                        revision,
                        active: None,
                    },
                );
                self.tombstones.insert((revision, key.to_owned()));
            }
            None => {}
        }
    }

    pub(super) fn apply_entry(&mut self, entry: &kv::Entry, qkey: &QueueKey) {
        if entry.key == KEY_CHECK {
            return;
        }
        let active = match entry.operation {
            Operation::Put => match decode_stored(qkey, &entry.key, &entry.value) {
                Ok(stored) => Active::of(&stored),
                Err(e) => {
                    // A claim of its message finds out and dead-letters the call.
                    let e = e.into_error(&entry.key);
                    tracing::warn!(error = %e, "ignoring an unusable call record");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        self.apply(&entry.key, entry.revision, active, true);
    }

    pub(super) fn due(&self, now: u64) -> impl Iterator<Item = &String> {
        self.functions
            .iter()
            .filter(move |(_, set)| set.first().is_some_and(|(due, _)| *due <= now))
            .map(|(f, _)| f)
    }

    pub(super) fn depth_of(&self, function: &str) -> u64 {
        self.functions.get(function).map_or(0, |s| s.len() as u64)
    }

    /// How many retries of `function` came due within [`JUST_DUE_MS`].
    pub(super) fn retries_just_due(&self, function: &str, now: u64) -> usize {
        let Some(set) = self.functions.get(function) else {
            return 0;
        };
        let from = (now.saturating_sub(JUST_DUE_MS), String::new());
        let to = (now.saturating_add(1), String::new());
        set.range(from..to)
            .filter(|(_, key)| {
                self.calls
                    .get(key)
                    .and_then(|m| m.active.as_ref())
                    .is_some_and(|a| a.state == CallState::Retrying)
            })
            .count()
    }
}
