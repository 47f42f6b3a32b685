//! Event connectors: triggers that invoke functions on a schedule ([`cron`]) or on messages
//! of a broker ([`nats`]), configured with the annotations OpenFaaS's connectors read
//! (`topic`, `schedule`). Each is one [`crate::trigger::Trigger`]: it follows deploys,
//! updates and deletes through [`ControlPlane::watch_routes`] and calls functions through
//! the [`Invoker`] like the async queue does. See docs/connectors.md.
//!
//! They live in the gateway (not a crate of their own) because `serve`, which lists the
//! triggers, is here: a crate above the gateway could only be wired from the CLI through one
//! more seam for the same result.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;
use fjord_control::metrics::TriggerOutcome;
use fjord_control::{ControlPlane, DeployCheck};
use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::invoke::{Caller, Invoker};

pub mod cron;
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;

/// OpenFaaS's annotation naming what a function subscribes to: `cron-function`, or a
/// comma-separated list of subjects/topics.
pub const TOPIC: &str = "topic";
/// The `topic` that makes a function scheduled (as the OpenFaaS cron-connector).
pub const CRON_TOPIC: &str = "cron-function";
/// The cron expression (5 fields, or 6 with seconds first).
pub const SCHEDULE: &str = "schedule";
/// IANA timezone of the schedule (default UTC).
pub const TIMEZONE: &str = "com.fjord.schedule.timezone";
/// Runs missed while no server ran the schedule: `none` (default) or `latest` (run the
/// latest missed one once at start).
pub const MISSED: &str = "com.fjord.schedule.missed";
/// A NATS subject each successful message response is published to.
pub const RESPONSE_SUBJECT: &str = "com.fjord.topic.response";

/// The header naming the connector on each call (`cron`, `nats`, `mqtt`), as OpenFaaS's
/// connector SDK sends.
pub const HEADER_CONNECTOR: &str = "x-connector";
/// The subject, topic or `cron-function` that caused the call.
pub const HEADER_TOPIC: &str = "x-topic";

/// The brokers the server subscribes to for functions (`fjord serve --nats`).
#[derive(Clone, Default)]
pub struct ConnectorSettings {
    /// `--nats nats://…`: core NATS subjects (the same server as the queue, or another).
    pub nats: Option<String>,
    /// `--mqtt mqtt://…`: MQTT topic filters.
    pub mqtt: Option<String>,
    /// `--mqtt-ca`, `--mqtt-cert`, `--mqtt-key`.
    pub mqtt_tls: mqtt::MqttTls,
    /// `--mqtt-version`: 3.1.1 (default) or 5.
    pub mqtt_version: mqtt::Version,
    /// Filled in by `serve` once connected: what `/healthz` reports.
    pub health: BrokerHealth,
}

/// Each connected broker's name and whether it is connected now (`/healthz` detail).
#[derive(Clone, Default)]
pub struct BrokerHealth(Arc<std::sync::Mutex<Vec<(&'static str, BrokerProbe)>>>);

type BrokerProbe = Arc<dyn Fn() -> bool + Send + Sync>;

impl BrokerHealth {
    fn add(&self, name: &'static str, probe: BrokerProbe) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, probe));
    }

    /// `nats: connected` lines, one per broker; empty without brokers.
    pub fn report(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, up)| {
                let state = if up() {
                    "connected"
                } else {
                    "disconnected, reconnecting"
                };
                format!("{name}: {state}\n")
            })
            .collect()
    }
}

impl std::fmt::Debug for ConnectorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorSettings")
            .field("nats", &self.nats.as_deref().map(fjord_queue::redact_url))
            .field("mqtt", &self.mqtt.as_deref().map(fjord_queue::redact_url))
            .field("mqtt_tls", &self.mqtt_tls)
            .field("mqtt_version", &self.mqtt_version)
            .finish()
    }
}

/// Parses `--nats`: a `nats://` or `tls://` URL naming a host.
pub fn parse_nats_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let shown = fjord_queue::redact_url(s);
    for one in s.split(',').map(str::trim) {
        let ok = one
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "nats" | "tls") && !rest.is_empty())
            && url::Url::parse(one).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        if !ok {
            return Err(format!(
                "{shown:?} is not a NATS URL: use nats://HOST:PORT (or tls://), e.g. nats://127.0.0.1:4222"
            ));
        }
    }
    Ok(s.to_string())
}

