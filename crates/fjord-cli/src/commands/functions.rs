//! Commands that talk to the gateway about deployed functions: list, describe, remove,
//! scale, logs, invoke, login, version.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use fjord_core::openfaas::FunctionStatus;
use futures_util::StreamExt;
use reqwest::Method;

use crate::cli::{GatewayArgs, InvokeArgs};
use crate::client::{Gateway, TlsTrust};
use crate::config;
use crate::error::CliError;

pub fn gateway(g: &GatewayArgs, stack_gateway: Option<&str>) -> Result<Gateway, CliError> {
    Gateway::new(
        config::gateway_url(g.gateway.as_deref(), stack_gateway),
        g.token.as_deref(),
        &tls_trust(g),
    )
}

pub fn tls_trust(g: &GatewayArgs) -> TlsTrust {
    TlsTrust {
        ca_cert: g.ca_cert.clone(),
        no_verify: g.tls_no_verify,
    }
}

/// Parses `KEY=VALUE` flags.
pub fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(CliError::Usage(format!(
                "{flag} {v:?}: expected KEY=VALUE, e.g. {flag} mode=http"
            ))),
        })
        .collect()
}

pub async fn list(
    g: &GatewayArgs,
    ns: Option<&str>,
    verbose: bool,
    json: bool,
) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    let fns = gw.list(ns).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fns).unwrap_or_default());
        return Ok(());
    }
    if verbose {
        println!(
            "{:<28} {:<36} {:>12} {:>9} {:>9}  Mode",
            "Function", "Image", "Invocations", "Replicas", "Available"
        );
        for f in &fns {
            let mode = f.fjord.as_ref().map_or("", |x| x.mode.as_str());
            println!(
                "{:<28} {:<36} {:>12} {:>9} {:>9}  {}",
                f.name, f.image, f.invocation_count, f.replicas, f.available_replicas, mode
            );
        }
    } else {
        println!("{:<28} {:>12} {:>9}", "Function", "Invocations", "Replicas");
        for f in &fns {
            println!(
                "{:<28} {:>12} {:>9}",
                f.name, f.invocation_count, f.replicas
            );
        }
    }
    Ok(())
}

/// One connector on one line: `cron */5 * * * * (UTC): next 2026-…, last 2026-… ok, fired 3`.
fn trigger_text(t: &fjord_core::openfaas::TriggerStatus) -> String {
    let mut s = format!("{} {}", t.kind, t.source);
    if !t.active {
        s.push_str(" (inactive)");
    }
    if let Some(n) = &t.next_run {
        s.push_str(&format!(", next {n}"));
    }
    if let Some(l) = &t.last_run {
        s.push_str(&format!(", last {l}"));
    }
    if let Some(st) = &t.last_status {
        s.push_str(&format!(" {st}"));
    }
    s.push_str(&format!(
        ", fired {} failed {} skipped {}",
        t.fired, t.failed, t.skipped
    ));
    if let Some(lag) = t.lag {
        s.push_str(&format!(", lag {lag}"));
    }
    s
}

