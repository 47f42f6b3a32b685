//! [`FunctionSpec`]: a [`FunctionDeployment`] validated and parsed once, at deploy time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::duration::{DurationError, parse_duration};
use crate::names::{FunctionKey, NameError};
use crate::openfaas::FunctionDeployment;
use crate::quantity::{QuantityError, parse_cpu, parse_memory};

/// Label that sets the initial and minimum replica count.
pub const LABEL_SCALE_MIN: &str = "com.openfaas.scale.min";
/// Label that sets the maximum replica count.
pub const LABEL_SCALE_MAX: &str = "com.openfaas.scale.max";
/// Annotation naming an HTTP path that must answer 2xx before a replica gets traffic.
pub const ANNOTATION_READY_PATH: &str = "com.openfaas.ready.http.path";
/// OpenFaaS's health-check path: fjord has no separate liveness probe, so it is read as the
/// readiness path when [`ANNOTATION_READY_PATH`] is not set (that one wins if both are).
pub const ANNOTATION_HEALTH_PATH: &str = "com.openfaas.health.http.path";
/// Label OpenFaaS providers put on every function, set to its name. fjord adds it to the
/// labels it returns and never stores it: a deployment may only send it with that value.
pub const LABEL_FAAS_FUNCTION: &str = "faas_function";
/// Size of the function's `/tmp` (a tmpfs counted in its memory), e.g. `1Gi`; default
/// `fjord serve --tmp-size`.
pub const ANNOTATION_TMP_SIZE: &str = "com.fjord.tmp-size";
/// `none`: the function's replicas get a network namespace with loopback only (no outbound
/// access); `default` (or absent): the server's `--function-network`.
pub const ANNOTATION_NETWORK: &str = "com.fjord.network";
/// Autoscaling labels, as OpenFaaS Pro reads them.
pub const LABEL_SCALE_TYPE: &str = "com.openfaas.scale.type";
pub const LABEL_SCALE_TARGET: &str = "com.openfaas.scale.target";
pub const LABEL_SCALE_PROPORTION: &str = "com.openfaas.scale.target-proportion";
pub const LABEL_SCALE_ZERO: &str = "com.openfaas.scale.zero";
pub const LABEL_SCALE_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
pub const LABEL_SCALE_DOWN_WINDOW: &str = "com.openfaas.scale.down.window";
/// Percent of `scale.max` one step of the Community Edition rule (and one firing alert) adds.
pub const LABEL_SCALE_FACTOR: &str = "com.openfaas.scale.factor";
/// Default maximum replicas, as in OpenFaaS Pro.
pub const DEFAULT_SCALE_MAX: u64 = 20;
/// Hard upper bound on replicas of one function on one machine.
pub const REPLICAS_CEILING: u64 = 1000;

/// What the autoscaler measures per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleKind {
    /// Requests per second.
    Rps,
    /// Requests in flight.
    Capacity,
    /// CPU use in millicores (from the replicas' cgroups).
    Cpu,
}

/// Which rule the autoscaler follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// No `scale.type` / `scale.target` label: OpenFaaS Community Edition's alert rule (more
    /// than 5 successful requests/s for 5 s steps up by `scale.factor`; back to min after).
    Community,
    /// `scale.type` or `scale.target` set: target tracking, as OpenFaaS Pro.
    Target,
}

/// How a function scales, from its `com.openfaas.scale.*` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    pub rule: ScaleRule,
    pub kind: ScaleKind,
    /// Load per replica to aim for (`.target`, default 50).
    pub target: f64,
    /// Scale when load reaches this share of the target (`.target-proportion`, default 0.9).
    pub proportion: f64,
    /// Scale to zero when idle (`.zero`, default false).
    pub zero: bool,
    /// Idle time before scaling to zero (`.zero-duration`); `None`: the gateway's default
    /// (`fjord serve --scale-zero-duration`, 15m).
    pub zero_duration: Option<Duration>,
    /// Percent of max added per step of the Community rule or per firing alert
    /// (`.factor`, default 20; 0 turns both off).
    pub factor: f64,
    /// Scale down only to the highest recommendation of this window (`.down.window`,
    /// default 30s): fast up, stabilised down.
    pub down_window: Duration,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        Self {
            rule: ScaleRule::Community,
            kind: ScaleKind::Rps,
            target: 50.0,
            proportion: 0.9,
            zero: false,
            zero_duration: None,
            factor: 20.0,
            down_window: Duration::from_secs(30),
        }
    }
}

