//! Where the CLI finds the gateway and its credentials.
//!
//! Gateway URL: `-g/--gateway`, else `FJORD_URL`, else `OPENFAAS_URL`, else the stack file's
//! `provider.gateway`, else `http://127.0.0.1:8080`.
//! Credentials: `--token`/`FJORD_TOKEN` (an API token), else `FJORD_PASSWORD` (user `FJORD_USER`, default admin), else what `fjord login`
//! saved for that URL (`$XDG_CONFIG_HOME/fjord/config.json`, mode 0600), else — for a gateway
//! on this machine — the password file of the local data dir (`FJORD_DATA_DIR`, default
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

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FJORD_DATA_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d);
    }
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

fn is_local(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.starts_with("127.") || rest.starts_with("localhost") || rest.starts_with("[::1]")
}

/// Credentials for a gateway, if any are known: `--token`/`FJORD_TOKEN` first.
pub fn credentials(url: &str, token: Option<&str>) -> Option<Credentials> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Some(Credentials::token(t.to_string()));
    }
    if let Ok(password) = std::env::var("FJORD_PASSWORD")
        && !password.is_empty()
    {
        let user = std::env::var("FJORD_USER").unwrap_or_else(|_| "admin".into());
        return Some(Credentials {
            user,
            password,
            token: None,
        });
    }
    if let Some(c) = load().gateways.get(url) {
        return Some(c.clone());
    }
    if is_local(url) {
        let file = default_data_dir().join("secrets/basic-auth-password");
        if let Ok(p) = std::fs::read_to_string(file) {
            return Some(Credentials {
                user: "admin".into(),
                password: p.trim().to_string(),
                token: None,
            });
        }
    }
    None
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
}
