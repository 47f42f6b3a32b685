//! Function and namespace names: DNS-1123 labels, as faas-netes validates them.

use std::fmt;

/// The namespace used when a request names none, as in OpenFaaS.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is {len} characters long; the limit is 63")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
    },
    #[error(
        "{what} {name:?} is not a valid DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    Invalid { what: &'static str, name: String },
}

/// Checks a DNS-1123 label (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 characters).
pub fn validate_label(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > 63 {
        return Err(NameError::TooLong {
            what,
            name: name.chars().take(80).collect(),
            len: name.len(),
        });
    }
    let bytes = name.as_bytes();
    let ok_inner = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ok_ends = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_inner || !ok_ends(bytes[0]) || !ok_ends(bytes[bytes.len() - 1]) {
        return Err(NameError::Invalid {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A function's identity: name and namespace, both validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    pub name: String,
    pub namespace: String,
}

impl FunctionKey {
    /// Validates both parts; an empty or absent namespace means [`DEFAULT_NAMESPACE`].
    pub fn new(name: &str, namespace: Option<&str>) -> Result<Self, NameError> {
        validate_label("function name", name)?;
        let namespace = match namespace {
            None | Some("") => DEFAULT_NAMESPACE,
            Some(ns) => {
                validate_label("namespace", ns)?;
                ns
            }
        };
        Ok(Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }

    /// Splits a route segment `name` or `name.namespace` at its last dot, as the OpenFaaS
    /// gateway does. Does not validate: lookups of invalid names simply find nothing.
    pub fn split_route(segment: &str) -> (&str, &str) {
        match segment.rfind('.') {
            Some(i) => (&segment[..i], &segment[i + 1..]),
            None => (segment, DEFAULT_NAMESPACE),
        }
    }
}

impl fmt::Display for FunctionKey {
    /// `name.namespace`, the form used in metrics labels and routes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "env", "nodeinfo-2", "a1", &"x".repeat(63)] {
            validate_label("function name", ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "é",
            &"x".repeat(64),
            "../etc",
        ] {
            assert!(validate_label("function name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_split_uses_last_dot() {
        assert_eq!(FunctionKey::split_route("env"), ("env", DEFAULT_NAMESPACE));
        assert_eq!(
            FunctionKey::split_route("env.openfaas-fn"),
            ("env", "openfaas-fn")
        );
        assert_eq!(FunctionKey::split_route("a.b.c"), ("a.b", "c"));
    }

    #[test]
    fn key_defaults_namespace() {
        let k = FunctionKey::new("env", None).unwrap();
        assert_eq!(k.to_string(), "env.openfaas-fn");
        let k = FunctionKey::new("env", Some("")).unwrap();
        assert_eq!(k.namespace, DEFAULT_NAMESPACE);
        assert!(FunctionKey::new("env", Some("Bad")).is_err());
    }
}