/// The connected brokers (none when no flag asks for one).
#[derive(Default)]
pub struct Brokers {
    #[cfg(feature = "nats")]
    nats: Option<(async_nats::Client, Arc<nats::BrokerState>)>,
    mqtt: Option<mqtt::Connected>,
}

impl Brokers {
    /// Connects to each configured broker; one that cannot be reached is a startup error.
    pub async fn connect(
        settings: &ConnectorSettings,
        auth: &crate::NatsSettings,
        data_dir: &std::path::Path,
    ) -> Result<Brokers, crate::StartError> {
        let mqtt = match &settings.mqtt {
            Some(url) => {
                let c = mqtt::connect(url, &settings.mqtt_tls, settings.mqtt_version, data_dir)
                    .await
                    .map_err(crate::StartError::Connector)?;
                let state = c.state.clone();
                settings
                    .health
                    .add("mqtt", Arc::new(move || state.connected()));
                tracing::info!(url = %c.url, "mqtt connector: subscribing to functions' topic filters");
                Some(c)
            }
            None => None,
        };
        #[cfg(feature = "nats")]
        {
            let nats = match &settings.nats {
                Some(url) => Some(
                    nats::connect(
                        url,
                        &fjord_queue::nats::NatsAuth {
                            creds_file: auth.creds.clone(),
                            nkey_file: auth.nkey.clone(),
                            ca_file: auth.ca.clone(),
                            tls: auth.tls,
                        },
                    )
                    .await
                    .map_err(crate::StartError::Connector)?,
                ),
                None => None,
            };
            if let Some((_, state)) = &nats {
                let state = state.clone();
                settings
                    .health
                    .add("nats", Arc::new(move || state.connected()));
            }
            Ok(Brokers { nats, mqtt })
        }
        #[cfg(not(feature = "nats"))]
        {
            let _ = auth;
            match &settings.nats {
                Some(url) => Err(crate::StartError::Connector(format!(
                    "--nats {}: this fjord was built without NATS support (cargo feature `nats`)",
                    fjord_queue::redact_url(url)
                ))),
                None => Ok(Brokers { mqtt }),
            }
        }
    }

    /// The deploy checks for these brokers (cron's always).
    pub fn checks(&self) -> Checks {
        Checks {
            #[cfg(feature = "nats")]
            nats: self.nats.is_some(),
            #[cfg(not(feature = "nats"))]
            nats: false,
            mqtt: self.mqtt.is_some(),
        }
    }

    /// The broker triggers to start.
    pub fn triggers(self, control: &Arc<ControlPlane>) -> Vec<Box<dyn crate::trigger::Trigger>> {
        let mut out: Vec<Box<dyn crate::trigger::Trigger>> = Vec::new();
        if let Some(connected) = self.mqtt {
            out.push(Box::new(mqtt::MqttTrigger {
                connected,
                control: control.clone(),
            }));
        }
        #[cfg(feature = "nats")]
        if let Some((client, _)) = &self.nats {
            out.push(Box::new(nats::NatsTrigger {
                client: client.clone(),
                control: control.clone(),
            }));
        }
        let _ = control;
        out
    }
}

/// The entries of a deployment's `topic` annotation (`None` when it has none).
pub fn topics(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Vec<String>>, String> {
    let Some(v) = annotations.and_then(|a| a.get(TOPIC)) else {
        return Ok(None);
    };
    let list: Vec<String> = v.split(',').map(|t| t.trim().to_string()).collect();
    if list.iter().any(String::is_empty) {
        return Err(format!(
            "annotations.{TOPIC}: {v:?} has an empty entry: give a comma-separated list of subjects, or cron-function"
        ));
    }
    Ok(Some(list))
}

/// The topics a message connector subscribes to (the `topic` entries other than
/// `cron-function`).
pub fn subscriptions(d: &FunctionDeployment) -> Vec<String> {
    topics(d.annotations.as_ref())
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t != CRON_TOPIC)
        .collect()
}

/// The deploy-time checks of the connectors' annotations: the cron ones always, a broker's
/// topic syntax when that broker is configured.
pub struct Checks {
    pub nats: bool,
    pub mqtt: bool,
}

