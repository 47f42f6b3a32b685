//! Cold start: scale 0→1 to the first response, for the bench's own compiled function and
//! for each template (whose warm throughput is measured just before, while it is up),
//! against the bare start of the same program.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::Bench;
use super::templates::{self, TEMPLATES};
use crate::figure::Figure;
use crate::fixtures::{Fjord, bench_function, scales_to_zero};
use crate::measure::cold_starts_with;
use crate::stats::percentile;

/// Time to start a process and see it exit, N times, in ms.
async fn bare_starts(program: &str, args: &[&str], n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let s = tokio::process::Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .await?;
        ensure!(s.success(), "{program} failed");
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Time for the bare interpreter to import Pillow from the function's own build (its `deps`
/// directory under the project), N times, in ms.
async fn pillow_imports(project: &Path, python: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let deps = find_dir_holding(project, "PIL", 6).ok_or_else(|| {
        anyhow::anyhow!("no Pillow (a PIL directory) under {}", project.display())
    })?;
    let code = format!(
        "import sys; sys.path.insert(0, {:?}); from PIL import Image",
        deps.display().to_string()
    );
    bare_starts(python, &["-c", &code], n).await
}

/// The first directory under `dir` (depth-first, at most `depth` levels) that holds an
/// entry named `name`.
fn find_dir_holding(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    if dir.join(name).is_dir() {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    subdirs
        .iter()
        .find_map(|d| find_dir_holding(d, name, depth - 1))
}

/// A function whose cold start is measured.
struct ColdTarget {
    name: String,
    label: String,
    target_ms: Option<f64>,
    /// A template's skeleton (its warm throughput is measured too).
    template: bool,
    /// The first request posts this and must get a 200 (else: GET).
    post: Option<&'static [u8]>,
    /// The bare start it is compared with.
    base_prog: String,
    base_args: Vec<String>,
}

/// `reference_rps`: the bench's function through fjord at its best concurrency, the
/// templates' warm-throughput baseline.
pub async fn run(b: &mut Bench<'_>, fjord: &Fjord, reference_rps: f64) -> anyhow::Result<()> {
    let trials = if b.quick() { 20 } else { 60 };
    let project = templates::build(&b.opts.fjord, fjord, &TEMPLATES).await?;
    let mut cold = vec![ColdTarget {
        name: "cold-rust".into(),
        label: "compiled function (the bench's own Rust http function)".into(),
        target_ms: Some(2.0),
        template: false,
        post: None,
        base_prog: b.bench_bin.clone(),
        base_args: vec!["noop".into()],
    }];
    fjord
        .deploy(bench_function("cold-rust", &b.bench_bin, scales_to_zero()))
        .await?;
    for (lang, target_ms, base_prog, base_args) in TEMPLATES {
        cold.push(ColdTarget {
            name: templates::function_name(lang),
            label: format!("template {lang}"),
            target_ms,
            template: true,
            post: None,
            base_prog: base_prog.to_string(),
            base_args: base_args.iter().map(|a| a.to_string()).collect(),
        });
    }
    // The performance issue's goal for a Python function with a real import; the baseline
    // is the same interpreter importing the same Pillow (from the function's own build).
    cold.push(ColdTarget {
        name: templates::PILLOW_FUNCTION.into(),
        label: "python3-http importing Pillow (the image-resizer example, POST of a PNG)".into(),
        target_ms: Some(15.0),
        template: false,
        post: Some(templates::TINY_PNG),
        base_prog: "/usr/bin/python3".into(),
        base_args: vec!["-c".into(), "from PIL import Image".into()],
    });
    for f in &cold {
        let name = &f.name;
        fjord
            .wait_available(name, 1, Duration::from_secs(60))
            .await?;
        if f.template {
            templates::warm_throughput(b, fjord, name, &f.label, reference_rps).await?;
        }
        let mut times = cold_starts_with(fjord, name, trials, f.post).await?;
        let args: Vec<&str> = f.base_args.iter().map(String::as_str).collect();
        let mut base = if f.post.is_some() {
            pillow_imports(project.path(), &f.base_prog, trials).await?
        } else {
            bare_starts(&f.base_prog, &args, trials).await?
        };
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        let b50 = percentile(&mut base, 0.5);
        let mut row = Figure::new(
            &format!("cold start: {}", f.label),
            &format!("scale 0→1 to first response, p50 ({trials} trials)"),
            p50,
            "ms",
        )
        .baseline(&format!("bare `{} {}`", f.base_prog, args.join(" ")), b50);
        if let Some(t) = f.target_ms {
            row = row.target(&format!("≤ {t} ms p50"), p50 <= t);
        }
        b.push(row.note(&format!("p99 {p99:.1} ms; includes the scale API call")));
        fjord.scale(name, 0).await?;
    }
    drop(project);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_directory_that_holds_a_package() {
        let t = tempfile::tempdir().unwrap();
        let deps = t.path().join("fn/.fjord/build/context/deps");
        std::fs::create_dir_all(deps.join("PIL")).unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        assert_eq!(find_dir_holding(t.path(), "PIL", 6), Some(deps));
        assert_eq!(find_dir_holding(t.path(), "PIL", 2), None);
        assert_eq!(find_dir_holding(t.path(), "numpy", 6), None);
    }
}
