//! The MQTT connector (`fjord serve --mqtt mqtt://…`, or `mqtts://…` over TLS): MQTT 3.1.1,
//! or 5 with `--mqtt-version 5`, through `rumqttc`. Each function's `topic` entries are
//! topic filters (`+` and `#` wildcards) subscribed with QoS 1 on one connection per server,
//! whose session is persistent (`clean_session = false`, a client id fixed by the data dir):
//! messages published while fjord is down are kept by the
//! broker and delivered when it is back. Each message runs every function whose filter
//! matches, with the payload as the body (`X-Connector: mqtt`, `X-Topic: <topic>`), and is
//! acknowledged (PUBACK) only once those calls are done: after a 2xx, or after the retry
//! policy's last attempt, when it is published to `fjord/dead/<namespace>/<name>` instead.
//! A fjord killed before the ack gets the message again at its next connection. Calls per
//! function run at most `com.openfaas.queue.max_inflight` at a time (default 10).
//!
//! MQTT 5 subscribes each function to its filters through a shared subscription of its own
//! (servers on one broker share its messages), routes by subscription identifier, and
//! answers messages that name a response topic.

use std::sync::{Arc, RwLock};

use fjord_control::ControlPlane;
use fjord_control::metrics::TriggerOutcome;
use fjord_core::FunctionKey;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, v5};
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

/// The MQTT protocol the connector speaks (`--mqtt-version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1, what OpenFaaS's mqtt-connector speaks and every broker knows.
    #[default]
    V3_1_1,
    /// MQTT 5: shared subscriptions (servers share a function's messages), response topics.
    V5,
}

/// Parses `--mqtt-version`: `3.1.1` (also `3`, `4`, its protocol level) or `5`.
pub fn parse_version(s: &str) -> Result<Version, String> {
    match s.trim() {
        "3.1.1" | "3" | "4" | "311" => Ok(Version::V3_1_1),
        "5" | "5.0" => Ok(Version::V5),
        other => Err(format!(
            "{other:?} is not an MQTT version fjord speaks: use 3.1.1 or 5"
        )),
    }
}

/// How long a broker keeps an MQTT 5 session while fjord is away (seconds): `u32::MAX` is
/// "never expires", as a 3.1.1 session with `clean_session` off.
const SESSION_EXPIRY: u32 = u32::MAX;

/// A connection whose first CONNACK arrived.
pub struct Connected {
    client: Client,
    events: Events,
    pub state: Arc<BrokerState>,
    pub url: String,
}

