//! The server's trust policy (`fjord serve --trust-policy FILE`), YAML:
//!
//! ```yaml
//! namespaces:
//!   openfaas-fn:
//!     keys: [/etc/fjord/release.pub, "secret:signing-key"]
//!   staging:
//!     allow-unsigned: true
//! default:              # every other namespace (absent: they are refused)
//!   keys: [release.pub]
//! ```
//!
//! A key is a path to a PEM public key (relative paths are relative to the policy file) or
//! `secret:NAME`, a secret of the function's namespace holding one (read at each
//! verification, so a key can be rotated with `fjord secret update`). Files are read when the
//! policy is loaded: a missing or malformed key stops the server from starting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::TrustError;
use crate::keys::PublicKey;

/// The largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Where a trusted key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A key file, read when the policy was loaded.
    Key { path: String, key: PublicKey },
    /// A secret of the function's namespace, read when a function is verified.
    Secret(String),
}

/// What one namespace requires.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Anything runs; signatures are not looked at.
    AllowUnsigned,
    /// A signature by one of these keys over the digest that runs.
    Keys(Vec<KeySource>),
}

/// Per namespace, what must have signed a function's image or bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    namespaces: BTreeMap<String, Rule>,
    /// For namespaces not listed; `None`: refused.
    default: Option<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    namespaces: BTreeMap<String, RuleDoc>,
    #[serde(default)]
    default: Option<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RuleDoc {
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    allow_unsigned: Option<bool>,
}

impl Policy {
    /// Reads a policy file and the key files it names.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let io = |source| TrustError::Io {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_POLICY_BYTES {
            return Err(TrustError::Policy(format!(
                "{} is larger than {MAX_POLICY_BYTES} bytes",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &|p: &str| {
            let file = base.join(p);
            std::fs::read_to_string(&file).map_err(|source| TrustError::Io {
                path: file.display().to_string(),
                source,
            })
        })
    }

    /// Parses a policy; `read_key` returns the text of a key file named in it.
    pub fn parse(
        text: &str,
        read_key: &dyn Fn(&str) -> Result<String, TrustError>,
    ) -> Result<Self, TrustError> {
        let doc: PolicyDoc = serde_saphyr::from_str(text)
            .map_err(|e| TrustError::Policy(format!("not a trust policy: {e}")))?;
        let mut namespaces = BTreeMap::new();
        for (ns, r) in doc.namespaces {
            let rule = rule(&format!("namespaces.{ns}"), r, read_key)?;
            namespaces.insert(ns, rule);
        }
        let default = doc
            .default
            .map(|r| rule("default", r, read_key))
            .transpose()?;
        Ok(Self {
            namespaces,
            default,
        })
    }

    /// The rule for functions of `namespace` (`None`: nothing may run there).
    pub fn rule(&self, namespace: &str) -> Option<&Rule> {
        self.namespaces.get(namespace).or(self.default.as_ref())
    }

    /// One line saying what the policy requires, for the server's startup log.
    pub fn describe(&self) -> String {
        let one = |r: &Rule| match r {
            Rule::AllowUnsigned => "unsigned allowed".to_string(),
            Rule::Keys(k) => format!("signed by one of {} key(s)", k.len()),
        };
        let mut parts: Vec<String> = self
            .namespaces
            .iter()
            .map(|(ns, r)| format!("{ns}: {}", one(r)))
            .collect();
        parts.push(match &self.default {
            Some(r) => format!("other namespaces: {}", one(r)),
            None => "other namespaces: refused".to_string(),
        });
        parts.join("; ")
    }
}

fn rule(
    at: &str,
    r: RuleDoc,
    read_key: &dyn Fn(&str) -> Result<String, TrustError>,
) -> Result<Rule, TrustError> {
    match (r.keys, r.allow_unsigned) {
        (None, Some(true)) => Ok(Rule::AllowUnsigned),
        (Some(keys), None | Some(false)) => {
            if keys.is_empty() {
                return Err(TrustError::Policy(format!(
                    "{at}.keys is empty: list at least one key, or say allow-unsigned: true"
                )));
            }
            let mut out = Vec::new();
            for k in keys {
                let k = k.trim();
                if let Some(name) = k.strip_prefix("secret:") {
                    if name.is_empty() {
                        return Err(TrustError::Policy(format!(
                            "{at}.keys: {k:?} names no secret"
                        )));
                    }
                    out.push(KeySource::Secret(name.to_string()));
                } else {
                    let text = read_key(k)?;
                    let key = PublicKey::from_pem(&text)
                        .map_err(|e| TrustError::Policy(format!("{at}.keys: {k}: {e}")))?;
                    out.push(KeySource::Key {
                        path: k.to_string(),
                        key,
                    });
                }
            }
            Ok(Rule::Keys(out))
        }
        (Some(_), Some(true)) => Err(TrustError::Policy(format!(
            "{at}: both keys and allow-unsigned: say one"
        ))),
        (None, _) => Err(TrustError::Policy(format!(
            "{at}: give keys: [...] or allow-unsigned: true"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    #[test]
    fn namespaces_default_keys_and_secrets() {
        let pair = KeyPair::generate(b"").expect("generate");
        let pem = pair.public_pem.clone();
        let read = move |p: &str| {
            if p == "release.pub" {
                Ok(pem.clone())
            } else {
                Err(TrustError::Policy(format!("no file {p}")))
            }
        };
        let p = Policy::parse(
            "namespaces:\n  prod:\n    keys: [release.pub, \"secret:sign\"]\n  dev:\n    allow-unsigned: true\n",
            &read,
        )
        .expect("policy");
        assert_eq!(p.rule("dev"), Some(&Rule::AllowUnsigned));
        match p.rule("prod") {
            Some(Rule::Keys(k)) => {
                assert_eq!(k.len(), 2);
                assert!(matches!(&k[0], KeySource::Key { key, .. } if *key == pair.public));
                assert_eq!(k[1], KeySource::Secret("sign".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.rule("other"), None, "no default: refused");
        assert!(p.describe().contains("other namespaces: refused"));
        let p = Policy::parse("default:\n  allow-unsigned: true\n", &read).expect("policy");
        assert_eq!(p.rule("any"), Some(&Rule::AllowUnsigned));
    }

    #[test]
    fn malformed_policies_name_the_entry() {
        let read = |p: &str| match p {
            "bad.pub" => Ok("not a key".to_string()),
            _ => Err(TrustError::Policy(format!("{p}: no such file"))),
        };
        for (text, needle) in [
            (
                "namespaces:\n  a:\n    keys: []\n",
                "namespaces.a.keys is empty",
            ),
            (
                "namespaces:\n  a:\n    keys: [bad.pub]\n",
                "namespaces.a.keys: bad.pub",
            ),
            ("namespaces:\n  a:\n    keys: [gone.pub]\n", "gone.pub"),
            ("default:\n  keys: [\"secret:\"]\n", "names no secret"),
            ("default: {}\n", "default: give keys"),
            (
                "default:\n  allow-unsigned: true\n  keys: [x]\n",
                "both keys and allow-unsigned",
            ),
            ("defaults:\n  allow-unsigned: true\n", "not a trust policy"),
            ("- a\n", "not a trust policy"),
        ] {
            let e = Policy::parse(text, &read).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
