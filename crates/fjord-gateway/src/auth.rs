//! HTTP Basic auth on `/system/*`, on by default. The admin password is generated on first
//! start into the data dir (mode 0600), where OpenFaaS keeps `basic-auth-password`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::Rng;
use subtle::ConstantTimeEq;

pub const ADMIN_USER: &str = "admin";

/// The expected `Authorization` header value, precomputed.
pub struct Credentials {
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

/// Middleware for `/system/*`.
pub async fn require(
    State(creds): State<Option<Arc<Credentials>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(creds) = creds else {
        return next.run(req).await;
    };
    if creds.check(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    tracing::debug!(path = %req.uri().path(), "rejected /system request: invalid credentials");
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "invalid credentials: use user admin and the password in <data-dir>/secrets/basic-auth-password\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Restricted\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
