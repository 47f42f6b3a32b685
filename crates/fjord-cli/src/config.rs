//! Where the CLI finds the gateway and its credentials.
//!
//! Gateway URL: `-g/--gateway`, else `FJORD_URL`, else `OPENFAAS_URL`, else the stack file's
//! `provider.gateway`, else `http://127.0.0.1:8080`.
//! Credentials: `--token`/`FJORD_TOKEN` (an API token), else `FJORD_PASSWORD` (user `FJORD_USER`, default admin), else what `fjord login`
//! saved for that URL (`$XDG_CONFIG_HOME/fjord/config.json`, mode 0600), else — for a gateway
//! on this machine — the password file of the data dir whose `gateway.addr` names that
//! gateway (`FJORD_DATA_DIR`, else root's `/var/lib/fjord` and the user's own
//! `$XDG_DATA_HOME/fjord`), so `fjord serve` then `fjord up` just works.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::CliError;

pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub gateways: BTreeMap<String, Credentials>,
}

/// Basic credentials, or an API token (sent as `Authorization: Bearer`, and preferred).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Credentials {
    pub fn token(token: String) -> Self {
        Self {
            token: Some(token),
            ..Self::default()
        }
    }
}

pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FJORD_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("fjord").join("config.json")
}

/// Where a system service keeps its state: `fjord serve`'s default when run as root.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/fjord";

/// `FJORD_DATA_DIR`, else `/var/lib/fjord` for root (a system service: `/root` is 0700 and
/// belongs in no service's path), else the user's `$XDG_DATA_HOME/fjord`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FJORD_DATA_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(SYSTEM_DATA_DIR);
    }
    user_data_dir()
}

/// The user's own data dir: `$XDG_DATA_HOME/fjord`, else `~/.local/share/fjord`.
fn user_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("fjord");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/fjord"),
        None => PathBuf::from("/var/lib/fjord"),
    }
}

pub fn load() -> Config {
    std::fs::read_to_string(config_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn save(cfg: &Config) -> Result<PathBuf, CliError> {
    let path = config_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(cfg).map_err(|e| CliError::Other(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// The gateway URL to use (see the module docs for the order).
pub fn gateway_url(flag: Option<&str>, stack_gateway: Option<&str>) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = flag
        .map(str::to_string)
        .or_else(|| env("FJORD_URL"))
        .or_else(|| env("OPENFAAS_URL"))
        .or_else(|| stack_gateway.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_GATEWAY.to_string());
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    url.trim_end_matches('/').to_string()
}

/// `host:port` of a URL's authority (the default port of its scheme when none is given).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Whether `gateway.addr` (what `fjord serve` listens on) is the gateway `url` names: same
/// port, and the same host or both on this machine.
fn addr_matches(addr: &str, url: &str) -> bool {
    let (Some((uh, up)), Some((ah, ap))) = (host_port(url), host_port(&format!("x://{addr}")))
    else {
        return false;
    };
    up == ap && (uh == ah || (is_loopback(&uh) && is_loopback(&ah)))
}

/// Where the credentials the CLI sends come from, named in a 401's hint.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Given to the command itself (`fjord login`).
    Given,
    TokenFlag,
    PasswordEnv,
    Login(PathBuf),
    PasswordFile(PathBuf),
    /// Nothing was sent; the password files looked at, and why each was not used.
    None(Vec<(PathBuf, String)>),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Given => write!(f, "the credentials given to this command"),
            Source::TokenFlag => write!(f, "the API token from --token (FJORD_TOKEN)"),
            Source::PasswordEnv => write!(f, "the password from FJORD_PASSWORD"),
            Source::Login(p) => write!(f, "the credentials `fjord login` saved in {}", p.display()),
            Source::PasswordFile(p) => write!(f, "the password file {}", p.display()),
            Source::None(tried) => {
                write!(
                    f,
                    "no credentials sent (no --token, FJORD_TOKEN or FJORD_PASSWORD, no `fjord login` for this URL"
                )?;
                for (p, why) in tried {
                    write!(f, "; {}: {why}", p.display())?;
                }
                write!(f, ")")
            }
        }
    }
}

/// Data dirs whose password file may belong to a gateway on this machine: `FJORD_DATA_DIR`
/// when set, else root's `/var/lib/fjord` and the user's own.
fn local_data_dirs() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("FJORD_DATA_DIR").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut dirs = vec![PathBuf::from(SYSTEM_DATA_DIR)];
    let own = user_data_dir();
    if !dirs.contains(&own) {
        dirs.push(own);
    }
    dirs
}

