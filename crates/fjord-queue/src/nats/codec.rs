//! The NATS queue's wire forms: a call's message (an [`Envelope`] line, then the body),
//! function names as subject tokens and call ids as keys.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// The first line of a call's message: everything but the body, which follows raw.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope {
    pub(super) id: String,
    pub(super) function: String,
    pub(super) created_at_ms: u64,
    pub(super) method: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) query: Option<String>,
    #[serde(default)]
    pub(super) headers: Vec<(String, String)>,
    #[serde(default)]
    pub(super) callback_url: Option<String>,
    /// The [`QueueKey::id`] of the key that signed it (names the key in error messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kid: Option<String>,
    /// HMAC-SHA256 (base64url) over the fields above and the body ([`Envelope::signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mac: Option<String>,
}

/// `name.namespace` → subject token and consumer name: `[a-z0-9-]` kept, `.` → `_` (never in
/// DNS-1123 names), any other byte `=XX`, so distinct names stay distinct.
pub(super) fn encode_function(function: &str) -> String {
    let mut out = String::with_capacity(function.len());
    for b in function.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            b'.' => out.push('_'),
            _ => {
                let _ = write!(out, "={b:02X}");
            }
        }
    }
    out
}

pub(super) fn decode_function(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut it = token.bytes();
    while let Some(b) = it.next() {
        match b {
            b'_' => bytes.push(b'.'),
            b'=' => {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// A call id as a bucket key, subject token and message id: kept if made of `[A-Za-z0-9_-]`,
/// else `=` + base64url (a kept id never starts with `=`).
pub(super) fn key_of(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_owned()
    } else {
        format!("={}", URL_SAFE_NO_PAD.encode(id))
    }
}

/// A call's message: the envelope as one JSON line (serde_json never writes a raw newline),
/// `\n`, then the body as it came.
pub(super) fn encode_message(envelope: &Envelope, body: &[u8]) -> Result<bytes::Bytes, QueueError> {
    let mut out = serde_json::to_vec(envelope)
        .map_err(|e| QueueError::Storage(format!("cannot encode the call: {e}")))?;
    out.reserve(body.len() + 1);
    out.push(b'\n');
    out.extend_from_slice(body);
    Ok(out.into())
}

pub(super) fn decode_message(payload: &bytes::Bytes) -> Result<(Envelope, bytes::Bytes), String> {
    let newline = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no metadata line")?;
    let envelope = serde_json::from_slice(&payload[..newline]).map_err(|e| e.to_string())?;
    Ok((envelope, payload.slice(newline + 1..)))
}