/// The client half of a connection, either protocol.
#[derive(Clone)]
enum Client {
    V3(AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop half of a connection.
enum Events {
    V3(Box<EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// A message as the broker delivered it (acked with it).
enum Delivery {
    V3(rumqttc::Publish),
    V5(Box<v5p::Publish>),
}

/// What one poll of the event loop brought that the connector acts on.
enum Polled {
    /// The broker accepted the connection; `Err` when an MQTT 5 broker lacks what the
    /// connector relies on.
    ConnAck(Result<(), String>),
    Publish(Delivery),
    Other,
    Failed(String),
}

/// A subscription as asked of the broker: the filter as sent (`$share/<group>/<filter>` for
/// MQTT 5) and its subscription identifier (MQTT 5).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Subscription {
    filter: String,
    id: Option<usize>,
}

/// What an answer sent to an MQTT 5 message's response topic carries besides its body.
struct Reply {
    status: u16,
    content_type: Option<String>,
    correlation: Option<bytes::Bytes>,
}

impl Client {
    fn try_subscribe(&self, s: &Subscription) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .try_subscribe(s.filter.clone(), QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_with_properties(
                    s.filter.clone(),
                    v5::mqttbytes::QoS::AtLeastOnce,
                    v5p::SubscribeProperties {
                        id: s.id,
                        user_properties: Vec::new(),
                    },
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Best effort: a subscription left behind only costs messages nobody runs.
    fn try_unsubscribe(&self, s: &Subscription) {
        match self {
            Client::V3(c) => drop(c.try_unsubscribe(s.filter.clone())),
            Client::V5(c) => drop(c.try_unsubscribe(s.filter.clone())),
        }
    }

    /// Publishes QoS 1; MQTT 5 replies carry the request's correlation data, the status (user
    /// property `fjord-status`) and the answer's content type.
    async fn publish(
        &self,
        topic: String,
        payload: bytes::Bytes,
        reply: Option<Reply>,
    ) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let properties = match reply {
                    Some(r) => v5p::PublishProperties {
                        correlation_data: r.correlation,
                        content_type: r.content_type,
                        user_properties: vec![("fjord-status".into(), r.status.to_string())],
                        ..Default::default()
                    },
                    None => v5p::PublishProperties::default(),
                };
                c.publish_bytes_with_properties(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    properties,
                )
                .await
                .map_err(|e| e.to_string())
            }
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), String> {
        match (self, d) {
            (Client::V3(c), Delivery::V3(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V5(c), Delivery::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("a message of the other protocol".into()),
        }
    }

    async fn disconnect(&self) {
        match self {
            Client::V3(c) => drop(c.disconnect().await),
            Client::V5(c) => drop(c.disconnect().await),
        }
    }
}

impl Events {
    async fn poll(&mut self) -> Polled {
        match self {
            Events::V3(e) => match e.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::ConnAck(Ok(())),
                Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish(Delivery::V3(p)),
                Ok(Event::Incoming(Packet::SubAck(a))) => {
                    if a.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::warn!("mqtt connector: the broker refused a subscription");
                    }
                    Polled::Other
                }
                Ok(_) => Polled::Other,
                Err(e) => Polled::Failed(e.to_string()),
            },
            Events::V5(e) => match e.poll().await {
                Ok(v5::Event::Incoming(v5p::Packet::ConnAck(ack))) => {
                    Polled::ConnAck(v5_features(ack.properties.as_ref()))
                }
                Ok(v5::Event::Incoming(v5p::Packet::Publish(p))) => {
                    Polled::Publish(Delivery::V5(Box::new(p)))
                }
                Ok(v5::Event::Incoming(v5p::Packet::SubAck(a))) => {
                    for code in &a.return_codes {
                        if !matches!(code, v5p::SubscribeReasonCode::Success(_)) {
                            let why = a.properties.as_ref().and_then(|p| p.reason_string.clone());
                            tracing::warn!(reason = ?code, detail = ?why, "mqtt connector: the broker refused a subscription");
                        }
                    }
                    Polled::Other
                }
                Ok(_) => Polled::Other,
                Err(e) => Polled::Failed(e.to_string()),
            },
        }
    }
}

impl Delivery {
    fn topic(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Delivery::V3(p) => std::borrow::Cow::Borrowed(p.topic.as_str()),
            Delivery::V5(p) => String::from_utf8_lossy(&p.topic),
        }
    }

    fn payload(&self) -> bytes::Bytes {
        match self {
            Delivery::V3(p) => p.payload.clone(),
            Delivery::V5(p) => p.payload.clone(),
        }
    }

    fn properties(&self) -> Option<&v5p::PublishProperties> {
        match self {
            Delivery::V3(_) => None,
            Delivery::V5(p) => p.properties.as_ref(),
        }
    }

    /// The MQTT 5 subscription identifiers it was delivered for (none with 3.1.1).
    fn subscription_ids(&self) -> &[usize] {
        self.properties()
            .map(|p| p.subscription_identifiers.as_slice())
            .unwrap_or_default()
    }
}

/// Connects with a persistent session whose client id is fixed by `data_dir` (so a restart
/// resumes it); waits for the broker's answer (a startup error when it cannot be reached,
/// or, with MQTT 5, when it lacks the shared subscriptions and subscription identifiers the
/// connector relies on).
pub async fn connect(
    url: &str,
    tls: &MqttTls,
    version: Version,
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
    let credentials = (!u.username().is_empty()).then(|| {
        (
            percent_decode(u.username()),
            percent_decode(u.password().unwrap_or_default()),
        )
    });
    let transport = if secure {
        let config = tls.client_config()?;
        Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ))
    } else {
        None
    };
    // Without it a PUBACK written right after a response's PUBLISH waits for the broker's
    // delayed ACK (Nagle): ~40 ms per message.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    let keep_alive = std::time::Duration::from_secs(30);
    let (client, mut events) = match version {
        Version::V3_1_1 => {
            let mut o = MqttOptions::new(id, host, port);
            o.set_clean_session(false)
                .set_manual_acks(true)
                .set_keep_alive(keep_alive)
                .set_max_packet_size(16 << 20, 16 << 20);
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, mut events) = AsyncClient::new(o, 256);
            events.set_network_options(net);
            (Client::V3(client), Events::V3(Box::new(events)))
        }
        Version::V5 => {
            let mut o = v5::MqttOptions::new(id, host, port);
            o.set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY))
                .set_manual_acks(true)
                .set_keep_alive(keep_alive)
                .set_max_packet_size(Some(16 << 20))
                .set_network_options(net);
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, events) = v5::AsyncClient::new(o, 256);
            (Client::V5(client), Events::V5(Box::new(events)))
        }
    };
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Polled::ConnAck(r) => return r,
                Polled::Failed(e) => return Err(e),
                Polled::Publish(_) | Polled::Other => {}
            }
        }
    })
    .await
    .map_err(|_| "no answer within 10 s".to_string())
    .and_then(|r| r);
    first.map_err(|e| {
        let hint = if secure && e.contains("certificate") {
            " (is --mqtt-ca the CA that signed the broker's certificate, and does it name the URL's host?)"
        } else if e.contains("UnsupportedProtocolVersion") {
            " (the broker does not speak MQTT 5: leave out --mqtt-version 5)"
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

/// MQTT 5 brokers say in their CONNACK what they lack (absent means available).
fn v5_features(p: Option<&v5p::ConnAckProperties>) -> Result<(), String> {
    let lacks = |v: Option<Option<u8>>| v.flatten() == Some(0);
    if lacks(p.map(|p| p.shared_subscription_available)) {
        return Err("the broker does not offer shared subscriptions, which fjord's MQTT 5 connector uses (use --mqtt-version 3.1.1)".into());
    }
    if lacks(p.map(|p| p.subscription_identifiers_available)) {
        return Err("the broker does not offer subscription identifiers, which fjord's MQTT 5 connector uses (use --mqtt-version 3.1.1)".into());
    }
    Ok(())
}

/// The MQTT 5 subscription of `key` to `filter`: a shared subscription whose group is the
/// function (`$share/fjord.<namespace>.<name>/<filter>`), so servers on one broker share its
/// messages as NATS queue groups do, with an identifier fixed by function and filter (a
/// session resumed after a restart keeps meaning the same).
fn shared(key: &FunctionKey, filter: &str) -> Subscription {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{key}\0{filter}").as_bytes());
    // Subscription identifiers are 1..=268,435,455 (a 4-byte variable integer).
    let id = (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x0FFF_FFFF).max(1) as usize;
    Subscription {
        filter: format!("$share/fjord.{}.{}/{filter}", key.namespace, key.name),
        id: Some(id),
    }
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
    /// What is asked of the broker: the filter itself (3.1.1), or the function's own shared
    /// subscription with an identifier that messages carry (MQTT 5).
    subscription: Subscription,
    key: FunctionKey,
    response: Option<String>,
    policy: fjord_core::policy::RetryPolicy,
    /// The function's `com.openfaas.queue.max_inflight` calls at once (all its filters).
    permits: Arc<tokio::sync::Semaphore>,
}

impl Route {
    /// Whether this route takes `d`: MQTT 5 by the subscription identifiers the broker
    /// delivered it for (each shared subscription gets its own copy), 3.1.1 by the filter.
    fn takes(&self, d: &Delivery, topic: &str) -> bool {
        match self.subscription.id {
            Some(id) => d.subscription_ids().contains(&id),
            None => matches(&self.filter, topic),
        }
    }
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
            let mut subscribed: std::collections::BTreeSet<Subscription> = Default::default();
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
                        Polled::ConnAck(r) => {
                            if let Err(e) = r {
                                tracing::warn!(url = %url, error = %e, "mqtt connector: the broker changed since fjord started");
                            }
                            state.set(true, &url, "");
                            // The session keeps them; subscribing again is harmless.
                            for s in &subscribed {
                                let _ = client.try_subscribe(s);
                            }
                        }
                        Polled::Publish(d) => {
                            let matching: Vec<Route> = {
                                let topic = d.topic();
                                routes
                                    .read()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .iter()
                                    .filter(|r| r.takes(&d, &topic))
                                    .cloned()
                                    .collect()
                            };
                            if matching.is_empty() {
                                // A subscription the session kept for a function deleted while
                                // fjord was away: acked, nobody runs it.
                                tracing::debug!(topic = %d.topic(), "mqtt connector: a message no function subscribes to; acknowledged");
                            }
                            let (client, invoker) = (client.clone(), invoker.clone());
                            tokio::spawn(async move {
                                let topic = d.topic();
                                let calls = matching
                                    .iter()
                                    .map(|r| handle(&client, &invoker, r, &d, &topic));
                                futures_util::future::join_all(calls).await;
                                // After every function had it: a crash before here means
                                // the broker sends it again.
                                if let Err(e) = client.ack(&d).await {
                                    tracing::warn!(error = %e, "mqtt connector: cannot ack");
                                }
                            });
                        }
                        Polled::Other => {}
                        Polled::Failed(e) => {
                            state.set(false, &url, &e);
                            tokio::select! {
                                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                                () = shutdown.cancelled() => break,
                            }
                        }
                    },
                    () = shutdown.cancelled() => break,
                }
            }
            client.disconnect().await;
        })
    }
}

