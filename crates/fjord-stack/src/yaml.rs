//! Parses YAML text into a small position-aware tree with `serde-saphyr`, under a budget that
//! refuses YAML bombs, and maps the library's errors into [`StackError`]s.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, Error as YamlError, MessageFormatter, Spanned};

use crate::error::{At, StackError};
use crate::subst::Substituted;

/// Deepest nesting accepted; a stack file needs about five levels.
pub const MAX_DEPTH: usize = 32;
/// Most YAML nodes (scalars and collections, counting every alias expansion) in one file.
pub const MAX_NODES: usize = 100_000;
/// Most alias (`*name`) uses in one file.
pub const MAX_ALIASES: usize = 1_000;

/// A YAML value as parsed, before any schema is applied.
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Int,
    Float,
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Raw, E> {
                Ok(Raw::Int)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Raw, E> {
                Ok(Raw::Int)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Raw, E> {
                Ok(Raw::Int)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Raw, E> {
                Ok(Raw::Int)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Raw, E> {
                Ok(Raw::Float)
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<Raw>>()? {
                    items.push(item);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = a.next_key::<Spanned<String>>()? {
                    let value = a.next_value::<Spanned<Raw>>()?;
                    entries.push((key, value));
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A parsed YAML node with its position in the file as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub at: At,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    /// A scalar that is not null. `text` is the string value for strings and the source
    /// spelling for booleans and numbers (`1.50` stays `1.50`, `0x1F` stays `0x1F`), which is
    /// what Go's YAML decoder gives faas-cli for a string field.
    Scalar {
        text: String,
        kind: ScalarKind,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Bool(bool),
    Int,
    Float,
    Str,
}

/// A mapping key and where it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub at: At,
}

impl Kind {
    /// The YAML type's name, for "invalid type: X" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Scalar { kind, .. } => match kind {
                ScalarKind::Bool(_) => "boolean",
                ScalarKind::Int => "integer",
                ScalarKind::Float => "float",
                ScalarKind::Str => "string",
            },
            Kind::Seq(_) => "sequence",
            Kind::Map(_) => "mapping",
        }
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_events: 4 * MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_documents: 1,
            max_merge_keys: MAX_ALIASES,
            max_total_scalar_bytes: crate::MAX_FILE_BYTES,
            max_recorded_anchor_events: MAX_NODES,
            max_recorded_anchor_bytes: crate::MAX_FILE_BYTES,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_NODES,
            max_replay_stack_depth: MAX_DEPTH,
        },
        // Duplicates reach the tree and are refused there, where the key path is known.
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// Parses `src.text` (labelled `file` in positions) into a [`Node`]. An empty document (or one
/// holding only comments) is `Kind::Null`.
pub(crate) fn parse(src: &Substituted, file: &str) -> Result<Node, StackError> {
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(&src.text, options())
        .map_err(|e| map_error(&e, src, file))?;
    let node = convert(raw, src, file);
    check_duplicates(&node, "")?;
    Ok(node)
}

/// Joins a key onto a dotted path: `functions` + `resize` = `functions.resize`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Refuses a mapping that repeats a key, naming the second occurrence. YAML forbids duplicate
/// keys and faas-cli's Go parser refuses them; keeping either value silently would hide a
/// mistake. (Keys overridden through a `<<` merge are not duplicates.)
fn check_duplicates(node: &Node, path: &str) -> Result<(), StackError> {
    match &node.kind {
        Kind::Map(entries) => {
            let mut seen = std::collections::HashSet::new();
            for (key, value) in entries {
                if !seen.insert(key.name.as_str()) {
                    return Err(StackError::DuplicateKey {
                        at: key.at.clone(),
                        path: join(path, &key.name),
                        key: key.name.clone(),
                    });
                }
                check_duplicates(value, &join(path, &key.name))?;
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                check_duplicates(item, &format!("{path}[{i}]"))?;
            }
        }
        Kind::Null | Kind::Scalar { .. } => {}
    }
    Ok(())
}

fn at_of(loc: &serde_saphyr::Location, src: &Substituted, file: &str) -> At {
    let (line, column) = match loc.span().byte_offset() {
        Some(offset) => src.line_col(usize::try_from(offset).unwrap_or(usize::MAX)),
        None => (
            u32::try_from(loc.line().max(1)).unwrap_or(u32::MAX),
            u32::try_from(loc.column().max(1)).unwrap_or(u32::MAX),
        ),
    };
    At {
        file: file.to_string(),
        line,
        column,
    }
}

fn convert(raw: Spanned<Raw>, src: &Substituted, file: &str) -> Node {
    let at = at_of(&raw.referenced, src, file);
    let source_text = || {
        let span = raw.defined.span();
        span.byte_offset()
            .zip(span.byte_len())
            .and_then(|(o, l)| src.slice(usize::try_from(o).ok()?, usize::try_from(l).ok()?))
            .map(|s| s.trim().to_string())
    };
    let kind = match raw.value {
        Raw::Null => Kind::Null,
        Raw::Bool(b) => Kind::Scalar {
            text: source_text()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| b.to_string()),
            kind: ScalarKind::Bool(b),
        },
        Raw::Int => Kind::Scalar {
            text: source_text().unwrap_or_default(),
            kind: ScalarKind::Int,
        },
        Raw::Float => Kind::Scalar {
            text: source_text().unwrap_or_default(),
            kind: ScalarKind::Float,
        },
        Raw::Str(s) => Kind::Scalar {
            text: s,
            kind: ScalarKind::Str,
        },
        Raw::Seq(items) => Kind::Seq(items.into_iter().map(|n| convert(n, src, file)).collect()),
        Raw::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        at: at_of(&k.referenced, src, file),
                        name: k.value,
                    };
                    (key, convert(v, src, file))
                })
                .collect(),
        ),
    };
    Node { at, kind }
}