fn describe_text(f: &FunctionStatus, url: &str) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<20} {v}\n"));
    line("Name:", f.name.clone());
    line("Namespace:", f.namespace.clone());
    line(
        "Status:",
        if f.available_replicas > 0 {
            "Ready".into()
        } else {
            "Not Ready".into()
        },
    );
    line("Replicas:", f.replicas.to_string());
    line("Available replicas:", f.available_replicas.to_string());
    line("Invocations:", f.invocation_count.to_string());
    line("Image:", f.image.clone());
    let runtime = f.fjord.as_ref().and_then(|x| x.runtime.clone());
    line(
        "Function process:",
        f.env_process.clone().unwrap_or_else(|| {
            if runtime.as_deref() == Some("container") {
                "(the image's entry point)".into()
            } else {
                "(from the bundle)".into()
            }
        }),
    );
    line("URL:", format!("{url}/function/{}.{}", f.name, f.namespace));
    line("Created:", f.created_at.clone());
    if fjord_core::policy::from_function_object(f.annotations.as_ref()) {
        line(
            "Managed by:",
            format!(
                "its Function object (openfaas.com/v1): kubectl edit function {} -n {}",
                f.name, f.namespace
            ),
        );
    }
    if let Some(x) = &f.fjord {
        if let Some(r) = &x.runtime {
            line("Runtime:", r.clone());
        }
        if let Some(d) = &x.digest {
            line("Digest:", d.clone());
        }
        if let Some(t) = &x.trust {
            line("Trust:", super::trust::describe(t));
        }
        if let Some(p) = &x.pull {
            line(
                "Pulling:",
                format!(
                    "{}: {} of {} layers, {:.1} of {:.1} MB ({:.0} s)",
                    p.image,
                    p.layers_done,
                    p.layers,
                    p.bytes as f64 / 1e6,
                    p.total_bytes as f64 / 1e6,
                    p.seconds
                ),
            );
        }
        line("Mode:", x.mode.clone());
        line("Restarts:", x.restarts.to_string());
        line("OOM kills:", x.oom_kills.to_string());
        line("Cold starts:", x.cold_starts.to_string());
        if let Some(r) = &x.last_scale_reason {
            line("Last scale:", r.clone());
        }
        if let Some(u) = &x.updated_at {
            line("Updated:", u.clone());
        }
        if let Some(e) = &x.last_error {
            line("Last error:", e.clone());
        }
        for t in x.triggers.iter().flatten() {
            line("Trigger:", trigger_text(t));
        }
    }
    let kv = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into())
    };
    line("Environment:", kv(&f.env_vars));
    line("Labels:", kv(&f.labels));
    line("Annotations:", kv(&f.annotations));
    if let Some(l) = &f.limits {
        line(
            "Limits:",
            format!(
                "memory={} cpu={}",
                l.memory.as_deref().unwrap_or("-"),
                l.cpu.as_deref().unwrap_or("-")
            ),
        );
    }
    s
}

pub async fn describe(
    g: &GatewayArgs,
    name: &str,
    ns: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    let f = gw.get(name, ns).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
    } else {
        print!("{}", describe_text(&f, &gw.url));
    }
    Ok(())
}

pub async fn images(g: &GatewayArgs, action: crate::cli::ImagesAction) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    match action {
        crate::cli::ImagesAction::Gc => {
            let r = gw.gc_images().await?;
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            println!(
                "Removed {} image(s) and {} layer(s), {:.1} MiB freed",
                n("images"),
                n("layers"),
                n("bytes") as f64 / (1u64 << 20) as f64
            );
        }
    }
    Ok(())
}

pub async fn scale(
    g: &GatewayArgs,
    name: &str,
    ns: Option<&str>,
    replicas: u64,
) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    match gw.scale(name, ns, replicas).await? {
        Some(set) if set != replicas => println!(
            "Scaling {name} to {set} replica(s): asked for {replicas}, its maximum (com.openfaas.scale.max) is {set}"
        ),
        Some(set) => println!("Scaling {name} to {set} replica(s)"),
        // A gateway that does not say what it set (OpenFaaS).
        None => println!("Scaling {name} to {replicas} replica(s) (requested)"),
    }
    Ok(())
}

pub async fn logs(
    g: &GatewayArgs,
    name: &str,
    ns: Option<&str>,
    follow: bool,
    since: Option<Duration>,
    tail: Option<u64>,
) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    let mut q: Vec<(&str, String)> = vec![("name", name.to_string())];
    if let Some(ns) = ns {
        q.push(("namespace", ns.to_string()));
    }
    if follow {
        q.push(("follow", "true".into()));
    }
    if let Some(t) = tail {
        q.push(("tail", t.to_string()));
    }
    if let Some(s) = since {
        let t = std::time::SystemTime::now() - s;
        q.push(("since", humantime::format_rfc3339_seconds(t).to_string()));
    }
    let resp = gw
        .send(
            gw.system(Method::GET, "/system/logs").query(&q),
            &format!("logs of {name}"),
        )
        .await?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| gw.transport(e))?;
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(m) = serde_json::from_slice::<fjord_core::openfaas::LogMessage>(&line) {
                let _ = write!(out, "{} {} {}", m.timestamp, m.instance, m.text);
                let _ = out.flush();
            }
        }
    }
    Ok(())
}

