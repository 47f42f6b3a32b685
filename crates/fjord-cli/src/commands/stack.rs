//! Commands that work from a stack file: new, build, push, deploy, up, remove.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fjord_stack::{ParseOptions, Stack, StackFunction};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::builder::{self, Built};
use crate::cli::{
    BuildArgs, DeployArgs, GatewayArgs, ImageArgs, NewArgs, RegistryArgs, StackArgs, UpArgs,
};
use crate::client::Gateway;
use crate::commands::functions::{gateway, pairs};
use crate::error::CliError;
use crate::image::{self, ImageOptions};
use crate::templates;

fn registry_options(r: &RegistryArgs) -> fjord_oci::push::RegistryOptions {
    fjord_oci::push::RegistryOptions {
        insecure: r.insecure_registry.clone(),
        docker_config: r.registry_config.clone(),
    }
}

/// `--image` and its flags, when given.
fn image_options(a: &ImageArgs) -> Option<ImageOptions> {
    a.image.then(|| ImageOptions {
        base_image: a.base_image.clone(),
        registry: registry_options(&a.registry),
    })
}

pub struct Loaded {
    pub stack: Stack,
    pub dir: PathBuf,
}

fn stack_path(file: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    for name in ["stack.yaml", "stack.yml"] {
        if Path::new(name).exists() {
            return Ok(PathBuf::from(name));
        }
    }
    Err(CliError::Usage(
        "no stack.yaml or stack.yml here: create one with `fjord new NAME --lang LANG`, or pass -f FILE".into(),
    ))
}

pub fn load(args: &StackArgs) -> Result<Loaded, CliError> {
    let path = stack_path(args.file.as_deref())?;
    if !path.exists() {
        return Err(CliError::Usage(format!(
            "stack file {} does not exist",
            path.display()
        )));
    }
    let parsed = fjord_stack::parse_file(&path, &ParseOptions::process_env())?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    let mut stack = parsed.stack;
    if let Some(glob) = &args.filter {
        stack.functions.retain(|f| glob_match(glob, &f.name));
        if stack.functions.is_empty() {
            return Err(CliError::Usage(format!(
                "no function in {} matches --filter {glob:?}",
                path.display()
            )));
        }
    }
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Loaded { stack, dir })
}

/// `*` and `?` globbing, as faas-cli's --filter.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

// ---------------------------------------------------------------------------------- new

