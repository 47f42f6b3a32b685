//! Content trust on the command line: `fjord key generate`, `fjord sign`, `--sign KEY` on
//! push/up (images: a cosign signature in the registry; bundles: a signature uploaded beside
//! the bundle) and `fjord trust check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use fjord_core::openfaas::TrustStatus;
use fjord_oci::Reference;
use fjord_oci::push::RegistryOptions;
use fjord_trust::{BundleSignatures, KeyPair, PrivateKey, SimpleSigning};
use reqwest::Method;
use zeroize::Zeroizing;

use crate::cli::{GatewayArgs, KeyAction, SignArgs, TrustAction};
use crate::client::Gateway;
use crate::error::CliError;

/// The key passphrase: `FJORD_KEY_PASSWORD`, else cosign's `COSIGN_PASSWORD`, else a prompt
/// on the terminal. (Not `FJORD_PASSWORD`: that is the gateway's admin password.)
fn passphrase(confirm: bool) -> Result<Zeroizing<String>, CliError> {
    for var in ["FJORD_KEY_PASSWORD", "COSIGN_PASSWORD"] {
        if let Ok(p) = std::env::var(var) {
            return Ok(Zeroizing::new(p));
        }
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("Enter password for private key: ").map_err(|e| {
            CliError::Usage(format!(
                "no passphrase: set FJORD_KEY_PASSWORD (or COSIGN_PASSWORD), or run on a terminal ({e})"
            ))
        })?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Enter password for private key again: ")
                .map_err(|e| CliError::Other(e.to_string()))?,
        );
        if *again != *first {
            return Err(CliError::Usage("the passwords do not match".into()));
        }
    }
    Ok(first)
}

/// Opens a private key file (cosign.key) with its passphrase.
pub fn load_key(path: &Path) -> Result<PrivateKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--sign {}: {e}", path.display())))?;
    let pass = passphrase(false)?;
    PrivateKey::from_encrypted_pem(&text, pass.as_bytes())
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// The key of `--sign`, opened once for all the functions pushed.
pub fn signing_key(flag: &crate::cli::SignFlag) -> Result<Option<PrivateKey>, CliError> {
    flag.sign.as_deref().map(load_key).transpose()
}

pub fn key(action: KeyAction) -> Result<(), CliError> {
    match action {
        KeyAction::Generate {
            output_key_prefix,
            force,
        } => generate(&output_key_prefix, force),
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(ext);
    PathBuf::from(s)
}

fn generate(prefix: &Path, force: bool) -> Result<(), CliError> {
    let (key_path, pub_path) = (with_ext(prefix, ".key"), with_ext(prefix, ".pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() && !force {
            return Err(CliError::Usage(format!(
                "{} exists: pick another --output-key-prefix, or --force to overwrite it",
                p.display()
            )));
        }
    }
    let pass = passphrase(true)?;
    let pair = KeyPair::generate(pass.as_bytes()).map_err(|e| CliError::Other(e.to_string()))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| CliError::Other(format!("{}: {e}", key_path.display())))?;
        // An existing file keeps its mode when opened: make sure it is private.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(pair.private_pem.as_bytes())?;
    }
    std::fs::write(&pub_path, pair.public_pem.as_bytes())
        .map_err(|e| CliError::Other(format!("{}: {e}", pub_path.display())))?;
    eprintln!(
        "Private key written to {}\nPublic key written to {} (key id {})",
        key_path.display(),
        pub_path.display(),
        pair.public.id()
    );
    Ok(())
}

/// Signs image `digest` of `reference`'s repository in its registry (cosign's layout).
pub async fn sign_image(
    key: &PrivateKey,
    reference: &Reference,
    digest: &str,
    opts: &RegistryOptions,
) -> Result<Reference, CliError> {
    let repo = format!("{}/{}", reference.registry(), reference.repository());
    let payload = SimpleSigning::image(&repo, digest).to_bytes();
    let signature = key.sign(&payload);
    fjord_oci::signature::push_signature(reference, digest, &payload, &signature, opts)
        .await
        .map_err(|e| CliError::Other(format!("signing {repo}@{digest}: {e}")))
}

/// Uploads a signature of bundle `digest` (pushed as `tag`) to the gateway.
pub async fn sign_bundle(
    gw: &Gateway,
    key: &PrivateKey,
    digest: &str,
    tag: &str,
) -> Result<(), CliError> {
    upload_bundle_signature(gw, &BundleSignatures::sign(key, tag, digest), digest, tag).await
}

/// Uploads a signature document of bundle `digest` (pushed as `tag`).
pub async fn upload_bundle_signature(
    gw: &Gateway,
    doc: &BundleSignatures,
    digest: &str,
    tag: &str,
) -> Result<(), CliError> {
    gw.send(
        gw.system(Method::PUT, &format!("/system/bundles/{digest}/signature"))
            .json(doc),
        &format!("upload the signature of bundle {tag}"),
    )
    .await?;
    Ok(())
}

pub async fn sign(a: &SignArgs) -> Result<(), CliError> {
    let r = Reference::parse(&a.image)
        .map_err(|e| CliError::Usage(format!("image {:?}: {e}", a.image)))?;
    let opts = RegistryOptions {
        insecure: a.registry.insecure_registry.clone(),
        docker_config: a.registry.registry_config.clone(),
    };
    let key = load_key(&a.key)?;
    let digest = match r.digest() {
        Some(d) => d.to_string(),
        None => fjord_oci::signature::resolve_digest(&r, &opts)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?,
    };
    let at = sign_image(&key, &r, &digest, &opts).await?;
    eprintln!(
        "Signed {}/{}@{digest} with key {} (signature at {at})",
        r.registry(),
        r.repository(),
        key.public().id()
    );
    Ok(())
}

/// One line for `fjord describe`'s `Trust:`.
pub fn describe(t: &TrustStatus) -> String {
    match (t.state.as_str(), &t.key_id, &t.reason) {
        ("verified", Some(k), _) => format!("verified (signed by key {k})"),
        (_, _, Some(r)) => format!("{} ({r})", t.state),
        (s, _, _) => s.to_string(),
    }
}

pub async fn run(g: &GatewayArgs, action: TrustAction) -> Result<(), CliError> {
    let gw = super::functions::gateway(g, None)?;
    match action {
        TrustAction::Check { json } => {
            let r = gw
                .send(
                    gw.system(Method::GET, "/system/trust"),
                    "check content trust",
                )
                .await?;
            let list: Vec<serde_json::Value> = r
                .json()
                .await
                .map_err(|e| CliError::Other(format!("the gateway's answer: {e}")))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            }
            let refused: Vec<&serde_json::Value> = list
                .iter()
                .filter(|f| f["trust"]["state"] == "refused")
                .collect();
            if !json {
                for f in &list {
                    let t: TrustStatus =
                        serde_json::from_value(f["trust"].clone()).unwrap_or_default();
                    println!(
                        "{:<24} {:<16} {:<8} {}",
                        f["name"].as_str().unwrap_or(""),
                        f["namespace"].as_str().unwrap_or(""),
                        if f["running"] == true {
                            "running"
                        } else {
                            "stopped"
                        },
                        describe(&t)
                    );
                }
            }
            if refused.is_empty() {
                eprintln!(
                    "{} function(s), none refused by the trust policy",
                    list.len()
                );
                Ok(())
            } else {
                Err(CliError::Other(format!(
                    "{} of {} function(s) refused by the trust policy",
                    refused.len(),
                    list.len()
                )))
            }
        }
    }
}
