//! Attacks on function networking, through the real `fjord serve` as root (issue 11, items
//! 4 and 5): a function reaching another function's replica around the gateway (skipping
//! `com.fjord.auth=token`), a function listening on a victim's port to receive its traffic,
//! and a function reaching the host's own services. Each function runs in its own network
//! namespace; outbound traffic goes through NAT and only where allowed.
//!
//! The egress test makes its own "outside" host: a network namespace with a veth pair, on
//! TEST-NET-2 (198.51.100.0/30, standing for the internet), a private network
//! (10.250.<n>.0/30) and a link-local one (169.254.<100+n>.0/30, standing for a cloud
//! metadata service), so no traffic leaves this machine.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{ServeOpts, Server, fork_fn, free_port, http_fn};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A fork-mode function whose Python `code` prints one JSON line: `try(host, port)` is
/// 0 when a TCP connection succeeds (connect_ex's errno otherwise), within 1 s.
fn prober(name: &str, code: &str) -> Value {
    let program = format!(
        "import socket, json, struct\n\
         def try_(h, p):\n    s = socket.socket()\n    s.settimeout(0.5)\n    r = s.connect_ex((h, p))\n    s.close()\n    return r\n\
         def gateway():\n    for l in open(\"/proc/net/route\").read().splitlines()[1:]:\n        f = l.split()\n        if f[1] == \"00000000\":\n            return socket.inet_ntoa(struct.pack(\"<L\", int(f[2], 16)))\n    return None\n\
         def own():\n    g = gateway()\n    if g is None:\n        return None\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.connect((g, 9))\n    return s.getsockname()[0]\n\
         {code}\n"
    );
    assert!(!program.contains('\''));
    fork_fn(name, &format!("/usr/bin/python3 -c '{program}'"))
}