/// The password file of the local gateway `url` names: the data dir whose `gateway.addr`
/// matches it, else (no gateway address matches, e.g. an older fjord) the first readable one.
fn local_password(url: &str, tried: &mut Vec<(PathBuf, String)>) -> Option<(Credentials, PathBuf)> {
    let dirs = local_data_dirs();
    let read = |file: PathBuf, tried: &mut Vec<(PathBuf, String)>| match std::fs::read_to_string(
        &file,
    ) {
        Ok(p) => Some((
            Credentials {
                user: "admin".into(),
                password: p.trim().to_string(),
                token: None,
            },
            file,
        )),
        Err(e) => {
            let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied (run the command as the gateway's user, e.g. with sudo, or use `fjord login`)".to_string(),
                    _ => format!("cannot read it ({e})"),
                };
            tried.push((file, why));
            None
        }
    };
    let serving = dirs.iter().find(|d| {
        std::fs::read_to_string(d.join("gateway.addr")).is_ok_and(|a| addr_matches(a.trim(), url))
    });
    if let Some(d) = serving {
        return read(d.join(PASSWORD_FILE), tried);
    }
    dirs.iter().find_map(|d| read(d.join(PASSWORD_FILE), tried))
}

/// The password file inside a data dir.
pub const PASSWORD_FILE: &str = "secrets/basic-auth-password";

/// Credentials for a gateway, if any are known (`--token`/`FJORD_TOKEN` first), and where
/// they came from.
pub fn credentials(url: &str, token: Option<&str>) -> (Option<Credentials>, Source) {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return (Some(Credentials::token(t.to_string())), Source::TokenFlag);
    }
    if let Ok(password) = std::env::var("FJORD_PASSWORD")
        && !password.is_empty()
    {
        let user = std::env::var("FJORD_USER").unwrap_or_else(|_| "admin".into());
        return (
            Some(Credentials {
                user,
                password,
                token: None,
            }),
            Source::PasswordEnv,
        );
    }
    if let Some(c) = load().gateways.get(url) {
        return (Some(c.clone()), Source::Login(config_path()));
    }
    let mut tried = Vec::new();
    if host_port(url).is_some_and(|(h, _)| is_loopback(&h))
        && let Some((c, file)) = local_password(url, &mut tried)
    {
        return (Some(c), Source::PasswordFile(file));
    }
    (None, Source::None(tried))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_url_forms() {
        assert_eq!(
            gateway_url(Some("127.0.0.1:9000/"), None),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            gateway_url(Some("https://fjord.example"), None),
            "https://fjord.example"
        );
    }

    #[test]
    fn gateway_addr_matching() {
        assert!(addr_matches("127.0.0.1:8080", "http://127.0.0.1:8080"));
        assert!(addr_matches("127.0.0.1:8080", "http://localhost:8080/"));
        assert!(addr_matches("0.0.0.0:8080", "http://127.0.0.1:8080"));
        assert!(addr_matches("[::1]:8080", "http://127.0.0.1:8080"));
        assert!(!addr_matches("127.0.0.1:8081", "http://127.0.0.1:8080"));
        assert!(!addr_matches("127.0.0.1:80", "http://fjord.example"));
        assert!(addr_matches("127.0.0.1:80", "http://127.0.0.1"));
    }
}
