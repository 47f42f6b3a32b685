//! A small client for the gateway's API. Every failure becomes a [`CliError`] that carries
//! the HTTP status, the server's message and what to do next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fjord_core::openfaas::{
    FunctionDeployment, FunctionStatus, GatewayInfo, LogMessage, RolloutStatus, Secret,
    SecretDescription,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::json;

use crate::config::{self, Credentials};
use crate::error::CliError;

pub struct Gateway {
    pub url: String,
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// Where `creds` came from (or which password files were looked at): named on a 401.
    source: config::Source,
}

/// How to trust an https gateway's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    /// A CA certificate (PEM) to trust besides the system's.
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate.
    pub no_verify: bool,
}

fn hint(status: StatusCode, url: &str, source: &config::Source) -> String {
    match status.as_u16() {
        401 => format!(
            "\n  credentials tried: {source}\n  log in with `fjord login -g {url}` (user admin; the password is in <data-dir>/secrets/basic-auth-password on the gateway's machine), set FJORD_PASSWORD, or give an API token with --token (FJORD_TOKEN)"
        ),
        403 => "\n  this API token's scope does not allow that: use a token with the scope named above (`fjord token create NAME --scope ...`, as admin)".to_string(),
        429 => "\n  too many failed logins from this address: wait for the time above, then retry with the right credentials".to_string(),
        _ => String::new(),
    }
}

/// Whether a transport error is a certificate that was not trusted.
fn is_certificate_error(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("certificate") || r.contains("unknownissuer") || r.contains("notvalidforname")
}

impl Gateway {
    pub fn new(url: String, token: Option<&str>, tls: &TlsTrust) -> Result<Self, CliError> {
        let (creds, source) = config::credentials(&url, token);
        let mut gw = Self::with_credentials(url, creds, tls)?;
        gw.source = source;
        Ok(gw)
    }

