//! `fjord build --image`: a function's bundle as an OCI image, without Docker.
//!
//! The image is the base image's layers (fetched as they are from its registry), then a
//! layer with fjord's watchdog (`/fjord/bin/fjord`, the shared libraries it needs and their
//! loader under `/fjord/lib`, independent of the base's libc), then a layer with what the
//! bundle holds (runtime shim, `function/`, dependencies) under `/home/app`. The config
//! starts the watchdog (`fjord watchdog`) with the template's `fprocess` and `mode`, so the
//! image honours the OpenFaaS watchdog contract on any OCI runtime. It is written as an OCI
//! image layout in `build/<name>/image/`; the same inputs give the same digest (fixed
//! mtimes and owners, sorted entries, no timestamps in the config).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fjord_oci::Reference;
use fjord_oci::layout::{
    Descriptor, LayerBuilder, Layout, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST, Manifest,
};
use fjord_oci::push::{PushEvent, RegistryOptions};
use fjord_stack::StackFunction;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::templates::Template;

/// Where a function's code is in its image (OpenFaaS templates' WORKDIR).
pub const APP_DIR: &str = "/home/app";
/// The uid:gid functions run as (OpenFaaS templates' `app` user; numeric, so the base
/// image needs no passwd entry). The code is root's and read-only to it.
pub const USER: &str = "1000:1000";
/// Where the function's own server listens in http mode (the watchdog proxies to it).
const UPSTREAM_PORT: u16 = 5000;
/// stack.yml's way to choose a base image: `build_args: {BASE_IMAGE: ...}`, as Dockerfile
/// templates take their base from an ARG.
pub const BASE_IMAGE_ARG: &str = "BASE_IMAGE";
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// How images are built and pushed.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// `--base-image`: wins over stack.yml and the template.
    pub base_image: Option<String>,
    pub registry: RegistryOptions,
}

/// A built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub reference: String,
    /// The manifest's digest (what a registry serves it as).
    pub digest: String,
    pub layout: PathBuf,
}

pub fn layout_dir(build_dir: &Path) -> PathBuf {
    build_dir.join("image")
}

/// The function's last image build, if any.
pub fn last_image(build_dir: &Path, f: &StackFunction) -> Option<BuiltImage> {
    let dir = layout_dir(build_dir);
    let layout = Layout::open(&dir).ok()?;
    let (d, _) = layout.image().ok()?;
    Some(BuiltImage {
        reference: f.image.clone(),
        digest: d.digest,
        layout: dir,
    })
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

/// The running fjord binary and the shared libraries `ldd` lists for it (with their loader),
/// each with where it goes in an image (`fjord/lib/NAME`).
#[allow(clippy::type_complexity)]
fn watchdog_files() -> Result<(PathBuf, Vec<(PathBuf, PathBuf)>), CliError> {
    let exe = std::env::current_exe().map_err(other)?;
    let out = Command::new("ldd")
        .arg(&exe)
        .output()
        .map_err(|e| other(format!("cannot run ldd on {}: {e}", exe.display())))?;
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let p = Path::new(path);
        let name = p.file_name().ok_or_else(|| other(format!("ldd: {line}")))?;
        let real = std::fs::canonicalize(p).map_err(other)?;
        libs.push((Path::new("fjord/lib").join(name), real));
    }
    Ok((exe, libs))
}

