//! The public API beyond the golden cases: files on disk, size limits, error variants.

use std::path::Path;

use fjord_stack::{MAX_FILE_BYTES, ParseOptions, StackError, parse_file, parse_str};

fn no_env(_: &str) -> Option<String> {
    None
}

const OPTS: ParseOptions<'static> = ParseOptions { env: &no_env };

#[test]
fn parse_file_labels_by_path_and_reads_environment_files_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("app");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("stack.yml"),
        "provider: {name: openfaas}\nfunctions:\n  w:\n    image: a/w\n    environment_file: [w.yml]\n",
    )
    .unwrap();
    std::fs::write(
        sub.join("w.yml"),
        "environment:\n  A: 1\n  typo: x\nenvironmnet: {}\n",
    )
    .unwrap();
    let parsed = parse_file(&sub.join("stack.yml"), &OPTS).unwrap();
    assert_eq!(parsed.stack.functions[0].environment["A"], "1");
    let label = sub.join("w.yml").display().to_string();
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(
        parsed.warnings[0].starts_with(&format!("{label}:4:1: environmnet: unknown key")),
        "{}",
        parsed.warnings[0]
    );
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = parse_file(Path::new("/nonexistent/stack.yml"), &OPTS).unwrap_err();
    assert!(matches!(err, StackError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/stack.yml: cannot read"),
        "{err}"
    );
    assert!(err.at().is_none());
}

#[test]
fn huge_documents_are_refused_before_parsing() {
    let mut text = String::from("provider: {name: openfaas}\nfunctions: {}\n");
    while text.len() <= MAX_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let err = parse_str(&text, "big.yml", Path::new("."), &OPTS).unwrap_err();
    assert!(matches!(err, StackError::TooLarge { .. }), "{err}");
    assert!(err.to_string().starts_with("big.yml: the file is"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stack.yml");
    std::fs::write(&path, &text).unwrap();
    assert!(matches!(
        parse_file(&path, &OPTS).unwrap_err(),
        StackError::TooLarge { size, .. } if size == text.len()
    ));
}

#[test]
fn substitution_cannot_inflate_past_the_limit() {
    let big = "x".repeat(MAX_FILE_BYTES / 4);
    let env = move |name: &str| (name == "BIG").then(|| big.clone());
    let text =
        "provider: {name: openfaas}\nfunctions:\n  a:\n    image: ${BIG}${BIG}${BIG}${BIG}${BIG}\n";
    let err = parse_str(
        text,
        "stack.yml",
        Path::new("."),
        &ParseOptions { env: &env },
    )
    .unwrap_err();
    assert!(matches!(err, StackError::TooLarge { .. }), "{err}");
}

#[test]
fn wide_alias_fanout_is_refused_quickly() {
    // 1,000 aliases of a 1,000-element list: a million nodes from a 10 kB file.
    let mut text = String::from("provider: {name: openfaas}\nx: &a [");
    text.push_str(&vec!["1"; 1000].join(","));
    text.push_str("]\ny: [");
    text.push_str(&vec!["*a"; 1000].join(","));
    text.push_str("]\n");
    let err = parse_str(&text, "stack.yml", Path::new("."), &OPTS).unwrap_err();
    assert!(matches!(err, StackError::Limit { .. }), "{err}");
}

#[test]
fn deep_flow_nesting_is_refused() {
    let text = format!("a: {}1{}\n", "[".repeat(200), "]".repeat(200));
    let err = parse_str(&text, "stack.yml", Path::new("."), &OPTS).unwrap_err();
    assert!(matches!(err, StackError::Limit { .. }), "{err}");
    assert!(err.to_string().contains("deeper than 32 levels"), "{err}");
}

#[test]
fn error_positions_are_in_the_file_as_written() {
    let env = |name: &str| (name == "LONG").then(|| "a-very-long-owner-name".to_string());
    let text = "provider: {name: openfaas}\nfunctions:\n  a:\n    image: ${LONG}/a\n    secrets: ${LONG}\n";
    let err = parse_str(
        text,
        "stack.yml",
        Path::new("."),
        &ParseOptions { env: &env },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stack.yml:5:14: functions.a.secrets: invalid type: string, expected a list of strings; write a YAML list, e.g. [a, b] or one `- item` per line"
    );
    let at = err.at().unwrap();
    assert_eq!((at.line, at.column), (5, 14));
}
