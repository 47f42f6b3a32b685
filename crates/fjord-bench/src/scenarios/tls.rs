//! Invocation overhead of HTTPS: the same http-mode function through a second gateway that
//! serves TLS (`--tls-cert/--tls-key`, a self-signed certificate made here), against the
//! plain gateway measured right before it (one load after the other, same run); HTTP/1.1
//! keep-alive on both, so the difference is the TLS record layer (handshakes happen once
//! per connection, before the measurement).

use std::sync::Arc;
use std::time::Duration;

use super::Bench;
use super::warm_http::FUNCTION;
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, one_replica};
use crate::load;

/// `plain` must already serve [`FUNCTION`] (the warm-invoke scenario deploys it).
pub async fn run(b: &mut Bench<'_>, plain: &Fjord) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fjord-bench-tls-")
        .tempdir_in("/var/tmp")?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert_pem)?;
    std::fs::write(&key_path, &key_pem)?;
    let args = [
        "--tls-cert".to_string(),
        cert_path.display().to_string(),
        "--tls-key".to_string(),
        key_path.display().to_string(),
    ];
    let tls = Fjord::start(&b.opts.fjord, &args, Some(&cert_pem)).await?;
    tls.deploy_ready(
        bench_function(FUNCTION, &b.bench_bin, one_replica()),
        Duration::from_secs(20),
    )
    .await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let via_tls = tls.function_target(FUNCTION).with_tls(Arc::new(client));
    let via_plain = plain.function_target(FUNCTION);
    let (warm, dur) = (b.timing.warm, b.timing.dur);
    for c in [1usize, 64] {
        let p = load::run(&via_plain, c, warm, dur).await?;
        p.ensure_no_errors("plain baseline for TLS")?;
        let t = load::run(&via_tls, c, warm, dur).await?;
        t.ensure_no_errors("TLS")?;
        let scenario = format!("warm invoke over TLS, c={c}");
        if c == 1 {
            b.push(
                Figure::new(&scenario, "added latency p50 (TLS − plain)", t.p(0.5) - p.p(0.5), "µs")
                    .note(&format!(
                        "plain p50 {:.0} µs, TLS p50 {:.0} µs; p99 {:.0} vs {:.0} µs (HTTP/1.1 keep-alive, TLS 1.3)",
                        p.p(0.5),
                        t.p(0.5),
                        p.p(0.99),
                        t.p(0.99)
                    )),
            );
        } else {
            b.push(
                Figure::new(&scenario, "throughput", t.rps(), "req/s")
                    .baseline("plain HTTP, measured right before", p.rps())
                    .note("one connection per client, HTTP/1.1 keep-alive, TLS 1.3"),
            );
        }
    }
    tls.stop().await?;
    Ok(())
}