fn label_duration(
    labels: &BTreeMap<String, String>,
    key: &str,
    default: Duration,
) -> Result<Duration, SpecError> {
    match labels.get(key) {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|e| invalid(format!("labels.{key}"), e.to_string())),
    }
}

impl ScalePolicy {
    fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self, SpecError> {
        let mut p = ScalePolicy::default();
        if labels.contains_key(LABEL_SCALE_TYPE) || labels.contains_key(LABEL_SCALE_TARGET) {
            p.rule = ScaleRule::Target;
        }
        if let Some(v) = labels.get(LABEL_SCALE_TYPE) {
            p.kind = match v.trim() {
                "rps" => ScaleKind::Rps,
                "capacity" => ScaleKind::Capacity,
                "cpu" => ScaleKind::Cpu,
                other => {
                    return Err(invalid(
                        format!("labels.{LABEL_SCALE_TYPE}"),
                        format!("{other:?} is not a scale type: use rps, capacity or cpu"),
                    ));
                }
            };
        }
        let positive = |key: &str, default: f64, max: f64| -> Result<f64, SpecError> {
            match labels.get(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0 && *x <= max)
                    .ok_or_else(|| {
                        invalid(
                            format!("labels.{key}"),
                            format!("{v:?} must be a number above 0 and at most {max}"),
                        )
                    }),
            }
        };
        p.target = positive(LABEL_SCALE_TARGET, p.target, 1e9)?;
        p.proportion = positive(LABEL_SCALE_PROPORTION, p.proportion, 1.0)?;
        if let Some(v) = labels.get(LABEL_SCALE_ZERO) {
            p.zero = parse_bool(&format!("labels.{LABEL_SCALE_ZERO}"), v)?;
        }
        p.factor = match labels.get(LABEL_SCALE_FACTOR) {
            None => p.factor,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=100.0).contains(x))
                .ok_or_else(|| {
                    invalid(
                        format!("labels.{LABEL_SCALE_FACTOR}"),
                        format!("{v:?} must be a percentage from 0 (no automatic steps) to 100"),
                    )
                })?,
        };
        p.zero_duration = labels
            .get(LABEL_SCALE_ZERO_DURATION)
            .map(|v| {
                parse_duration(v).map_err(|e| {
                    invalid(format!("labels.{LABEL_SCALE_ZERO_DURATION}"), e.to_string())
                })
            })
            .transpose()?;
        if p.zero_duration.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(invalid(
                format!("labels.{LABEL_SCALE_ZERO_DURATION}"),
                "must be at least 1s",
            ));
        }
        p.down_window = label_duration(labels, LABEL_SCALE_DOWN_WINDOW, p.down_window)?;
        Ok(p)
    }
}

/// Why a deployment was refused. Each message names the field and says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{field}: {source}")]
    Quantity {
        field: &'static str,
        source: QuantityError,
    },
    #[error("envVars.{key}: {source}")]
    Duration { key: String, source: DurationError },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(
        "function {name:?} has nothing to run: image {image:?} is not a bundle known to fjord, so set envProcess (fprocess in stack.yml) to the command that serves it, e.g. \"python3 handler.py\""
    )]
    NoProcess { name: String, image: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How requests reach the function, chosen by the `mode` environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    /// of-watchdog `mode=http`: one long-running process per replica, proxied to over HTTP.
    /// `upstream_port` is the fixed port from `upstream_url`; otherwise fjord picks one and
    /// passes it in `PORT`.
    Http { upstream_port: Option<u16> },
    /// classic watchdog: a process per request, body on stdin, response from stdout.
    Fork,
}

impl InvokeMode {
    pub fn name(self) -> &'static str {
        match self {
            InvokeMode::Http { .. } => "http",
            InvokeMode::Fork => "fork",
        }
    }
}

