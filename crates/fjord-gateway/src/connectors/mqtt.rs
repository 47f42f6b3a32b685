//! The MQTT connector (`fjord serve --mqtt mqtt://…`, or `mqtts://…` over TLS): MQTT 3.1.1
//! through `rumqttc`. Each
//! function's `topic` entries are topic filters (`+` and `#` wildcards) subscribed with QoS 1
//! on one connection per server, whose session is persistent (`clean_session = false`, a
//! client id fixed by the data dir): messages published while fjord is down are kept by the
//! broker and delivered when it is back. Each message runs every function whose filter
//! matches, with the payload as the body (`X-Connector: mqtt`, `X-Topic: <topic>`), and is
//! acknowledged (PUBACK) only once those calls are done: after a 2xx, or after the retry
//! policy's last attempt, when it is published to `fjord/dead/<namespace>/<name>` instead.
//! A fjord killed before the ack gets the message again at its next connection. Calls per
//! function run at most `com.openfaas.queue.max_inflight` at a time (default 10).

use std::sync::{Arc, RwLock};

use fjord_control::ControlPlane;
use fjord_control::metrics::TriggerOutcome;
use fjord_core::FunctionKey;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::{RESPONSE_SUBJECT, rfc3339};
use crate::invoke::Invoker;
use crate::trigger::{BoxFuture, Trigger};

pub const KIND: &str = "mqtt";

/// MQTT topic filter syntax: levels split by `/`; `+` alone in a level; `#` alone and last.
pub fn check_filter(f: &str) -> Result<(), String> {
    if f.is_empty() {
        return Err("it is empty".into());
    }
    if f.contains('\0') {
        return Err("it contains NUL".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.len() > 1 && (l.contains('+') || l.contains('#')) {
            return Err(format!(
                "wildcard misuse in {l:?}: + and # stand alone in a level"
            ));
        }
        if *l == "#" && i + 1 != levels.len() {
            return Err("# must be the last level".into());
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` (MQTT rules: topics starting with `$` are not matched by
/// a wildcard in the first level).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Parses `--mqtt`: `mqtt://[user:password@]host[:port]` (port 1883 by default), or
/// `mqtts://…` for TLS (port 8883 by default).
pub fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let shown = fjord_queue::redact_url(s);
    let u = url::Url::parse(s).map_err(|e| format!("{shown:?} is not an MQTT URL: {e}"))?;
    match u.scheme() {
        "mqtt" | "tcp" | "mqtts" | "ssl" => {}
        other => {
            return Err(format!(
                "{shown:?} is not an MQTT URL (scheme {other}): use mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883, or mqtts://HOST:PORT for TLS"
            ));
        }
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} names no host: use mqtt://HOST:PORT"));
    }
    Ok(s.to_string())
}

/// TLS to the broker (`--mqtt-ca`, `--mqtt-cert`, `--mqtt-key`): any of them, or an
/// `mqtts://` URL, turns TLS on.
#[derive(Debug, Clone, Default)]
pub struct MqttTls {
    /// CA certificates (PEM) that signed the broker's certificate, instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate chain (PEM) for brokers that authenticate clients by certificate.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub key: Option<std::path::PathBuf>,
}

impl MqttTls {
    fn wanted(&self, url: &url::Url) -> bool {
        matches!(url.scheme(), "mqtts" | "ssl")
            || self.ca.is_some()
            || self.cert.is_some()
            || self.key.is_some()
    }

    /// The client configuration (ring, like every rustls user in fjord): the CA file's
    /// certificates or the system's roots, and the client certificate if given.
    fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let what = |e: String| format!("--mqtt-ca {}: {e}", path.display());
                let pem = std::fs::read(path).map_err(|e| what(format!("cannot read: {e}")))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| what(format!("not PEM certificates: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| what(format!("not a CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(what(
                        "holds no certificate (PEM \"BEGIN CERTIFICATE\")".into(),
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("mqtts: the system has no CA certificates (install ca-certificates) and --mqtt-ca names none".into());
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("mqtts: {e}"))?
        .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let pem = std::fs::read(cert)
                    .map_err(|e| format!("--mqtt-cert {}: cannot read: {e}", cert.display()))?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!("--mqtt-cert {}: not PEM certificates: {e}", cert.display())
                    })?;
                if chain.is_empty() {
                    return Err(format!(
                        "--mqtt-cert {}: holds no certificate",
                        cert.display()
                    ));
                }
                let pem = std::fs::read(key)
                    .map_err(|e| format!("--mqtt-key {}: cannot read: {e}", key.display()))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    format!("--mqtt-key {}: not a PEM private key: {e}", key.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("--mqtt-cert/--mqtt-key: {e}"))
            }
            (Some(_), None) => {
                Err("--mqtt-cert needs --mqtt-key (the certificate's private key)".into())
            }
            (None, Some(_)) => Err("--mqtt-key needs --mqtt-cert (the client certificate)".into()),
        }
    }
}

