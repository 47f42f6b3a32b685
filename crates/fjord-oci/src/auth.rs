//! Registry credentials: Docker's `config.json` (`auths`), as `docker login` writes it and as
//! Kubernetes image pull secrets hold it (`.dockerconfigjson`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic (or a bearer token obtained with them, as the registry asks).
    Basic { username: String, password: String },
    /// A registry token sent as `Authorization: Bearer` as it is.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_client(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// Why a Docker config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a Docker config (JSON with `auths`): {0}")]
    Json(String),
    #[error("the `auth` of {registry:?} is not base64 of `username:password`")]
    BadAuth { registry: String },
    #[error(
        "the entry for {registry:?} has neither `auth`, `username`/`password` nor `registrytoken`"
    )]
    Empty { registry: String },
}

/// The `auths` of a Docker `config.json` or `.dockerconfigjson`, by registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.auths.iter()).finish()
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    auths: Option<BTreeMap<String, RawEntry>>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl DockerConfig {
    /// Reads a `config.json` (`~/.docker/config.json`, `/run/containers/0/auth.json`, …).
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses `config.json` or `.dockerconfigjson` text (the same format: `{"auths": {…}}`),
    /// or the legacy `.dockercfg` (the entries without the `auths` wrapper).
    pub fn parse(json: &str) -> Result<Self, AuthConfigError> {
        let json_err = |e: serde_json::Error| AuthConfigError::Json(e.to_string());
        let raw: Raw = serde_json::from_str(json).map_err(json_err)?;
        let entries = match raw.auths {
            Some(a) => a,
            None => {
                // Legacy: every top-level object is an entry; other keys (credsStore, …) are not.
                let all: BTreeMap<String, serde_json::Value> =
                    serde_json::from_str(json).map_err(json_err)?;
                all.into_iter()
                    .filter(|(_, v)| {
                        v.as_object().is_some_and(|o| {
                            ["auth", "username", "registrytoken"]
                                .iter()
                                .any(|k| o.contains_key(*k))
                        })
                    })
                    .map(|(k, v)| Ok((k, serde_json::from_value(v).map_err(json_err)?)))
                    .collect::<Result<_, AuthConfigError>>()?
            }
        };
        let mut auths = BTreeMap::new();
        for (key, e) in entries {
            let creds = if let Some(token) = e.registrytoken.filter(|t| !t.is_empty()) {
                Credentials::Bearer(token)
            } else if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
                let bad = || AuthConfigError::BadAuth {
                    registry: key.clone(),
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| bad())?;
                let text = String::from_utf8(bytes).map_err(|_| bad())?;
                let (u, p) = text.split_once(':').ok_or_else(bad)?;
                Credentials::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            } else if let (Some(u), Some(p)) = (e.username, e.password) {
                Credentials::Basic {
                    username: u,
                    password: p,
                }
            } else {
                return Err(AuthConfigError::Empty { registry: key });
            };
            auths.insert(normalize_registry(&key), creds);
        }
        Ok(Self { auths })
    }

    /// The credentials for a registry as references name it (`docker.io`, `host:5000`).
    pub fn credentials_for(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&normalize_registry(registry))
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty()
    }
}

/// A config key as a registry name: no scheme or path, Docker Hub's aliases as `docker.io`.
fn normalize_registry(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config_and_dockerconfigjson() {
        let json = r#"{
          "auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "alice", "password": "secret"},
            "http://reg.example:8443/v2/": {"auth": "Ym9iOmh1bnRlcjI="},
            "tok.example": {"registrytoken": "abc"}
          },
          "credsStore": "desktop"
        }"#;
        let c = DockerConfig::parse(json).unwrap();
        assert_eq!(
            c.credentials_for("docker.io"),
            Some(&Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            c.credentials_for("127.0.0.1:5000"),
            Some(&Credentials::Basic {
                username: "alice".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            c.credentials_for("reg.example:8443"),
            Some(&Credentials::Basic {
                username: "bob".into(),
                password: "hunter2".into()
            })
        );
        assert_eq!(
            c.credentials_for("tok.example"),
            Some(&Credentials::Bearer("abc".into()))
        );
        assert_eq!(c.credentials_for("127.0.0.1:5001"), None);
        // Secrets never show in Debug output.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_bad_configs() {
        assert!(matches!(
            DockerConfig::parse("not json"),
            Err(AuthConfigError::Json(_))
        ));
        assert!(matches!(
            DockerConfig::parse(r#"{"auths":{"r":{"auth":"!!!"}}}"#),
            Err(AuthConfigError::BadAuth { registry }) if registry == "r"
        ));
        assert!(matches!(
            DockerConfig::parse(r#"{"auths":{"r":{"auth":"bm9jb2xvbg=="}}}"#),
            Err(AuthConfigError::BadAuth { .. })
        ));
        assert!(matches!(
            DockerConfig::parse(r#"{"auths":{"r":{}}}"#),
            Err(AuthConfigError::Empty { .. })
        ));
        assert!(DockerConfig::parse("{}").unwrap().is_empty());
        assert!(
            DockerConfig::parse(r#"{"credsStore":"desktop"}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn parses_legacy_dockercfg() {
        let c = DockerConfig::parse(
            r#"{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz","email":"a@b"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.credentials_for("docker.io"),
            Some(&Credentials::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
    }
}
