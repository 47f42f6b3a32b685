//! Micro-benchmarks of the invoke hot path: the per-request work the gateway does before it
//! forwards a request (route parsing and lookup, replica pick, hop-by-hop header removal).
//!
//! Run: `cargo bench -p fjord-gateway --bench hot_path`
//!
//! The control planes are built as `fjord_gateway::serve` builds them (a state store and a
//! process runtime in a temporary data directory). Each is set up only when one of its
//! benchmarks runs (so a filter such as `-- headers` skips the setup), shut down after its
//! group, and its directory removed.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion};
use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_gateway::{ControlPlane, DeployMode, split_function_path, strip_hop_by_hop};
use fjord_runtime::{FunctionHandle, ProcessRuntime, RuntimeConfig};
use fjord_store::Store;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Function counts for the routing benchmarks.
const ROUTE_SIZES: [usize; 3] = [1, 100, 1_000];
/// Ready replicas for the pick benchmarks.
const PICK_REPLICAS: [u64; 3] = [1, 4, 50];

/// A control plane in its own data directory; [`Fixture::close`] shuts it down and
/// removes the directory.
struct Fixture {
    control: Arc<ControlPlane>,
    dir: TempDir,
}

impl Fixture {
    fn new(rt: &Runtime) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fjord-bench-")
            .tempdir()
            .expect("create a temporary data directory");
        let control = rt.block_on(async {
            let store = Store::open(&dir.path().join("state.db")).expect("open the state store");
            let runtime = ProcessRuntime::new(RuntimeConfig {
                data_dir: dir.path().to_path_buf(),
                rollout_timeout: Duration::from_secs(60),
                stop_grace: Duration::from_secs(1),
                pids_max: 64,
                tune_kernel: false,
                network: Default::default(),
                tmp_size_bytes: fjord_runtime::DEFAULT_TMP_SIZE,
                default_memory_bytes: None,
            })
            .await
            .expect("start the process runtime");
            let bundles = fjord_gateway::Bundles::new(dir.path(), false).expect("bundle store");
            let (key, _) =
                fjord_gateway::SecretKey::load_or_create(dir.path()).expect("secrets key");
            ControlPlane::new(store, std::sync::Arc::new(runtime), bundles, key)
        });
        Self { control, dir }
    }

    /// Deploys fork-mode function `name` (envProcess `cat`) with `min_replicas` replicas.
    fn deploy(&self, rt: &Runtime, name: &str, min_replicas: u64) {
        let deployment = FunctionDeployment {
            service: name.to_string(),
            image: "x".to_string(),
            env_process: Some("cat".to_string()),
            labels: Some(BTreeMap::from([(
                "com.openfaas.scale.min".to_string(),
                min_replicas.to_string(),
            )])),
            ..Default::default()
        };
        rt.block_on(self.control.deploy(deployment, DeployMode::CreateOrUpdate))
            .unwrap_or_else(|e| panic!("deploy {name}: {e}"));
    }

    fn handle(&self, name: &str) -> Arc<FunctionHandle> {
        self.control
            .lookup(fjord_core::DEFAULT_NAMESPACE, name)
            .unwrap_or_else(|| panic!("{name} is not routed"))
            .handle
            .clone()
    }

    fn close(self, rt: &Runtime) {
        rt.block_on(self.control.shutdown());
        drop(self.control);
        self.dir
            .close()
            .expect("remove the temporary data directory");
    }
}