/// Brings the routing table and the broker's subscriptions in line with the deployments.
async fn sync(
    control: &Arc<ControlPlane>,
    routes: &RwLock<Vec<Route>>,
    client: &Client,
    subscribed: &mut std::collections::BTreeSet<Subscription>,
    first: bool,
) {
    let v5 = matches!(client, Client::V5(_));
    let mut table: Vec<Route> = Vec::new();
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
            let mut subscription = if v5 {
                shared(&d.key, &f)
            } else {
                Subscription {
                    filter: f.clone(),
                    id: None,
                }
            };
            // Two subscriptions whose identifiers collide (one chance in 2^28 per pair) would
            // take each other's messages: the later one moves to a free identifier.
            while subscription.id.is_some()
                && table.iter().any(|r| r.subscription.id == subscription.id)
            {
                subscription.id = subscription.id.map(|id| id % 0x0FFF_FFFF + 1);
            }
            table.push(Route {
                filter: f,
                subscription,
                key: d.key.clone(),
                response: response.clone(),
                policy: policy.clone(),
                permits: permits.clone(),
            });
        }
    }
    let wanted: std::collections::BTreeSet<Subscription> =
        table.iter().map(|r| r.subscription.clone()).collect();
    *routes.write().unwrap_or_else(|p| p.into_inner()) = table;
    // The client's requests are queued to the event loop, which this task also polls: use
    // try_ (never wait on a full queue here).
    for s in wanted.difference(subscribed).cloned().collect::<Vec<_>>() {
        match client.try_subscribe(&s) {
            Ok(()) => {
                subscribed.insert(s);
            }
            Err(e) => {
                tracing::warn!(filter = %s.filter, error = %e, "mqtt connector: cannot subscribe")
            }
        }
    }
    if !first {
        for s in subscribed.difference(&wanted).cloned().collect::<Vec<_>>() {
            client.try_unsubscribe(&s);
            subscribed.remove(&s);
        }
    }
}