pub async fn invoke(a: &InvokeArgs) -> Result<(), CliError> {
    let gw = gateway(&a.gateway, None)?;
    let method = Method::from_bytes(a.method.to_uppercase().as_bytes())
        .map_err(|_| CliError::Usage(format!("--method {:?} is not an HTTP method", a.method)))?;
    let target = match a.namespace.as_deref() {
        Some(ns) => format!("{}.{ns}", a.name),
        None => a.name.clone(),
    };
    let path = if a.path.is_empty() || a.path.starts_with('/') {
        a.path.clone()
    } else {
        format!("/{}", a.path)
    };
    let route = if a.r#async {
        "async-function"
    } else {
        "function"
    };
    let mut body = Vec::new();
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Reading from STDIN - hit (Control + D) to stop.");
    }
    stdin.lock().read_to_end(&mut body)?;
    let mut req = gw
        .invocation(method, &format!("/{route}/{target}{path}"))
        .query(&pairs("--query", &a.query)?.into_iter().collect::<Vec<_>>())
        .header(reqwest::header::CONTENT_TYPE, &a.content_type)
        .body(body);
    for (k, v) in pairs("-H", &a.header)? {
        req = req.header(k, v);
    }
    let resp = gw.send(req, &format!("invoke {}", a.name)).await?;
    if a.r#async {
        let id = resp
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        println!("Function {} queued: call id {id}", a.name);
        return Ok(());
    }
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| gw.transport(e))?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

pub async fn login(
    g: &GatewayArgs,
    user: &str,
    password: Option<String>,
    stdin: bool,
) -> Result<(), CliError> {
    let url = config::gateway_url(g.gateway.as_deref(), None);
    // `fjord login --token T` (or FJORD_TOKEN) saves an API token instead of a password.
    if let Some(token) = g.token.clone().filter(|_| password.is_none() && !stdin) {
        let token = if token == "-" {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t)?;
            t.trim().to_string()
        } else {
            token.trim().to_string()
        };
        if token.is_empty() {
            return Err(CliError::Usage("the token is empty".into()));
        }
        let creds = config::Credentials::token(token);
        let gw = Gateway::with_credentials(url.clone(), Some(creds.clone()), &tls_trust(g))?;
        // Any valid token may read GET /system/info except invoke-only ones.
        gw.info().await?;
        let mut cfg = config::load();
        cfg.gateways.insert(url.clone(), creds);
        let path = config::save(&cfg)?;
        println!("token for {url} saved in {}", path.display());
        return Ok(());
    }
    let password = match (password, stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p)?;
            p.trim().to_string()
        }
        (None, false) => {
            return Err(CliError::Usage(
                "give the password with --password-stdin (or -p); it is in <data-dir>/secrets/basic-auth-password on the gateway's machine".into(),
            ));
        }
    };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    let creds = config::Credentials {
        user: user.to_string(),
        password,
        token: None,
    };
    let gw = Gateway::with_credentials(url.clone(), Some(creds.clone()), &tls_trust(g))?;
    gw.info().await?;
    let mut cfg = config::load();
    cfg.gateways.insert(url.clone(), creds);
    let path = config::save(&cfg)?;
    println!("credentials for {url} saved in {}", path.display());
    Ok(())
}

pub async fn version(g: &GatewayArgs) -> Result<(), CliError> {
    let v = fjord_gateway::version_info();
    println!("fjord CLI: {} ({})", v.release, v.sha);
    let gw = gateway(g, None)?;
    match gw.info().await {
        Ok(info) => println!(
            "gateway {}: {} {} ({}), {}",
            gw.url,
            info.provider.provider,
            info.version.release,
            info.version.sha,
            info.provider.orchestration
        ),
        Err(e) => println!(
            "gateway {}: not available ({})",
            gw.url,
            e.to_string().lines().next().unwrap_or("")
        ),
    }
    Ok(())
}

