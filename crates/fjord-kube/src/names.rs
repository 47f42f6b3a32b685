//! Kubernetes' rules for names, label keys and values and environment variable names, checked
//! before an object is made, so a bad request fails with the field it came from instead of
//! half-applied objects (faas-netes checks only a name's characters: a 64-character name, or
//! one starting with a digit, creates the Deployment and then fails on the Service).

/// What is wrong with a name, key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// `rule` says in words what is allowed.
    #[error("is not allowed: {rule}")]
    Pattern { rule: &'static str },
}

/// Longest DNS label: names of Services, namespaces, containers, volumes; label values.
pub const MAX_LABEL: usize = 63;
/// Longest DNS subdomain: names of Deployments, Secrets; label key prefixes.
pub const MAX_SUBDOMAIN: usize = 253;

const LABEL_RULE: &str =
    "use lower-case letters, digits and '-', starting and ending with a letter or digit";
const DNS1035_RULE: &str = "use lower-case letters, digits and '-', starting with a letter and ending with a letter or digit";
const SUBDOMAIN_RULE: &str = "use lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit";
const QUALIFIED_RULE: &str = "use letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional DNS subdomain prefix and '/'";
const LABEL_VALUE_RULE: &str =
    "use letters, digits, '-', '_' and '.', starting and ending with a letter or digit";
const ENV_RULE: &str = "use printable ASCII characters other than '='";

fn check_len(s: &str, max: usize) -> Result<(), NameProblem> {
    if s.is_empty() {
        return Err(NameProblem::Empty);
    }
    if s.len() > max {
        return Err(NameProblem::TooLong { len: s.len(), max });
    }
    Ok(())
}

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without the length check.
fn is_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            lower_alnum(first)
                && lower_alnum(last)
                && b.iter().all(|&c| lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// A DNS-1123 label: namespaces, container and volume names.
pub fn dns1123_label(s: &str) -> Result<(), NameProblem> {
    check_len(s, MAX_LABEL)?;
    if is_label_shape(s) {
        Ok(())
    } else {
        Err(NameProblem::Pattern { rule: LABEL_RULE })
    }
}

/// A DNS-1035 label: Service names, which must also start with a letter. A function's name is
/// checked against this, since its Service takes the same name.
pub fn dns1035_label(s: &str) -> Result<(), NameProblem> {
    check_len(s, MAX_LABEL)?;
    if is_label_shape(s) && s.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(NameProblem::Pattern { rule: DNS1035_RULE })
    }
}

/// A DNS-1123 subdomain: Secret names (which are also the secret's key and file name).
pub fn dns1123_subdomain(s: &str) -> Result<(), NameProblem> {
    check_len(s, MAX_SUBDOMAIN)?;
    if s.split('.').all(is_label_shape) {
        Ok(())
    } else {
        Err(NameProblem::Pattern {
            rule: SUBDOMAIN_RULE,
        })
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a label or annotation key,
/// and a non-empty label value.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63
/// characters (`com.openfaas.scale.min` is a name without prefix).
pub fn qualified_name(s: &str) -> Result<(), NameProblem> {
    if s.is_empty() {
        return Err(NameProblem::Empty);
    }
    let pattern = NameProblem::Pattern {
        rule: QUALIFIED_RULE,
    };
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            dns1123_subdomain(prefix).map_err(|_| pattern.clone())?;
            name
        }
        None => s,
    };
    check_len(name, MAX_LABEL).map_err(|p| match p {
        NameProblem::Empty => pattern.clone(),
        other => other,
    })?;
    if is_qualified_part(name) {
        Ok(())
    } else {
        Err(pattern)
    }
}

/// A label value: empty, or at most 63 characters of the key name's alphabet.
pub fn label_value(s: &str) -> Result<(), NameProblem> {
    if s.is_empty() {
        return Ok(());
    }
    check_len(s, MAX_LABEL)?;
    if is_qualified_part(s) {
        Ok(())
    } else {
        Err(NameProblem::Pattern {
            rule: LABEL_VALUE_RULE,
        })
    }
}

/// An environment variable name. Kubernetes 1.33 (the oldest version fjord targets) has the
/// relaxed rule on by default (`RelaxedEnvironmentVariableValidation`, beta since 1.32): any
/// printable ASCII but '='. The stricter C-identifier rule would refuse names faas-cli users
/// already deploy with, such as `com.example.flag`.
pub fn env_var_name(s: &str) -> Result<(), NameProblem> {
    if s.is_empty() {
        return Err(NameProblem::Empty);
    }
    if s.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'=') {
        Ok(())
    } else {
        Err(NameProblem::Pattern { rule: ENV_RULE })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "fn-1", "0fn", &"x".repeat(63)] {
            assert_eq!(dns1123_label(ok), Ok(()), "{ok}");
        }
        assert_eq!(dns1123_label(""), Err(NameProblem::Empty));
        assert_eq!(
            dns1123_label(&"x".repeat(64)),
            Err(NameProblem::TooLong { len: 64, max: 63 })
        );
        for bad in ["-a", "a-", "A", "a_b", "a.b", "é"] {
            assert!(
                matches!(dns1123_label(bad), Err(NameProblem::Pattern { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn service_names_start_with_a_letter() {
        assert_eq!(dns1035_label("fn1"), Ok(()));
        assert!(matches!(
            dns1035_label("1fn"),
            Err(NameProblem::Pattern { .. })
        ));
    }

    #[test]
    fn subdomains() {
        for ok in ["db-password", "a.b.c", "0", &"a".repeat(253)] {
            assert_eq!(dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["a..b", ".a", "a.", "a.-b", "A", "a/b"] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dns1123_subdomain(&"a".repeat(254)),
            Err(NameProblem::TooLong { len: 254, max: 253 })
        );
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "com.openfaas.scale.min",
            "app.kubernetes.io/name",
            "faas_function",
            "A_b-c.D",
        ] {
            assert_eq!(qualified_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/a", "a/", "Bad.Prefix/a", "a/b/c", "-a", "a b", "a:b"] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            qualified_name(&"k".repeat(64)),
            Err(NameProblem::TooLong { len: 64, max: 63 })
        );
        for ok in ["", "1", "v1.2_3-x", &"v".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["a b", "-a", "a/b", &"v".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["PATH", "write_timeout", "com.example.flag", "1st"] {
            assert_eq!(env_var_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A=B", "tab\there", "é"] {
            assert!(env_var_name(bad).is_err(), "{bad}");
        }
    }
}