impl DeployCheck for Checks {
    fn check(&self, d: &FunctionDeployment) -> Result<(), String> {
        let a = d.annotations.as_ref();
        let list = topics(a)?;
        cron::Schedule::from_deployment(d)?;
        if self.nats {
            for t in list.iter().flatten().filter(|t| *t != CRON_TOPIC) {
                check_nats_subject(t).map_err(|why| {
                    format!("annotations.{TOPIC}: {t:?} is not a NATS subject: {why}")
                })?;
            }
        }
        if self.mqtt {
            for t in list.iter().flatten().filter(|t| *t != CRON_TOPIC) {
                mqtt::check_filter(t).map_err(|why| {
                    format!("annotations.{TOPIC}: {t:?} is not an MQTT topic filter: {why}")
                })?;
            }
        }
        if self.nats
            && let Some(s) = a.and_then(|a| a.get(RESPONSE_SUBJECT))
        {
            check_nats_subject(s)
                .and_then(|()| {
                    if s.split('.').any(|t| t == "*" || t == ">") {
                        Err("wildcards cannot be published to".into())
                    } else {
                        Ok(())
                    }
                })
                .map_err(|why| {
                    format!("annotations.{RESPONSE_SUBJECT}: {s:?} is not a subject to publish to: {why}")
                })?;
        }
        Ok(())
    }
}

/// NATS subject syntax: dot-separated non-empty tokens without whitespace; `*` matches one
/// token, `>` the rest and only last.
pub fn check_nats_subject(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".into());
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err("it has an empty token (two dots, or a dot at an end)".into());
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Err(format!(
                "wildcard misuse in {t:?}: * and > stand alone as a token"
            ));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err("> must be the last token".into());
        }
    }
    Ok(())
}

/// RFC 3339 in UTC with seconds (and milliseconds when not zero).
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The answer of one connector call.
pub(crate) struct Answer {
    pub status: u16,
    /// The NATS reply carries them (and the body).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub headers: http::HeaderMap,
    /// The NATS reply and response subject carry it.
    pub body: Bytes,
    /// Set when the message was refused before any call (larger than the body limit): never
    /// retried, dead-lettered at once with this reason.
    pub refused: Option<String>,
}

impl Answer {
    pub fn outcome(&self) -> TriggerOutcome {
        if let Some(why) = &self.refused {
            TriggerOutcome::Failed(why.clone())
        } else if (200..300).contains(&self.status) {
            TriggerOutcome::Ok
        } else {
            TriggerOutcome::Failed(format!("HTTP {}", self.status))
        }
    }

    /// Whether a failed call may be tried again under a retry policy retrying `codes`.
    pub fn retryable(&self, codes: &[u16]) -> bool {
        self.refused.is_none() && codes.contains(&self.status)
    }
}

