//! The NATS queue's integrity check: what the MACs of a call's message and record cover,
//! and the install's record of its queue key (see the parent module's "Integrity").

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::codec::Envelope;
#[cfg(feature = "testing")]
use super::codec::encode_message;
use super::records::Stored;
use super::{CAS_ATTEMPTS, failed};
#[cfg(feature = "testing")]
use crate::CallRequest;
use crate::{QueueError, QueueKey};

/// Starts every integrity failure's reason, so operators (and tests) can find them.
pub const INTEGRITY_FAILED: &str = "integrity check failed";

impl Envelope {
    /// Calls `f` with what the MAC covers: every field that decides what runs and where its
    /// result goes, then the body, each length-prefixed by [`QueueKey::mac`].
    pub(super) fn signed<R>(&self, body: &[u8], f: impl FnOnce(&[&[u8]]) -> R) -> R {
        let created = self.created_at_ms.to_be_bytes();
        let headers = (self.headers.len() as u64).to_be_bytes();
        let flag = |o: &Option<String>| -> &'static [u8] { if o.is_some() { b"1" } else { b"0" } };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(12 + 2 * self.headers.len());
        parts.extend([
            b"fjord-call-v1".as_slice(),
            self.id.as_bytes(),
            self.function.as_bytes(),
            &created,
            self.method.as_bytes(),
            self.path.as_bytes(),
            flag(&self.query),
            self.query.as_deref().unwrap_or_default().as_bytes(),
            &headers,
        ]);
        for (name, value) in &self.headers {
            parts.push(name.as_bytes());
            parts.push(value.as_bytes());
        }
        parts.extend([
            flag(&self.callback_url),
            self.callback_url.as_deref().unwrap_or_default().as_bytes(),
            body,
        ]);
        f(&parts)
    }

    pub(super) fn sign(&mut self, key: &QueueKey, body: &[u8]) {
        let mac = self.signed(body, |parts| key.mac(parts.iter().copied()));
        self.kid = Some(key.id().to_owned());
        self.mac = Some(URL_SAFE_NO_PAD.encode(mac));
    }

    /// Whether this message may run as a call of `function`; the reason if not.
    pub(super) fn check(&self, key: &QueueKey, body: &[u8], function: &str) -> Result<(), String> {
        let reason = |detail: String| {
            format!(
                "{INTEGRITY_FAILED} ({detail}): not run. The stored request was forged or \
                 altered in NATS, or queued by a fjord server with a different queue key \
                 (servers sharing a NATS queue must share one --queue-key file: copy it)"
            )
        };
        let Some(mac) = &self.mac else {
            return Err(reason("the request carries no MAC".into()));
        };
        let valid = URL_SAFE_NO_PAD
            .decode(mac)
            .is_ok_and(|tag| self.signed(body, |parts| key.verify(parts.iter().copied(), &tag)));
        if !valid {
            return Err(reason(match self.kid.as_deref() {
                Some(kid) if kid != key.id() => format!(
                    "its MAC claims queue key {kid}; this server's key is {}",
                    key.id()
                ),
                _ => "its MAC does not match".to_owned(),
            }));
        }
        if self.function != function {
            return Err(reason(format!(
                "the request is for {} but was queued for {function}",
                self.function
            )));
        }
        Ok(())
    }
}

/// The bucket entry that names the queue key of the install (never a call's key: those have
/// no `.`).
pub(super) const KEY_CHECK: &str = "_fjord.queue-key";

/// What [`KEY_CHECK`] holds: the key's id and a MAC only that key makes.
#[derive(Serialize, Deserialize)]
struct KeyCheck {
    kid: String,
    mac: String,
}

/// Refuses to start with another key than the install's (the first server to start records
/// it): such a server would dead-letter every call the others queue, and they its calls.
pub(super) async fn check_key(kv: &kv::Store, key: &QueueKey) -> Result<(), QueueError> {
    let tag =
        |key: &QueueKey| URL_SAFE_NO_PAD.encode(key.mac([b"fjord-queue-key-check".as_slice()]));
    for _ in 0..CAS_ATTEMPTS {
        let entry = kv
            .entry(KEY_CHECK)
            .await
            .map_err(|e| failed("reading the queue key check", e))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            let mine = KeyCheck {
                kid: key.id().to_owned(),
                mac: tag(key),
            };
            let value = serde_json::to_vec(&mine).unwrap_or_default();
            match kv.create(KEY_CHECK, value.into()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(failed("recording the queue key check", e)),
            }
        };
        let theirs: Option<KeyCheck> = serde_json::from_slice(&entry.value).ok();
        let valid = theirs.as_ref().is_some_and(|t| {
            URL_SAFE_NO_PAD
                .decode(&t.mac)
                .is_ok_and(|m| key.verify([b"fjord-queue-key-check".as_slice()], &m))
        });
        if valid {
            return Ok(());
        }
        let kid = theirs.map_or_else(|| "?".to_owned(), |t| t.kid);
        return Err(QueueError::Storage(format!(
            "the calls in this NATS queue are signed with queue key {kid}, this server's key is \
             {}: every fjord server sharing a NATS queue needs the same key file (copy it from a \
             server that works and pass it with --queue-key). To change the install's key, stop \
             every server, let the queue drain, and delete the bucket entry {KEY_CHECK}",
            key.id()
        )));
    }
    Err(QueueError::Storage(
        "the queue key check kept changing".into(),
    ))
}