/// The watchdog settings read from the function's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogConfig {
    /// `exec_timeout`: hard limit per request; `None` when unset or 0.
    pub exec_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// `combine_output` (default true): stderr goes into the response, else to the logs.
    pub combine_output: bool,
    /// `content_type`: forces the response Content-Type in fork mode.
    pub content_type: Option<String>,
    /// `write_debug`: also log the output of each fork-mode request.
    pub write_debug: bool,
    /// `cgi_headers` (default true): pass request headers as `Http_*` env in fork mode.
    pub cgi_headers: bool,
    /// `max_inflight`: concurrent requests per replica; `None` = unlimited.
    pub max_inflight: Option<u64>,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            exec_timeout: None,
            read_timeout: None,
            write_timeout: None,
            combine_output: true,
            content_type: None,
            write_debug: false,
            cgi_headers: true,
            max_inflight: None,
        }
    }
}

/// What a bundle's manifest contributes where the deployment itself says nothing: the
/// command to run and default environment (e.g. `mode=http`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessDefaults {
    pub fprocess: String,
    pub env: BTreeMap<String, String>,
}

/// For a bundle: a command that runs the bundle's own entry point with another interpreter
/// name (`python index.py` where the bundle was built for `python3 index.py`) gets the
/// bundle's interpreter. faas-cli sends its template's `fprocess` as `envProcess`, and the
/// OpenFaaS templates name interpreters differently; the bundle knows which one its code
/// was built and byte-compiled for, with the interpreter options it runs with
/// (`python3 -S index.py`). Anything else (other arguments, a path) is kept as given.
fn with_bundle_interpreter(argv: Vec<String>, bundle_fprocess: &str) -> Vec<String> {
    let Ok(bundle) = shell_words::split(bundle_fprocess) else {
        return argv;
    };
    let bare = |c: &str| !c.is_empty() && !c.contains('/');
    // The bundle's arguments are the given ones, after interpreter options of its own.
    let same_entry = |args: &[String], bundle_args: &[String]| {
        bundle_args.len() >= args.len() && {
            let (options, rest) = bundle_args.split_at(bundle_args.len() - args.len());
            rest == args && options.iter().all(|o| o.starts_with('-'))
        }
    };
    match (argv.split_first(), bundle.split_first()) {
        (Some((cmd, args)), Some((bundle_cmd, bundle_args)))
            if bare(cmd)
                && bare(bundle_cmd)
                && !args.is_empty()
                && (cmd != bundle_cmd || args != bundle_args)
                && same_entry(args, bundle_args) =>
        {
            bundle
        }
        _ => argv,
    }
}

/// A deployment, validated: every later step uses these parsed fields.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub key: FunctionKey,
    /// The request as given (namespace filled in), returned unchanged by the API.
    pub deployment: FunctionDeployment,
    pub mode: InvokeMode,
    /// `fprocess` split into words (quotes honoured).
    pub argv: Vec<String>,
    /// `envVars` as given; the runtime adds `fprocess`, `PORT` and its own defaults.
    pub env: BTreeMap<String, String>,
    pub memory_limit_bytes: Option<u64>,
    /// `com.fjord.tmp-size`, if set.
    pub tmp_size_bytes: Option<u64>,
    /// False with `com.fjord.network: none`: loopback only, whatever the server's default.
    pub outbound_network: bool,
    pub cpu_limit_millis: Option<u64>,
    pub min_replicas: u64,
    pub max_replicas: u64,
    pub scale: ScalePolicy,
    pub watchdog: WatchdogConfig,
    /// Path probed with GET before a replica is ready (http mode); TCP connect otherwise.
    pub ready_path: Option<String>,
}

/// Go's `strconv.ParseBool`, which the watchdogs use for their flags.
fn parse_bool(field: &str, value: &str) -> Result<bool, SpecError> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(
            field,
            format!("{value:?} is not a boolean: use true or false"),
        )),
    }
}

