//! Container images: fjord's container runtime against the tools it is built on, each in
//! the same run. A real `docker-registry` on a free loopback port serves two images made here
//! with umoci from the bench's own http function (the binary and the libraries `ldd` lists):
//! `small` (just that) and `big` (plus ~100 MiB of random bytes in 3 layers). Then, in a
//! `fjord serve` of its own (an empty image store):
//!
//! 1. pull + unpack of `big` through a deploy (until the 202) against `skopeo copy` of it;
//! 2. cold start of `small`, cached, scale 0→1 to the first response, against `runc run` of
//!    a bundle `umoci unpack` made from the same image, start → first 200;
//! 3. warm invoke of the same function in a container and as a process replica;
//! 4. the `lang: dockerfile` skeleton built by buildah (on a busybox base): cold start
//!    against `runc run` of its image, warm throughput;
//! 5. disk used by 50 replicas of `big`: the shared layers plus every replica's upper dir.
//!
//! Needs root (runc, overlayfs, network namespaces), `docker-registry`, `umoci`, `skopeo`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica, scales_to_zero};
use crate::load::{self, Target};
use crate::stats::{median, percentile};

/// Every figure of this scenario has a scenario name starting with this: the report puts
/// them in a section of their own.
pub const SCENARIO_PREFIX: &str = "container images";

/// The port the image's function listens on (on its own loopback), as a watchdog would.
const PORT: u16 = 8080;
/// How often the runc baseline is polled for its first 200: as often as fjord's readiness
/// probe polls a young replica (250 µs), so neither side waits longer between looks.
const BASELINE_POLL: Duration = Duration::from_micros(250);
/// Random layers of the big image, and the bytes of each (incompressible: ~100 MiB pulled).
const BIG_LAYERS: usize = 3;
const BIG_LAYER_BYTES: usize = 34 << 20;
/// Replicas of the disk figure.
const DISK_REPLICAS: u64 = 50;

/// Runs `program args`, failing with its output unless it succeeds; returns its stdout.
async fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed?)"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("path is not UTF-8")
}

/// The shared libraries (absolute paths) in `ldd`'s output: `name => /path (addr)` and the
/// loader's `/path (addr)`; the vDSO and unresolved names are left out.
pub fn ldd_paths(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let target = l.split_once("=>").map_or(l, |(_, t)| t).trim();
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Whether `resp` (the start of an HTTP/1.x answer) has status 200.
pub fn is_http_200(resp: &[u8]) -> bool {
    resp.starts_with(b"HTTP/1.1 200 ") || resp.starts_with(b"HTTP/1.0 200 ")
}

/// The runtime spec `umoci unpack` wrote, changed for the baseline: run `args`, no
/// terminal, and join the network namespace at `netns` (as fjord's replicas join theirs).
pub fn runc_config(mut config: Value, args: &[&str], netns: &str) -> anyhow::Result<Value> {
    config["process"]["args"] = json!(args);
    config["process"]["terminal"] = json!(false);
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .context("config.json without linux.namespaces")?;
    namespaces.retain(|n| n["type"] != "network");
    namespaces.push(json!({"type": "network", "path": netns}));
    Ok(config)
}

/// Bytes allocated on disk under `path` (st_blocks × 512), each inode once (layers and
/// upper dirs may share files through hard links); 0 when it does not exist.
pub fn disk_bytes(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let mut n = if seen.insert((m.dev(), m.ino())) {
            m.blocks() * 512
        } else {
            0
        };
        if m.is_dir()
            && let Ok(rd) = std::fs::read_dir(p)
        {
            for e in rd.flatten() {
                n += walk(&e.path(), seen);
            }
        }
        n
    }
    walk(path, &mut HashSet::new())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A `docker-registry` on a free loopback port, storing under `dir`.
struct Registry {
    _child: tokio::process::Child,
    host: String,
}

impl Registry {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: fjord-bench\n",
                storage.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(Instant::now() < deadline, "docker-registry never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            _child: child,
            host: format!("127.0.0.1:{port}"),
        })
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/bench/fn:{tag}", self.host)
    }

    async fn push(&self, layout: &Path, tag: &str) -> anyhow::Result<()> {
        sh(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:{tag}", path_str(layout)?),
                &format!("docker://{}", self.image(tag)),
            ],
        )
        .await
        .map(drop)
    }
}