    pub fn with_credentials(
        url: String,
        creds: Option<Credentials>,
        tls: &TlsTrust,
    ) -> Result<Self, CliError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5));
        if let Some(path) = &tls.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::Usage(format!("--ca-cert {}: cannot read: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CliError::Usage(format!(
                    "--ca-cert {}: not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(CliError::Usage(format!(
                    "--ca-cert {}: holds no certificate (expected -----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if tls.no_verify && url.starts_with("https://") {
            eprintln!(
                "warning: --tls-no-verify: the certificate of {url} is not checked; anyone on the network path could impersonate the gateway"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Other(e.to_string()))?;
        Ok(Self {
            url,
            http,
            creds,
            source: config::Source::Given,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// A function call: carries the API token if there is one (functions annotated
    /// `com.fjord.auth: token` need it), never the admin password.
    pub fn invocation(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.request(method, path);
        match self.creds.as_ref().and_then(|c| c.token.as_deref()) {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// A `/system` request with credentials.
    pub fn system(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.request(method, path);
        match &self.creds {
            Some(Credentials { token: Some(t), .. }) => r.bearer_auth(t),
            Some(c) => r.basic_auth(&c.user, Some(&c.password)),
            None => r,
        }
    }

    /// Sends, mapping transport errors and non-success statuses to errors.
    pub async fn send(&self, req: RequestBuilder, what: &str) -> Result<Response, CliError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let mut message = resp.text().await.unwrap_or_default().trim().to_string();
        if status == StatusCode::UNAUTHORIZED && self.creds.is_none() {
            // The gateway answers "invalid credentials" to any 401: none were sent.
            message = "no credentials sent, and this gateway requires them".to_string();
        }
        Err(CliError::Api {
            what: what.to_string(),
            status: status.as_u16(),
            message: if message.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                message
            },
            hint: hint(status, &self.url, &self.source),
        })
    }

    pub fn transport(&self, e: reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        if is_certificate_error(&reason) {
            return CliError::Certificate {
                url: self.url.clone(),
                reason,
            };
        }
        CliError::Unreachable {
            url: self.url.clone(),
            reason,
        }
    }

    fn ns_query(namespace: Option<&str>) -> String {
        namespace
            .filter(|n| !n.is_empty())
            .map(|n| format!("?namespace={n}"))
            .unwrap_or_default()
    }

    pub async fn info(&self) -> Result<GatewayInfo, CliError> {
        let r = self
            .send(self.system(Method::GET, "/system/info"), "GET /system/info")
            .await?;
        r.json().await.map_err(|e| CliError::Other(e.to_string()))
    }

    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<FunctionStatus>, CliError> {
        let path = format!("/system/functions{}", Self::ns_query(namespace));
        let r = self
            .send(self.system(Method::GET, &path), "list functions")
            .await?;
        r.json().await.map_err(|e| CliError::Other(e.to_string()))
    }

    pub async fn get(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<FunctionStatus, CliError> {
        let path = format!("/system/function/{name}{}", Self::ns_query(namespace));
        let r = self
            .send(self.system(Method::GET, &path), &format!("function {name}"))
            .await?;
        r.json().await.map_err(|e| CliError::Other(e.to_string()))
    }

    /// Creates or updates a function. Returns the status and the deploy's generation
    /// (`X-Fjord-Generation`; absent from older fjord servers and other gateways).
    pub async fn deploy(
        &self,
        d: &FunctionDeployment,
    ) -> Result<(StatusCode, Option<u64>), CliError> {
        let what = format!("deploy {}", d.service);
        let call = self.send(
            self.system(Method::POST, "/system/functions").json(d),
            &what,
        );
        tokio::pin!(call);
        // The call answers once a container image is pulled: meanwhile, show the pull.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut shown = None;
        let r = loop {
            tokio::select! {
                r = &mut call => break r?,
                _ = tick.tick() => {
                    let Ok(s) = self.get(&d.service, d.namespace.as_deref()).await else {
                        continue;
                    };
                    if let Some(p) = s.fjord.and_then(|f| f.pull).filter(|p| p.image == d.image) {
                        let line = format!(
                            "{}: pulling {}: {} of {} layers, {:.1} of {:.1} MB",
                            d.service,
                            p.image,
                            p.layers_done,
                            p.layers,
                            p.bytes as f64 / 1e6,
                            p.total_bytes as f64 / 1e6
                        );
                        if shown.as_ref() != Some(&line) {
                            eprintln!("{line} ({:.0} s)", p.seconds);
                            shown = Some(line);
                        }
                    }
                }
            }
        };
        let generation = r
            .headers()
            .get("x-fjord-generation")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((r.status(), generation))
    }

    /// Waits until the deploy numbered `generation` is ready or has failed (see
    /// `fjord.rollout`), not merely until some replica (perhaps of the old version) is.
    pub async fn wait_rollout(
        &self,
        name: &str,
        namespace: Option<&str>,
        generation: u64,
        timeout: Duration,
    ) -> Result<RolloutStatus, CliError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.get(name, namespace).await?;
            let rollout = s.fjord.as_ref().and_then(|f| f.rollout.clone());
            if let Some(r) = &rollout {
                if r.generation > generation {
                    return Err(CliError::Other(format!(
                        "{name}: a newer deploy (generation {}) replaced this one (generation {generation}) before it was ready",
                        r.generation
                    )));
                }
                if r.generation == generation && r.state != "progressing" {
                    return Ok(r.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let (ready, of) = rollout
                    .filter(|r| r.generation == generation)
                    .map_or((0, 0), |r| (r.ready_replicas, r.replicas));
                return Err(CliError::Other(format!(
                    "{name}: the new version is not ready after {} s ({ready} of {of} replicas){}\n  see its logs: fjord logs {name}",
                    timeout.as_secs(),
                    s.fjord
                        .and_then(|f| f.last_error)
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `tail` log lines of a function, of one replica if `instance` is given.
    pub async fn log_tail(
        &self,
        name: &str,
        namespace: Option<&str>,
        instance: Option<&str>,
        tail: u64,
    ) -> Result<Vec<LogMessage>, CliError> {
        let mut q: Vec<(&str, String)> =
            vec![("name", name.to_string()), ("tail", tail.to_string())];
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            q.push(("namespace", ns.to_string()));
        }
        if let Some(i) = instance {
            q.push(("instance", i.to_string()));
        }
        let r = self
            .send(
                self.system(Method::GET, "/system/logs").query(&q),
                &format!("logs of {name}"),
            )
            .await?;
        let body = r.text().await.map_err(|e| self.transport(e))?;
        Ok(body
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    pub async fn remove(&self, name: &str, namespace: Option<&str>) -> Result<(), CliError> {
        let mut body = json!({"functionName": name});
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            body["namespace"] = json!(ns);
        }
        self.send(
            self.system(Method::DELETE, "/system/functions").json(&body),
            &format!("remove {name}"),
        )
        .await?;
        Ok(())
    }

    /// `POST /system/images/gc`: what the gateway removed.
    pub async fn gc_images(&self) -> Result<serde_json::Value, CliError> {
        let r = self
            .send(
                self.system(Method::POST, "/system/images/gc"),
                "collect unused images",
            )
            .await?;
        r.json()
            .await
            .map_err(|e| CliError::Other(format!("the gateway's answer to images gc: {e}")))
    }

    /// Scales a function; returns the count the gateway set (it clamps to
    /// `com.openfaas.scale.max`), or `None` when its answer does not say (OpenFaaS).
    pub async fn scale(
        &self,
        name: &str,
        namespace: Option<&str>,
        replicas: u64,
    ) -> Result<Option<u64>, CliError> {
        let mut body = json!({"serviceName": name, "replicas": replicas});
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            body["namespace"] = json!(ns);
        }
        let r = self
            .send(
                self.system(Method::POST, &format!("/system/scale-function/{name}"))
                    .json(&body),
                &format!("scale {name}"),
            )
            .await?;
        let answer: Option<serde_json::Value> = r.json().await.ok();
        Ok(answer.and_then(|a| a["replicas"].as_u64()))
    }

    pub async fn list_secrets(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<SecretDescription>, CliError> {
        let path = format!("/system/secrets{}", Self::ns_query(namespace));
        let r = self
            .send(self.system(Method::GET, &path), "list secrets")
            .await?;
        r.json().await.map_err(|e| CliError::Other(e.to_string()))
    }

    /// Creates (`POST`) or updates (`PUT`) a secret.
    pub async fn put_secret(&self, method: Method, s: &Secret) -> Result<(), CliError> {
        let what = if method == Method::POST {
            "create"
        } else {
            "update"
        };
        self.send(
            self.system(method, "/system/secrets").json(s),
            &format!("{what} secret {}", s.name),
        )
        .await?;
        Ok(())
    }

    pub async fn remove_secret(&self, name: &str, namespace: Option<&str>) -> Result<(), CliError> {
        let mut body = json!({"name": name});
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            body["namespace"] = json!(ns);
        }
        self.send(
            self.system(Method::DELETE, "/system/secrets").json(&body),
            &format!("remove secret {name}"),
        )
        .await?;
        Ok(())
    }

    pub async fn has_bundle(&self, digest: &str) -> Result<bool, CliError> {
        let r = self
            .system(Method::HEAD, &format!("/system/bundles/{digest}"))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(CliError::Api {
                what: format!("check bundle {digest}"),
                status: s.as_u16(),
                message: if s == StatusCode::UNAUTHORIZED && self.creds.is_none() {
                    "no credentials sent, and this gateway requires them".into()
                } else {
                    s.canonical_reason().unwrap_or("error").into()
                },
                hint: hint(s, &self.url, &self.source),
            }),
        }
    }

    /// Uploads a packed bundle and tags it.
    pub async fn upload_bundle(
        &self,
        digest: &str,
        archive: &Path,
        tag: &str,
    ) -> Result<(), CliError> {
        let file = tokio::fs::File::open(archive).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        self.send(
            self.system(Method::PUT, &format!("/system/bundles/{digest}"))
                .query(&[("tag", tag)])
                .header(reqwest::header::CONTENT_LENGTH, len)
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .body(body),
            &format!("upload bundle {tag}"),
        )
        .await?;
        Ok(())
    }

    pub async fn tag_bundle(&self, digest: &str, tag: &str) -> Result<(), CliError> {
        self.send(
            self.system(Method::POST, "/system/bundle-tags")
                .json(&json!({"tag": tag, "digest": digest})),
            &format!("tag bundle {tag}"),
        )
        .await?;
        Ok(())
    }

    /// Waits until a function has a ready replica (or its last error shows it will not).
    pub async fn wait_ready(
        &self,
        name: &str,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<FunctionStatus, CliError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.get(name, namespace).await?;
            let updated = s.fjord.as_ref().and_then(|f| f.last_error.clone());
            if s.available_replicas >= s.replicas.min(1)
                && (s.replicas == 0 || s.available_replicas > 0)
            {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CliError::Other(format!(
                    "{name} is not ready after {} s ({} of {} replicas){}\n  see its logs: fjord logs {name}",
                    timeout.as_secs(),
                    s.available_replicas,
                    s.replicas,
                    updated
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
