//! `lang: dockerfile`: the handler folder holds a Dockerfile and its build context (as
//! faas-cli's `dockerfile` language); `fjord build --image` builds it with `buildah`
//! (daemonless, no Docker) into the same OCI image layout `build/<name>/image/` that other
//! image builds leave, so `fjord push --image` and `fjord up --image` work unchanged. Such
//! a function is an image with or without `--image` (as faas-cli builds it): `fjord push`
//! and `fjord up` send it to its registry and deploy it as a container.
//!
//! buildah keeps its images and layers in a private storage root under the function's
//! build folder (`build/<name>/buildah/`): it never touches the host's containers storage
//! nor another stack's, and its layer cache (`--layers`) makes rebuilds of unchanged steps
//! instant. Registries without TLS (loopback ones and `--insecure-registry` ones, as fjord's
//! own pulls) go in a private `registries.conf`.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use fjord_oci::Reference;
use fjord_stack::StackFunction;

use crate::error::CliError;
use crate::image::{BuiltImage, ImageOptions};

/// The `lang:` that builds the handler folder's Dockerfile.
pub const LANG: &str = "dockerfile";
/// The build context a Dockerfile names to copy fjord's watchdog into its image
/// (`COPY --from=fjord-watchdog / /fjord/`).
pub const WATCHDOG_CONTEXT: &str = "fjord-watchdog";
/// Lines of a failing step's output shown.
const SHOWN_LINES: usize = 60;

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