/// Makes `small` and `big` in the OCI layout `layout` (see the module docs).
async fn build_images(bench_bin: &str, work: &Path, layout: &Path) -> anyhow::Result<()> {
    let lay = path_str(layout)?;
    let small = format!("{lay}:small");
    sh("umoci", &["init", "--layout", lay]).await?;
    sh("umoci", &["new", "--image", &small]).await?;
    let libs = ldd_paths(&sh("ldd", &[bench_bin]).await?);
    add_layer(&small, &work.join("bundle-small"), |root| {
        for d in ["bench", "etc", "tmp", "proc", "dev"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(bench_bin, root.join("bench/fjord-bench"))?;
        for lib in &libs {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().context("library path")?)?;
            std::fs::copy(lib, &dest).with_context(|| format!("copying {lib}"))?;
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        Ok(())
    })
    .await?;
    sh(
        "umoci",
        &[
            "config",
            "--image",
            &small,
            "--config.entrypoint=/bench/fjord-bench",
            "--config.cmd=function",
            &format!("--config.env=PORT={PORT}"),
            &format!("--config.exposedports={PORT}/tcp"),
            "--config.workingdir=/",
        ],
    )
    .await?;
    // `big`: `small` plus random layers.
    sh("umoci", &["config", "--image", &small, "--tag", "big"]).await?;
    let big = format!("{lay}:big");
    let mut random = vec![0u8; BIG_LAYER_BYTES];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    for i in 0..BIG_LAYERS {
        std::io::Read::read_exact(&mut urandom, &mut random)?;
        add_layer(&big, &work.join(format!("bundle-big-{i}")), |root| {
            std::fs::create_dir_all(root.join("data"))?;
            std::fs::write(root.join(format!("data/random-{i}")), &random)?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// A layer on `image` (`layout:tag`) with what `populate` writes into its root: umoci
/// unpacks it to `bundle`, repacks the change and the bundle goes.
async fn add_layer(
    image: &str,
    bundle: &Path,
    populate: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    sh("umoci", &["unpack", "--image", image, path_str(bundle)?]).await?;
    populate(&bundle.join("rootfs"))?;
    sh("umoci", &["repack", "--image", image, path_str(bundle)?]).await?;
    std::fs::remove_dir_all(bundle)?;
    Ok(())
}

/// A raw `GET /` from inside `netns`: whether the answer is a 200.
async fn get_200(addr: std::net::SocketAddr, netns: &std::fs::File) -> bool {
    let Ok(mut s) = load::tcp_connect(addr, Some(netns)).await else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await,
        Ok(Ok(_))
    ) && is_http_200(&buf)
}

/// The `runc run` baseline: a bundle of `small` unpacked by umoci, run in a network
/// namespace made here.
struct RuncBaseline {
    bundle: PathBuf,
    netns: String,
}

impl RuncBaseline {
    async fn new(work: &Path, layout: &Path) -> anyhow::Result<Self> {
        let netns = format!("fjord-bench-{}", std::process::id());
        sh("ip", &["netns", "add", &netns]).await?;
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"]).await?;
        let bundle = work.join("bundle-runc");
        let image = format!("{}:small", path_str(layout)?);
        sh("umoci", &["unpack", "--image", &image, path_str(&bundle)?]).await?;
        let path = bundle.join("config.json");
        let config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let config = runc_config(
            config,
            &["/bench/fjord-bench", "function"],
            &format!("/run/netns/{netns}"),
        )?;
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(Self { bundle, netns })
    }

    /// A second bundle with the `config.json` fjord wrote for a running replica (its user
    /// namespace, capabilities, seccomp filter, masked paths, cgroup limits), pointed at a
    /// copy of this bundle's rootfs (with the mount points fjord's own top layer adds, which
    /// runc cannot make from inside the user namespace), this namespace and a cgroup of its
    /// own: `runc run` of the container exactly as fjord runs it.
    async fn with_fjord_config(&self, replica_config: &Path) -> anyhow::Result<RuncBaseline> {
        self.other_with_fjord_config(&self.bundle, "bundle-fjord-config", replica_config)
            .await
    }

    /// [`Self::with_fjord_config`] with the rootfs of another bundle `source` (an image
    /// `umoci unpack` made), in a bundle named `name` beside this one.
    async fn other_with_fjord_config(
        &self,
        source: &Path,
        name: &str,
        replica_config: &Path,
    ) -> anyhow::Result<RuncBaseline> {
        let bundle = self.bundle.with_file_name(name);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&bundle)?;
        sh(
            "cp",
            &["-a", path_str(&source.join("rootfs"))?, path_str(&bundle)?],
        )
        .await?;
        for d in ["proc", "dev", "tmp", "var/openfaas/secrets"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let mut config: Value = serde_json::from_slice(&std::fs::read(replica_config)?)?;
        config["root"] = json!({"path": path_str(&rootfs)?, "readonly": false});
        config["linux"]["cgroupsPath"] = json!(format!("/fjord-bench/{}", self.netns));
        let namespaces = config["linux"]["namespaces"]
            .as_array_mut()
            .context("fjord's config.json without linux.namespaces")?;
        namespaces.retain(|n| n["type"] != "network");
        namespaces.push(json!({"type": "network", "path": format!("/run/netns/{}", self.netns)}));
        // The replica's secrets are bound from its own bundle directory: none here.
        if let Some(m) = config["mounts"].as_array_mut() {
            m.retain(|m| m["destination"] != "/var/openfaas/secrets");
        }
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        // The container's root (the function's uid outside) reaches the rootfs by path.
        let mut p = bundle.as_path();
        while let Some(parent) = p.parent() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p)?.permissions().mode();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o111))?;
            if parent == Path::new("/var/tmp") {
                break;
            }
            p = parent;
        }
        Ok(RuncBaseline {
            bundle,
            netns: self.netns.clone(),
        })
    }

    /// `n` runs, in ms each: `runc run` spawned → first 200 from the function, polled every
    /// [`BASELINE_POLL`].
    async fn starts(&self, n: usize) -> anyhow::Result<Vec<f64>> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns))?;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse()?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("{}-{i}", self.netns);
            let t0 = Instant::now();
            let mut child = tokio::process::Command::new("runc")
                .args(["run", "--bundle", path_str(&self.bundle)?, &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("runc")?;
            loop {
                if get_200(addr, &ns).await {
                    break;
                }
                if let Some(s) = child.try_wait()? {
                    bail!("runc run of the baseline bundle exited with {s}");
                }
                ensure!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the runc baseline never answered"
                );
                // As often as fjord's own readiness probe polls a young replica.
                let _ = tokio::task::spawn_blocking(|| std::thread::sleep(BASELINE_POLL)).await;
            }
            out.push(t0.elapsed().as_secs_f64() * 1e3);
            sh("runc", &["kill", &id, "KILL"]).await?;
            child.wait().await?;
            sh("runc", &["delete", "--force", &id]).await?;
        }
        Ok(out)
    }

    async fn remove(self) {
        let _ = sh("ip", &["netns", "delete", &self.netns]).await;
    }
}

