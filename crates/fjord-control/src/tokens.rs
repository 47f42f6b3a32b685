//! API tokens: `Authorization: Bearer fjord_<id>_<secret>` on `/system/*` (and on functions
//! that ask for it), each with a scope. Only an argon2id hash of a token is stored; the
//! token is shown once, when it is created.
//!
//! argon2 is slow on purpose, so a token is verified once: afterwards the SHA-256 of the
//! token finds it in an in-memory cache (id, scope, expiry). Revoking a token drops its
//! cache entries before the revocation is answered, so it stops working at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use fjord_store::{Store, StoredToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ControlError;

/// What a credential may do. `/system/*` scopes nest: read ⊂ deploy ⊂ admin. `invoke` only
/// calls functions that require a token (`com.fjord.auth: token`); deploy and admin tokens
/// may call them too (they could deploy code that does anything anyway), read tokens not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Invoke,
    Read,
    Deploy,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Invoke => "invoke",
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "invoke" => Scope::Invoke,
            "read" => Scope::Read,
            "deploy" => Scope::Deploy,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    /// Whether a credential of this scope may do what `needed` asks.
    pub fn covers(self, needed: Scope) -> bool {
        match needed {
            Scope::Invoke => matches!(self, Scope::Invoke | Scope::Deploy | Scope::Admin),
            Scope::Read => matches!(self, Scope::Read | Scope::Deploy | Scope::Admin),
            Scope::Deploy => matches!(self, Scope::Deploy | Scope::Admin),
            Scope::Admin => self == Scope::Admin,
        }
    }
}

const PREFIX: &str = "fjord_";

/// A token as the gateway keeps it in memory.
#[derive(Clone)]
struct Record {
    name: String,
    scope: Scope,
    hash: String,
    created_at: String,
    expires_at: Option<u64>,
}

/// A verified token, found by the SHA-256 of its text.
#[derive(Clone, Copy)]
struct Verified {
    scope: Scope,
    expires_at: Option<u64>,
}

/// Why a bearer token was refused (the message says what to do).
#[derive(Debug)]
pub enum TokenError {
    Invalid,
    Expired(String),
}

/// All tokens (id → record) and the cache of verified ones, both read lock-free.
pub struct Tokens {
    records: ArcSwap<HashMap<String, Record>>,
    verified: ArcSwap<VerifiedCache>,
}

/// SHA-256 of a token → its id and what it may do.
type VerifiedCache = HashMap<[u8; 32], (Arc<str>, Verified)>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn expired(expires_at: Option<u64>) -> bool {
    expires_at.is_some_and(|e| now_secs() >= e)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The id part of `fjord_<id>_<secret>`.
pub fn token_id(token: &str) -> Option<&str> {
    token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
}

impl Tokens {
    /// The tokens of the state store; a row with an unknown scope is skipped (and logged).
    pub fn load(store: &Store) -> Result<Tokens, fjord_store::StoreError> {
        let mut records = HashMap::new();
        for t in store.list_tokens()? {
            let Some(scope) = Scope::parse(&t.scope) else {
                tracing::error!(id = %t.id, scope = %t.scope, "API token with an unknown scope is ignored");
                continue;
            };
            records.insert(
                t.id,
                Record {
                    name: t.name,
                    scope,
                    hash: t.hash,
                    created_at: t.created_at,
                    expires_at: t.expires_at,
                },
            );
        }
        Ok(Tokens {
            records: ArcSwap::from_pointee(records),
            verified: ArcSwap::from_pointee(HashMap::new()),
        })
    }

    /// Whether a token with this id exists (revoked or not yet created: false).
    pub fn known(&self, id: &str) -> bool {
        self.records.load().contains_key(id)
    }

    /// Checks a bearer token; argon2 runs (off the event loop) only the first time a token
    /// is seen.
    pub async fn verify(&self, token: &str) -> Result<Scope, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((id, v)) = self.verified.load().get(&digest) {
            if expired(v.expires_at) {
                return Err(TokenError::Expired(id.to_string()));
            }
            return Ok(v.scope);
        }
        // fjord_<16 hex id>_<secret>: the id finds the one hash to check.
        let id = token_id(token).ok_or(TokenError::Invalid)?;
        let Some(record) = self.records.load().get(id).cloned() else {
            return Err(TokenError::Invalid);
        };
        if expired(record.expires_at) {
            return Err(TokenError::Expired(id.to_string()));
        }
        let secret = token.to_string();
        let hash = record.hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(TokenError::Invalid);
        }
        let id: Arc<str> = Arc::from(id);
        let v = Verified {
            scope: record.scope,
            expires_at: record.expires_at,
        };
        // Only while the token still exists: a revocation that raced with this check has
        // removed the record first, so it cannot come back into the cache.
        self.verified.rcu(|cache| {
            let mut next = HashMap::clone(cache);
            if self.records.load().contains_key(&*id) {
                next.insert(digest, (id.clone(), v));
            }
            next
        });
        Ok(v.scope)
    }

    fn add(&self, id: String, record: Record) {
        self.records.rcu(|m| {
            let mut next = HashMap::clone(m);
            next.insert(id.clone(), record.clone());
            next
        });
    }

    /// Forgets a token and every cached verification of it; `false` if it was unknown.
    fn remove(&self, id: &str) -> bool {
        let mut found = false;
        self.records.rcu(|m| {
            let mut next = HashMap::clone(m);
            found = next.remove(id).is_some();
            next
        });
        self.verified.rcu(|m| {
            let mut next = HashMap::clone(m);
            next.retain(|_, (cached, _)| &**cached != id);
            next
        });
        found
    }
}