/// A call's message as [`NatsQueue`] publishes it, signed with `key`: for tests that write to
/// the stream directly (orphans, forgeries signed with another key).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn signed_message(
    key: &QueueKey,
    id: &str,
    function: &str,
    created_at_ms: u64,
    request: &CallRequest,
) -> bytes::Bytes {
    let mut envelope = Envelope {
        id: id.to_owned(),
        function: function.to_owned(),
        created_at_ms,
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        callback_url: request.callback_url.clone(),
        kid: None,
        mac: None,
    };
    envelope.sign(key, &request.body);
    encode_message(&envelope, &request.body).unwrap()
}

/// A record as the bucket stores it: its JSON, `\n`, then a MAC (base64url) over the bucket
/// key and the JSON, so a record can be neither edited nor moved to another call.
pub(super) fn encode_stored(
    qkey: &QueueKey,
    key: &str,
    stored: &Stored,
) -> Result<bytes::Bytes, QueueError> {
    let mut out = serde_json::to_vec(stored)
        .map_err(|e| QueueError::Storage(format!("cannot encode a call record: {e}")))?;
    let mac = qkey.mac([b"fjord-record-v1".as_slice(), key.as_bytes(), &out]);
    out.push(b'\n');
    out.extend_from_slice(URL_SAFE_NO_PAD.encode(mac).as_bytes());
    Ok(out.into())
}

/// Why a stored record cannot be used.
pub(super) enum BadRecord {
    /// Its MAC is missing or wrong: someone without the queue key wrote it (or a server with
    /// another key, or a fjord from before records were signed).
    Forged(String),
    Corrupt(String),
}

impl BadRecord {
    pub(super) fn into_error(self, key: &str) -> QueueError {
        match self {
            BadRecord::Forged(why) => {
                QueueError::Storage(format!("call record {key}: {INTEGRITY_FAILED} ({why})"))
            }
            BadRecord::Corrupt(why) => {
                QueueError::Storage(format!("call record {key} is corrupt: {why}"))
            }
        }
    }
}

pub(super) fn decode_stored(qkey: &QueueKey, key: &str, value: &[u8]) -> Result<Stored, BadRecord> {
    let Some(newline) = value.iter().rposition(|&b| b == b'\n') else {
        return Err(BadRecord::Forged("the record carries no MAC".into()));
    };
    let (json, mac) = (&value[..newline], &value[newline + 1..]);
    let valid = URL_SAFE_NO_PAD
        .decode(mac)
        .is_ok_and(|tag| qkey.verify([b"fjord-record-v1".as_slice(), key.as_bytes(), json], &tag));
    if !valid {
        return Err(BadRecord::Forged("the record's MAC does not match".into()));
    }
    serde_json::from_slice(json).map_err(|e| BadRecord::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_signed_over_everything_that_runs() {
        let key = QueueKey::from_bytes(&[7; 32]).unwrap();
        let other = QueueKey::from_bytes(&[8; 32]).unwrap();
        let mut e = Envelope {
            id: "c1".into(),
            function: "f.ns".into(),
            created_at_ms: 7,
            method: "POST".into(),
            path: "/p".into(),
            query: Some("x=1".into()),
            headers: vec![("cookie".into(), "a=b".into())],
            callback_url: Some("http://cb/".into()),
            kid: None,
            mac: None,
        };
        let missing = e.check(&key, b"body", "f.ns").unwrap_err();
        assert!(
            missing.starts_with(INTEGRITY_FAILED) && missing.contains("no MAC"),
            "{missing}"
        );
        e.sign(&key, b"body");
        e.check(&key, b"body", "f.ns").unwrap();
        assert!(e.check(&key, b"bodY", "f.ns").is_err());
        assert!(
            e.check(&key, b"body", "g.ns")
                .unwrap_err()
                .contains("queued for g.ns")
        );
        let wrong = e.check(&other, b"body", "f.ns").unwrap_err();
        assert!(
            wrong.contains(key.id()) && wrong.contains(other.id()),
            "{wrong}"
        );
        // Each field is covered.
        let tamper: [fn(&mut Envelope); 8] = [
            |e| e.id.push('x'),
            |e| e.created_at_ms += 1,
            |e| e.method = "GET".into(),
            |e| e.path.push('x'),
            |e| e.query = None,
            |e| e.headers[0].1.push('x'),
            |e| e.callback_url = Some("http://evil/".into()),
            |e| e.callback_url = None,
        ];
        for t in tamper {
            let mut altered = clone_envelope(&e);
            t(&mut altered);
            assert!(altered.check(&key, b"body", "f.ns").is_err(), "{altered:?}");
        }
    }

    fn clone_envelope(e: &Envelope) -> Envelope {
        serde_json::from_slice(&serde_json::to_vec(e).unwrap()).unwrap()
    }
}
