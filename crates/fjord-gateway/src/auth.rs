//! Auth on `/system/*`, on by default: HTTP Basic with the admin password (generated on first
//! start into the data dir, mode 0600, where OpenFaaS keeps `basic-auth-password`) or an API
//! token with a scope ([`fjord_control::tokens`]); per-route scopes; failed-attempt rate limiting.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use rand::Rng;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use fjord_control::tokens::{Scope, TokenError, Tokens};

pub const ADMIN_USER: &str = "admin";

/// The expected `Authorization` header value, precomputed.
pub struct Credentials {
    /// The admin user name (for counting failed logins per user).
    user: String,
    expected: Vec<u8>,
}

/// Where the admin password lives in a data dir.
pub fn password_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("basic-auth-password")
}

/// Reads the admin credentials, generating them on first start. Returns the credentials and
/// whether they were just created.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<(Credentials, bool)> {
    let dir = data_dir.join("secrets");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let user_path = dir.join("basic-auth-user");
    let pass_path = password_path(data_dir);
    let mut created = false;
    if !pass_path.exists() {
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        write_private(&pass_path, password.as_bytes())?;
        write_private(&user_path, ADMIN_USER.as_bytes())?;
        created = true;
    }
    let password = std::fs::read_to_string(&pass_path)?.trim().to_string();
    let user = std::fs::read_to_string(&user_path)
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|_| ADMIN_USER.to_string());
    if password.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} is empty: delete it to generate a new password",
            pass_path.display()
        )));
    }
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok((
        Credentials {
            expected: format!("Basic {token}").into_bytes(),
            user,
        },
        created,
    ))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

impl Credentials {
    fn check(&self, header: Option<&HeaderValue>) -> bool {
        match header {
            Some(h) => bool::from(h.as_bytes().ct_eq(&self.expected)),
            None => false,
        }
    }
}

#[cfg(test)]
use fjord_core::policy::{ANNOTATION_AUTH, requires_token};

/// Entries of the failed-authentication table; beyond it, idle entries are dropped first.
const LIMITER_CAPACITY: usize = 10_000;

/// A user name may fail this many times the per-address limit (summed over all addresses)
/// before it is locked: many addresses guessing one password are slowed down, while one
/// client's typos do not lock the account for everybody.
const USER_LIMIT_FACTOR: u32 = 5;

/// What failed attempts are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailKey {
    Addr(IpAddr),
    /// An existing account: the admin user, or `token:<id>` of an existing API token.
    User(Box<str>),
}

/// Counts failed authentications per client address and per user name: after `limit`
/// failures within a minute from one address (or `limit` × [`USER_LIMIT_FACTOR`] for one user
/// name from any addresses), that address (or user name) gets 429 for a minute without its
/// credentials being looked at (no argon2 work, no password guessing). Requests without
/// credentials and successful attempts are not counted.
pub struct FailLimiter {
    limit: u32,
    window: Duration,
    entries: Mutex<HashMap<FailKey, FailEntry>>,
    /// Unix ms until which some address or user is blocked: while it is past, nobody is and
    /// [`FailLimiter::blocked`] needs no lock.
    any_blocked_until: AtomicU64,
}

struct FailEntry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl FailLimiter {
    /// `limit` failures per minute and address (0 turns the limiter off).
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(60),
            entries: Mutex::new(HashMap::new()),
            any_blocked_until: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FailKey, FailEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anything may be blocked now (one atomic load, no lock).
    fn any_blocked(&self) -> bool {
        self.limit != 0 && unix_ms() < self.any_blocked_until.load(Ordering::Relaxed)
    }

    /// `Some(seconds to wait)` while `ip` or `user` is blocked.
    pub fn blocked(&self, ip: IpAddr, user: Option<&str>) -> Option<u64> {
        if !self.any_blocked() {
            return None;
        }
        let now = Instant::now();
        let entries = self.lock();
        let wait = |k: &FailKey| {
            let until = entries.get(k)?.blocked_until?;
            (until > now).then(|| (until - now).as_secs_f64().ceil().max(1.0) as u64)
        };
        wait(&FailKey::Addr(ip)).or_else(|| wait(&FailKey::User(user?.into())))
    }