/// What creating a token answers: the only time the token is shown.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub token: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One token as listed: never the token or its hash.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub expired: bool,
}

impl Tokens {
    /// Creates a token: `name` 1–64 printable characters, `scope` one of the scopes,
    /// `expires_in` a duration (`30d`, `12h`…) or none. Only its argon2id hash is stored.
    pub async fn create(
        &self,
        store: &Store,
        name: &str,
        scope: &str,
        expires_in: Option<&str>,
    ) -> Result<CreatedToken, ControlError> {
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ControlError::BadRequest(
                "name: give the token a name of 1 to 64 printable characters, e.g. \"ci-deploy\""
                    .into(),
            ));
        }
        let scope = Scope::parse(scope).ok_or_else(|| {
            ControlError::BadRequest(format!(
                "scope: {scope:?} is not a scope; use invoke, read, deploy or admin"
            ))
        })?;
        let expires_at = match expires_in.map(str::trim) {
            None | Some("") => None,
            Some(s) => {
                let d = humantime::parse_duration(s).map_err(|e| {
                    ControlError::BadRequest(format!(
                        "expiresIn: {s:?} is not a duration ({e}); use e.g. 30d, 12h or 90m"
                    ))
                })?;
                if d.is_zero() {
                    return Err(ControlError::BadRequest(
                        "expiresIn: must be longer than 0s".into(),
                    ));
                }
                Some(now_secs().saturating_add(d.as_secs().max(1)))
            }
        };
        let id_bytes: [u8; 8] = rand::random();
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret_bytes: [u8; 32] = rand::random();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
        let token = format!("{PREFIX}{id}_{secret}");
        let salt_bytes: [u8; 16] = rand::random();
        let to_hash = token.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
            argon2::Argon2::default()
                .hash_password(to_hash.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ControlError::Internal(format!("hashing the token: {e}")))?
        .map_err(|e| ControlError::Internal(format!("hashing the token: {e}")))?;
        let created_at = fjord_store::now_rfc3339();
        store.insert_token(&StoredToken {
            id: id.clone(),
            name: name.clone(),
            scope: scope.as_str().to_string(),
            hash: hash.clone(),
            created_at: created_at.clone(),
            expires_at,
        })?;
        self.add(
            id.clone(),
            Record {
                name: name.clone(),
                scope,
                hash,
                created_at: created_at.clone(),
                expires_at,
            },
        );
        tracing::info!(%id, %name, scope = scope.as_str(), "API token created");
        Ok(CreatedToken {
            id,
            name,
            scope,
            token,
            created_at,
            expires_at: expires_at.map(rfc3339),
        })
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let records = self.records.load();
        let mut out: Vec<TokenInfo> = records
            .iter()
            .map(|(id, r)| TokenInfo {
                id: id.clone(),
                name: r.name.clone(),
                scope: r.scope,
                created_at: r.created_at.clone(),
                expires_at: r.expires_at.map(rfc3339),
                expired: expired(r.expires_at),
            })
            .collect();
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        out
    }

    /// Revokes a token: refused from the moment this returns.
    pub fn revoke(&self, store: &Store, id: &str) -> Result<(), ControlError> {
        let stored = store.delete_token(id)?;
        let known = self.remove(id);
        if !stored && !known {
            return Err(ControlError::NotFound(format!(
                "no API token with id {id:?}: list them with GET /system/tokens"
            )));
        }
        tracing::info!(%id, "API token revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_invoke_is_separate() {
        use Scope::*;
        assert!(Admin.covers(Deploy) && Admin.covers(Read) && Admin.covers(Invoke));
        assert!(Deploy.covers(Read) && Deploy.covers(Invoke) && !Deploy.covers(Admin));
        assert!(Read.covers(Read) && !Read.covers(Deploy) && !Read.covers(Invoke));
        assert!(Invoke.covers(Invoke) && !Invoke.covers(Read));
        for s in [Invoke, Read, Deploy, Admin] {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
    }

    #[tokio::test]
    async fn verified_once_then_cached_and_revoked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let tokens = Tokens::load(&store).unwrap();
        let token = "fjord_0011223344556677_secret";
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(token.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let record = |expires_at| Record {
            name: "t".into(),
            scope: Scope::Deploy,
            hash: hash.clone(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at,
        };
        tokens.add("0011223344556677".into(), record(None));
        assert_eq!(tokens.verify(token).await.unwrap(), Scope::Deploy);
        assert_eq!(
            tokens.verified.load().len(),
            1,
            "cached after one argon2 check"
        );
        assert!(matches!(
            tokens.verify("fjord_0011223344556677_wrong").await,
            Err(TokenError::Invalid)
        ));
        assert!(matches!(
            tokens.verify("Basic abc").await,
            Err(TokenError::Invalid)
        ));
        assert!(tokens.remove("0011223344556677"));
        assert!(tokens.verified.load().is_empty());
        assert!(matches!(
            tokens.verify(token).await,
            Err(TokenError::Invalid)
        ));
        tokens.add("0011223344556677".into(), record(Some(1)));
        assert!(matches!(
            tokens.verify(token).await,
            Err(TokenError::Expired(_))
        ));
    }
}