/// A probe's result for `key`: 0 connected, an errno otherwise (missing is a failure).
fn errno(r: &Value, key: &str) -> i64 {
    r[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no {key} in the probe's answer: {r}"))
}

async fn probe(s: &Server, name: &str) -> Value {
    let (st, body) = s.call(name).await;
    assert_eq!(st, StatusCode::OK, "{name}: {body}");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{name}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_reach_another_functions_replica_or_the_host_around_the_gateway() {
    let s = Server::start().await;
    // The victim needs a token; its replica listens on a port the attacker knows.
    let victim_port = free_port();
    let mut victim = http_fn("victim", "genuine");
    victim["envVars"]["upstream_url"] = json!(format!("http://127.0.0.1:{victim_port}"));
    victim["annotations"] = json!({"com.fjord.auth": "token"});
    s.deploy_ready(&victim).await;
    let (st, _) = s.call("victim").await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the victim is token-protected"
    );
    // A second victim listening on every address of its namespace (0.0.0.0).
    let open_port = free_port();
    s.deploy_ready(&json!({
        "service": "open",
        "image": "fjord-test/open:latest",
        "envProcess": format!("/usr/bin/python3 -m http.server {open_port}"),
        "envVars": {"mode": "http", "upstream_url": format!("http://127.0.0.1:{open_port}")},
    }))
    .await;
    // A host service on every address (a database bound to 0.0.0.0, say).
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let gateway_port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let code = format!(
        "me = own()\n\
         near = []\n\
         if me:\n    a = [int(x) for x in me.split(\".\")]\n    for i in range(0, 8):\n        ip = \"%d.%d.0.%d\" % (a[0], a[1], i * 4 + 2)\n        if ip != me and try_(ip, {open_port}) == 0:\n            near.append(ip)\n\
         print(json.dumps({{\"victim\": try_(\"127.0.0.1\", {victim_port}), \"gateway\": try_(\"127.0.0.1\", {gateway_port}), \"host_via_link\": try_(gateway(), {host_port}) if gateway() else -1, \"functions_reached\": near, \"me\": me}}))"
    );
    s.deploy_ready(&prober("attacker", &code)).await;
    let r = probe(&s, "attacker").await;
    assert_ne!(
        errno(&r, "victim"),
        0,
        "reached the victim's replica directly: {r}"
    );
    assert_ne!(
        errno(&r, "gateway"),
        0,
        "reached the gateway's port on 127.0.0.1: {r}"
    );
    assert_ne!(errno(&r, "host_via_link"), 0, "reached a host service: {r}");
    assert_eq!(r["functions_reached"], json!([]), "{r}");
    assert!(
        r["me"].is_string(),
        "NAT mode gives functions an address: {r}"
    );
    drop(host_service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_listening_on_a_replicas_port_never_gets_its_traffic() {
    let s = Server::start().await;
    let port = free_port();
    let mut attacker = http_fn("attacker", "pwned");
    attacker["envVars"]["upstream_url"] = json!(format!("http://127.0.0.1:{port}"));
    s.deploy_ready(&attacker).await;
    // The victim's replica asks for the same port: without namespaces its start fails with
    // EADDRINUSE while the readiness check finds the attacker's listener there.
    let mut victim = http_fn("victim", "genuine");
    victim["envVars"]["upstream_url"] = json!(format!("http://127.0.0.1:{port}"));
    s.deploy(&victim).await;
    let first = s.call_until_ok("victim", Duration::from_secs(30)).await;
    let mut answers = vec![first];
    for _ in 0..20 {
        let (st, body) = s.call("victim").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        answers.push(body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for a in &answers {
        let v: Value = serde_json::from_str(a).unwrap();
        assert_eq!(
            v["version"], "genuine",
            "victim traffic went elsewhere: {a}"
        );
    }
    // And the attacker still gets its own.
    let (_, body) = s.call("attacker").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "pwned"
    );
}

/// A network namespace standing for the outside world, with a TCP server on port 8080 at
/// 198.51.100.2 (TEST-NET-2: "the internet") and 10.250.<n>.2 (a private network).
struct Outside {
    ns: String,
    host_if: String,
    server: std::process::Child,
    private: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Outside {
    fn new(n: u8) -> Outside {
        let ns = format!("fjt-out-{}-{n}", std::process::id());
        // Not "fj...": fjord's rules treat such interfaces as functions' links.
        let host_if = format!("otv{}{n}", std::process::id() % 100_000);
        let private = format!("10.250.{n}");
        ip(&["netns", "add", &ns]);
        let o = Outside {
            ns: ns.clone(),
            host_if: host_if.clone(),
            server: Command::new("true").spawn().unwrap(),
            private: private.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        let public_host = format!("198.51.100.{}", 4 * u32::from(n) + 1);
        let public_in = format!("198.51.100.{}", 4 * u32::from(n) + 2);
        ip(&["addr", "add", &format!("{public_host}/30"), "dev", &host_if]);
        ip(&["addr", "add", &format!("{private}.1/30"), "dev", &host_if]);
        let link_local = format!("169.254.{}", 100 + n);
        ip(&[
            "addr",
            "add",
            &format!("{link_local}.1/30"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{public_in}/30"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{private}.2/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &public_host]);
        let mut o = o;
        let _ = o.server.wait();
        o.server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "/usr/bin/python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        o
    }

    /// Stands for a cloud metadata service (169.254.169.254 is link-local too).
    fn link_local(&self) -> String {
        let n: u32 = self.private.rsplit('.').next().unwrap().parse().unwrap();
        format!("169.254.{}", 100 + n)
    }

    fn public(&self) -> String {
        let n: u32 = self.private.rsplit('.').next().unwrap().parse().unwrap();
        format!("198.51.100.{}", 4 * n + 2)
    }

    /// Waits until the server answers from the host (proves the set-up before any function
    /// sends traffic there).
    async fn wait_serving(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect_timeout(
                &format!("{}:8080", self.public()).parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the outside server in {} did not start", self.ns);
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn egress_code(o: &Outside) -> String {
    format!(
        "print(json.dumps({{\"public\": try_(\"{}\", 8080), \"private\": try_(\"{}.2\", 8080), \"link_local\": try_(\"{}.2\", 8080)}}))",
        o.public(),
        o.private,
        o.link_local()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_traffic_reaches_the_internet_but_private_networks_only_when_allowed() {
    let outside = Outside::new(1);
    outside.wait_serving().await;

    let s = Server::start().await;
    s.deploy_ready(&prober("egress", &egress_code(&outside)))
        .await;
    let r = probe(&s, "egress").await;
    assert_eq!(
        errno(&r, "public"),
        0,
        "public addresses are reachable through NAT: {r}"
    );
    assert_ne!(
        errno(&r, "private"),
        0,
        "private networks are blocked by default: {r}"
    );
    assert_ne!(
        errno(&r, "link_local"),
        0,
        "link-local (cloud metadata) is blocked: {r}"
    );
    // One function opts out of the network: loopback only, the others keep theirs.
    let mut sealed = prober("sealed", &egress_code(&outside));
    sealed["annotations"] = json!({"com.fjord.network": "none"});
    s.deploy_ready(&sealed).await;
    let r = probe(&s, "sealed").await;
    assert_ne!(
        errno(&r, "public"),
        0,
        "com.fjord.network: none: loopback only: {r}"
    );
    let r = probe(&s, "egress").await;
    assert_eq!(errno(&r, "public"), 0, "the other function keeps its: {r}");
    // An update that drops the annotation gives the function the network back.
    sealed["annotations"] = json!({"com.fjord.network": "default"});
    s.update(&sealed).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = probe(&s, "sealed").await;
        if errno(&r, "public") == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the updated function never got the server's network back: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A value that is not a mode is refused, naming the annotation; nothing changes.
    sealed["annotations"] = json!({"com.fjord.network": "host"});
    let (st, body) = s
        .sys_json(reqwest::Method::PUT, "/system/functions", &sealed)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("com.fjord.network"), "{body}");
    let r = probe(&s, "sealed").await;
    assert_eq!(errno(&r, "public"), 0, "{r}");
    drop(s);

    let allowed = format!("{}.0/30", outside.private);
    let s = Server::start_opts(ServeOpts::args(&["--function-egress-allow", &allowed])).await;
    s.deploy_ready(&prober("egress", &egress_code(&outside)))
        .await;
    let r = probe(&s, "egress").await;
    assert_eq!(
        errno(&r, "private"),
        0,
        "an allowed private network is reachable: {r}"
    );
    assert_ne!(errno(&r, "link_local"), 0, "{r}");
    drop(s);

    let s = Server::start_opts(ServeOpts::args(&[
        "--function-network",
        "none",
        "--function-egress-allow",
        &allowed,
    ]))
    .await;
    s.deploy_ready(&prober("egress", &egress_code(&outside)))
        .await;
    let r = probe(&s, "egress").await;
    assert_ne!(
        errno(&r, "public"),
        0,
        "--function-network none: loopback only: {r}"
    );
    assert_ne!(errno(&r, "private"), 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_network_flags_are_refused_with_a_clear_error() {
    let bin = env!("CARGO_BIN_EXE_fjord");
    let out = Command::new(bin)
        .args(["serve", "--function-network", "bridge"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected nat or none"), "{err}");
    let out = Command::new(bin)
        .args(["serve", "--function-egress-allow", "10.0.0.0/33"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an IPv4 address or CIDR"), "{err}");
}

/// The nftables table a server installed, from its start-up line.
async fn nft_table_of(s: &Server) -> String {
    let found = common::wait_until(Duration::from_secs(20), "the server's table", async || {
        let log = s.log_tail();
        log.split("nftables_table=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|t| t.trim_matches('"').to_string())
            .ok_or_else(|| format!("no nftables_table in the log:\n{log}"))
    })
    .await;
    assert!(found.starts_with("fjord_"), "{found}");
    found
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every table filters every packet of the host: a server killed before it could remove
/// its own must not leave it there for good (90 left tables made each loopback round trip
/// ~50 µs slower). The next server's start removes it, and keeps the tables of live servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_of_a_killed_server_is_removed_by_the_next_server() {
    let killed = Server::start().await;
    let killed_table = nft_table_of(&killed).await;
    let live = Server::start().await;
    let live_table = nft_table_of(&live).await;
    assert_ne!(killed_table, live_table);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // A zombie until `killed` is dropped: ended all the same.
    common::wait_until(
        Duration::from_secs(10),
        "the killed server to end",
        async || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", killed.pid()));
            match stat {
                Ok(s) if !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z') => {
                    Err(format!("still running: {s}"))
                }
                _ => Ok(()),
            }
        },
    )
    .await;
    assert!(
        nft_tables().contains(&format!("table inet {killed_table}\n")),
        "SIGKILL leaves the table (else this test proves nothing): {}",
        nft_tables()
    );
    let next = Server::start().await;
    let next_table = nft_table_of(&next).await;
    let tables = nft_tables();
    assert!(
        !tables.contains(&format!("table inet {killed_table}\n")),
        "the killed server's table is still there: {tables}"
    );
    for t in [&live_table, &next_table] {
        assert!(
            tables.contains(&format!("table inet {t}\n")),
            "a live server's table {t} was removed: {tables}"
        );
    }
    assert!(
        next.log_tail().contains(&killed_table),
        "the removal is logged: {}",
        next.log_tail()
    );
    drop(killed);
}