/// Builds `f`'s Dockerfile (in `handler`) into `build_dir/image/`; `true` with it when the
/// image is the one already there (every step cached, same tag).
pub fn build(
    f: &StackFunction,
    handler: &Path,
    build_dir: &Path,
    opts: &ImageOptions,
    progress: &dyn Fn(&str),
) -> Result<(BuiltImage, bool), CliError> {
    let dockerfile = handler.join("Dockerfile");
    if !dockerfile.is_file() {
        return Err(CliError::Usage(format!(
            "{}: lang: dockerfile needs a Dockerfile in its handler folder, and there is none at {} \
             (`fjord new NAME --lang dockerfile` writes one)",
            f.name,
            dockerfile.display()
        )));
    }
    // `COPY . .` would copy the build folder (and buildah's storage in it) into the image.
    if let (Ok(h), Ok(b)) = (
        std::fs::canonicalize(handler),
        std::fs::canonicalize(build_dir),
    ) && b.starts_with(&h)
    {
        return Err(CliError::Usage(format!(
            "{}: the handler folder {} holds the build folder {}: put the Dockerfile and its context in a folder of their own (handler: ./{})",
            f.name,
            handler.display(),
            build_dir.display(),
            f.name
        )));
    }
    let target = Reference::parse(&f.image).map_err(|e| {
        CliError::Usage(format!(
            "{}: image {:?} is not an image reference: {e}",
            f.name, f.image
        ))
    })?;
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::Usage(format!(
            "{}: lang: dockerfile builds run buildah as root (its RUN steps start containers, \
             as fjord's container runtime does): run the build as root, e.g. `sudo fjord build` or \
             `sudo fjord up`; fjord does not set up rootless buildah (subuid/subgid ranges)",
            f.name
        )));
    }
    let dockerfile_text = std::fs::read_to_string(&dockerfile)?;
    // `--base-image` wins over stack.yml, as for template images; the Dockerfile takes it
    // through `ARG BASE_IMAGE` (the skeleton's).
    let mut build_args = f.build_args.clone();
    if let Some(b) = &opts.base_image {
        build_args.insert(crate::image::BASE_IMAGE_ARG.to_string(), b.clone());
    }

    let work = build_dir.join("buildah");
    std::fs::create_dir_all(&work)?;
    let conf = work.join("registries.conf");
    std::fs::write(
        &conf,
        registries_conf(&insecure_registries(
            &dockerfile_text,
            build_args.values().map(String::as_str),
            &opts.registry.insecure,
        )),
    )?;

    let tag = format!("localhost/fjord-build/{}:latest", f.name.to_lowercase());
    let mut cmd = buildah(&work, &conf);
    cmd.arg("bud")
        .args(["--layers", "--timestamp", "0", "--identity-label=false"])
        // Without it a failed step's container stays, mounted, in the storage.
        .arg("--force-rm")
        // RUN steps use the host's network, as the other templates' build steps (pip, npm,
        // cargo) do: no bridge, NAT or firewall rules made on the host for a build (buildah's
        // private networks need them), and loopback mirrors and registries are reachable.
        .args(["--network", "host"])
        .arg("--file")
        .arg(&dockerfile)
        .arg("--tag")
        .arg(&tag)
        .arg("--iidfile")
        .arg(work.join("iid"));
    for (k, v) in &build_args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    let auth = opts
        .registry
        .docker_config
        .clone()
        .or_else(fjord_oci::default_docker_config);
    if let Some(a) = auth.filter(|a| a.is_file()) {
        cmd.arg("--authfile").arg(a);
    }
    if dockerfile_text.contains(WATCHDOG_CONTEXT) {
        progress("watchdog");
        let wd = build_dir.join(WATCHDOG_CONTEXT);
        crate::image::watchdog_tree(&wd)?;
        cmd.arg("--build-context")
            .arg(format!("{WATCHDOG_CONTEXT}={}", wd.display()));
    }
    cmd.arg(handler);
    progress("buildah bud");
    let log = work.join("build.log");
    run_logged(&f.name, cmd, &log, Some(progress)).map_err(|e| match e {
        CliError::Build {
            function,
            step,
            output,
        } if output.contains("authentication required") || output.contains("unauthorized") => {
            CliError::Build {
                function,
                step,
                output: format!(
                    "{output}\nthe registry needs credentials: log in (docker login HOST writes them) or add an \
                     auths entry to the Docker config.json, or pass --registry-config FILE"
                ),
            }
        }
        e => e,
    })?;
    // The previous build's image, untagged now, and the cached steps only it used: without
    // this the storage grows with every change. Not fatal: the next build prunes again.
    let _ = buildah(&work, &conf)
        .args(["rmi", "--prune"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();

    let layout = crate::image::layout_dir(build_dir);
    // The layout already holds this image under this tag: writing it again would only
    // compress the same layers again.
    let written = format!(
        "{} {}",
        std::fs::read_to_string(work.join("iid"))?.trim(),
        f.image
    );
    let stamp = work.join("layout-of");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(written.as_str())
        && let Some(built) = crate::image::last_image(build_dir, f)
    {
        return Ok((built, true));
    }
    // A fresh layout each time (buildah adds to an existing one), swapped in when complete.
    progress("image layout");
    let fresh = build_dir.join("image.new");
    let _ = std::fs::remove_dir_all(&fresh);
    let mut push = buildah(&work, &conf);
    push.args([
        "push",
        "--quiet",
        "--format",
        "oci",
        "--disable-compression=false",
        "--remove-signatures",
    ])
    .arg(&tag)
    .arg(format!(
        "oci:{}:{}",
        fresh.display(),
        target.tag().unwrap_or("latest")
    ));
    run_logged(&f.name, push, &work.join("push.log"), None)?;
    let _ = std::fs::remove_file(&stamp);
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::rename(&fresh, &layout)?;
    std::fs::write(&stamp, &written)?;
    let l = fjord_oci::layout::Layout::open(&layout).map_err(other)?;
    let (d, _) = l.image().map_err(other)?;
    Ok((
        BuiltImage {
            reference: f.image.clone(),
            digest: d.digest,
            layout,
        },
        false,
    ))
}

/// `buildah` with the function's private storage and registries.
fn buildah(work: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(work.join("storage"))
        .arg("--runroot")
        .arg(work.join("run"))
        .env("CONTAINERS_REGISTRIES_CONF", conf)
        // buildah refuses to start when DOCKER_CONFIG names a folder without a config.json;
        // fjord passes the credentials file itself (`--authfile`) when there is one.
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::null());
    cmd
}

