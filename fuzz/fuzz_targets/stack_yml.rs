//! `fjord_stack::parse_str`, the faas-cli `stack.yml` parser: `${VAR}` substitution, YAML under
//! its budgets (depth, nodes, aliases, documents), the schema and the `environment_file` merge.
//!
//! Property: it never panics, whatever the bytes. When it accepts a file, the result holds what
//! the parser promises: valid and sorted function names, valid namespaces and quantities, a
//! normalised gateway URL, `handler` wherever `lang` is. Every accepted function is also turned
//! into a deployment and validated as the gateway would (`FunctionSpec::from_deployment`).
//!
//! `environment_file` entries are read from disk, relative to a scratch directory holding a few
//! environment files (the golden tests' ones). So that no input makes the fuzzer open a file
//! outside it (a blocking `/dev/stdin`, a device), inputs that could name a file by an absolute
//! path or through `..` are skipped; see [`could_read_outside_the_sandbox`].

#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fjord_core::FunctionSpec;
use fjord_core::names::validate_label;
use fjord_core::quantity::{parse_cpu, parse_memory};
use fjord_stack::{MAX_FILE_BYTES, PROVIDERS, ParseOptions, parse_str};
use libfuzzer_sys::fuzz_target;

/// The environment every input sees; the same as the golden tests'.
const ENV: &[(&str, &str)] = &[("OWNER", "acme"), ("TAG", "1.2"), ("EMPTY", "")];

fn env(name: &str) -> Option<String> {
    ENV.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Environment files available to `environment_file` (relative to the scratch directory).
const ENV_FILES: &[(&str, &str)] = &[
    (
        "env/first.yml",
        include_str!("../../crates/fjord-stack/tests/golden/environment-file-merge/env/first.yml"),
    ),
    (
        "env/second.yml",
        include_str!("../../crates/fjord-stack/tests/golden/environment-file-merge/env/second.yml"),
    ),
    (
        "env.yml",
        include_str!("../../crates/fjord-stack/tests/golden/full-faas-cli-example/env.yml"),
    ),
    (
        "worker.env.yml",
        include_str!(
            "../../crates/fjord-stack/tests/golden/environment-file-wrong-type/worker.env.yml"
        ),
    ),
];

/// The scratch directory `environment_file` entries resolve in, created once per process.
fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("fjord-fuzz-stack-yml");
        for (name, text) in ENV_FILES {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).expect("create the sandbox");
            // Atomically, in case several fuzzing jobs start at once.
            let tmp = dir.join(format!(
                ".{}.{}",
                std::process::id(),
                name.replace('/', "_")
            ));
            std::fs::write(&tmp, text).expect("write an environment file");
            std::fs::rename(&tmp, &path).expect("install an environment file");
        }
        dir
    })
}

/// The text the parser sees after `${VAR}` substitution.
fn substituted(input: &str) -> String {
    fjord_stack::substitute_env(input, &env)
}

/// Whether parsing `text` might open a file outside [`sandbox`]. Conservative: it may only
/// when some mapping key can read `environment_file` and some scalar can be a path that is
/// absolute or climbs with `..`. `text` is the input after `${VAR}` substitution.
///
/// - A key can be spelt with escapes only inside double quotes (`"\x65nvironment_file"`), or
///   as a `!!binary` scalar (also through a `%TAG` directive or a `%`-escaped tag).
/// - A path is absolute when a scalar starts with `/`: a `/` after anything but a character
///   that can only continue a scalar (`a/b`, `./b`, `http://`) is taken as one.
fn could_read_outside_the_sandbox(text: &str) -> bool {
    let has = |needle: &str| text.contains(needle);
    if (has("\\") && has("\"")) || (has("!") && (has("%") || has("binary"))) {
        return true;
    }
    if !has("environment_file") {
        return false;
    }
    if has("..") {
        return true;
    }
    let b = text.as_bytes();
    let continues = |k: usize| {
        let c = b[k];
        c.is_ascii_alphanumeric()
            || b"._~+-/%@=".contains(&c)
            || (c == b':' && k > 0 && b[k - 1].is_ascii_alphanumeric())
    };
    b.iter()
        .enumerate()
        .any(|(k, &c)| c == b'/' && (k == 0 || !continues(k - 1)))
}

fn check(data: &[u8]) {
    // The parser takes text (`parse_file` refuses non-UTF-8 before it).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if could_read_outside_the_sandbox(&substituted(text)) {
        return;
    }
    let opts = ParseOptions { env: &env };
    let Ok(parsed) = parse_str(text, "stack.yml", sandbox(), &opts) else {
        return;
    };
    assert!(text.len() <= MAX_FILE_BYTES);
    let stack = &parsed.stack;
    assert!(stack.version.as_deref().is_none_or(|v| v == "1.0"));
    assert!(PROVIDERS.contains(&stack.provider.name.as_str()));
    if let Some(g) = &stack.provider.gateway {
        assert!(
            g.starts_with("http://") || g.starts_with("https://"),
            "{g:?}"
        );
        assert!(
            !g.ends_with('/') && !g.contains(char::is_whitespace),
            "{g:?}"
        );
    }
    for pair in stack.functions.windows(2) {
        assert!(
            pair[0].name < pair[1].name,
            "functions sorted, no duplicates"
        );
    }
    for f in &stack.functions {
        validate_label("function name", &f.name).expect("function names are DNS-1123 labels");
        if let Some(ns) = &f.namespace {
            validate_label("namespace", ns).expect("namespaces are DNS-1123 labels");
        }
        assert!(!f.image.is_empty());
        assert!(f.lang.is_none() || f.handler.is_some());
        for r in [&f.limits, &f.requests].into_iter().flatten() {
            assert!(r.memory.is_some() || r.cpu.is_some());
            if let Some(m) = &r.memory {
                parse_memory(m).expect("accepted memory quantities parse");
            }
            if let Some(c) = &r.cpu {
                parse_cpu(c).expect("accepted cpu quantities parse");
            }
        }
        let none = BTreeMap::new();
        let d = f.deployment(Some("python3 index.py"), &none, &none, &none, &[]);
        assert_eq!(d.service, f.name);
        let _ = FunctionSpec::from_deployment(d);
    }
}

fuzz_target!(|data: &[u8]| check(data));