fn env_duration(env: &BTreeMap<String, String>, key: &str) -> Result<Option<Duration>, SpecError> {
    match env.get(key) {
        None => Ok(None),
        Some(v) => {
            let d = parse_duration(v).map_err(|source| SpecError::Duration {
                key: key.to_string(),
                source,
            })?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn label_u64(labels: &BTreeMap<String, String>, key: &str, default: u64) -> Result<u64, SpecError> {
    match labels.get(key) {
        None => Ok(default),
        Some(v) => {
            let n: u64 = v.trim().parse().map_err(|_| {
                invalid(
                    format!("labels.{key}"),
                    format!("{v:?} is not a whole number of replicas"),
                )
            })?;
            if n > REPLICAS_CEILING {
                return Err(invalid(
                    format!("labels.{key}"),
                    format!("{n} is above the limit of {REPLICAS_CEILING} replicas"),
                ));
            }
            Ok(n)
        }
    }
}

/// Reads `upstream_url` (`http://127.0.0.1:5000`) and returns its port.
fn upstream_port(url: &str) -> Result<u16, SpecError> {
    let field = "envVars.upstream_url";
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(
            field,
            format!("{url:?} must be an http:// URL on this machine, e.g. http://127.0.0.1:5000"),
        )
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
        invalid(
            field,
            format!("{url:?} needs a port, e.g. http://127.0.0.1:5000"),
        )
    })?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "0.0.0.0") {
        return Err(invalid(
            field,
            format!("{url:?}: the function must listen on 127.0.0.1"),
        ));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format!("{url:?} has an invalid port")))
}

impl FunctionSpec {
    /// Validates a deployment. Nothing is applied if this fails.
    pub fn from_deployment(d: FunctionDeployment) -> Result<Self, SpecError> {
        Self::from_deployment_with(d, None)
    }

    /// Validates a deployment whose image is a bundle: `defaults` fill in the command and
    /// environment the deployment leaves out. `deployment` keeps what the user sent.
    pub fn from_deployment_with(
        d: FunctionDeployment,
        defaults: Option<&ProcessDefaults>,
    ) -> Result<Self, SpecError> {
        Self::build(d, defaults, false)
    }

    /// Validates a deployment whose image is a container image: the image's own Entrypoint
    /// and Cmd (its watchdog, usually) run, so `envProcess` may be missing (`argv` is then
    /// empty) and only becomes the watchdog's `fprocess`. Every replica is an HTTP server
    /// (the watchdog), so `mode` is always [`InvokeMode::Http`] with no fixed upstream port:
    /// `mode` and `upstream_url` are for the watchdog inside the image (of-watchdog's
    /// `static` mode included), and the runtime picks the port the watchdog listens on.
    pub fn from_deployment_for_image(d: FunctionDeployment) -> Result<Self, SpecError> {
        Self::build(d, None, true)
    }