/// Runs a buildah command with its stdout and stderr through one pipe into `log` (in the
/// order written, so a step's output follows its `STEP n/m:` line), reporting each `STEP`
/// line to `steps` as it starts. On failure, the error names the failing step (with `steps`)
/// and shows the output from that line on.
fn run_logged(
    function: &str,
    mut cmd: Command,
    log: &Path,
    steps: Option<&dyn Fn(&str)>,
) -> Result<(), CliError> {
    let mut file = std::fs::File::create(log)?;
    let (reader, writer) = std::io::pipe()?;
    cmd.stdout(writer.try_clone()?).stderr(writer);
    let spawned = cmd.spawn();
    // The pipe's write ends live in `cmd`: without dropping it, reading would never end.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::Build {
                function: function.into(),
                step: "buildah".into(),
                output: "buildah is not installed: install the buildah package (apt-get install buildah); \
                         lang: dockerfile builds images with it (no Docker daemon)"
                    .into(),
            });
        }
        Err(e) => return Err(other(format!("{function}: cannot run buildah: {e}"))),
    };
    let mut text = String::new();
    for line in std::io::BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        if let Some(report) = steps
            && line.starts_with("STEP ")
        {
            report(&line);
        }
        writeln!(file, "{line}")?;
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    if status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().collect();
    let (step, from) = match lines.iter().rposition(|l| l.starts_with("STEP ")) {
        Some(i) if steps.is_some() => (lines[i].to_string(), i + 1),
        _ => (
            "buildah".to_string(),
            lines.len().saturating_sub(SHOWN_LINES),
        ),
    };
    let shown = &lines[from.max(lines.len().saturating_sub(SHOWN_LINES))..];
    Err(CliError::Build {
        function: function.into(),
        step,
        output: format!("{}\n({status})", shown.join("\n")),
    })
}

/// Registries reached over plain HTTP: those named by `--insecure-registry`, and every
/// loopback registry (`localhost[:port]`, `127.x.y.z[:port]`, `[::1][:port]`) the Dockerfile
/// or a build argument names — buildah, unlike fjord, wants each listed with its port.
fn insecure_registries<'a>(
    dockerfile: &'a str,
    build_args: impl Iterator<Item = &'a str>,
    flags: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = flags.to_vec();
    let words = dockerfile
        .split(|c: char| c.is_whitespace() || matches!(c, '=' | '"' | '\'' | ','))
        .chain(build_args);
    for w in words {
        let host = w.split('/').next().unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => n,
            _ => host,
        };
        let loopback = name == "localhost"
            || name == "[::1]"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        if loopback && !out.iter().any(|o| o == host) {
            out.push(host.to_string());
        }
    }
    out
}

/// A `registries.conf` (v2): short names are Docker Hub's, as Docker expands them.
fn registries_conf(insecure: &[String]) -> String {
    let mut s = String::from("unqualified-search-registries = [\"docker.io\"]\n");
    for r in insecure {
        s.push_str(&format!(
            "\n[[registry]]\nlocation = {}\ninsecure = true\n",
            toml_string(r)
        ));
    }
    s
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_with_their_ports_are_insecure() {
        let df = "ARG BASE_IMAGE=127.0.0.1:5000/busybox:1\nFROM ${BASE_IMAGE}\nFROM localhost:7000/x AS y\nFROM docker.io/library/debian\nCOPY --from=fjord-watchdog / /fjord/\n";
        let got = insecure_registries(
            df,
            ["[::1]:5001/base:2", "example.com/a"].into_iter(),
            &["reg.lan:5000".to_string()],
        );
        assert_eq!(
            got,
            [
                "reg.lan:5000",
                "127.0.0.1:5000",
                "localhost:7000",
                "[::1]:5001"
            ]
        );
        let conf = registries_conf(&got);
        assert!(
            conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
            "{conf}"
        );
    }
}