/// The watchdog as a folder for `lang: dockerfile` builds (`bin/fjord`, `lib/...`: what
/// images built with `--image` hold under `/fjord`), so a Dockerfile can
/// `COPY --from=fjord-watchdog / /fjord/`. Files already equal are left as they are.
pub fn watchdog_tree(dest: &Path) -> Result<(), CliError> {
    let (exe, libs) = watchdog_files()?;
    std::fs::create_dir_all(dest.join("bin"))?;
    std::fs::create_dir_all(dest.join("lib"))?;
    let bin = dest.join("bin/fjord");
    // Stripping takes a while (a debug binary is hundreds of MB): not again for the same
    // binary. The stamp is outside the tree, which is copied into images as it is.
    let meta = std::fs::metadata(&exe)?;
    let source = format!(
        "{} {} {:?}",
        exe.display(),
        meta.len(),
        meta.modified().ok()
    );
    let stamp = dest.with_extension("source");
    if !(bin.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&source)) {
        let tmp = dest.join("bin/.fjord.tmp");
        let stripped = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&tmp)
            .arg(&exe)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(&exe, &tmp)?;
        }
        std::fs::rename(&tmp, &bin)?;
        std::fs::write(&stamp, &source)?;
    }
    for (at, real) in &libs {
        let to = dest.join(at.strip_prefix("fjord").unwrap_or(at));
        if std::fs::read(&to).ok() != Some(std::fs::read(real)?) {
            std::fs::copy(real, &to)?;
        }
    }
    Ok(())
}

/// The watchdog layer: the running fjord binary (symbols stripped when `strip` is
/// installed: smaller, and the same bytes for the same binary) and the shared libraries
/// `ldd` lists, with their loader. Built once per binary and libraries, kept in `cache`.
fn watchdog_layer(cache: &Path) -> Result<fjord_oci::layout::BuiltLayer, CliError> {
    let (exe, libs) = watchdog_files()?;
    let mut h = fjord_bundle::Hasher::default();
    h.update(b"fjord-watchdog-layer-1\0");
    h.update(
        fjord_bundle::digest_file(&exe)
            .map_err(other)?
            .as_str()
            .as_bytes(),
    );
    for (at, real) in &libs {
        h.update(at.as_os_str().as_encoded_bytes());
        h.update(
            fjord_bundle::digest_file(real)
                .map_err(other)?
                .as_str()
                .as_bytes(),
        );
    }
    let key = h.finish();
    std::fs::create_dir_all(cache)?;
    let (gz_path, id_path) = (
        cache.join(format!("{}.tar.gz", key.hex())),
        cache.join(format!("{}.diff_id", key.hex())),
    );
    if let (Ok(gzip), Ok(diff_id)) = (std::fs::read(&gz_path), std::fs::read_to_string(&id_path)) {
        let mut hh = fjord_bundle::Hasher::default();
        hh.update(&gzip);
        let digest = hh.finish().to_string();
        return Ok(fjord_oci::layout::BuiltLayer {
            gzip,
            diff_id: diff_id.trim().to_string(),
            digest,
        });
    }
    let bin = cache.join(format!("{}.{}.fjord", key.hex(), std::process::id()));
    let stripped = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&bin)
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&exe, &bin)?;
    }
    let mut layer = LayerBuilder::default();
    layer.file("fjord/bin/fjord", &bin, true);
    for (at, real) in &libs {
        layer.file(at, real, true);
    }
    let built = layer.build().map_err(other)?;
    let _ = std::fs::remove_file(&bin);
    // Through renames, the diff_id last: another build may read the cache at any time.
    let tmp = cache.join(format!("{}.{}.tmp", key.hex(), std::process::id()));
    std::fs::write(&tmp, &built.gzip)?;
    std::fs::rename(&tmp, &gz_path)?;
    std::fs::write(&tmp, &built.diff_id)?;
    std::fs::rename(&tmp, &id_path)?;
    Ok(built)
}

/// Where watchdog layers are kept between builds: `$XDG_CACHE_HOME/fjord/watchdog`
/// (`~/.cache/...`), shared by every stack, else the stack's `build/.fjord-watchdog`.
fn watchdog_cache(build_dir: &Path) -> PathBuf {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match xdg {
        Some(d) if std::fs::create_dir_all(d.join("fjord/watchdog")).is_ok() => {
            d.join("fjord/watchdog")
        }
        _ => build_dir
            .parent()
            .unwrap_or(build_dir)
            .join(".fjord-watchdog"),
    }
}