/// Calls `key` as a connector: POST `/` with `body` and `headers`; the whole answer is read
/// (so the in-flight guards are held until its body ends, as for HTTP callers).
pub(crate) async fn call(
    invoker: &Invoker,
    key: &FunctionKey,
    headers: &[(impl AsRef<str>, String)],
    body: Bytes,
) -> Result<Answer, String> {
    let route = invoker
        .lookup(key)
        .ok_or_else(|| format!("function {key} is not deployed"))?;
    let limit = invoker.max_message_body();
    if body.len() > limit {
        // As an HTTP caller would get from the async endpoint: 413, with the reason.
        let why = format!(
            "HTTP 413: the message is {} bytes, over the {limit}-byte body limit (fjord serve --max-async-body)",
            body.len()
        );
        return Ok(Answer {
            status: 413,
            headers: http::HeaderMap::new(),
            body: Bytes::from(why.clone()),
            refused: Some(why),
        });
    }
    let mut req = axum::http::Request::builder().method("POST").uri("/");
    for (k, v) in headers {
        req = req.header(k.as_ref(), v.as_str());
    }
    let req = req
        .body(axum::body::Body::from(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = invoker.call(&route, Caller::Trigger, req).await;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("the answer's body failed: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
        refused: None,
    })
}

/// Tasks kept in step with what the deployments ask for: one per key, restarted when its
/// settings change, stopped when its key goes.
pub(crate) struct Tasks<K, V> {
    running: HashMap<K, (V, CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl<K: Eq + Hash + Clone, V: PartialEq> Tasks<K, V> {
    pub fn new() -> Self {
        Self {
            running: HashMap::new(),
        }
    }

    /// Starts, restarts and stops tasks so that exactly `desired` run.
    pub fn sync(
        &mut self,
        desired: HashMap<K, V>,
        mut start: impl FnMut(&K, &V, CancellationToken) -> tokio::task::JoinHandle<()>,
    ) {
        self.running.retain(|k, (v, stop, _)| {
            let keep = desired.get(k).is_some_and(|d| d == v);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (k, v) in desired {
            if let std::collections::hash_map::Entry::Vacant(e) = self.running.entry(k) {
                let stop = CancellationToken::new();
                let handle = start(e.key(), &v, stop.clone());
                e.insert((v, stop, handle));
            }
        }
    }

    /// Stops every task and waits for them.
    pub async fn stop_all(&mut self) {
        for (_, (_, stop, _)) in self.running.iter() {
            stop.cancel();
        }
        for (_, (_, _, h)) in self.running.drain() {
            let _ = h.await;
        }
    }
}

/// Waits for the next routing change; `false` at shutdown.
pub(crate) async fn changed(
    watch: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        r = watch.changed() => r.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// The deployed functions, or none (logged) when the store cannot be read.
pub(crate) fn deployed(control: &Arc<ControlPlane>) -> Vec<fjord_control::Deployed> {
    control.deployed().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "connectors: cannot list the deployed functions");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(annotations: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "f".into(),
            image: "fake/x:1".into(),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn checks_name_the_annotation_and_the_reason() {
        let with_nats = Checks {
            nats: true,
            mqtt: false,
        };
        let without = Checks {
            nats: false,
            mqtt: false,
        };
        let with_mqtt = Checks {
            nats: false,
            mqtt: true,
        };
        for (t, why) in [("a/b#", "wildcard misuse"), ("a/#/b", "last")] {
            let e = with_mqtt.check(&dep(&[("topic", t)])).expect_err(t);
            assert!(
                e.contains("annotations.topic") && e.contains("MQTT") && e.contains(why),
                "{t}: {e}"
            );
        }
        with_mqtt
            .check(&dep(&[("topic", "sensors/+/temp, alerts/#")]))
            .expect("MQTT filters");
        for (a, annotation, why) in [
            (vec![("topic", "a,,b")], "annotations.topic", "empty entry"),
            (vec![("topic", " ")], "annotations.topic", "empty entry"),
            (
                vec![("topic", "cron-function")],
                "annotations.schedule",
                "needs",
            ),
            (
                vec![("topic", "cron-function"), ("schedule", "61 * * * *")],
                "annotations.schedule",
                "not a cron",
            ),
            (
                vec![
                    ("topic", "cron-function"),
                    ("schedule", "* * * * *"),
                    (TIMEZONE, "Mars/Olympus"),
                ],
                "annotations.com.fjord.schedule.timezone",
                "not an IANA",
            ),
            (
                vec![
                    ("topic", "cron-function"),
                    ("schedule", "* * * * *"),
                    (MISSED, "all"),
                ],
                "annotations.com.fjord.schedule.missed",
                "none or latest",
            ),
        ] {
            for c in [&with_nats, &without] {
                let e = c.check(&dep(&a)).expect_err("refused");
                assert!(e.contains(annotation) && e.contains(why), "{a:?}: {e}");
            }
        }
        for (t, why) in [
            ("a..b", "empty token"),
            ("a.>.b", "last"),
            ("a.b*", "wildcard misuse"),
            ("a b", "whitespace"),
        ] {
            let e = with_nats.check(&dep(&[("topic", t)])).expect_err(t);
            assert!(
                e.contains("annotations.topic") && e.contains(why),
                "{t}: {e}"
            );
            // Without a NATS connector the topic is not a NATS subject to check.
            without
                .check(&dep(&[("topic", t)]))
                .expect("no broker: accepted");
        }
        let e = with_nats
            .check(&dep(&[("topic", "in"), (RESPONSE_SUBJECT, "out.*")]))
            .expect_err("wildcard response");
        assert!(e.contains(RESPONSE_SUBJECT), "{e}");
        for ok in [
            vec![("topic", "orders, invoices.>")],
            vec![("topic", "a.*.c"), (RESPONSE_SUBJECT, "results")],
            vec![
                ("topic", "cron-function"),
                ("schedule", "*/5 * * * * *"),
                (TIMEZONE, "Europe/Oslo"),
                (MISSED, "latest"),
            ],
            vec![],
        ] {
            with_nats.check(&dep(&ok)).expect("accepted");
        }
    }

    #[test]
    fn subscriptions_leave_out_cron() {
        let d = dep(&[("topic", "cron-function, a.b ,c")]);
        assert_eq!(subscriptions(&d), vec!["a.b".to_string(), "c".to_string()]);
    }
}
