//! Reaching NATS: the servers and credentials of a queue URL, TLS, and the other ways of
//! authenticating ([`NatsAuth`]).

use super::{NatsAuth, failed};
use crate::{QueueError, redact_url};

/// The servers of a queue URL, and the credentials it carried (taken out, so they are never
/// shown: async-nats logs server addresses).
pub(super) struct Target {
    pub(super) servers: Vec<async_nats::ServerAddr>,
    /// (user, password), or (token, None).
    pub(super) login: Option<(String, Option<String>)>,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Target, QueueError> {
        let mut servers = Vec::new();
        let mut login = None;
        for one in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let shown = redact_url(one);
            let text = if one.contains("://") {
                one.to_owned()
            } else {
                format!("nats://{one}")
            };
            let mut parsed = url::Url::parse(&text)
                .map_err(|e| QueueError::Storage(format!("NATS URL {shown} is invalid: {e}")))?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| {
                        QueueError::Storage(format!(
                            "NATS URL {shown}: its credentials are not UTF-8 once percent-decoded"
                        ))
                    })
            };
            if !parsed.username().is_empty() {
                let this = (
                    decode(parsed.username())?,
                    parsed.password().map(decode).transpose()?,
                );
                if login.as_ref().is_some_and(|l| *l != this) {
                    return Err(QueueError::Storage(
                        "the NATS URLs carry different credentials: give one set".into(),
                    ));
                }
                login = Some(this);
                // Cannot fail on a URL with a host (nats:// and tls:// URLs have one).
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            servers.push(
                async_nats::ServerAddr::from_url(parsed)
                    .map_err(|e| QueueError::Storage(format!("NATS URL {shown}: {e}")))?,
            );
        }
        if servers.is_empty() {
            return Err(QueueError::Storage("the NATS URL names no server".into()));
        }
        Ok(Target { servers, login })
    }
}

/// Connection settings without credentials: TLS, reconnects.
pub(super) fn transport(auth: &NatsAuth) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(ca) = &auth.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if auth.tls || auth.ca_file.is_some() {
        options = options.require_tls(true);
    }
    options
}

/// `options` with fjord's credentials; whether there were any.
pub(super) async fn authenticate(
    options: async_nats::ConnectOptions,
    target: &Target,
    auth: &NatsAuth,
) -> Result<(async_nats::ConnectOptions, bool), QueueError> {
    let given = [
        target.login.is_some(),
        auth.creds_file.is_some(),
        auth.nkey_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(QueueError::Storage(
            "NATS: give one way to authenticate: credentials in the URL, --nats-creds or --nats-nkey"
                .into(),
        ));
    }
    let options = if let Some((user, password)) = &target.login {
        match password {
            Some(password) => options.user_and_password(user.clone(), password.clone()),
            None => options.token(user.clone()),
        }
    } else if let Some(path) = &auth.creds_file {
        options.credentials_file(path).await.map_err(|e| {
            QueueError::Storage(format!("NATS credentials file {}: {e}", path.display()))
        })?
    } else if let Some(path) = &auth.nkey_file {
        let seed = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            QueueError::Storage(format!("NATS nkey seed file {}: {e}", path.display()))
        })?);
        let seed = seed.trim();
        if !seed.starts_with('S') {
            return Err(QueueError::Storage(format!(
                "NATS nkey seed file {} does not hold a seed (it starts with S, e.g. SU...)",
                path.display()
            )));
        }
        options.nkey(seed.to_owned())
    } else {
        return Ok((options, false));
    };
    Ok((options, true))
}

pub(super) fn connect_failed(
    shown: &str,
    credentials: bool,
    e: async_nats::ConnectError,
) -> QueueError {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::AuthorizationViolation if !credentials => QueueError::Storage(format!(
            "NATS at {shown} requires authentication ({e}): give fjord its credentials \
             (nats://user:password@host, nats://token@host, --nats-creds or --nats-nkey)"
        )),
        K::AuthorizationViolation | K::Authentication => QueueError::Storage(format!(
            "NATS at {shown} refused fjord's credentials ({e}): check the user and password or \
             token in the URL, --nats-creds or --nats-nkey against the server's authorization"
        )),
        K::Tls => QueueError::Storage(format!(
            "NATS at {shown}: TLS failed ({e}): check --nats-ca and the server's certificate"
        )),
        _ => failed(&format!("cannot connect to NATS at {shown}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("nats://user:pw@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(
            redact_url("nats://u:p@a:1,tls://t@b:2"),
            "nats://***@a:1,tls://***@b:2"
        );
        let t = Target::parse("nats://us%40er:p%3Aw@h:4222, nats://us%40er:p%3Aw@h2").unwrap();
        assert_eq!(t.login, Some(("us@er".into(), Some("p:w".into()))));
        assert_eq!(t.servers.len(), 2);
        for s in &t.servers {
            assert!(!s.as_url_str().contains('@'), "{}", s.as_url_str());
        }
        let t = Target::parse("tls://s3cret@h").unwrap();
        assert_eq!(t.login, Some(("s3cret".into(), None)));
        assert!(t.servers[0].tls_required());
        assert_eq!(Target::parse("nats://h:4222").unwrap().login, None);
        let e = Target::parse("nats://a:b@h,nats://c:d@h2")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("different credentials") && !e.contains(":b@"),
            "{e}"
        );
        let e = Target::parse("http://u:secret@h")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