    /// Records a failed attempt from `ip`, for `user` when it names an existing account.
    pub fn failed(&self, ip: IpAddr, user: Option<&str>) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        self.count(&mut entries, now, FailKey::Addr(ip), self.limit);
        if let Some(u) = user {
            let limit = self.limit.saturating_mul(USER_LIMIT_FACTOR);
            self.count(&mut entries, now, FailKey::User(u.into()), limit);
        }
    }

    fn count(
        &self,
        entries: &mut HashMap<FailKey, FailEntry>,
        now: Instant,
        key: FailKey,
        limit: u32,
    ) {
        if entries.len() >= LIMITER_CAPACITY && !entries.contains_key(&key) {
            let window = self.window;
            entries.retain(|_, e| {
                e.blocked_until.is_some_and(|u| u > now) || now - e.window_start < window
            });
            if entries.len() >= LIMITER_CAPACITY {
                entries.retain(|_, e| e.blocked_until.is_some_and(|u| u > now));
            }
            if entries.len() >= LIMITER_CAPACITY {
                // Every slot holds a blocked key: this one is not tracked.
                return;
            }
        }
        let e = entries.entry(key.clone()).or_insert(FailEntry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= limit {
            e.blocked_until = Some(now + self.window);
            e.failures = 0;
            e.window_start = now + self.window;
            let until = unix_ms() + self.window.as_millis() as u64;
            self.any_blocked_until.fetch_max(until, Ordering::Relaxed);
            match key {
                FailKey::Addr(ip) => {
                    tracing::warn!(client = %ip, "too many failed authentication attempts from this address: blocked for a minute")
                }
                FailKey::User(u) => {
                    tracing::warn!(user = %u, "too many failed authentication attempts for this user name (from any address): blocked for a minute")
                }
            }
        }
    }
}

/// Everything that decides who may do what: the admin password, API tokens, and the
/// failed-attempt limiter. Shared by every HTTP worker.
pub struct Auth {
    /// `None` with `--auth=false`: `/system/*` is open.
    pub basic: Option<Credentials>,
    pub tokens: Tokens,
    pub limiter: FailLimiter,
}

const UNAUTHORIZED: &str = "invalid credentials: use user admin and the password in <data-dir>/secrets/basic-auth-password, or an API token (Authorization: Bearer fjord_...)";

impl Auth {
    /// The scope of the request's credentials, or why there is none. Failed attempts count
    /// towards the client's (and the user name's) limit; a blocked client is refused before
    /// anything is checked. A request without credentials is not a failed attempt: it is
    /// answered 401 and not counted.
    pub async fn authenticate(&self, ip: IpAddr, headers: &HeaderMap) -> Result<Scope, ApiError> {
        let header = headers.get(header::AUTHORIZATION);
        let Some(h) = header.map(HeaderValue::as_bytes) else {
            if let Some(retry_after) = self.limiter.blocked(ip, None) {
                return Err(ApiError::AuthRateLimited { retry_after });
            }
            return Err(ApiError::Unauthorized(UNAUTHORIZED.into()));
        };
        // The user name is only worked out when something is blocked or an attempt failed.
        if self.limiter.any_blocked()
            && let Some(retry_after) = self.limiter.blocked(ip, self.account(h).as_deref())
        {
            return Err(ApiError::AuthRateLimited { retry_after });
        }
        let result = if h.starts_with(b"Bearer ") {
            let token = std::str::from_utf8(&h[7..]).unwrap_or_default().trim();
            match self.tokens.verify(token).await {
                Ok(scope) => Ok(scope),
                Err(TokenError::Invalid) => Err(ApiError::Unauthorized(
                    "invalid API token: it is unknown or was revoked; create one with `fjord token create`".into(),
                )),
                Err(TokenError::Expired(id)) => Err(ApiError::Unauthorized(format!(
                    "API token {id} has expired: create a new one with `fjord token create`"
                ))),
            }
        } else {
            match &self.basic {
                Some(c) if c.check(header) => Ok(Scope::Admin),
                _ => Err(ApiError::Unauthorized(UNAUTHORIZED.into())),
            }
        };
        if result.is_err() {
            self.limiter.failed(ip, self.account(h).as_deref());
        }
        result
    }

