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
//! outside it (a blocking `/dev/stdin`, a device), an input is skipped only when its YAML, decoded
//! by the same library with the same options as the parser (escapes, tags, merges and aliases
//! resolved), has an `environment_file` key and a string that is an absolute path or climbs
//! with `..`; see [`could_read_outside_the_sandbox`]. Escaped scalars (`"\x2fetc"`) are fuzzed.

#![no_main]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use fjord_core::FunctionSpec;
use fjord_core::names::validate_label;
use fjord_core::quantity::{parse_cpu, parse_memory};
use fjord_stack::{MAX_FILE_BYTES, PROVIDERS, ParseOptions, parse_str};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

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

/// A YAML document as `fjord_stack`'s YAML layer decodes it (crates/fjord-stack/src/yaml.rs,
/// `Raw`: keys as spanned strings, values through `deserialize_any`), escapes, tags, merges and
/// aliases resolved; only strings are kept.
enum Tree {
    Other,
    Str(String),
    Seq(Vec<Spanned<Tree>>),
    Map(Vec<(Spanned<String>, Spanned<Tree>)>),
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_none<E>(self) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
                Tree::deserialize(d)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
                Ok(Tree::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Tree, E> {
                Ok(Tree::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<Tree>>()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = a.next_key::<Spanned<String>>()? {
                    let value = a.next_value::<Spanned<Tree>>()?;
                    entries.push((key, value));
                }
                Ok(Tree::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Tree {
    /// Every mapping key and every string scalar, decoded.
    fn strings<'a>(&'a self, keys: &mut Vec<&'a str>, values: &mut Vec<&'a str>) {
        match self {
            Tree::Other => {}
            Tree::Str(s) => values.push(s),
            Tree::Seq(items) => items.iter().for_each(|i| i.value.strings(keys, values)),
            Tree::Map(entries) => {
                for (k, v) in entries {
                    keys.push(&k.value);
                    v.value.strings(keys, values);
                }
            }
        }
    }
}

/// The options of `fjord_stack`'s YAML layer (crates/fjord-stack/src/yaml.rs), so that this
/// decoding accepts exactly the documents the parser accepts.
fn yaml_options() -> serde_saphyr::Options {
    use fjord_stack::{MAX_ALIASES, MAX_DEPTH, MAX_NODES};
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_events: 4 * MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_documents: 1,
            max_merge_keys: MAX_ALIASES,
            max_total_scalar_bytes: MAX_FILE_BYTES,
            max_recorded_anchor_events: MAX_NODES,
            max_recorded_anchor_bytes: MAX_FILE_BYTES,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_NODES,
            max_replay_stack_depth: MAX_DEPTH,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// Whether parsing `text` (the input after `${VAR}` substitution) might open a file outside
/// [`sandbox`]: it may only when the decoded document has an `environment_file` key and some
/// decoded string is an absolute path or has a `..` component (`base_dir.join(s)` would leave
/// the sandbox). A document the YAML layer refuses never reaches the schema, which is what
/// reads environment files, so it is safe to parse.
fn could_read_outside_the_sandbox(text: &str) -> bool {
    let Ok(tree) = serde_saphyr::from_str_with_options::<Spanned<Tree>>(text, yaml_options())
    else {
        return false;
    };
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    tree.value.strings(&mut keys, &mut values);
    if !keys.contains(&"environment_file") {
        return false;
    }
    keys.iter().chain(&values).any(|s| {
        let p = Path::new(s);
        p.is_absolute() || p.components().any(|c| c == Component::ParentDir)
    })
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
