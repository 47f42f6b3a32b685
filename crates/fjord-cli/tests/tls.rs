//! `fjord serve --tls-cert/--tls-key`: HTTPS with HTTP/2 by ALPN, certificate reload on
//! SIGHUP and on file change (a broken new certificate keeps the old one serving), clear
//! startup errors, and the CLI's --ca-cert / --tls-no-verify.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqwest::{Method, StatusCode, Version};

/// A private CA that signs certificates for 127.0.0.1 and localhost.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate: PEM texts and the DER the server should present.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fjord test CA");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self) -> Leaf {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Replaces a file atomically (write beside, rename), as certificate tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct TlsServer {
    server: Server,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
    ca: Ca,
}

async fn start(extra: &[&str]) -> (TlsServer, Leaf) {
    let ca = Ca::new();
    let leaf = ca.leaf();
    let dir = TestDir::new();
    let cert = dir.tmp.path().join("cert.pem");
    let key = dir.tmp.path().join("key.pem");
    let ca_file = dir.tmp.path().join("ca.pem");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start_tls(dir, ServeOpts::args(&args), &ca.pem()).await;
    (
        TlsServer {
            server,
            cert,
            key,
            ca_file,
            ca,
        },
        leaf,
    )
}

/// The certificate the server presents to a new connection.
async fn presented(s: &TlsServer) -> Vec<u8> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client
        .get(s.server.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz over TLS");
    assert_eq!(r.status(), StatusCode::OK);
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

/// Waits until new connections see `want`, or panics with the server's log.
async fn wait_presented(s: &TlsServer, want: &[u8], what: &str) {
    let what = format!("{what}: the server presents the expected certificate");
    wait_until(Duration::from_secs(60), &what, async || {
        if presented(s).await == want {
            Ok(())
        } else {
            Err(format!("another one; log:\n{}", s.server.log_tail()))
        }
    })
    .await
}

async fn wait_log(s: &TlsServer, needle: &str, times: usize) {
    let what = format!("{needle:?} (x{times}) in the server log");
    wait_until(Duration::from_secs(60), &what, async || {
        let log = s.server.log_tail();
        if log.matches(needle).count() >= times {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1_and_no_plain_http() {
    let (s, leaf) = start(&[]).await;
    assert!(s.server.base.starts_with("https://"));
    assert_eq!(presented(&s).await, leaf.der, "the configured certificate");

    // ALPN offers h2: a client that can speak it gets HTTP/2.
    let r = s
        .server
        .sys(Method::GET, "/system/info")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_2, "HTTP/2 negotiated by ALPN");
    assert_eq!(r.status(), StatusCode::OK);

    // A client limited to HTTP/1.1 still works.
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = h1.get(s.server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "OK");

    // Functions are served over TLS too.
    s.server.deploy_ready(&fork_fn("echo", "cat")).await;
    let r = s
        .server
        .invoke(Method::POST, "echo")
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "over tls");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://{}/healthz", s.server.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served on the TLS port: {plain:?}"
    );
    // An untrusted client refuses the certificate.
    let r = client().get(s.server.url("/healthz")).send().await;
    assert!(r.is_err(), "a client without the CA must not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reloads_on_sighup_and_on_file_change_and_bad_ones_are_refused() {
    let (s, first) = start(&[]).await;
    assert_eq!(presented(&s).await, first.der);

    // SIGHUP: a new certificate (key first, then certificate, as renewals do).
    let second = s.ca.leaf();
    replace(&s.key, &second.key_pem);
    replace(&s.cert, &second.cert_pem);
    kill(Pid::from_raw(s.server.pid()), Signal::SIGHUP).unwrap();
    wait_log(&s, "TLS certificate reloaded (SIGHUP)", 1).await;
    wait_presented(&s, &second.der, "after SIGHUP").await;

    // File change alone, no signal.
    let third = s.ca.leaf();
    replace(&s.key, &third.key_pem);
    replace(&s.cert, &third.cert_pem);
    wait_presented(&s, &third.der, "after replacing the files").await;
    wait_log(&s, "TLS certificate reloaded (the files changed)", 1).await;

    // A broken certificate: logged, the old one keeps serving.
    replace(
        &s.cert,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    wait_log(&s, "TLS certificate not reloaded", 1).await;
    kill(Pid::from_raw(s.server.pid()), Signal::SIGHUP).unwrap();
    wait_log(&s, "TLS certificate not reloaded (SIGHUP)", 1).await;
    assert_eq!(
        presented(&s).await,
        third.der,
        "the old certificate serves on"
    );

    // A certificate whose key is another one's: refused too.
    let fourth = s.ca.leaf();
    replace(&s.cert, &fourth.cert_pem);
    wait_log(&s, "does not belong to the certificate", 1).await;
    assert_eq!(
        presented(&s).await,
        third.der,
        "a mismatched pair is not used"
    );
    // Its key arrives: now the pair is whole and is taken.
    replace(&s.key, &fourth.key_pem);
    wait_presented(&s, &fourth.der, "after the matching key arrived").await;
    let r = s
        .server
        .sys(Method::GET, "/system/functions")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Runs `fjord serve` expecting it to refuse to start; returns its stderr.
async fn serve_fails(args: &[&str]) -> (Option<i32>, String) {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let mut full = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tune-kernel=false",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let out = run_cli(&full, &[], &dir.tmp.path().join("config.json")).await;
    (out.code, out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_name_the_file() {
    let ca = Ca::new();
    let leaf = ca.leaf();
    let other = ca.leaf();
    let dir = TestDir::new();
    let cert = dir.tmp.path().join("cert.pem");
    let key = dir.tmp.path().join("key.pem");
    let other_key = dir.tmp.path().join("other-key.pem");
    let garbage = dir.tmp.path().join("garbage.pem");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&other_key, &other.key_pem).unwrap();
    std::fs::write(&garbage, "hello").unwrap();
    let (cert, key, other_key, garbage) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );

    let (code, err) = serve_fails(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key]).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("TLS certificate /nonexistent/cert.pem: cannot read"),
        "{err}"
    );
    let (code, err) = serve_fails(&["--tls-cert", cert, "--tls-key", "/nonexistent/key.pem"]).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("TLS key /nonexistent/key.pem: cannot read"),
        "{err}"
    );
    let (_, err) = serve_fails(&["--tls-cert", garbage, "--tls-key", key]).await;
    assert!(err.contains(&format!("TLS certificate {garbage}")), "{err}");
    let (_, err) = serve_fails(&["--tls-cert", cert, "--tls-key", garbage]).await;
    assert!(
        err.contains(&format!("TLS key {garbage}: no private key")),
        "{err}"
    );
    let (_, err) = serve_fails(&["--tls-cert", cert, "--tls-key", other_key]).await;
    assert!(
        err.contains(&format!(
            "TLS key {other_key} does not belong to the certificate {cert}"
        )),
        "{err}"
    );
    // Both flags or neither.
    let (code, err) = serve_fails(&["--tls-cert", cert]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_trusts_a_ca_or_is_told_what_to_do() {
    let (s, _) = start(&[]).await;
    let config = s.server.dir.tmp.path().join("cli-config.json");
    let url = s.server.base.clone();
    let pw = s.server.password.clone().unwrap();
    let env = [("FJORD_URL", url.as_str()), ("FJORD_PASSWORD", pw.as_str())];

    let out = run_cli(&["list"], &env, &config).await;
    assert_eq!(out.code, Some(3), "untrusted certificate: {}", out.stderr);
    assert!(
        out.stderr.contains("is not trusted")
            && out.stderr.contains("--ca-cert")
            && out.stderr.contains("--tls-no-verify"),
        "the error says what to do: {}",
        out.stderr
    );

    let ca = s.ca_file.to_str().unwrap();
    let out = run_cli(&["list", "--ca-cert", ca], &env, &config).await;
    assert_eq!(out.code, Some(0), "--ca-cert: {}", out.stderr);
    assert!(out.stdout.contains("Function"), "{}", out.stdout);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    let mut env_ca = env.to_vec();
    env_ca.push(("FJORD_CA_CERT", ca));
    let out = run_cli(&["list"], &env_ca, &config).await;
    assert_eq!(out.code, Some(0), "FJORD_CA_CERT: {}", out.stderr);

    let out = run_cli(&["list", "--tls-no-verify"], &env, &config).await;
    assert_eq!(out.code, Some(0), "--tls-no-verify: {}", out.stderr);
    assert!(
        out.stderr.contains("warning: --tls-no-verify"),
        "a warning on stderr: {}",
        out.stderr
    );
    let mut env_nv = env.to_vec();
    env_nv.push(("FJORD_TLS_NO_VERIFY", "true"));
    let out = run_cli(&["list"], &env_nv, &config).await;
    assert_eq!(out.code, Some(0), "FJORD_TLS_NO_VERIFY: {}", out.stderr);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one warning line: {}",
        out.stderr
    );
}
