//! `fjord namespace create|list|get|update|delete`: namespaces with labels and annotations.

use std::collections::BTreeMap;

use fjord_core::openfaas::FunctionNamespace;
use reqwest::Method;

use crate::cli::{GatewayArgs, NamespaceAction};
use crate::client::Gateway;
use crate::commands::functions::gateway;
use crate::error::CliError;

pub async fn run(g: &GatewayArgs, action: NamespaceAction) -> Result<(), CliError> {
    let gw = gateway(g, None)?;
    match action {
        NamespaceAction::Create {
            name,
            label,
            annotation,
        } => {
            send_record(&gw, Method::POST, &name, &label, &annotation).await?;
            println!("Created namespace {name}");
        }
        NamespaceAction::Update {
            name,
            label,
            annotation,
        } => {
            send_record(&gw, Method::PUT, &name, &label, &annotation).await?;
            println!("Updated namespace {name}");
        }
        NamespaceAction::List { json } => {
            let r = gw
                .send(
                    gw.system(Method::GET, "/system/namespaces"),
                    "list namespaces",
                )
                .await?;
            let names: Vec<String> = r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            if json {
                println!("{}", to_json(&names)?);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        NamespaceAction::Get { name, json } => {
            let r = gw
                .send(
                    gw.system(Method::GET, &format!("/system/namespace/{name}")),
                    &format!("namespace {name}"),
                )
                .await?;
            let ns: FunctionNamespace =
                r.json().await.map_err(|e| CliError::Other(e.to_string()))?;
            if json {
                println!("{}", to_json(&ns)?);
            } else {
                println!("Name:        {}", ns.name);
                for (title, map) in [("Labels:", &ns.labels), ("Annotations:", &ns.annotations)] {
                    let map = map.clone().unwrap_or_default();
                    if map.is_empty() {
                        println!("{title:<12} <none>");
                    }
                    for (i, (k, v)) in map.iter().enumerate() {
                        let t = if i == 0 { title } else { "" };
                        println!("{t:<12} {k}={v}");
                    }
                }
            }
        }
        NamespaceAction::Delete { name } => {
            gw.send(
                gw.system(Method::DELETE, &format!("/system/namespace/{name}")),
                &format!("delete namespace {name}"),
            )
            .await?;
            println!("Deleted namespace {name}");
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))
}

/// `KEY=VALUE` pairs of a repeated flag; a pair without `=` is a usage error naming the flag.
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::Usage(format!(
                "--{flag} {item:?}: expected KEY=VALUE, e.g. --{flag} team=payments"
            ))),
        })
        .collect()
}

async fn send_record(
    gw: &Gateway,
    method: Method,
    name: &str,
    labels: &[String],
    annotations: &[String],
) -> Result<(), CliError> {
    let body = FunctionNamespace {
        name: name.to_string(),
        labels: Some(pairs("label", labels)?),
        annotations: Some(pairs("annotation", annotations)?),
    };
    let what = if method == Method::POST {
        "create"
    } else {
        "update"
    };
    gw.send(
        gw.system(method, &format!("/system/namespace/{name}"))
            .json(&body),
        &format!("{what} namespace {name}"),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_an_equals_sign() {
        let m = pairs("label", &["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(m["b"], "x=y");
        assert_eq!(m["c"], "");
        let e = pairs("label", &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("--label") && e.contains("KEY=VALUE"), "{e}");
    }
}