/// The loader the watchdog runs with (`/fjord/lib/ld-linux-x86-64.so.2` on x86-64).
fn loader_name() -> Result<String, CliError> {
    let exe = std::env::current_exe().map_err(other)?;
    let out = Command::new("ldd").arg(&exe).output().map_err(other)?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|p| p.starts_with('/') && p.contains("ld-linux"))
        .and_then(|p| Path::new(p).file_name()?.to_str().map(str::to_string))
        .ok_or_else(|| other("fjord's own dynamic loader is not in `ldd` output"))
}

/// The base image: `--base-image`, else stack.yml's `build_args.BASE_IMAGE`, else the
/// template's `base_image`.
pub fn base_image(
    f: &StackFunction,
    template: &Template,
    opts: &ImageOptions,
) -> Result<Reference, CliError> {
    let name = opts
        .base_image
        .clone()
        .or_else(|| f.build_args.get(BASE_IMAGE_ARG).cloned())
        .or_else(|| template.spec.base_image.clone())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: template {} names no base image: pass --base-image IMAGE or set build_args.{BASE_IMAGE_ARG} in the stack file",
                f.name, template.spec.language
            ))
        })?;
    Reference::parse(&name)
        .map_err(|e| CliError::Usage(format!("{}: base image {name:?}: {e}", f.name)))
}

/// Builds the image of `f` from its bundle directory `root` into `build_dir/image/`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    f: &StackFunction,
    template: &Template,
    root: &Path,
    build_dir: &Path,
    fprocess: &str,
    env: &BTreeMap<String, String>,
    opts: &ImageOptions,
    progress: &dyn Fn(&str),
) -> Result<BuiltImage, CliError> {
    let target = Reference::parse(&f.image).map_err(|e| {
        CliError::Usage(format!(
            "{}: image {:?} is not an image reference: {e}",
            f.name, f.image
        ))
    })?;
    let base_ref = base_image(f, template, opts)?;
    let layout = Layout::create(layout_dir(build_dir)).map_err(other)?;
    progress(&format!("base image {base_ref}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(other)?;
    let base = rt
        .block_on(fjord_oci::push::fetch_base(
            &base_ref,
            &opts.registry,
            &layout,
            progress,
        ))
        .map_err(|e| CliError::Other(format!("{}: base image: {e}", f.name)))?;

    progress("image layers");
    let cache = watchdog_cache(build_dir);
    let wd = watchdog_layer(&cache)?;
    let mut app = LayerBuilder::default();
    app.tree(Path::new(APP_DIR.trim_start_matches('/')), root)
        .map_err(other)?;
    let app = app.build().map_err(other)?;
    let mut layers = base.layers.clone();
    let mut diff_ids: Vec<Value> = base.config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(other(format!(
            "{}: base image {base_ref} has {} layers but {} diff_ids",
            f.name,
            layers.len(),
            diff_ids.len()
        )));
    }
    for l in [&wd, &app] {
        layout.put_blob(&l.gzip).map_err(other)?;
        layers.push(Descriptor {
            media_type: MT_OCI_LAYER_GZIP.into(),
            digest: l.digest.clone(),
            size: l.gzip.len() as u64,
            annotations: None,
        });
        diff_ids.push(Value::String(l.diff_id.clone()));
    }

    let config = image_config(
        &base,
        f,
        template,
        fprocess,
        env,
        &loader_name()?,
        Value::Array(diff_ids),
    );
    let config_bytes = serde_json::to_vec(&config).map_err(other)?;
    let config_digest = layout.put_blob(&config_bytes).map_err(other)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MT_OCI_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            annotations: None,
        },
        layers,
    };
    let mbytes = serde_json::to_vec(&manifest).map_err(other)?;
    let mdigest = layout.put_blob(&mbytes).map_err(other)?;
    let desc = Descriptor {
        media_type: MT_OCI_MANIFEST.into(),
        digest: mdigest.clone(),
        size: mbytes.len() as u64,
        annotations: None,
    };
    layout
        .set_image(&desc, target.tag().unwrap_or("latest"))
        .map_err(other)?;
    layout.prune().map_err(other)?;
    Ok(BuiltImage {
        reference: f.image.clone(),
        digest: mdigest,
        layout: layout.root().to_path_buf(),
    })
}

