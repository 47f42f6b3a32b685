//! [`StackError`]: every way a stack file can be refused, each naming the file, the line and
//! column (1-based, in the file as written, before `${VAR}` substitution), the field path where
//! one applies, and what to do about it.

use std::fmt;

use fjord_core::names::NameError;
use fjord_core::quantity::QuantityError;

/// A position in a file: `stack.yml:7:14`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The file as the caller named it (`parse_str`'s `file_label`, or the path given to
    /// `parse_file`); environment files are named relative to it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a stack file (or one of its `environment_file`s) was refused.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The file could not be read.
    #[error("{file}: cannot read the stack file: {source}; check the path given with -f")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },

    /// An `environment_file` entry could not be read.
    #[error(
        "{at}: {path}: cannot read environment file {file:?}: {source}; environment files are resolved relative to the stack file's directory"
    )]
    ReadEnvironmentFile {
        at: At,
        path: String,
        file: String,
        #[source]
        source: std::io::Error,
    },

    /// The file is larger than [`crate::MAX_FILE_BYTES`] (after `${VAR}` substitution).
    #[error(
        "{file}: the file is {size} bytes, over the {limit}-byte limit for stack files; split the functions across several stack files"
    )]
    TooLarge {
        file: String,
        size: usize,
        limit: usize,
    },

    /// Not valid YAML.
    #[error(
        "{at}: invalid YAML: {message}; fix the syntax (check indentation, quoting and brackets)"
    )]
    Syntax { at: At, message: String },

    /// The YAML exceeds a parser budget: nesting depth, node count (alias bombs), documents.
    #[error("{at}: refusing the YAML: {message}")]
    Limit { at: At, message: String },

    /// A mapping repeats a key. YAML forbids it and faas-cli's parser refuses it too; silently
    /// picking one would hide a mistake.
    #[error("{at}: {path}: duplicate key {key:?}; remove one of the entries or merge them")]
    DuplicateKey { at: At, path: String, key: String },

    /// A value has the wrong YAML type (a list where a string belongs, ...).
    #[error("{at}: {path}: invalid type: {found}, expected {expected}; {hint}")]
    InvalidType {
        at: At,
        path: String,
        found: &'static str,
        expected: &'static str,
        hint: &'static str,
    },

    /// A required field is absent (or null).
    #[error("{at}: {path}: missing required field `{field}`; {hint}")]
    MissingField {
        at: At,
        path: String,
        field: &'static str,
        hint: &'static str,
    },

    /// `version` is present and is not `1.0`.
    #[error(
        "{at}: version: unsupported stack file version {found:?}; only \"1.0\" is supported, set `version: 1.0` or remove the line"
    )]
    UnsupportedVersion { at: At, found: String },

    /// `provider.name` is neither `openfaas` nor `fjord`.
    #[error(
        "{at}: provider.name: unsupported provider {found:?}; use `name: openfaas` (faas-cli compatible) or `name: fjord`"
    )]
    UnsupportedProvider { at: At, found: String },

    /// A function or namespace name is not a DNS-1123 label.
    #[error("{at}: {path}: {source}")]
    InvalidName {
        at: At,
        path: String,
        #[source]
        source: NameError,
    },

    /// A `limits`/`requests` quantity does not parse.
    #[error("{at}: {path}: {source}")]
    InvalidQuantity {
        at: At,
        path: String,
        #[source]
        source: QuantityError,
    },

    /// Any other invalid value.
    #[error("{at}: {path}: {message}")]
    InvalidValue {
        at: At,
        path: String,
        message: String,
    },
}

impl StackError {
    /// Where the error is, when it has a position.
    pub fn at(&self) -> Option<&At> {
        match self {
            StackError::Read { .. } | StackError::TooLarge { .. } => None,
            StackError::ReadEnvironmentFile { at, .. }
            | StackError::Syntax { at, .. }
            | StackError::Limit { at, .. }
            | StackError::DuplicateKey { at, .. }
            | StackError::InvalidType { at, .. }
            | StackError::MissingField { at, .. }
            | StackError::UnsupportedVersion { at, .. }
            | StackError::UnsupportedProvider { at, .. }
            | StackError::InvalidName { at, .. }
            | StackError::InvalidQuantity { at, .. }
            | StackError::InvalidValue { at, .. } => Some(at),
        }
    }
}