async fn delete_function(fjord: &Fjord, name: &str) -> anyhow::Result<()> {
    let r = fjord
        .http
        .delete(fjord.url("/system/functions"))
        .basic_auth("admin", Some(&fjord.pass))
        .json(&json!({"functionName": name}))
        .send()
        .await?;
    ensure!(r.status().is_success(), "delete {name}: {}", r.status());
    Ok(())
}

/// Deletes `name`, collects the store, and waits until no layer is left in it.
async fn empty_store(fjord: &Fjord, name: &str) -> anyhow::Result<()> {
    delete_function(fjord, name).await?;
    let layers = fjord.data_dir().join("images/layers");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = fjord
            .http
            .post(fjord.url("/system/images/gc"))
            .basic_auth("admin", Some(&fjord.pass))
            .json(&json!({}))
            .send()
            .await?;
        ensure!(r.status().is_success(), "images gc: {}", r.status());
        if std::fs::read_dir(&layers).map_or(0, |d| d.count()) == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the image store still has layers after deleting {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pull + unpack of `big` into an empty store (a deploy, until its 202) against
/// `skopeo copy` of the same image to an OCI layout, alternating, `n` times each.
async fn pull(
    b: &mut Bench<'_>,
    fjord: &Fjord,
    reg: &Registry,
    work: &Path,
    n: usize,
) -> anyhow::Result<()> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut image_bytes = 0;
    for i in 0..n {
        let name = format!("ctr-pull-{i}");
        // No replica: the deploy pulls and pins the image, nothing starts.
        let body = json!({"service": name, "image": reg.image("big"),
            "labels": {"com.openfaas.scale.min": "0", "com.openfaas.scale.zero": "true"}});
        let t0 = Instant::now();
        fjord.deploy(body).await?;
        ours.push(t0.elapsed().as_secs_f64() * 1e3);
        empty_store(fjord, &name).await?;

        let dest = work.join(format!("skopeo-{i}"));
        let t0 = Instant::now();
        sh(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}", reg.image("big")),
                &format!("oci:{}:big", path_str(&dest)?),
            ],
        )
        .await?;
        theirs.push(t0.elapsed().as_secs_f64() * 1e3);
        image_bytes = disk_bytes(&dest);
        std::fs::remove_dir_all(&dest)?;
    }
    let (f, s) = (median(&mut ours), median(&mut theirs));
    let speed = s / f;
    b.push(
        Figure::new(
            &format!("{SCENARIO_PREFIX}: pull + unpack (~100 MiB, local registry)"),
            &format!("deploy of a new function → 202, empty store, median ({n} trials)"),
            f,
            "ms",
        )
        .baseline("`skopeo copy docker://… oci:DIR`, no unpack", s)
        .target("speed ≥ 1.0× skopeo", speed >= 1.0)
        .note(&format!(
            "speed {speed:.2}× skopeo; image {:.0} MiB compressed; fjord verifies every blob and unpacks the layers before the 202",
            mib(image_bytes)
        )),
    );
    Ok(())
}