pub async fn calls(g: &GatewayArgs, action: crate::cli::CallsAction) -> Result<(), CliError> {
    use crate::cli::CallsAction;
    let gw = gateway(g, None)?;
    match action {
        CallsAction::Get { id } => {
            let r = gw
                .send(
                    gw.system(Method::GET, &format!("/system/async-calls/{id}")),
                    &format!("call {id}"),
                )
                .await?;
            let v: serde_json::Value =
                r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        CallsAction::List { state, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            let r = gw
                .send(
                    gw.system(Method::GET, "/system/async-calls").query(&q),
                    "list calls",
                )
                .await?;
            let calls: Vec<serde_json::Value> =
                r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            println!(
                "{:<38} {:<24} {:<9} {:>8} {:>6}  Last error",
                "Call", "Function", "State", "Attempts", "Status"
            );
            for c in calls {
                println!(
                    "{:<38} {:<24} {:<9} {:>8} {:>6}  {}",
                    c["id"].as_str().unwrap_or(""),
                    c["function"].as_str().unwrap_or(""),
                    c["state"].as_str().unwrap_or(""),
                    c["attempts"],
                    c["status"]
                        .as_u64()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    c["lastError"].as_str().unwrap_or("")
                );
            }
        }
        CallsAction::Cancel { id } => {
            gw.send(
                gw.request(Method::DELETE, &format!("/async-function/{id}")),
                &format!("cancel {id}"),
            )
            .await?;
            println!("Cancelled {id}.");
        }
        CallsAction::Replay { id } => {
            gw.send(
                gw.system(Method::POST, &format!("/system/async-calls/{id}/replay")),
                &format!("replay {id}"),
            )
            .await?;
            println!("Replaying {id}.");
        }
    }
    Ok(())
}

/// `fjord token create|list|revoke`.
pub async fn token(g: &GatewayArgs, action: crate::cli::TokenAction) -> Result<(), CliError> {
    use crate::cli::TokenAction;
    let gw = gateway(g, None)?;
    match action {
        TokenAction::Create {
            name,
            scope,
            expires,
            json,
        } => {
            let mut body = serde_json::json!({"name": name, "scope": scope});
            if let Some(e) = expires {
                body["expiresIn"] = serde_json::json!(e);
            }
            let r = gw
                .send(
                    gw.system(Method::POST, "/system/tokens").json(&body),
                    &format!("create token {name}"),
                )
                .await?;
            let v: serde_json::Value =
                r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                // The token alone on stdout, so `fjord token create ... > file` keeps just it.
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} ({}, scope {}{}) created: it is shown only this once, keep it safe",
                    v["id"].as_str().unwrap_or_default(),
                    v["name"].as_str().unwrap_or_default(),
                    v["scope"].as_str().unwrap_or_default(),
                    v["expiresAt"]
                        .as_str()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
        }
        TokenAction::List { json } => {
            let r = gw
                .send(gw.system(Method::GET, "/system/tokens"), "list tokens")
                .await?;
            let tokens: Vec<serde_json::Value> =
                r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tokens).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "{:<17} {:<24} {:<7} {:<21} Expires",
                "ID", "Name", "Scope", "Created"
            );
            for t in tokens {
                let expires = match (t["expiresAt"].as_str(), t["expired"].as_bool()) {
                    (Some(e), Some(true)) => format!("{e} (expired)"),
                    (Some(e), _) => e.to_string(),
                    (None, _) => "never".to_string(),
                };
                println!(
                    "{:<17} {:<24} {:<7} {:<21} {expires}",
                    t["id"].as_str().unwrap_or_default(),
                    t["name"].as_str().unwrap_or_default(),
                    t["scope"].as_str().unwrap_or_default(),
                    t["createdAt"].as_str().unwrap_or_default(),
                );
            }
        }
        TokenAction::Revoke { id } => {
            gw.send(
                gw.system(Method::DELETE, &format!("/system/tokens/{id}")),
                &format!("revoke token {id}"),
            )
            .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_a_pull_in_progress() {
        let f: FunctionStatus = serde_json::from_value(serde_json::json!({
            "name": "big", "image": "reg:5000/big:1", "namespace": "openfaas-fn",
            "createdAt": "2026-12-01T00:00:00Z",
            "fjord": {"mode": "http", "restarts": 0, "oomKills": 0, "runtime": "container",
                "pull": {"image": "reg:5000/big:1", "layers": 3, "layersDone": 1,
                    "bytes": 40_000_000, "totalBytes": 100_000_000, "seconds": 4.2},
                "rollout": {"generation": 0, "state": "pulling", "replicas": 0, "readyReplicas": 0}}
        }))
        .expect("a status");
        let text = describe_text(&f, "http://gw");
        assert!(
            text.contains("Pulling:")
                && text.contains("reg:5000/big:1: 1 of 3 layers, 40.0 of 100.0 MB (4 s)"),
            "{text}"
        );
        assert!(
            text.contains("Runtime:") && text.contains("container"),
            "{text}"
        );
    }

    #[test]
    fn describe_names_the_function_object_that_manages_it() {
        let f: FunctionStatus = serde_json::from_value(serde_json::json!({
            "name": "env", "image": "img:1", "namespace": "team-a",
            "createdAt": "2026-12-01T00:00:00Z",
            "annotations": {"com.fjord.function-object": "0c6e-uid"},
        }))
        .expect("a status");
        let text = describe_text(&f, "http://gw");
        assert!(
            text.contains("Managed by:") && text.contains("kubectl edit function env -n team-a"),
            "{text}"
        );
        let mut plain = f.clone();
        plain.annotations = None;
        assert!(!describe_text(&plain, "http://gw").contains("Managed by:"));
    }
}