/// Whether an MQTT 5 user property becomes a request header of the call: a valid header
/// name and value, other than the headers fjord sets or that describe the connection.
fn passes_as_header(name: &str, value: &str) -> bool {
    const FJORD_SETS: [&str; 12] = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        super::HEADER_CONNECTOR,
        super::HEADER_TOPIC,
        "x-start-time",
    ];
    let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
        return false;
    };
    http::HeaderValue::from_str(value).is_ok()
        && !FJORD_SETS.contains(&header.as_str())
        && !header.as_str().starts_with("x-forwarded-")
        && !header.as_str().starts_with("proxy-")
}

/// One function's call for one message, with its retries; dead letters after the last. An
/// MQTT 5 message naming a response topic gets the final answer there, with its correlation
/// data.
async fn handle(client: &Client, invoker: &Invoker, r: &Route, d: &Delivery, topic: &str) {
    let Ok(_permit) = r.permits.acquire().await else {
        return;
    };
    let properties = d.properties();
    let mut headers: Vec<(std::borrow::Cow<'static, str>, String)> = vec![
        (super::HEADER_CONNECTOR.into(), KIND.to_string()),
        (super::HEADER_TOPIC.into(), topic.to_string()),
    ];
    if let Some(p) = properties {
        if let Some(ct) = &p.content_type {
            headers.push(("content-type".into(), ct.clone()));
        }
        for (name, value) in &p.user_properties {
            if passes_as_header(name, value) {
                headers.push((name.clone().into(), value.clone()));
            }
        }
    }
    let payload = d.payload();
    let mut attempt = 1;
    let answer = loop {
        let at = chrono::Utc::now();
        let answer = super::call(invoker, &r.key, &headers, payload.clone()).await;
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
                    && let Err(e) = client.publish(to.clone(), a.body.clone(), None).await
                {
                    tracing::warn!(function = %r.key, topic = %to, error = %e, "mqtt connector: cannot publish the response");
                }
                break answer;
            }
            TriggerOutcome::Failed(_) if retry && attempt < r.policy.attempts => {
                tokio::time::sleep(r.policy.wait(attempt, None, rand::random::<f64>())).await;
                attempt += 1;
            }
            TriggerOutcome::Failed(why) | TriggerOutcome::Skipped(why) => {
                let to = format!("fjord/dead/{}/{}", r.key.namespace, r.key.name);
                tracing::warn!(function = %r.key, %topic, reason = %why, attempts = attempt, dead_letters = %to, "mqtt connector: message dead-lettered");
                let _ = client.publish(to, payload.clone(), None).await;
                break answer;
            }
        }
    };
    if let Some(p) = properties
        && let Some(to) = &p.response_topic
    {
        let (status, content_type, body) = match &answer {
            Ok(a) => (
                a.status,
                a.headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                a.body.clone(),
            ),
            Err(e) => (
                502,
                Some("text/plain".into()),
                bytes::Bytes::from(e.clone()),
            ),
        };
        let reply = Reply {
            status,
            content_type,
            correlation: p.correlation_data.clone(),
        };
        if let Err(e) = client.publish(to.clone(), body, Some(reply)).await {
            tracing::warn!(function = %r.key, topic = %to, error = %e, "mqtt connector: cannot send the reply");
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

    #[test]
    fn user_properties_pass_as_headers_unless_fjord_sets_them() {
        assert!(passes_as_header("X-Tenant", "acme"));
        assert!(passes_as_header("traceparent", "00-abc-def-01"));
        // As an HTTP caller's: the call's id, passed on and answered.
        assert!(passes_as_header("X-Call-Id", "mine"));
        for (name, value) in [
            ("X-Topic", "forged"),
            ("content-length", "1"),
            ("Host", "elsewhere"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Start-Time", "1"),
            ("bad name", "x"),
            ("x-ok", "line\nbreak"),
        ] {
            assert!(!passes_as_header(name, value), "{name}: {value}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("3.1.1"), Ok(Version::V3_1_1));
        assert_eq!(parse_version("5"), Ok(Version::V5));
        let e = parse_version("6").expect_err("no MQTT 6");
        assert!(e.contains("3.1.1 or 5"), "{e}");
    }

    #[test]
    fn shared_subscriptions_are_per_function_and_stable() {
        let a = FunctionKey::new("orders", None).expect("key");
        let b = FunctionKey::new("billing", None).expect("key");
        let sa = shared(&a, "sensors/+/temp");
        assert_eq!(sa.filter, "$share/fjord.openfaas-fn.orders/sensors/+/temp");
        assert_eq!(sa, shared(&a, "sensors/+/temp"), "same on every start");
        assert_ne!(sa.id, shared(&b, "sensors/+/temp").id);
        assert_ne!(sa.id, shared(&a, "sensors/#").id);
        let id = sa.id.expect("an identifier");
        assert!((1..=0x0FFF_FFFF).contains(&id), "{id}");
    }

    #[test]
    fn v5_brokers_lacking_what_the_connector_needs_are_refused() {
        assert!(v5_features(None).is_ok(), "absent means available");
        let mut p = v5p::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        assert!(v5_features(Some(&p)).is_ok());
        p.shared_subscription_available = Some(0);
        let e = v5_features(Some(&p)).expect_err("no shared subscriptions");
        assert!(
            e.contains("shared subscriptions") && e.contains("3.1.1"),
            "{e}"
        );
        p.shared_subscription_available = Some(1);
        p.subscription_identifiers_available = Some(0);
        let e = v5_features(Some(&p)).expect_err("no identifiers");
        assert!(e.contains("subscription identifiers"), "{e}");
    }
}