/// Whether a replica of `function` still has its directory (`<function>-<hex>`) in `dir`.
pub fn has_replica_dir<'a>(mut names: impl Iterator<Item = &'a str>, function: &str) -> bool {
    names.any(|n| {
        n.strip_prefix(function)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// `measure::cold_starts` for a container function, each start only once the previous replica is
/// torn down (`runc delete`, its overlay unmounted, its dirs removed): the runc baseline
/// deletes each container before the next run too, so neither start shares the CPUs with
/// a teardown.
/// The `config.json` fjord wrote for `name`'s running replica (the newest, should a killed
/// run have left another under /run/fjord).
fn replica_config(name: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{name}-");
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    for instance in std::fs::read_dir("/run/fjord")?.flatten() {
        let Ok(rd) = std::fs::read_dir(instance.path()) else {
            continue;
        };
        for e in rd.flatten() {
            let config = e.path().join("config.json");
            if e.file_name().to_string_lossy().starts_with(&prefix)
                && let Ok(m) = std::fs::metadata(&config).and_then(|m| m.modified())
                && found.as_ref().is_none_or(|(t, _)| m > *t)
            {
                found = Some((m, config));
            }
        }
    }
    found
        .map(|(_, p)| p)
        .with_context(|| format!("no bundle of a running {name} replica under /run/fjord"))
}

async fn container_cold_starts(fjord: &Fjord, name: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let data = fjord.data_dir();
    let dirs = [data.join("containers"), data.join("runc")];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        fjord.scale(name, 0).await?;
        fjord
            .wait_available(name, 0, Duration::from_secs(10))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while dirs.iter().any(|d| {
            std::fs::read_dir(d).is_ok_and(|rd| {
                let names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                has_replica_dir(names.iter().map(String::as_str), name)
            })
        }) {
            ensure!(
                Instant::now() < deadline,
                "{name}'s stopped replica was not torn down in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // As `cold_starts`: let what the teardown started settle.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        fjord.scale(name, 1).await?;
        fjord.get_ok(&format!("/function/{name}")).await?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// Cold start of the cached `small` against `runc run` of the same bundle.
async fn cold(
    b: &mut Bench<'_>,
    fjord: &Fjord,
    reg: &Registry,
    runc: &RuncBaseline,
    n: usize,
) -> anyhow::Result<()> {
    let name = "ctr-cold";
    fjord
        .deploy(json!({"service": name, "image": reg.image("small"), "labels": scales_to_zero()}))
        .await?;
    fjord
        .wait_available(name, 1, Duration::from_secs(60))
        .await?;
    let same_config = runc.with_fjord_config(&replica_config(name)?).await?;
    let mut ours = container_cold_starts(fjord, name, n).await?;
    fjord.scale(name, 0).await?;
    fjord
        .wait_available(name, 0, Duration::from_secs(10))
        .await?;
    let mut theirs = runc.starts(n).await?;
    let mut same = same_config.starts(n).await?;
    let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    let (r50, r99) = (percentile(&mut theirs, 0.5), percentile(&mut theirs, 0.99));
    let f50 = percentile(&mut same, 0.5);
    let s = format!("{SCENARIO_PREFIX}: cold start, cached image");
    let ratio = p50 / f50;
    b.push(
        Figure::new(
            &s,
            &format!("scale 0→1 to first response, p50 ({n} trials)"),
            p50,
            "ms",
        )
        .baseline(
            "`runc run` of the same bundle (fjord's config.json) → first 200",
            f50,
        )
        .target("≤ 1.2× runc and ≤ 50 ms", ratio <= 1.2 && p50 <= 50.0)
        .note(&format!(
            "{ratio:.2}× runc of fjord's own bundle, {:.2}× runc of umoci's default bundle ({r50:.1} ms: no user namespace, seccomp or limits); includes the scale API call, the call through the gateway and its readiness probe",
            p50 / r50
        )),
    );
    b.push(
        Figure::new(
            &s,
            &format!("scale 0→1 to first response, p99 ({n} trials)"),
            p99,
            "ms",
        )
        .baseline("`runc run` of umoci's default bundle, p99", r99),
    );
    delete_function(fjord, name).await
}

/// The same program in a container and as a process replica: c=1 p50, c=64 throughput.
async fn warm(b: &mut Bench<'_>, fjord: &Fjord, reg: &Registry) -> anyhow::Result<()> {
    let (ctr, proc) = ("ctr-warm", "proc-warm");
    fjord
        .deploy_ready(
            json!({"service": ctr, "image": reg.image("small"), "labels": one_replica()}),
            Duration::from_secs(60),
        )
        .await?;
    let mut p = bench_function(proc, &b.bench_bin, one_replica());
    p["annotations"] = json!({"com.fjord.runtime": "process"});
    fjord.deploy_ready(p, Duration::from_secs(20)).await?;
    for (name, want) in [(ctr, "container"), (proc, "process")] {
        let st = fjord.status(name).await?;
        ensure!(
            st["fjord"]["runtime"] == want,
            "{name} runs as {} rather than {want}",
            st["fjord"]["runtime"]
        );
    }
    let t = b.timing;
    let rounds = if b.quick() { 1 } else { 3 };
    let s = format!("{SCENARIO_PREFIX}: warm invoke, container vs process replica");
    let run = async |name: &str, c: usize| -> anyhow::Result<load::LoadResult> {
        let target: Target = fjord.function_target(name);
        let r = load::run(&target, c, t.warm, t.dur).await?;
        r.ensure_no_errors(&format!("{name} c={c}"))?;
        Ok(r)
    };
    // Rounds alternating which goes first, medians over them: the machine is shared, and
    // a load that happens to run during someone else's burst should not decide the ratio.
    let (mut c1, mut c64) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = run([proc, ctr][i], 1).await?;
            c1[i].push((r.p(0.5), r.p(0.99)));
        }
        for i in order {
            let r = run([proc, ctr][i], 64).await?;
            c64[i].push((r.rps(), r.p(0.5)));
        }
    }
    let med = |v: &[(f64, f64)], second: bool| {
        median(
            &mut v
                .iter()
                .map(|p| if second { p.1 } else { p.0 })
                .collect::<Vec<_>>(),
        )
    };
    let (p50, c50) = (med(&c1[0], false), med(&c1[1], false));
    let added = c50 - p50;
    b.push(
        Figure::new(
            &s,
            &format!("p50 via fjord, c=1 (median of {rounds} rounds)"),
            c50,
            "µs",
        )
        .baseline("process replica of the same binary", p50)
        .target("≤ +10 µs", added <= 10.0)
        .note(&format!(
            "{added:+.0} µs; p99 {:.0} µs vs {:.0} µs",
            med(&c1[1], true),
            med(&c1[0], true)
        )),
    );
    let (prps, crps) = (med(&c64[0], false), med(&c64[1], false));
    let ratio = crps / prps;
    b.push(
        Figure::new(
            &s,
            &format!("throughput via fjord, c=64 (median of {rounds} rounds)"),
            crps,
            "req/s",
        )
        .baseline("process replica of the same binary", prps)
        .target("≥ 0.95× process", ratio >= 0.95)
        .note(&format!(
            "p50 {:.0} µs vs {:.0} µs",
            med(&c64[1], true),
            med(&c64[0], true)
        )),
    );
    delete_function(fjord, ctr).await?;
    delete_function(fjord, proc).await
}

/// A busybox image (`sh`, `cat`, `echo`; PATH=/bin) in `layout` as `busybox`: the base of the
/// `lang: dockerfile` skeleton, as `scripts/run-examples` makes it.
async fn busybox_image(work: &Path, layout: &Path) -> anyhow::Result<()> {
    let image = format!("{}:busybox", path_str(layout)?);
    sh("umoci", &["new", "--image", &image]).await?;
    add_layer(&image, &work.join("bundle-busybox"), |root| {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
        for applet in ["sh", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        Ok(())
    })
    .await?;
    sh(
        "umoci",
        &["config", "--image", &image, "--config.env=PATH=/bin"],
    )
    .await
    .map(drop)
}

/// The `lang: dockerfile` skeleton of `fjord new` (fork mode: `sh handler.sh` per request),
/// built by `fjord up` with buildah on a busybox base from the registry, pushed and
/// deployed: its cold start against `runc run` of the same image with fjord's config.json,
/// and its warm throughput at c=16 against a container of the bench's Rust function.
async fn dockerfile(
    b: &mut Bench<'_>,
    fjord: &Fjord,
    reg: &Registry,
    runc: &RuncBaseline,
    work: &Path,
    n: usize,
) -> anyhow::Result<()> {
    let (name, reference) = ("ctr-dockerfile", "ctr-reference");
    let layout = work.join("oci");
    busybox_image(work, &layout).await?;
    reg.push(&layout, "busybox").await?;
    let project = work.join("dockerfile-project");
    std::fs::create_dir_all(&project)?;
    let out = tokio::process::Command::new(&b.opts.fjord)
        .args(["new", name, "--lang", "dockerfile"])
        .current_dir(&project)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "fjord new --lang dockerfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = reg.image("dockerfile");
    std::fs::write(
        project.join("stack.yml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  {name}:\n    lang: dockerfile\n    handler: ./{name}\n    image: {image}\n    build_args:\n      BASE_IMAGE: {}\n    labels:\n      com.openfaas.scale.zero: \"true\"\n      com.openfaas.scale.max: \"1\"\n",
            reg.image("busybox")
        ),
    )?;
    let t0 = Instant::now();
    fjord
        .cli(&b.opts.fjord, &project, &["up", "--quiet"])
        .await?;
    let build_up = t0.elapsed().as_secs_f64();
    fjord
        .wait_available(name, 1, Duration::from_secs(60))
        .await?;
    let st = fjord.status(name).await?;
    ensure!(
        st["fjord"]["runtime"] == "container",
        "{name} runs as {} rather than a container",
        st["fjord"]["runtime"]
    );

    // The baseline: the image fjord pushed, unpacked by umoci, with the replica's config.
    let pulled = work.join("oci-dockerfile");
    sh(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("oci:{}:dockerfile", path_str(&pulled)?),
        ],
    )
    .await?;
    let unpacked = work.join("bundle-dockerfile");
    sh(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:dockerfile", path_str(&pulled)?),
            path_str(&unpacked)?,
        ],
    )
    .await?;
    let same_config = runc
        .other_with_fjord_config(
            &unpacked,
            "bundle-dockerfile-fjord-config",
            &replica_config(name)?,
        )
        .await?;
    let mut ours = container_cold_starts(fjord, name, n).await?;
    fjord.scale(name, 1).await?;
    fjord
        .wait_available(name, 1, Duration::from_secs(10))
        .await?;
    let mut theirs = same_config.starts(n).await?;
    let (p50, r50) = (percentile(&mut ours, 0.5), percentile(&mut theirs, 0.5));
    let s = format!("{SCENARIO_PREFIX}: lang: dockerfile skeleton (buildah, busybox base)");
    b.push(
        Figure::new(
            &s,
            &format!("scale 0→1 to first response, p50 ({n} trials)"),
            p50,
            "ms",
        )
        .baseline(
            "`runc run` of the same image (fjord's config.json) → first 200",
            r50,
        )
        .target("≤ 1.2× runc", p50 <= 1.2 * r50)
        .note(&format!(
            "{:.2}× runc; p99 {:.1} ms; `fjord up` (buildah build, push, deploy) took {build_up:.1} s",
            p50 / r50,
            percentile(&mut ours, 0.99)
        )),
    );

    fjord
        .deploy_ready(
            json!({"service": reference, "image": reg.image("small"), "labels": one_replica()}),
            Duration::from_secs(60),
        )
        .await?;
    let t = b.timing;
    let mut rps = [0.0; 2];
    for (i, f) in [reference, name].into_iter().enumerate() {
        let r = load::run(&fjord.function_target(f), 16, t.warm, t.dur).await?;
        r.ensure_no_errors(&format!("warm invoke {f}"))?;
        rps[i] = r.rps();
    }
    b.push(
        Figure::new(&s, "throughput via fjord, c=16", rps[1], "req/s")
            .baseline("a container of the bench's Rust function (http)", rps[0])
            .note("fork mode: `sh handler.sh` starts for every request, as the classic watchdog"),
    );
    delete_function(fjord, reference).await?;
    delete_function(fjord, name).await
}

/// Disk for 50 replicas of `big`: the store's layers plus the replicas' dirs (overlay upper
/// and work) against the layers alone.
async fn disk(b: &mut Bench<'_>, fjord: &Fjord, reg: &Registry) -> anyhow::Result<()> {
    let name = "ctr-disk";
    let n = DISK_REPLICAS.to_string();
    fjord
        .deploy(json!({"service": name, "image": reg.image("big"),
            "labels": {"com.openfaas.scale.min": n, "com.openfaas.scale.max": n}}))
        .await?;
    fjord
        .wait_available(name, DISK_REPLICAS, Duration::from_secs(300))
        .await?;
    let data = fjord.data_dir();
    let layers = disk_bytes(&data.join("images/layers"));
    let replicas_dir = data.join("containers");
    let dirs = std::fs::read_dir(&replicas_dir)
        .with_context(|| format!("reading {}", replicas_dir.display()))?
        .count();
    ensure!(
        dirs as u64 >= DISK_REPLICAS,
        "{dirs} replica dirs in {} for {DISK_REPLICAS} replicas",
        replicas_dir.display()
    );
    let uppers = disk_bytes(&replicas_dir);
    b.push(
        Figure::new(
            &format!("{SCENARIO_PREFIX}: disk, {DISK_REPLICAS} replicas of the ~100 MiB image"),
            "store layers + every replica's upper and work dir",
            mib(layers + uppers),
            "MiB",
        )
        .baseline("one copy of the layers", mib(layers))
        .note(&format!(
            "replica dirs {:.0} KiB in all ({:.1} KiB each); {DISK_REPLICAS} unshared copies would be {:.0} MiB",
            uppers as f64 / 1024.0,
            uppers as f64 / 1024.0 / DISK_REPLICAS as f64,
            mib(layers) * DISK_REPLICAS as f64
        )),
    );
    delete_function(fjord, name).await
}

pub async fn run(b: &mut Bench<'_>) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the container figures need root (runc, overlayfs, network namespaces)"
    );
    let (cold_n, pull_n) = if b.quick() { (20, 3) } else { (30, 5) };
    let work = tempfile::Builder::new()
        .prefix("fjord-bench-oci-")
        .tempdir_in("/var/tmp")?;
    let layout = work.path().join("oci");
    eprintln!("  images: umoci from the bench's function, ~100 MiB of random layers");
    build_images(&b.bench_bin, work.path(), &layout).await?;
    let reg = Registry::start(&work.path().join("registry")).await?;
    reg.push(&layout, "small").await?;
    reg.push(&layout, "big").await?;
    let runc = RuncBaseline::new(work.path(), &layout).await?;
    // A gateway of its own: the pull figure wants an empty image store.
    let fjord = Fjord::start(&b.opts.fjord, &[], None).await?;
    let result = async {
        eprintln!("  pull + unpack vs skopeo copy ({pull_n} each)");
        pull(b, &fjord, &reg, work.path(), pull_n).await?;
        eprintln!("  cold start vs runc run ({cold_n} each)");
        cold(b, &fjord, &reg, &runc, cold_n).await?;
        eprintln!("  warm invoke, container vs process");
        warm(b, &fjord, &reg).await?;
        eprintln!("  lang: dockerfile, built by buildah ({cold_n} cold starts)");
        dockerfile(b, &fjord, &reg, &runc, work.path(), cold_n).await?;
        eprintln!("  disk, {DISK_REPLICAS} replicas");
        disk(b, &fjord, &reg).await
    }
    .await;
    runc.remove().await;
    let stopped = fjord.stop().await;
    result.and(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_keeps_resolved_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \tlibmissing.so => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tstatically linked\n").is_empty());
    }

    #[test]
    fn only_a_200_status_line_counts() {
        assert!(is_http_200(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        ));
        assert!(is_http_200(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(!is_http_200(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        assert!(!is_http_200(b"HTTP/1.1 2000 x"));
        assert!(!is_http_200(b""));
    }

    #[test]
    fn runc_config_sets_args_and_joins_the_given_netns() {
        let umoci = json!({
            "process": {"terminal": true, "args": ["sh"], "env": ["PORT=8080"]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        let c = runc_config(umoci, &["/bench/fjord-bench", "function"], "/run/netns/x").unwrap();
        assert_eq!(
            c["process"]["args"],
            json!(["/bench/fjord-bench", "function"])
        );
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["process"]["env"], json!(["PORT=8080"]), "env kept");
        assert_eq!(
            c["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/run/netns/x"}])
        );
        assert!(runc_config(json!({"process": {}}), &["x"], "/n").is_err());
    }

    #[test]
    fn disk_bytes_counts_hard_links_once_and_missing_paths_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, vec![7u8; 64 * 1024]).unwrap();
        let one = disk_bytes(&a);
        assert!(one >= 64 * 1024, "{one}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::hard_link(&a, sub.join("b")).unwrap();
        let with_dirs = disk_bytes(dir.path());
        let dirs = disk_bytes(&sub) - disk_bytes(&sub.join("b"))
            + std::fs::symlink_metadata(dir.path()).unwrap().blocks() * 512;
        assert_eq!(with_dirs, one + dirs, "the link is not counted twice");
        assert_eq!(disk_bytes(&dir.path().join("nothing")), 0);
    }

    #[test]
    fn replica_dirs_are_the_function_name_a_dash_and_hex() {
        let has = |names: &[&str]| has_replica_dir(names.iter().copied(), "ctr-cold");
        assert!(has(&["x", "ctr-cold-2644a6"]));
        assert!(!has(&[]));
        assert!(!has(&["ctr-cold"]), "no id");
        assert!(!has(&["ctr-cold-"]), "empty id");
        assert!(
            !has(&["ctr-cold-warm-1a"]),
            "another function's (ctr-cold-warm)"
        );
        assert!(!has(&["ctr-colder-1a"]));
    }
}