/// The error underneath the library's wrappers (snippets, alias provenance).
fn original(mut e: &YamlError) -> &YamlError {
    loop {
        match e {
            YamlError::WithSnippet { error, .. } | YamlError::AliasError { error, .. } => {
                e = error;
            }
            other => return other,
        }
    }
}

fn map_error(e: &YamlError, src: &Substituted, file: &str) -> StackError {
    let at = e
        .location()
        .map(|l| at_of(&l, src, file))
        .unwrap_or_else(|| At {
            file: file.to_string(),
            line: 1,
            column: 1,
        });
    let inner = original(e);
    match inner {
        YamlError::DuplicateMappingKey { key, .. } => StackError::DuplicateKey {
            at,
            path: String::from("(document)"),
            key: key.clone().unwrap_or_else(|| String::from("(complex key)")),
        },
        YamlError::Budget { breach, .. } => StackError::Limit {
            at,
            message: breach_message(breach),
        },
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => StackError::Limit {
            at,
            message: bomb_message(),
        },
        YamlError::AliasReplayStackDepthExceeded { .. } => StackError::Limit {
            at,
            message: format!("aliases nest deeper than {MAX_DEPTH} levels; write the values out"),
        },
        other => StackError::Syntax {
            at,
            message: serde_saphyr::UserMessageFormatter
                .format_message(other)
                .into_owned(),
        },
    }
}

fn breach_message(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!(
            "it nests deeper than {MAX_DEPTH} levels; a stack file needs about five, flatten it"
        ),
        BudgetBreach::Nodes { .. }
        | BudgetBreach::Events { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => bomb_message(),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::MergeKeys { .. } => format!(
            "it uses more than {MAX_ALIASES} anchors, aliases or merge keys; write the values out"
        ),
        BudgetBreach::Documents { .. } => String::from(
            "it holds more than one YAML document (`---`); put all functions in one document",
        ),
        BudgetBreach::ScalarBytes { .. } | BudgetBreach::InputBytes { .. } => format!(
            "it holds more than {} bytes of text; split it into several stack files",
            crate::MAX_FILE_BYTES
        ),
        other => format!("a parser limit was exceeded ({other:?}); simplify the YAML"),
    }
}

fn bomb_message() -> String {
    format!(
        "it expands to more than {MAX_NODES} YAML nodes counting alias expansions (a billion-laughs alias bomb?); write the values out instead of nesting aliases"
    )
}
