//! The template functions: the skeletons of `fjord new --lang L`, built, pushed and deployed
//! with `fjord up` as users do; their warm throughput (their cold start is measured in
//! `cold_start`, beside the bench's own function).

use std::path::Path;

use anyhow::ensure;

use super::Bench;
use crate::figure::Figure;
use crate::fixtures::Fjord;
use crate::load;

/// A template measured: language, cold-start target (ms), and the bare start of the same
/// interpreter or binary (program, arguments) as the baseline.
pub type Template = (
    &'static str,
    Option<f64>,
    &'static str,
    &'static [&'static str],
);

/// The targets are the performance issue's goals (compiled ≤ 2 ms, python3-http ≤ 8 ms,
/// node ≤ 15 ms); java, ruby and php have none there, theirs are the templates issue's.
pub const TEMPLATES: [Template; 7] = [
    (
        "python3-http",
        Some(8.0),
        "/usr/bin/python3",
        &["-c", "pass"],
    ),
    ("node", Some(15.0), "/usr/bin/node", &["-e", "0"]),
    ("rust", Some(2.0), "/bin/true", &[]),
    ("golang-middleware", Some(2.0), "/bin/true", &[]),
    // The bare JVM with the template's flags (and the JDK's own CDS archive).
    (
        "java",
        Some(150.0),
        "/usr/bin/java",
        &[
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:-UsePerfData",
            "-version",
        ],
    ),
    (
        "ruby",
        Some(30.0),
        "/usr/bin/ruby",
        &["--disable-gems", "-e", "0"],
    ),
    // Fork mode: a php process per request, so its start is in every answer.
    ("php", Some(30.0), "/usr/bin/php", &["-r", ""]),
];

/// The function name a template is deployed as.
pub fn function_name(lang: &str) -> String {
    format!("tmpl-{lang}")
}

/// The labels appended to each function of the generated stack.yml: the cold-start loop
/// scales it to zero, which the policy allows only with `scale.zero`; one replica (no
/// autoscaling) while its warm throughput is measured.
const STACK_LABELS: &str =
    "    labels:\n      com.openfaas.scale.zero: \"true\"\n      com.openfaas.scale.max: \"1\"\n";

/// Creates one function per template with `fjord new` and builds, pushes and deploys them
/// with `fjord up --no-wait`. Returns the project dir (removed when dropped).
pub async fn build(
    bin: &Path,
    fjord: &Fjord,
    templates: &[Template],
) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("fjord-bench-templates-")
        .tempdir_in("/var/tmp")?;
    for (i, (lang, ..)) in templates.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("new")
            .arg(function_name(lang))
            .arg("--lang")
            .arg(lang)
            .current_dir(dir.path());
        if i > 0 {
            cmd.args(["--append", "stack.yml"]);
        }
        let out = cmd.output().await?;
        ensure!(
            out.status.success(),
            "fjord new --lang {lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stack = dir.path().join("stack.yml");
        let mut text = std::fs::read_to_string(&stack)?;
        text.push_str(STACK_LABELS);
        std::fs::write(&stack, text)?;
    }
    add_image_resizer(dir.path())?;
    fjord
        .cli(
            bin,
            dir.path(),
            &["up", "--no-wait", "--quiet", "--parallel", "2"],
        )
        .await?;
    Ok(dir)
}

/// The function name the image-resizer example is deployed as.
pub const PILLOW_FUNCTION: &str = "tmpl-pillow";

/// Adds the image-resizer example (python3-http, imports Pillow) to the project, unchanged:
/// the cold start of a Python function with a real import.
fn add_image_resizer(dir: &Path) -> anyhow::Result<()> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/image-resizer");
    let handler = dir.join("image-resizer");
    std::fs::create_dir_all(&handler)?;
    for entry in std::fs::read_dir(&example)? {
        let entry = entry?;
        std::fs::copy(entry.path(), handler.join(entry.file_name()))?;
    }
    let stack = dir.join("stack.yml");
    let mut text = std::fs::read_to_string(&stack)?;
    text.push_str(&format!(
        "  {PILLOW_FUNCTION}:\n    lang: python3-http\n    handler: ./image-resizer\n    image: {PILLOW_FUNCTION}:latest\n"
    ));
    text.push_str(STACK_LABELS);
    std::fs::write(&stack, text)?;
    Ok(())
}

/// An 8×8 RGB PNG (made with Python's zlib and struct): what the cold-start loop posts to
/// the image-resizer, which answers 200 with a JPEG only once Pillow has decoded it.
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x08, 0x02, 0x00, 0x00, 0x00, 0x4b, 0x6d, 0x29,
    0xdc, 0x00, 0x00, 0x00, 0x11, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x38, 0x61, 0x23, 0x82,
    0x15, 0x31, 0x0c, 0x2d, 0x09, 0x00, 0x87, 0x5d, 0x46, 0x01, 0x55, 0xaa, 0xc5, 0x9b, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Warm throughput of one (available) template function at c=16, against the bench's own
/// Rust function at its best concurrency (`reference_rps`).
pub async fn warm_throughput(
    b: &mut Bench<'_>,
    fjord: &Fjord,
    name: &str,
    label: &str,
    reference_rps: f64,
) -> anyhow::Result<()> {
    let r = load::run(
        &fjord.function_target(name),
        16,
        b.timing.warm,
        b.timing.dur,
    )
    .await?;
    r.ensure_no_errors(&format!("warm invoke {name}"))?;
    b.push(
        Figure::new(
            &format!("warm invoke, {label}, c=16"),
            "throughput via fjord",
            r.rps(),
            "req/s",
        )
        .baseline("bench's Rust function via fjord (best c)", reference_rps)
        .note(&format!(
            "p50 {:.0} µs, p99 {:.0} µs; 1 replica",
            r.p(0.5),
            r.p(0.99)
        )),
    );
    Ok(())
}
