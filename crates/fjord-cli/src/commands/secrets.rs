//! `fjord secret create|list|update|remove`: function secrets on the gateway.

use std::io::{IsTerminal, Read};

use base64::Engine;
use fjord_core::openfaas::Secret;
use reqwest::Method;

use crate::cli::{GatewayArgs, SecretAction, SecretValueArgs};
use crate::client::Gateway;
use crate::commands::functions::gateway;
use crate::error::CliError;

pub async fn run(g: &GatewayArgs, action: SecretAction) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    match action {
        SecretAction::Create {
            name,
            value,
            namespace,
        } => {
            put(&gw, Method::POST, &name, &value, namespace).await?;
            println!("Created secret {name}");
        }
        SecretAction::Update {
            name,
            value,
            namespace,
        } => {
            put(&gw, Method::PUT, &name, &value, namespace).await?;
            println!("Updated secret {name} (functions that use it restart with the new value)");
        }
        SecretAction::List { namespace, json } => {
            let list = gw.list_secrets(namespace.as_deref()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list)
                        .map_err(|e| CliError::Other(e.to_string()))?
                );
            } else {
                println!("{:<40} NAMESPACE", "NAME");
                for s in list {
                    println!("{:<40} {}", s.name, s.namespace);
                }
            }
        }
        SecretAction::Remove { name, namespace } => {
            gw.remove_secret(&name, namespace.as_deref()).await?;
            println!("Removed secret {name}");
        }
    }
    Ok(())
}

async fn put(
    gw: &Gateway,
    method: Method,
    name: &str,
    v: &SecretValueArgs,
    namespace: Option<String>,
) -> Result<(), CliError> {
    let mut bytes = read_value(v)?;
    if v.trim {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(start, |i| i + 1);
        bytes = bytes[start..end].to_vec();
    }
    if bytes.is_empty() {
        return Err(CliError::Usage(format!(
            "the value of secret {name} is empty: give it with --from-literal VALUE, --from-file PATH, or on stdin"
        )));
    }
    // Text goes as `value`, anything else as base64 `rawValue` (as faas-cli does for files).
    let (value, raw_value) = match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        ),
    };
    gw.put_secret(
        method,
        &Secret {
            name: name.to_string(),
            namespace,
            value,
            raw_value,
        },
    )
    .await
}

fn read_value(v: &SecretValueArgs) -> Result<Vec<u8>, CliError> {
    if let Some(l) = &v.from_literal {
        return Ok(l.as_bytes().to_vec());
    }
    if let Some(p) = &v.from_file {
        return std::fs::read(p)
            .map_err(|e| CliError::Usage(format!("--from-file {}: {e}", p.display())));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::Usage(
            "no value: give it with --from-literal VALUE or --from-file PATH, or pipe it on stdin"
                .into(),
        ));
    }
    let mut buf = Vec::new();
    stdin.lock().read_to_end(&mut buf)?;
    Ok(buf)
}