    /// The existing account an `Authorization` value names, if any: the admin user (Basic)
    /// or `token:<id>` of a stored token (Bearer). Names of accounts that do not exist are
    /// not tracked: there is nothing to guess there, and they would only fill the table.
    fn account(&self, h: &[u8]) -> Option<String> {
        if let Some(token) = h.strip_prefix(b"Bearer ") {
            let token = std::str::from_utf8(token).ok()?.trim();
            let id = fjord_control::tokens::token_id(token)?;
            return self.tokens.known(id).then(|| format!("token:{id}"));
        }
        let b64 = h.strip_prefix(b"Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim_ascii())
            .ok()?;
        let user = decoded.split(|b| *b == b':').next()?;
        let c = self.basic.as_ref()?;
        (user == c.user.as_bytes()).then(|| c.user.clone())
    }

    /// Checks a call to a function that requires a token (`com.fjord.auth: token`).
    pub async fn check_invoke(&self, ip: IpAddr, headers: &HeaderMap) -> Result<(), ApiError> {
        let scope = self.authenticate(ip, headers).await.map_err(|e| match e {
            ApiError::Unauthorized(m) => ApiError::Unauthorized(format!(
                "this function requires an API token (Authorization: Bearer fjord_...) with scope invoke, deploy or admin: {m}"
            )),
            other => other,
        })?;
        if scope.covers(Scope::Invoke) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API token has scope {}; calling this function needs scope invoke (or deploy, admin)",
                scope.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::needed_scope;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (c, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(password_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (c2, created2) = load_or_create(dir.path()).unwrap();
        assert!(!created2);
        assert_eq!(c.expected, c2.expected);
        let pw = std::fs::read_to_string(password_path(dir.path())).unwrap();
        let good = base64::engine::general_purpose::STANDARD.encode(format!("admin:{pw}"));
        assert!(c.check(Some(
            &HeaderValue::from_str(&format!("Basic {good}")).unwrap()
        )));
        let bad = base64::engine::general_purpose::STANDARD.encode("admin:nope");
        assert!(!c.check(Some(
            &HeaderValue::from_str(&format!("Basic {bad}")).unwrap()
        )));
        assert!(!c.check(None));
    }

    #[test]
    fn scopes_come_from_the_route_table() {
        assert_eq!(needed_scope("HEAD", "/system/functions"), Scope::Read);
        assert_eq!(needed_scope("GET", "/system/new-thing"), Scope::Admin);
        assert_eq!(needed_scope("GET", "/system/secrets"), Scope::Deploy);
    }

    #[test]
    fn limiter_blocks_after_the_limit_and_only_that_address() {
        let l = FailLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(l.blocked(a, None), None);
        l.failed(a, None);
        l.failed(a, None);
        assert_eq!(l.blocked(a, None), None);
        l.failed(a, None);
        let wait = l.blocked(a, None).expect("blocked after 3 failures");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(l.blocked(b, None), None);
        let off = FailLimiter::new(0);
        for _ in 0..100 {
            off.failed(a, Some("admin"));
        }
        assert_eq!(off.blocked(a, Some("admin")), None);
    }

    #[test]
    fn limiter_blocks_a_user_failing_from_many_addresses() {
        let l = FailLimiter::new(3);
        // 2 failures from each of 8 addresses: no address reaches 3, the user reaches 15.
        for i in 0..8u8 {
            let ip = IpAddr::from([10, 0, 1, i]);
            l.failed(ip, Some("admin"));
            l.failed(ip, Some("admin"));
            assert_eq!(l.blocked(ip, None), None);
        }
        let fresh: IpAddr = [10, 0, 2, 1].into();
        assert!(l.blocked(fresh, Some("admin")).is_some());
        assert_eq!(l.blocked(fresh, Some("token:0011223344556677")), None);
        assert_eq!(l.blocked(fresh, None), None);
    }

    #[tokio::test]
    async fn requests_without_credentials_are_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (basic, _) = load_or_create(dir.path()).unwrap();
        let store = fjord_store::Store::open(&dir.path().join("state.db")).unwrap();
        let auth = Auth {
            basic: Some(basic),
            tokens: Tokens::load(&store).unwrap(),
            limiter: FailLimiter::new(2),
        };
        let ip: IpAddr = [10, 0, 0, 9].into();
        for _ in 0..10 {
            let e = auth.authenticate(ip, &HeaderMap::new()).await.unwrap_err();
            assert!(matches!(e, ApiError::Unauthorized(_)), "{e}");
        }
        let mut bad = HeaderMap::new();
        let creds = base64::engine::general_purpose::STANDARD.encode("admin:nope");
        bad.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {creds}")).unwrap(),
        );
        assert_eq!(
            auth.account(bad[header::AUTHORIZATION].as_bytes())
                .as_deref(),
            Some("admin")
        );
        for _ in 0..2 {
            let e = auth.authenticate(ip, &bad).await.unwrap_err();
            assert!(matches!(e, ApiError::Unauthorized(_)), "{e}");
        }
        let e = auth.authenticate(ip, &bad).await.unwrap_err();
        assert!(matches!(e, ApiError::AuthRateLimited { .. }), "{e}");
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let l = FailLimiter::new(1000);
        for i in 0..(LIMITER_CAPACITY as u32 + 500) {
            l.failed(IpAddr::from(i.to_be_bytes()), None);
        }
        assert!(l.lock().len() <= LIMITER_CAPACITY);
    }

    #[test]
    fn auth_annotation_values() {
        let ann = |v: &str| {
            std::collections::BTreeMap::from([(ANNOTATION_AUTH.to_string(), v.to_string())])
        };
        assert_eq!(requires_token(None), Ok(false));
        assert_eq!(requires_token(Some(&ann("token"))), Ok(true));
        assert_eq!(requires_token(Some(&ann("none"))), Ok(false));
        assert!(
            requires_token(Some(&ann("tokne")))
                .unwrap_err()
                .contains("com.fjord.auth")
        );
    }
}