/// The image config: the base's, with fjord's entrypoint, environment, user and labels; no
/// `created` dates (they would change the digest at every build).
fn image_config(
    base: &fjord_oci::push::BaseImage,
    f: &StackFunction,
    template: &Template,
    fprocess: &str,
    env: &BTreeMap<String, String>,
    loader: &str,
    diff_ids: Value,
) -> Value {
    let bc = &base.config["config"];
    // Base variables first (PATH, language versions), then the template's and fjord's.
    let mut vars: Vec<(String, String)> = bc["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut set = |k: &str, v: String| {
        vars.retain(|(n, _)| n != k);
        vars.push((k.to_string(), v));
    };
    if !bc["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.as_str().is_some_and(|s| s.starts_with("PATH=")))
    {
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    for (k, v) in env {
        set(k, v.clone());
    }
    set("fprocess", fprocess.to_string());
    let http = template.spec.mode == "http";
    set("mode", if http { "http" } else { "fork" }.into());
    if http {
        set("upstream_url", format!("http://127.0.0.1:{UPSTREAM_PORT}"));
    }
    let mut labels: BTreeMap<String, Value> = bc["Labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for (k, v) in [
        ("com.openfaas.function", f.name.clone()),
        ("com.fjord.template", template.spec.language.clone()),
        ("com.fjord.version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "org.opencontainers.image.base.name",
            base.reference.to_string(),
        ),
        ("org.opencontainers.image.base.digest", base.digest.clone()),
    ] {
        labels.insert(k.into(), Value::String(v));
    }
    let lib = "/fjord/lib";
    let mut history: Vec<Value> = base.config["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // A fixed date (tools such as `umoci stat` expect one): no build time in the digest.
    history.push(json!({"created": EPOCH, "created_by": "fjord build --image: watchdog (/fjord)"}));
    history.push(json!({"created": EPOCH, "created_by": format!("fjord build --image: {} function {} ({APP_DIR})", template.spec.language, f.name)}));
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": USER,
            "Env": vars.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "Entrypoint": [format!("{lib}/{loader}"), "--library-path", lib, "/fjord/bin/fjord", "watchdog"],
            "Cmd": null,
            "WorkingDir": APP_DIR,
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": labels,
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    })
}

/// Pushes a built image to its registry, printing each blob's fate; returns the digest.
pub async fn push(
    built: &BuiltImage,
    name: &str,
    opts: &RegistryOptions,
    quiet: bool,
) -> Result<String, CliError> {
    let target = Reference::parse(&built.reference)
        .map_err(|e| CliError::Usage(format!("{name}: image {:?}: {e}", built.reference)))?;
    let layout = Layout::open(&built.layout).map_err(other)?;
    let say = |e: &PushEvent| {
        if quiet {
            return;
        }
        match e {
            PushEvent::Exists { digest, size } => eprintln!(
                "==> {name}: {} ({} KiB) already in {}",
                short(digest),
                size / 1024,
                target.registry()
            ),
            PushEvent::Uploading { digest, size } => {
                eprintln!(
                    "==> {name}: uploading {} ({} KiB)",
                    short(digest),
                    size / 1024
                )
            }
            PushEvent::Manifest { digest } => eprintln!("==> {name}: pushed {target} {digest}"),
        }
    };
    fjord_oci::push::push(&layout, &target, opts, &say)
        .await
        .map_err(|e| CliError::Other(format!("{name}: push: {e}")))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
