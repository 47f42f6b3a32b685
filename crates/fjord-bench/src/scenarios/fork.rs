//! Warm invoke, fork mode: `cat` with a 5-byte body through fjord at c=1, against spawning
//! `/usr/bin/cat` directly from the bench with the same body.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use serde_json::json;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::{Fjord, one_replica};
use crate::measure::{Parties, measured};
use crate::stats::median;

/// `cat` spawned directly with a small stdin body: the floor for fork mode, in ms.
async fn fork_floor(n: usize) -> anyhow::Result<Vec<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("/usr/bin/cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"hello").await?;
        drop(stdin);
        let mut buf = Vec::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_end(&mut buf)
            .await?;
        child.wait().await?;
        ensure!(buf == b"hello", "cat echoed {buf:?}");
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

pub async fn run(b: &mut Bench<'_>, fjord: &Fjord) -> anyhow::Result<()> {
    fjord
        .deploy_ready(
            json!({"service": "bench-cat", "image": "bench", "envProcess": "cat",
                "labels": one_replica()}),
            Duration::from_secs(10),
        )
        .await?;
    let cat = fjord
        .function_target("bench-cat")
        .with_body(Bytes::from_static(b"hello"));
    let f = measured(
        "fork cat via fjord c=1",
        &cat,
        1,
        b.timing,
        &Parties {
            gateway: &[fjord.pid],
            replica: &[],
            proxy: &[],
        },
        &mut b.cpu,
    )
    .await?;
    let mut floor = fork_floor(if b.quick() { 200 } else { 1000 }).await?;
    let floor_p50 = median(&mut floor);
    let fork_p50 = f.p(0.5) / 1e3;
    b.push(
        Figure::new(
            "warm invoke, fork mode (`cat`), c=1",
            "end-to-end p50",
            fork_p50,
            "ms",
        )
        .baseline("spawn `cat` directly from the bench", floor_p50)
        .target("≤ 2 ms p50", fork_p50 <= 2.0)
        .note(&format!(
            "p99 {:.2} ms; {:.0} req/s",
            f.p(0.99) / 1e3,
            f.rps()
        )),
    );
    Ok(())
}
