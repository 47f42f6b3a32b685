//! Golden-file tests for the stack.yml parser.
//!
//! Each directory `tests/golden/<case>/` holds a `stack.yml` (plus any environment files it
//! names) and exactly one of:
//!
//! - `expected.json`: the resolved `Stack` as pretty JSON, with an extra top-level
//!   `"warnings"` array holding `Parsed::warnings`;
//! - `expected_error.txt`: the exact `Display` text of the `StackError`, plus a newline.
//!
//! Every case is parsed with `parse_str(text, "stack.yml", <case dir>, ..)`, so positions read
//! `stack.yml:L:C` and environment files are named relative to it, and with the fixed
//! environment in [`ENV`] for `${VAR}` substitution (nothing else is set).
//!
//! To accept new output after an intended change, regenerate the expected files and review the
//! diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p fjord-stack --test golden
//! git diff crates/fjord-stack/tests/golden
//! ```
//!
//! A new case needs only its `stack.yml`; the first `UPDATE_GOLDEN=1` run writes its expected
//! file.

use std::fs;
use std::path::{Path, PathBuf};

use fjord_stack::{ParseOptions, Stack, parse_str};

/// `expected.json`: the stack's fields in declaration order, then the warnings.
#[derive(serde::Serialize)]
struct Golden<'a> {
    #[serde(flatten)]
    stack: &'a Stack,
    warnings: &'a [String],
}

/// The environment every case sees.
const ENV: &[(&str, &str)] = &[("OWNER", "acme"), ("TAG", "1.2"), ("EMPTY", "")];

fn env(name: &str) -> Option<String> {
    ENV.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// What parsing a case produced, as the text of its expected file.
enum Outcome {
    Json(String),
    Error(String),
}

fn run_case(dir: &Path) -> Outcome {
    let text = fs::read_to_string(dir.join("stack.yml")).expect("read stack.yml");
    match parse_str(&text, "stack.yml", dir, &ParseOptions { env: &env }) {
        Ok(parsed) => {
            let golden = Golden {
                stack: &parsed.stack,
                warnings: &parsed.warnings,
            };
            Outcome::Json(serde_json::to_string_pretty(&golden).expect("serialize") + "\n")
        }
        Err(err) => Outcome::Error(format!("{err}\n")),
    }
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .expect("tests/golden exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("stack.yml").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let cases = cases();
    assert!(cases.len() >= 15, "expected at least 15 golden cases");
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let json_path = dir.join("expected.json");
        let error_path = dir.join("expected_error.txt");
        let (actual, path, other) = match run_case(dir) {
            Outcome::Json(s) => (s, &json_path, &error_path),
            Outcome::Error(s) => (s, &error_path, &json_path),
        };
        if update {
            fs::write(path, &actual).unwrap();
            if other.exists() {
                fs::remove_file(other).unwrap();
            }
            continue;
        }
        match fs::read_to_string(path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: {} differs\n--- expected\n{expected}--- actual\n{actual}",
                path.file_name().unwrap().to_string_lossy()
            )),
            Err(_) => failures.push(format!(
                "{name}: got {} but {} is missing{}\n--- actual\n{actual}",
                if path == &json_path {
                    "a stack"
                } else {
                    "an error"
                },
                path.file_name().unwrap().to_string_lossy(),
                if other.exists() {
                    format!(
                        " (the case expects {})",
                        other.file_name().unwrap().to_string_lossy()
                    )
                } else {
                    String::new()
                },
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed (rerun with UPDATE_GOLDEN=1 to accept):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