    fn build(
        mut d: FunctionDeployment,
        defaults: Option<&ProcessDefaults>,
        image: bool,
    ) -> Result<Self, SpecError> {
        let key = FunctionKey::new(&d.service, d.namespace.as_deref())?;
        d.namespace = Some(key.namespace.clone());
        if d.image.trim().is_empty() {
            return Err(invalid(
                "image",
                "must not be empty: name the image or bundle, e.g. \"hello:latest\"",
            ));
        }

        let mut env = defaults.map(|p| p.env.clone()).unwrap_or_default();
        env.extend(d.env_vars.clone().unwrap_or_default());
        for (k, v) in &env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(invalid(
                    format!("envVars.{k}"),
                    "names must be non-empty and contain no '=' or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(invalid(
                    format!("envVars.{k}"),
                    "values must not contain NUL",
                ));
            }
        }

        let fprocess = d
            .env_process
            .clone()
            .filter(|p| !p.trim().is_empty())
            .or_else(|| env.get("fprocess").cloned())
            .or_else(|| env.get("function_process").cloned())
            .or_else(|| defaults.map(|p| p.fprocess.clone()))
            .filter(|p| !p.trim().is_empty());
        let argv = match fprocess {
            None if image => Vec::new(),
            None => {
                return Err(SpecError::NoProcess {
                    name: key.name.clone(),
                    image: d.image.clone(),
                });
            }
            Some(fprocess) => {
                if fprocess.contains('\0') {
                    return Err(invalid("envProcess", "must not contain NUL"));
                }
                let argv = shell_words::split(&fprocess).map_err(|e| {
                    invalid(
                        "envProcess",
                        format!("{fprocess:?} cannot be split into words: {e}"),
                    )
                })?;
                if argv.is_empty() {
                    return Err(invalid("envProcess", "is empty"));
                }
                argv
            }
        };
        let argv = match defaults {
            Some(p) => with_bundle_interpreter(argv, &p.fprocess),
            None => argv,
        };

        let mode = match env.get("mode").map(String::as_str) {
            _ if image => InvokeMode::Http {
                upstream_port: None,
            },
            Some("http") => InvokeMode::Http {
                upstream_port: env
                    .get("upstream_url")
                    .or_else(|| env.get("http_upstream_url"))
                    .map(|u| upstream_port(u))
                    .transpose()?,
            },
            None | Some("") | Some("streaming") | Some("serializing") => InvokeMode::Fork,
            Some(other) => {
                return Err(invalid(
                    "envVars.mode",
                    format!(
                        "{other:?} is not supported: use http, or leave it unset for a process per request"
                    ),
                ));
            }
        };

        let mut watchdog = WatchdogConfig {
            exec_timeout: env_duration(&env, "exec_timeout")?,
            read_timeout: env_duration(&env, "read_timeout")?,
            write_timeout: env_duration(&env, "write_timeout")?,
            ..WatchdogConfig::default()
        };
        if let Some(v) = env.get("combine_output") {
            watchdog.combine_output = parse_bool("envVars.combine_output", v)?;
        }
        if let Some(v) = env.get("write_debug") {
            watchdog.write_debug = parse_bool("envVars.write_debug", v)?;
        }
        if let Some(v) = env.get("cgi_headers") {
            watchdog.cgi_headers = parse_bool("envVars.cgi_headers", v)?;
        }
        watchdog.content_type = env.get("content_type").filter(|c| !c.is_empty()).cloned();
        if let Some(v) = env.get("max_inflight") {
            let n: u64 = v.trim().parse().map_err(|_| {
                invalid(
                    "envVars.max_inflight",
                    format!("{v:?} is not a whole number"),
                )
            })?;
            watchdog.max_inflight = (n > 0).then_some(n);
        }

        let limits = d.limits.clone().unwrap_or_default();
        let memory_limit_bytes = limits
            .memory
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(parse_memory)
            .transpose()
            .map_err(|source| SpecError::Quantity {
                field: "limits.memory",
                source,
            })?;
        if let Some(m) = memory_limit_bytes
            && m < (4 << 20)
        {
            return Err(invalid(
                "limits.memory",
                "must be at least 4Mi: no process starts in less",
            ));
        }
        let cpu_limit_millis = limits
            .cpu
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(parse_cpu)
            .transpose()
            .map_err(|source| SpecError::Quantity {
                field: "limits.cpu",
                source,
            })?;
        if let Some(req) = &d.requests {
            if let Some(m) = req.memory.as_deref().filter(|m| !m.is_empty()) {
                parse_memory(m).map_err(|source| SpecError::Quantity {
                    field: "requests.memory",
                    source,
                })?;
            }
            if let Some(c) = req.cpu.as_deref().filter(|c| !c.is_empty()) {
                parse_cpu(c).map_err(|source| SpecError::Quantity {
                    field: "requests.cpu",
                    source,
                })?;
            }
        }

        // faas_function is the provider's, not the user's: one that names this function (as
        // a client echoing a GET sends it back) is dropped; any other value is refused.
        if let Some(labels) = d.labels.as_mut()
            && let Some(v) = labels.remove(LABEL_FAAS_FUNCTION)
            && v != key.name
        {
            return Err(invalid(
                format!("labels.{LABEL_FAAS_FUNCTION}"),
                format!(
                    "{v:?} is reserved: fjord sets it to the function's name ({:?}); remove the label",
                    key.name
                ),
            ));
        }
        let labels = d.labels.clone().unwrap_or_default();
        let min_replicas = label_u64(&labels, LABEL_SCALE_MIN, 1)?;
        let max_replicas = label_u64(
            &labels,
            LABEL_SCALE_MAX,
            DEFAULT_SCALE_MAX.max(min_replicas),
        )?;
        if min_replicas > max_replicas {
            return Err(invalid(
                format!("labels.{LABEL_SCALE_MIN}"),
                format!("{min_replicas} is above {LABEL_SCALE_MAX} ({max_replicas})"),
            ));
        }

        let scale = ScalePolicy::from_labels(&labels)?;

        // Readiness path: the ready annotation, else OpenFaaS's health annotation, else the
        // ready_path env var. Each set one is checked, so a bad value is never silently unused.
        let annotation = |k: &str| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .filter(|p| !p.is_empty())
        };
        let candidates = [
            (
                format!("annotations.{ANNOTATION_READY_PATH}"),
                annotation(ANNOTATION_READY_PATH),
            ),
            (
                format!("annotations.{ANNOTATION_HEALTH_PATH}"),
                annotation(ANNOTATION_HEALTH_PATH),
            ),
            (
                "envVars.ready_path".to_string(),
                env.get("ready_path").filter(|p| !p.is_empty()),
            ),
        ];
        for (field, p) in &candidates {
            if let Some(p) = p
                && (!p.starts_with('/') || p.contains(char::is_whitespace))
            {
                return Err(invalid(
                    field.clone(),
                    format!("{p:?} must be a path starting with '/'"),
                ));
            }
        }
        let ready_path = candidates.into_iter().find_map(|(_, p)| p.cloned());

        let tmp_size_bytes = d
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_TMP_SIZE))
            .filter(|v| !v.is_empty())
            .map(|v| parse_memory(v))
            .transpose()
            .map_err(|source| SpecError::Quantity {
                field: "annotations.com.fjord.tmp-size",
                source,
            })?;
        if let Some(t) = tmp_size_bytes
            && t < (1 << 20)
        {
            return Err(invalid(
                format!("annotations.{ANNOTATION_TMP_SIZE}"),
                "must be at least 1Mi",
            ));
        }

        let outbound_network = match d
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_NETWORK))
            .map(|v| v.trim())
        {
            None | Some("" | "default") => true,
            Some("none") => false,
            Some(other) => {
                return Err(invalid(
                    format!("annotations.{ANNOTATION_NETWORK}"),
                    format!("{other:?} is not a network mode: use none (loopback only) or default"),
                ));
            }
        };

        Ok(Self {
            key,
            deployment: d,
            mode,
            argv,
            env,
            memory_limit_bytes,
            tmp_size_bytes,
            outbound_network,
            cpu_limit_millis,
            min_replicas,
            max_replicas,
            scale,
            watchdog,
            ready_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openfaas::FunctionResources;

    fn dep(json: &str) -> FunctionDeployment {
        serde_json::from_str(json).unwrap()
    }

    /// The command a deployment of `fprocess` runs for a bundle built with `bundle_fprocess`.
    fn bundle_argv(bundle_fprocess: &str, fprocess: &str) -> Vec<String> {
        let defaults = ProcessDefaults {
            fprocess: bundle_fprocess.into(),
            env: Default::default(),
        };
        FunctionSpec::from_deployment_with(
            dep(&format!(
                r#"{{"service":"f","image":"f:latest","envProcess":"{fprocess}"}}"#
            )),
            Some(&defaults),
        )
        .unwrap()
        .argv
    }

    #[test]
    fn bundle_interpreter_replaces_a_template_interpreter_only() {
        let argv = |fprocess: &str| bundle_argv("python3 index.py", fprocess);
        assert_eq!(argv("python index.py"), ["python3", "index.py"]);
        assert_eq!(argv("python3 index.py"), ["python3", "index.py"]);
        assert_eq!(argv("python other.py"), ["python", "other.py"]);
        assert_eq!(
            argv("/usr/bin/python index.py"),
            ["/usr/bin/python", "index.py"]
        );
        // A bundle whose interpreter runs with options of its own (the python templates'
        // `-S`) gets them too, from either name; other arguments are still kept.
        let argv = |fprocess: &str| bundle_argv("python3 -S index.py", fprocess);
        assert_eq!(argv("python index.py"), ["python3", "-S", "index.py"]);
        assert_eq!(argv("python3 index.py"), ["python3", "-S", "index.py"]);
        assert_eq!(argv("python3 -S index.py"), ["python3", "-S", "index.py"]);
        assert_eq!(argv("python3 -u index.py"), ["python3", "-u", "index.py"]);
        assert_eq!(argv("python3 x index.py"), ["python3", "x", "index.py"]);
        assert_eq!(argv("python other.py"), ["python", "other.py"]);
        // Without a bundle nothing is replaced.
        let s = FunctionSpec::from_deployment(dep(
            r#"{"service":"f","image":"x","envProcess":"python index.py"}"#,
        ))
        .unwrap();
        assert_eq!(s.argv, ["python", "index.py"]);
    }

    #[test]
    fn images_need_no_envprocess_and_always_speak_http() {
        let d = dep(r#"{"service":"a","image":"ghcr.io/x/y:1"}"#);
        assert!(matches!(
            FunctionSpec::from_deployment(d.clone()),
            Err(SpecError::NoProcess { .. })
        ));
        let s = FunctionSpec::from_deployment_for_image(d).unwrap();
        assert!(s.argv.is_empty());
        assert_eq!(
            s.mode,
            InvokeMode::Http {
                upstream_port: None
            }
        );
        // mode and upstream_url are the watchdog's inside the image; envProcess its fprocess.
        let s = FunctionSpec::from_deployment_for_image(dep(
            r#"{"service":"a","image":"x","envProcess":"python3 index.py","envVars":{"mode":"static","upstream_url":"http://127.0.0.1:5000"}}"#,
        ))
        .unwrap();
        assert_eq!(s.argv, ["python3", "index.py"]);
        assert_eq!(
            s.mode,
            InvokeMode::Http {
                upstream_port: None
            }
        );
        // Everything else is checked as for processes.
        assert!(
            FunctionSpec::from_deployment_for_image(dep(
                r#"{"service":"a","image":"x","limits":{"memory":"1Ki"}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn fork_mode_by_default() {
        let s = FunctionSpec::from_deployment(dep(
            r#"{"service":"env","image":"x","envProcess":"env"}"#,
        ))
        .unwrap();
        assert_eq!(s.mode, InvokeMode::Fork);
        assert_eq!(s.argv, ["env"]);
        assert_eq!(s.key.namespace, "openfaas-fn");
        assert_eq!(s.deployment.namespace.as_deref(), Some("openfaas-fn"));
        assert_eq!(s.min_replicas, 1);
        assert!(s.watchdog.combine_output);
    }

    #[test]
    fn http_mode_and_watchdog_env() {
        let s = FunctionSpec::from_deployment(dep(
            r#"{"service":"h","image":"x","envProcess":"python3 -c 'print(1)'",
               "envVars":{"mode":"http","upstream_url":"http://127.0.0.1:5000","exec_timeout":"1m30s","combine_output":"false","max_inflight":"4"},
               "labels":{"com.openfaas.scale.min":"2"},
               "limits":{"memory":"128Mi","cpu":"500m"}}"#,
        ))
        .unwrap();
        assert_eq!(
            s.mode,
            InvokeMode::Http {
                upstream_port: Some(5000)
            }
        );
        assert_eq!(s.argv, ["python3", "-c", "print(1)"]);
        assert_eq!(s.watchdog.exec_timeout, Some(Duration::from_secs(90)));
        assert!(!s.watchdog.combine_output);
        assert_eq!(s.watchdog.max_inflight, Some(4));
        assert_eq!(s.min_replicas, 2);
        assert_eq!(s.memory_limit_bytes, Some(128 << 20));
        assert_eq!(s.cpu_limit_millis, Some(500));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"service":"Bad_Name","image":"x","envProcess":"env"}"#,
                "function name",
            ),
            (
                r#"{"service":"a","namespace":"NS","image":"x","envProcess":"env"}"#,
                "namespace",
            ),
            (r#"{"service":"a","image":"x"}"#, "envProcess"),
            (r#"{"service":"a","image":"","envProcess":"env"}"#, "image"),
            (
                r#"{"service":"a","image":"x","envProcess":"env","limits":{"memory":"lots"}}"#,
                "limits.memory",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","limits":{"cpu":"fast"}}"#,
                "limits.cpu",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","requests":{"memory":"x"}}"#,
                "requests.memory",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","envVars":{"exec_timeout":"soon"}}"#,
                "envVars.exec_timeout",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","envVars":{"mode":"static"}}"#,
                "envVars.mode",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","envVars":{"mode":"http","upstream_url":"http://10.0.0.1:80"}}"#,
                "envVars.upstream_url",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","labels":{"com.openfaas.scale.min":"many"}}"#,
                "labels.com.openfaas.scale.min",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"env","labels":{"com.openfaas.scale.min":"5","com.openfaas.scale.max":"2"}}"#,
                "labels.com.openfaas.scale.min",
            ),
            (
                r#"{"service":"a","image":"x","envProcess":"'unterminated"}"#,
                "envProcess",
            ),
        ];
        for (json, field) in cases {
            let e = FunctionSpec::from_deployment(dep(json))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn faas_function_label_is_the_providers() {
        // Sent back with the function's name (a client echoing a GET): dropped, not stored.
        let s = FunctionSpec::from_deployment(dep(
            r#"{"service":"a","image":"x","envProcess":"env","labels":{"faas_function":"a","team":"t"}}"#,
        ))
        .unwrap();
        let labels = s.deployment.labels.unwrap();
        assert!(!labels.contains_key(LABEL_FAAS_FUNCTION), "{labels:?}");
        assert_eq!(labels["team"], "t");
        // Any other value is refused, naming the label.
        let e = FunctionSpec::from_deployment(dep(
            r#"{"service":"a","image":"x","envProcess":"env","labels":{"faas_function":"b"}}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("labels.faas_function") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn health_path_is_the_ready_path_unless_both_are_set() {
        let path = |annotations: &str, env: &str| {
            FunctionSpec::from_deployment(dep(&format!(
                r#"{{"service":"a","image":"x","envProcess":"env","annotations":{{{annotations}}},"envVars":{{{env}}}}}"#
            )))
            .map(|s| s.ready_path)
        };
        assert_eq!(
            path(r#""com.openfaas.health.http.path":"/healthz""#, ""),
            Ok(Some("/healthz".into()))
        );
        assert_eq!(
            path(
                r#""com.openfaas.health.http.path":"/healthz","com.openfaas.ready.http.path":"/ready""#,
                r#""ready_path":"/env""#
            ),
            Ok(Some("/ready".into())),
            "the ready annotation wins"
        );
        assert_eq!(
            path(
                r#""com.openfaas.health.http.path":"/healthz""#,
                r#""ready_path":"/env""#
            ),
            Ok(Some("/healthz".into())),
            "annotations before the env var"
        );
        assert_eq!(path("", r#""ready_path":"/env""#), Ok(Some("/env".into())));
        let e = path(r#""com.openfaas.health.http.path":"healthz""#, "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("annotations.com.openfaas.health.http.path"),
            "{e}"
        );
    }

    #[test]
    fn scale_rule_factor_and_zero_duration_labels() {
        let policy = |labels: &str| {
            FunctionSpec::from_deployment(dep(&format!(
                r#"{{"service":"a","image":"x","envProcess":"env","labels":{{{labels}}}}}"#
            )))
            .map(|s| s.scale)
        };
        let p = policy("").unwrap();
        assert_eq!(p.rule, ScaleRule::Community);
        assert_eq!(p.factor, 20.0);
        assert_eq!(p.zero_duration, None, "the gateway's default applies");
        let p = policy(r#""com.openfaas.scale.target":"10","com.openfaas.scale.factor":"0","com.openfaas.scale.zero-duration":"2m""#).unwrap();
        assert_eq!(p.rule, ScaleRule::Target);
        assert_eq!(p.factor, 0.0);
        assert_eq!(p.zero_duration, Some(Duration::from_secs(120)));
        for bad in [
            r#""com.openfaas.scale.factor":"101""#,
            r#""com.openfaas.scale.factor":"-1""#,
            r#""com.openfaas.scale.factor":"lots""#,
            r#""com.openfaas.scale.zero-duration":"500ms""#,
        ] {
            let e = policy(bad).unwrap_err().to_string();
            let label = bad.split('"').nth(1).unwrap();
            assert!(e.contains(&format!("labels.{label}")), "{bad}: {e}");
        }
    }

    #[test]
    fn fprocess_from_env_var() {
        let mut d = FunctionDeployment {
            service: "a".into(),
            image: "x".into(),
            ..Default::default()
        };
        d.env_vars = Some([("fprocess".to_string(), "cat".to_string())].into());
        d.limits = Some(FunctionResources::default());
        assert_eq!(FunctionSpec::from_deployment(d).unwrap().argv, ["cat"]);
    }
}