pub fn new(a: &NewArgs) -> Result<(), CliError> {
    if a.list {
        println!("Languages available as templates:");
        for n in templates::names() {
            println!("- {n}");
        }
        return Ok(());
    }
    let name = a.name.as_deref().ok_or_else(|| {
        CliError::Usage(
            "give the function a name: fjord new NAME --lang LANG (see fjord new --list)".into(),
        )
    })?;
    fjord_core::names::validate_label("function name", name)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let lang = a.lang.as_deref().ok_or_else(|| {
        CliError::Usage(format!(
            "choose a template with --lang: {}",
            templates::names().join(", ")
        ))
    })?;
    let stack_file = a
        .append
        .clone()
        .unwrap_or_else(|| PathBuf::from("stack.yml"));
    let stack_dir = stack_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let template = templates::find(lang, &stack_dir)?;
    // The stack names the handler relative to itself; the folder goes there too.
    let handler_rel = a
        .handler
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("./{name}")));
    let handler = if handler_rel.is_absolute() {
        handler_rel.clone()
    } else {
        // `greet`, not `././greet`, for a stack in the current directory.
        let rel = handler_rel.strip_prefix(".").unwrap_or(&handler_rel);
        if stack_dir == Path::new(".") {
            rel.to_path_buf()
        } else {
            stack_dir.join(rel)
        }
    };
    if handler.exists() {
        return Err(CliError::Usage(format!(
            "folder {} already exists: choose another name or --handler",
            handler.display()
        )));
    }
    let image = match a.prefix.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => format!("{}/{name}:latest", p.trim_end_matches('/')),
        None => format!("{name}:latest"),
    };
    let entry = format!(
        "  {name}:\n    lang: {lang}\n    handler: {}\n    image: {image}\n",
        handler_rel.display()
    );
    let original = if a.append.is_some() {
        if !stack_file.exists() {
            return Err(CliError::Usage(format!(
                "--append {}: the file does not exist",
                stack_file.display()
            )));
        }
        let text = std::fs::read_to_string(&stack_file)?;
        let parsed = fjord_stack::parse_file(&stack_file, &ParseOptions::process_env())?;
        if parsed.stack.functions.iter().any(|f| f.name == name) {
            return Err(CliError::Usage(format!(
                "{} already has a function {name}",
                stack_file.display()
            )));
        }
        let mut new_text = text.clone();
        if !new_text.ends_with('\n') {
            new_text.push('\n');
        }
        new_text.push_str(&entry);
        std::fs::write(&stack_file, &new_text)?;
        if let Err(e) = fjord_stack::parse_file(&stack_file, &ParseOptions::process_env()) {
            std::fs::write(&stack_file, &text)?;
            return Err(CliError::Other(format!(
                "could not append to {} (is `functions:` its last section?): {e}",
                stack_file.display()
            )));
        }
        Some(text)
    } else {
        if stack_file.exists() {
            return Err(CliError::Usage(format!(
                "{} already exists: add the function to it with --append {}",
                stack_file.display(),
                stack_file.display()
            )));
        }
        let gw = crate::config::gateway_url(a.gateway.gateway.as_deref(), None);
        std::fs::write(
            &stack_file,
            format!(
                "version: 1.0\nprovider:\n  name: openfaas\n  gateway: {gw}\nfunctions:\n{entry}"
            ),
        )?;
        None
    };
    if let Err(e) = template.write_skeleton(&handler) {
        match original {
            Some(t) => std::fs::write(&stack_file, t)?,
            None => std::fs::remove_file(&stack_file)?,
        }
        return Err(e);
    }
    println!("Folder: {}/ created.", handler.display());
    println!(
        "Function {name} ({lang}) added to {}.",
        stack_file.display()
    );
    if let Some(w) = &template.spec.welcome_message {
        // The templates name their handler folder `function/`; the user's is `handler`.
        println!(
            "{}",
            w.trim_end()
                .replace("function/", &format!("{}/", handler.display()))
        );
    }
    println!(
        "Next: fjord up{}",
        if a.append.is_some() {
            format!(" -f {}", stack_file.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

// -------------------------------------------------------------------------------- build

/// Progress: spinners on a terminal, plain lines otherwise, nothing with --quiet.
struct Progress {
    multi: Option<MultiProgress>,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            multi: (!quiet && tty).then(MultiProgress::new),
            quiet,
        }
    }

    fn bar(&self, name: &str) -> Option<ProgressBar> {
        let m = self.multi.as_ref()?;
        let b = m.add(ProgressBar::new_spinner());
        b.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_prefix(name.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    }

    fn line(&self, name: &str, msg: &str) {
        if !self.quiet && self.multi.is_none() {
            eprintln!("==> {name}: {msg}");
        }
    }
}

pub fn build_all(
    loaded: &Loaded,
    parallel: usize,
    no_cache: bool,
    quiet: bool,
    image: Option<&ImageOptions>,
) -> Result<Vec<Built>, CliError> {
    let todo: Vec<&StackFunction> = loaded
        .stack
        .functions
        .iter()
        .filter(|f| f.lang.is_some() && !f.skip_build)
        .collect();
    let progress = Progress::new(quiet);
    let results: Mutex<Vec<(usize, Result<Built, CliError>)>> = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, 16) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(f) = todo.get(i) else { break };
                    let bar = progress.bar(&f.name);
                    let report = |msg: &str| {
                        if let Some(b) = &bar {
                            b.set_message(msg.to_string());
                        }
                        progress.line(&f.name, msg);
                    };
                    let r = builder::build(&loaded.dir, f, no_cache, image, &report);
                    if let Some(b) = &bar {
                        match &r {
                            Ok(b2) if b2.cached => {
                                b.finish_with_message(format!("unchanged {}", short(&b2.digest)))
                            }
                            Ok(b2) => b.finish_with_message(format!("built {}", short(&b2.digest))),
                            Err(_) => b.finish_with_message("failed".to_string()),
                        }
                    } else if let Ok(b2) = &r {
                        progress.line(
                            &f.name,
                            &format!(
                                "{} {}",
                                if b2.cached { "unchanged" } else { "built" },
                                b2.digest
                            ),
                        );
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut built = Vec::new();
    let mut first_err = None;
    for (_, r) in results {
        match r {
            Ok(b) => built.push(b),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(built),
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

pub fn build(a: &BuildArgs) -> Result<(), CliError> {
    let loaded = load(&a.stack)?;
    let opts = image_options(&a.image);
    if a.sign.is_some() && opts.is_some() {
        return Err(CliError::Usage(
            "--sign with --image: an image's signature is stored in its registry, so sign it when pushing: `fjord push --image --sign KEY` (or `fjord up --image --sign KEY`)".into(),
        ));
    }
    // Before building: a wrong passphrase should not cost a build.
    let key = a.sign.as_deref().map(super::trust::load_key).transpose()?;
    let built = build_all(&loaded, a.parallel, a.no_cache, a.quiet, opts.as_ref())?;
    if built.is_empty() && !a.quiet {
        eprintln!("nothing to build: no function in the stack has a lang");
    }
    if let Some(key) = &key {
        for f in built_functions(&loaded) {
            let Some(b) = builder::last_build(&loaded.dir, &f.name) else {
                continue;
            };
            let doc = fjord_trust::BundleSignatures::sign(
                key,
                &fjord_gateway::normalize_tag(&f.image),
                &b.digest,
            );
            let path = signature_path(&loaded.dir, &f.name);
            let json = serde_json::to_vec_pretty(&doc)
                .map_err(|e| CliError::Other(format!("cannot encode the signature: {e}")))?;
            std::fs::write(&path, json)
                .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
            if !a.quiet {
                eprintln!(
                    "==> {}: signed {} with key {} ({})",
                    f.name,
                    short(&b.digest),
                    key.public().id(),
                    path.display()
                );
            }
        }
    }
    print_images(&built);
    Ok(())
}

/// The functions of the stack that `fjord build` builds.
fn built_functions(loaded: &Loaded) -> impl Iterator<Item = &StackFunction> {
    loaded
        .stack
        .functions
        .iter()
        .filter(|f| f.lang.is_some() && !f.skip_build)
}

/// Where `fjord build --sign` leaves a bundle's signature for `fjord push` to upload.
fn signature_path(stack_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    builder::build_dir(stack_dir, name).join("bundle.sig.json")
}

/// The signature `fjord build --sign` left beside this build's bundle, if it is over
/// `digest` (a later unsigned build leaves a stale one, which is not uploaded).
fn signature_beside(
    stack_dir: &std::path::Path,
    name: &str,
    digest: &str,
) -> Option<fjord_trust::BundleSignatures> {
    let bytes = std::fs::read(signature_path(stack_dir, name)).ok()?;
    fjord_trust::BundleSignatures::parse(&bytes)
        .ok()
        .filter(|d| d.names(digest))
}

/// One line per image on stdout: `REFERENCE DIGEST`.
fn print_images(built: &[Built]) {
    for i in built.iter().filter_map(|b| b.image.as_ref()) {
        println!("{} {}", i.reference, i.digest);
    }
}

// --------------------------------------------------------------------------------- push

/// Uploads each function's bundle (and, with `sign`, a signature of it).
pub async fn push_built(
    gw: &Gateway,
    loaded: &Loaded,
    quiet: bool,
    sign: Option<&fjord_trust::PrivateKey>,
    registry: &fjord_oci::push::RegistryOptions,
) -> Result<(), CliError> {
    for f in built_functions(loaded) {
        if is_dockerfile(f) {
            push_image(loaded, f, registry, quiet, sign).await?;
            continue;
        }
        let b = builder::last_build(&loaded.dir, &f.name).ok_or_else(|| {
            CliError::Usage(format!(
                "{} has not been built: run `fjord build` (or `fjord up`)",
                f.name
            ))
        })?;
        let tag = fjord_gateway::normalize_tag(&f.image);
        if gw.has_bundle(&b.digest).await? {
            gw.tag_bundle(&b.digest, &tag).await?;
            if !quiet {
                eprintln!(
                    "==> {}: gateway already has {} (tagged {tag})",
                    f.name,
                    short(&b.digest)
                );
            }
        } else {
            let size = std::fs::metadata(&b.archive).map(|m| m.len()).unwrap_or(0);
            if !quiet {
                eprintln!(
                    "==> {}: uploading {} ({} KiB) as {tag}",
                    f.name,
                    short(&b.digest),
                    size / 1024
                );
            }
            gw.upload_bundle(&b.digest, &b.archive, &tag).await?;
        }
        if let Some(key) = sign {
            super::trust::sign_bundle(gw, key, &b.digest, &tag).await?;
            if !quiet {
                eprintln!(
                    "==> {}: signed {} with key {}",
                    f.name,
                    short(&b.digest),
                    key.public().id()
                );
            }
        } else if let Some(doc) = signature_beside(&loaded.dir, &f.name, &b.digest) {
            super::trust::upload_bundle_signature(gw, &doc, &b.digest, &tag).await?;
            if !quiet {
                eprintln!(
                    "==> {}: uploaded the signature `fjord build --sign` made",
                    f.name
                );
            }
        }
    }
    Ok(())
}

/// Pushes each function's image (`fjord build --image`) to its registry.
pub async fn push_images(
    loaded: &Loaded,
    opts: &fjord_oci::push::RegistryOptions,
    quiet: bool,
    sign: Option<&fjord_trust::PrivateKey>,
) -> Result<(), CliError> {
    for f in loaded
        .stack
        .functions
        .iter()
        .filter(|f| f.lang.is_some() && !f.skip_build)
    {
        push_image(loaded, f, opts, quiet, sign).await?;
    }
    Ok(())
}

/// Pushes one function's image (`fjord build --image`, or a `lang: dockerfile` build).
async fn push_image(
    loaded: &Loaded,
    f: &StackFunction,
    opts: &fjord_oci::push::RegistryOptions,
    quiet: bool,
    sign: Option<&fjord_trust::PrivateKey>,
) -> Result<(), CliError> {
    let built =
        image::last_image(&builder::build_dir(&loaded.dir, &f.name), f).ok_or_else(|| {
            CliError::Usage(format!(
                "{} has no image: run `fjord build --image` (or `fjord up --image`)",
                f.name
            ))
        })?;
    let digest = image::push(&built, &f.name, opts, quiet).await?;
    if let Some(key) = sign {
        let target = fjord_oci::Reference::parse(&built.reference)
            .map_err(|e| CliError::Usage(format!("{}: {e}", built.reference)))?;
        let at = super::trust::sign_image(key, &target, &digest, opts).await?;
        if !quiet {
            eprintln!("==> {}: signed {digest} ({at})", f.name);
        }
    }
    println!("{} {digest}", built.reference);
    Ok(())
}

/// `lang: dockerfile` functions are images whatever the flags: they go to their registry
/// and run as containers.
fn is_dockerfile(f: &StackFunction) -> bool {
    f.lang.as_deref() == Some(crate::dockerfile::LANG)
}

pub async fn push(
    stack: &StackArgs,
    images: bool,
    registry: &RegistryArgs,
    sign: &crate::cli::SignFlag,
    g: &GatewayArgs,
) -> Result<(), CliError> {
    let loaded = load(stack)?;
    let key = super::trust::signing_key(sign)?;
    if images {
        return push_images(&loaded, &registry_options(registry), false, key.as_ref()).await;
    }
    let gw = gateway(g, loaded.stack.provider.gateway.as_deref())?;
    push_built(
        &gw,
        &loaded,
        false,
        key.as_ref(),
        &registry_options(registry),
    )
    .await
}

// ------------------------------------------------------------------------------- deploy

pub struct Extras {
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub namespace: Option<String>,
}

async fn deploy_one(
    gw: &Gateway,
    d: &fjord_core::openfaas::FunctionDeployment,
    wait: bool,
) -> Result<(), CliError> {
    let (status, generation) = gw.deploy(d).await?;
    println!(
        "Deployed {}. {} {}.",
        d.service,
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let ns = d.namespace.as_deref();
    let route = match ns {
        Some(ns) if ns != fjord_core::DEFAULT_NAMESPACE => format!("{}.{ns}", d.service),
        _ => d.service.clone(),
    };
    if wait {
        match generation {
            Some(g) => {
                let r = gw
                    .wait_rollout(&d.service, ns, g, Duration::from_secs(90))
                    .await?;
                if r.state != "ready" {
                    return Err(rollout_failed(gw, &d.service, ns, &r).await);
                }
                // The counts of this version, not of whatever serves now (an older version's
                // replicas during the update: "20 of 1 replicas ready").
                println!(
                    "{}: {} of {} replica(s) ready",
                    d.service, r.ready_replicas, r.replicas
                );
            }
            None => {
                // A gateway that does not number deploys: any ready replica will do.
                let s = gw
                    .wait_ready(&d.service, ns, Duration::from_secs(90))
                    .await?;
                println!(
                    "{}: {} replica(s) ready",
                    d.service,
                    s.available_replicas.min(s.replicas.max(1))
                );
            }
        }
    }
    println!("URL: {}/function/{route}", gw.url);
    Ok(())
}

/// The error for a deploy that failed or was rolled back, after printing the failing
/// replica's last output lines (what the function said before it died).
async fn rollout_failed(
    gw: &Gateway,
    name: &str,
    ns: Option<&str>,
    r: &fjord_core::openfaas::RolloutStatus,
) -> CliError {
    const LINES: usize = 10;
    let instance = r.failed_replica.as_deref();
    // Without a replica (a timeout), any replica's; fjord's own lines are in the message.
    let lines = gw
        .log_tail(name, ns, instance, 200)
        .await
        .unwrap_or_default();
    let output: Vec<_> = lines
        .iter()
        .filter(|l| l.instance != "fjord" && !l.text.starts_with("fjord: "))
        .collect();
    let shown = &output[output.len().saturating_sub(LINES)..];
    if shown.is_empty() {
        eprintln!("{name}: the replica printed nothing");
    } else {
        eprintln!(
            "{name}: last output of replica {}:",
            instance.unwrap_or("(any)")
        );
        for l in shown {
            eprintln!("  {}", l.text.trim_end());
        }
    }
    CliError::Other(format!(
        "{name}: {}\n  see its logs: fjord logs {name}",
        r.message.as_deref().unwrap_or("the deploy failed")
    ))
}

pub async fn deploy_stack(
    gw: &Gateway,
    loaded: &Loaded,
    extras: &Extras,
    wait: bool,
) -> Result<(), CliError> {
    for f in &loaded.stack.functions {
        let mut d = f.deployment(
            None,
            &extras.env,
            &extras.labels,
            &extras.annotations,
            &extras.secrets,
        );
        if let Some(ns) = &extras.namespace {
            d.namespace = Some(ns.clone());
        }
        if is_dockerfile(f) {
            d.annotations
                .get_or_insert_default()
                .entry(RUNTIME_ANNOTATION.to_string())
                .or_insert_with(|| "container".to_string());
        }
        deploy_one(gw, &d, wait).await?;
    }
    Ok(())
}

pub async fn deploy(a: &DeployArgs) -> Result<(), CliError> {
    let extras = Extras {
        env: pairs("--env", &a.env)?,
        labels: pairs("--label", &a.label)?,
        annotations: pairs("--annotation", &a.annotation)?,
        secrets: a.secret.clone(),
        namespace: a.namespace.clone(),
    };
    if let Some(name) = &a.name {
        let image = a.image.clone().ok_or_else(|| {
            CliError::Usage(
                "--name needs --image (a bundle tag, or any label with --fprocess)".into(),
            )
        })?;
        let d = fjord_core::openfaas::FunctionDeployment {
            service: name.clone(),
            image,
            namespace: extras.namespace.clone(),
            env_process: a.fprocess.clone(),
            env_vars: (!extras.env.is_empty()).then(|| extras.env.clone()),
            labels: (!extras.labels.is_empty()).then(|| extras.labels.clone()),
            annotations: (!extras.annotations.is_empty()).then(|| extras.annotations.clone()),
            secrets: (!extras.secrets.is_empty()).then(|| extras.secrets.clone()),
            ..Default::default()
        };
        let gw = gateway(&a.gateway, None)?;
        return deploy_one(&gw, &d, !a.no_wait).await;
    }
    let loaded = load(&a.stack)?;
    let gw = gateway(&a.gateway, loaded.stack.provider.gateway.as_deref())?;
    deploy_stack(&gw, &loaded, &extras, !a.no_wait).await
}

// ----------------------------------------------------------------------------------- up

/// Which runtime serves a function (issue 14): `process` or `container`.
const RUNTIME_ANNOTATION: &str = "com.fjord.runtime";

pub async fn up(a: &UpArgs) -> Result<(), CliError> {
    let loaded = load(&a.stack)?;
    let gw = gateway(&a.gateway, loaded.stack.provider.gateway.as_deref())?;
    // Images go to their registries: the gateway is needed only to deploy them.
    let only_images = a.image.image || built_functions(&loaded).all(is_dockerfile);
    let needs_gateway = !(a.skip_push || (only_images && a.skip_deploy));
    if needs_gateway {
        // Fail fast, before a long build, if the gateway is down or refuses us.
        gw.info().await?;
    }
    // Before the build: a wrong passphrase should not cost a build.
    let key = super::trust::signing_key(&a.sign)?;
    let (parallel, no_cache, quiet) = (a.parallel, a.no_cache, a.quiet);
    let opts = image_options(&a.image);
    let build_opts = opts.clone();
    let (loaded, built) = tokio::task::spawn_blocking(move || {
        build_all(&loaded, parallel, no_cache, quiet, build_opts.as_ref()).map(|b| (loaded, b))
    })
    .await
    .map_err(|e| CliError::Other(e.to_string()))??;
    if a.skip_push {
        print_images(&built);
        return Ok(());
    }
    let mut annotations = BTreeMap::new();
    match &opts {
        Some(o) => {
            push_images(&loaded, &o.registry, a.quiet, key.as_ref()).await?;
            // The server pulls `image:` from its registry and runs it as a container.
            annotations.insert(RUNTIME_ANNOTATION.to_string(), "container".to_string());
        }
        None => {
            push_built(
                &gw,
                &loaded,
                a.quiet,
                key.as_ref(),
                &registry_options(&a.image.registry),
            )
            .await?
        }
    }
    if a.skip_deploy {
        return Ok(());
    }
    let extras = Extras {
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        annotations,
        secrets: Vec::new(),
        namespace: None,
    };
    deploy_stack(&gw, &loaded, &extras, !a.no_wait).await
}

// ------------------------------------------------------------------------------- remove

pub async fn remove(
    names: &[String],
    ns: Option<&str>,
    stack: &StackArgs,
    g: &GatewayArgs,
) -> Result<(), CliError> {
    let (names, stack_gw): (Vec<String>, Option<String>) = if names.is_empty() {
        let loaded = load(stack)?;
        (
            loaded
                .stack
                .functions
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            loaded.stack.provider.gateway.clone(),
        )
    } else {
        (names.to_vec(), None)
    };
    let gw = gateway(g, stack_gw.as_deref())?;
    for n in &names {
        gw.remove(n, ns).await?;
        println!("Removed {n}.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "hello"));
        assert!(glob_match("hel*", "hello"));
        assert!(glob_match("h?llo", "hello"));
        assert!(!glob_match("x*", "hello"));
        assert!(glob_match("*-py", "hello-py"));
    }
}
