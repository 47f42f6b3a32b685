//! Content trust in the control plane: the server's policy (`fjord serve --trust-policy`),
//! applied whenever a version is resolved to what runs (a deploy, a restart, a secret
//! update's redeploy, an image pulled again): the pinned digest must carry a signature by a
//! key the function's namespace trusts, before anything is unpacked or started. A refusal is
//! a 403 and nothing changes (the previous version keeps serving).
//!
//! Images: the signatures cosign stores next to the image in its registry (fetched through
//! [`ImageSource::signatures`](crate::images::ImageSource::signatures)). Bundles: the
//! signature document stored beside the archive (`PUT /system/bundles/{digest}/signature`),
//! and the archive's bytes are hashed again, so an archive altered on disk is refused too.
//!
//! Verdicts are remembered per (function, digest) for the status (`fjord.trust`); functions
//! a restart refused are remembered for `GET /system/trust`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use fjord_core::FunctionKey;
use fjord_core::openfaas::TrustStatus;
use fjord_trust::{KeySource, Policy, PublicKey, Refusal, Rule, Signature};

use crate::ControlError;

/// What a version's verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustState {
    /// No policy, or the namespace allows unsigned code: not looked at.
    UnsignedAllowed,
    /// Signed by the key with this id.
    Verified { key_id: String },
}

impl TrustState {
    pub fn status(&self) -> TrustStatus {
        match self {
            TrustState::UnsignedAllowed => TrustStatus {
                state: "unsigned-allowed".into(),
                ..TrustStatus::default()
            },
            TrustState::Verified { key_id } => TrustStatus {
                state: "verified".into(),
                key_id: Some(key_id.clone()),
                ..TrustStatus::default()
            },
        }
    }
}

/// A refusal as the API shows it: 403 with the reason (`unsigned`, `signed by an untrusted
/// key`, `signature over another digest`, …).
pub fn refused(what: &str, r: &Refusal) -> ControlError {
    ControlError::Forbidden(format!("refused by the trust policy: {what} is {r}"))
}

/// The policy and the verdicts.
#[derive(Default)]
pub struct Trust {
    policy: RwLock<Option<Arc<Policy>>>,
    /// (function, digest or "" for none) → verdict.
    states: Mutex<HashMap<(FunctionKey, String), TrustState>>,
    /// Stored functions a restart did not start, and why.
    refused: Mutex<HashMap<FunctionKey, String>>,
}

/// Reads a secret of the function's namespace (`None`: it does not exist).
pub type SecretReader<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>, ControlError> + 'a;

/// Which keys a namespace's functions must be signed with (`None`: anything runs).
pub enum Required {
    Nothing,
    Keys(Vec<PublicKey>),
}

impl Trust {
    pub fn set_policy(&self, policy: Option<Policy>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy.map(Arc::new);
    }

    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The keys `namespace` requires; `secret` reads a secret of that namespace (for
    /// `secret:NAME` keys).
    pub fn required(
        &self,
        namespace: &str,
        secret: &SecretReader<'_>,
    ) -> Result<Required, ControlError> {
        let Some(policy) = self.policy() else {
            return Ok(Required::Nothing);
        };
        let keys = match policy.rule(namespace) {
            None => {
                return Err(ControlError::Forbidden(format!(
                    "refused by the trust policy: it has no entry for namespace {namespace} and no default"
                )));
            }
            Some(Rule::AllowUnsigned) => return Ok(Required::Nothing),
            Some(Rule::Keys(k)) => k,
        };
        let mut out = Vec::new();
        for k in keys {
            match k {
                KeySource::Key { key, .. } => out.push(key.clone()),
                KeySource::Secret(name) => {
                    let Some(bytes) = secret(name)? else {
                        return Err(ControlError::BadRequest(format!(
                            "trust policy: the key secret {name:?} does not exist in namespace {namespace}: create it with `fjord secret create {name} --from-file cosign.pub -n {namespace}`"
                        )));
                    };
                    let text = String::from_utf8_lossy(&bytes);
                    out.push(PublicKey::from_pem(&text).map_err(|e| {
                        ControlError::BadRequest(format!(
                            "trust policy: the key secret {name:?} of namespace {namespace}: {e}"
                        ))
                    })?);
                }
            }
        }
        Ok(Required::Keys(out))
    }

    /// The verdict on `signatures` of `digest` (of `kind`, image or bundle).
    pub fn check(
        keys: &[PublicKey],
        what: &str,
        digest: &str,
        kind: &str,
        signatures: &[Signature],
    ) -> Result<TrustState, ControlError> {
        fjord_trust::verify(keys, digest, kind, signatures)
            .map(|v| TrustState::Verified { key_id: v.key_id })
            .map_err(|r| refused(what, &r))
    }

    pub fn remember(&self, key: &FunctionKey, digest: Option<&str>, state: TrustState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        // Kept until the function is deleted: the status shows the serving version's
        // verdict, which may be older than the latest deploy's.
        states.insert((key.clone(), digest.unwrap_or("").to_string()), state);
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    pub fn state(&self, key: &FunctionKey, digest: Option<&str>) -> Option<TrustState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.clone(), digest.unwrap_or("").to_string()))
            .cloned()
    }

    pub fn refuse_at_restore(&self, key: &FunctionKey, reason: String) {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), reason);
    }

    pub fn refused_at_restore(&self, key: &FunctionKey) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn forget(&self, key: &FunctionKey) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(k, _), _| k != key);
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