/// The broker's state for `/healthz`.
#[derive(Default)]
pub struct BrokerState {
    connected: std::sync::atomic::AtomicBool,
}

impl BrokerState {
    pub fn connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Logs once per change.
    fn set(&self, up: bool, url: &str, why: &str) {
        if self
            .connected
            .swap(up, std::sync::atomic::Ordering::Relaxed)
            != up
        {
            if up {
                tracing::info!(url, "mqtt connector: connected");
            } else {
                tracing::warn!(
                    url,
                    reason = why,
                    "mqtt connector: disconnected, reconnecting with backoff"
                );
            }
        }
    }
}

/// A connection whose first CONNACK arrived.
pub struct Connected {
    pub client: AsyncClient,
    pub events: EventLoop,
    pub state: Arc<BrokerState>,
    pub url: String,
}

/// Connects with a persistent session whose client id is fixed by `data_dir` (so a restart
/// resumes it); waits for the broker's answer (a startup error when it cannot be reached).
pub async fn connect(
    url: &str,
    tls: &MqttTls,
    data_dir: &std::path::Path,
) -> Result<Connected, String> {
    use sha2::Digest;
    let shown = fjord_queue::redact_url(url);
    let u = url::Url::parse(url).map_err(|e| format!("--mqtt {shown}: {e}"))?;
    let host = u.host_str().unwrap_or_default().to_string();
    let secure = tls.wanted(&u);
    let port = u.port().unwrap_or(if secure { 8883 } else { 1883 });
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
    let id = format!(
        "fjord-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5]
    );
    let mut o = MqttOptions::new(id, host, port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(std::time::Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20);
    if !u.username().is_empty() {
        o.set_credentials(
            percent_decode(u.username()),
            percent_decode(u.password().unwrap_or_default()),
        );
    }
    if secure {
        let config = tls.client_config()?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    let (client, mut events) = AsyncClient::new(o, 256);
    // Without it a PUBACK written right after a response's PUBLISH waits for the broker's
    // delayed ACK (Nagle): ~40 ms per message.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no answer within 10 s".to_string())
    .and_then(|r| r);
    first.map_err(|e| {
        let hint = if secure && e.contains("certificate") {
            " (is --mqtt-ca the CA that signed the broker's certificate, and does it name the URL's host?)"
        } else {
            ""
        };
        format!("--mqtt {shown}: cannot connect: {e}{hint}")
    })?;
    let state = Arc::new(BrokerState::default());
    state.set(true, &shown, "");
    Ok(Connected {
        client,
        events,
        state,
        url: shown,
    })
}

/// `%XX` sequences decoded (URL credentials); anything malformed is kept as is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = b.get(i + 1..i + 3)
            && let Some(v) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One function subscribed to one filter.
#[derive(Clone)]
struct Route {
    filter: String,
    key: FunctionKey,
    response: Option<String>,
    policy: fjord_core::policy::RetryPolicy,
    /// The function's `com.openfaas.queue.max_inflight` calls at once (all its filters).
    permits: Arc<tokio::sync::Semaphore>,
}

pub struct MqttTrigger {
    pub connected: Connected,
    pub control: Arc<ControlPlane>,
}

impl Trigger for MqttTrigger {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn run(
        self: Box<Self>,
        invoker: Invoker,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Connected {
                client,
                mut events,
                state,
                url,
            } = self.connected;
            let routes: Arc<RwLock<Vec<Route>>> = Arc::default();
            let mut subscribed: std::collections::BTreeSet<String> = Default::default();
            let mut watch = self.control.watch_routes();
            // The table first, so messages the broker kept for this session find their
            // functions.
            sync(&self.control, &routes, &client, &mut subscribed, true).await;
            loop {
                tokio::select! {
                    changed = watch.changed() => {
                        if changed.is_err() { break; }
                        sync(&self.control, &routes, &client, &mut subscribed, false).await;
                    }
                    ev = events.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            state.set(true, &url, "");
                            // The session keeps them; subscribing again is harmless.
                            for f in &subscribed {
                                let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let matching: Vec<Route> = routes
                                .read()
                                .unwrap_or_else(|p| p.into_inner())
                                .iter()
                                .filter(|r| matches(&r.filter, &p.topic))
                                .cloned()
                                .collect();
                            let (client, invoker) = (client.clone(), invoker.clone());
                            tokio::spawn(async move {
                                let calls = matching
                                    .iter()
                                    .map(|r| handle(&client, &invoker, r, &p));
                                futures_util::future::join_all(calls).await;
                                // After every function had it: a crash before here means
                                // the broker sends it again.
                                if let Err(e) = client.ack(&p).await {
                                    tracing::warn!(error = %e, "mqtt connector: cannot ack");
                                }
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            state.set(false, &url, &e.to_string());
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                                () = shutdown.cancelled() => break,
                            }
                        }
                    },
                    () = shutdown.cancelled() => break,
                }
            }
            let _ = client.disconnect().await;
        })
    }
}