/// `route/lookup/{n}`: `ControlPlane::lookup` among `n` functions (none running);
/// `route/parse_and_lookup/{n}`: what the invoke handler does per request before picking
/// a replica (split the path, split `name.namespace`, look up).
fn bench_route(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("route");
    for n in ROUTE_SIZES {
        // Criterion calls each closure once per warm-up round and sample: set up once.
        let mut fixture: Option<Fixture> = None;
        let mut setup = || {
            let f = Fixture::new(rt);
            for i in 0..n {
                f.deploy(rt, &format!("f{i}"), 0);
            }
            f
        };
        // A name from the middle of the set; all lookups hit.
        let name = format!("f{}", n / 2);
        let path = format!("/function/{name}/api/v1/items");

        group.bench_with_input(BenchmarkId::new("lookup", n), &name, |b, name| {
            let control = &fixture.get_or_insert_with(&mut setup).control;
            let ns = fjord_core::DEFAULT_NAMESPACE;
            b.iter(|| control.lookup(black_box(ns), black_box(name)));
        });
        group.bench_with_input(BenchmarkId::new("parse_and_lookup", n), &path, |b, path| {
            let control = &fixture.get_or_insert_with(&mut setup).control;
            b.iter(|| {
                let (segment, sub_path) = split_function_path(black_box(path)).unwrap();
                let (name, namespace) = FunctionKey::split_route(segment);
                (control.lookup(namespace, name), sub_path)
            });
        });
        if let Some(f) = fixture {
            f.close(rt);
        }
    }
    group.finish();
}

/// `pick/least_inflight/{n}`: `FunctionHandle::pick` over `n` ready fork-mode replicas,
/// the guard dropped each iteration (so every pick sees all replicas idle).
fn bench_pick(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("pick");
    let mut fixture: Option<Fixture> = None;
    for n in PICK_REPLICAS {
        let name = format!("p{n}");
        // Criterion calls the closure once per warm-up round and sample: set up once.
        let mut handle: Option<Arc<FunctionHandle>> = None;
        group.bench_with_input(BenchmarkId::new("least_inflight", n), &n, |b, &n| {
            let handle = handle.get_or_insert_with(|| {
                let f = fixture.get_or_insert_with(|| Fixture::new(rt));
                f.deploy(rt, &name, n);
                let handle = f.handle(&name);
                wait_available(rt, &handle, n);
                handle
            });
            b.iter(|| drop(black_box(handle.pick())));
        });
    }
    if let Some(f) = fixture {
        f.close(rt);
    }
    group.finish();
}

/// Waits until `handle` has exactly `n` ready replicas.
fn wait_available(rt: &Runtime, handle: &FunctionHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(
        rt.block_on(handle.wait_ready(Duration::from_secs(30))),
        "{} never became ready: {:?}",
        handle.qualified,
        handle.status().last_error
    );
    while handle.status().available != n {
        assert!(
            Instant::now() < deadline,
            "{}: {} of {n} replicas ready after 60s: {:?}",
            handle.qualified,
            handle.status().available,
            handle.status().last_error
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `headers/strip_hop_by_hop`: on a browser-like request (12 headers, keep-alive); the
/// clone of the map is not timed.
fn bench_headers(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    let mut add = |name: HeaderName, value: &'static str| {
        headers.append(name, HeaderValue::from_static(value));
    };
    add(header::HOST, "gateway.example.com:8080");
    add(
        header::USER_AGENT,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    );
    add(
        header::ACCEPT,
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    );
    add(header::ACCEPT_LANGUAGE, "en-GB,en;q=0.7,de;q=0.3");
    add(header::ACCEPT_ENCODING, "gzip, deflate, br, zstd");
    add(header::CONNECTION, "keep-alive");
    add(HeaderName::from_static("keep-alive"), "timeout=5, max=1000");
    add(header::REFERER, "https://gateway.example.com/ui/");
    add(header::COOKIE, "session=4f9c2a61d0b84e7f; theme=dark");
    add(HeaderName::from_static("upgrade-insecure-requests"), "1");
    add(HeaderName::from_static("sec-fetch-mode"), "navigate");
    add(header::CACHE_CONTROL, "max-age=0");
    assert_eq!(headers.len(), 12);

    let mut group = c.benchmark_group("headers");
    group.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                strip_hop_by_hop(black_box(&mut h));
                h
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_route(&mut c, &rt);
    bench_pick(&mut c, &rt);
    bench_headers(&mut c);
    c.final_summary();
}