/// Brings the routing table and the broker's subscriptions in line with the deployments.
async fn sync(
    control: &Arc<ControlPlane>,
    routes: &RwLock<Vec<Route>>,
    client: &AsyncClient,
    subscribed: &mut std::collections::BTreeSet<String>,
    first: bool,
) {
    let mut table = Vec::new();
    for d in super::deployed(control) {
        let filters = super::subscriptions(&d.deployment);
        d.route.metrics.triggers.set_sources(KIND, &filters);
        let a = d.deployment.annotations.as_ref();
        let response = a
            .and_then(|a| a.get(RESPONSE_SUBJECT))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let policy = fjord_core::policy::RetryPolicy::from_annotations(a).unwrap_or_default();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            fjord_core::policy::max_inflight(a)
                .unwrap_or(fjord_core::policy::DEFAULT_MAX_INFLIGHT)
                .max(1),
        ));
        for f in filters {
            d.route.metrics.triggers.set_active(KIND, &f, true);
            table.push(Route {
                filter: f,
                key: d.key.clone(),
                response: response.clone(),
                policy: policy.clone(),
                permits: permits.clone(),
            });
        }
    }
    let wanted: std::collections::BTreeSet<String> =
        table.iter().map(|r| r.filter.clone()).collect();
    *routes.write().unwrap_or_else(|p| p.into_inner()) = table;
    // The client's requests are queued to the event loop, which this task also polls: use
    // try_ (never wait on a full queue here).
    for f in wanted.difference(subscribed).cloned().collect::<Vec<_>>() {
        match client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
            Ok(()) => {
                subscribed.insert(f);
            }
            Err(e) => tracing::warn!(filter = %f, error = %e, "mqtt connector: cannot subscribe"),
        }
    }
    if !first {
        for f in subscribed.difference(&wanted).cloned().collect::<Vec<_>>() {
            let _ = client.try_unsubscribe(f.clone());
            subscribed.remove(&f);
        }
    }
}

/// One function's call for one message, with its retries; dead letters after the last.
async fn handle(client: &AsyncClient, invoker: &Invoker, r: &Route, p: &rumqttc::Publish) {
    let Ok(_permit) = r.permits.acquire().await else {
        return;
    };
    let mut attempt = 1;
    loop {
        let at = chrono::Utc::now();
        let headers = [
            (super::HEADER_CONNECTOR, KIND.to_string()),
            (super::HEADER_TOPIC, p.topic.clone()),
        ];
        let answer = super::call(invoker, &r.key, &headers, p.payload.clone()).await;
        let (outcome, retry) = match &answer {
            Ok(a) => (a.outcome(), a.retryable(&r.policy.codes)),
            Err(e) => (TriggerOutcome::Failed(e.clone()), true),
        };
        if let Some(route) = invoker.lookup(&r.key) {
            route
                .metrics
                .triggers
                .record(KIND, &r.filter, rfc3339(at), outcome.clone());
        }
        match outcome {
            TriggerOutcome::Ok => {
                if let (Ok(a), Some(to)) = (&answer, &r.response)
                    && let Err(e) = client
                        .publish_bytes(to.clone(), QoS::AtLeastOnce, false, a.body.clone())
                        .await
                {
                    tracing::warn!(function = %r.key, topic = %to, error = %e, "mqtt connector: cannot publish the response");
                }
                return;
            }
            TriggerOutcome::Failed(_) if retry && attempt < r.policy.attempts => {
                tokio::time::sleep(r.policy.wait(attempt, None, rand::random::<f64>())).await;
                attempt += 1;
            }
            TriggerOutcome::Failed(why) | TriggerOutcome::Skipped(why) => {
                let to = format!("fjord/dead/{}/{}", r.key.namespace, r.key.name);
                tracing::warn!(function = %r.key, topic = %p.topic, reason = %why, attempts = attempt, dead_letters = %to, "mqtt connector: message dead-lettered");
                let _ = client
                    .publish_bytes(to, QoS::AtLeastOnce, false, p.payload.clone())
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_matching() {
        for ok in ["a/b", "a/+/c", "a/#", "#", "+", "/a"] {
            check_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "a/b#", "a/#/c", "a+/b"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("sensors/+/temp", "sensors/room1/temp"));
    }

    #[test]
    fn urls() {
        assert!(parse_url("mqtt://127.0.0.1:1883").is_ok());
        assert!(parse_url("mqtts://broker.example:8883").is_ok());
        for bad in ["http://x", "mqtt://", "mqtts://", "nonsense"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_decode("a%40b"), "a@b");
    }
}
