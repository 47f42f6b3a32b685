//! Parses faas-cli compatible `stack.yml` files.
//!
//! The pipeline, in order:
//!
//! 1. **Size check.** Files over [`MAX_FILE_BYTES`] are refused before parsing (and again after
//!    substitution).
//! 2. **`${VAR}` substitution** on the raw text, as faas-cli's `--envsubst` does: `${VAR}` and
//!    `${VAR:-default}` (default when unset *or empty*), looked up through
//!    [`ParseOptions::env`]. An unset `${VAR}` without a default becomes the empty string, as in
//!    faas-cli, and adds a warning naming the variable and its line. A bare `$VAR` and other
//!    shell forms are left as written (so `fprocess: sh -c 'echo $HOME'` survives). Comments
//!    are substituted too: the text is treated as a whole, before YAML is involved.
//! 3. **YAML parsing** with `serde-saphyr` under a budget: at most [`MAX_DEPTH`] levels of
//!    nesting, [`MAX_NODES`] nodes counting alias expansions (billion-laughs bombs),
//!    [`MAX_ALIASES`] aliases and one document. Breaches are [`StackError::Limit`].
//! 4. **Schema**: types, required fields, names, quantities. Unknown keys anywhere are
//!    *warnings* (returned in [`Parsed::warnings`], with `file:line:column` and the key path).
//!    Duplicate keys are an *error* ([`StackError::DuplicateKey`]): YAML forbids them and
//!    faas-cli's Go parser refuses them too.
//!
//! Every error and warning position is 1-based line and character column in the file *as
//! written*: positions inside the substituted text are mapped back, and a position inside a
//! substituted value points at its `${`.
//!
//! Scalars destined for string fields keep their source spelling, as Go's YAML decoder gives
//! them to faas-cli: `cpu: 0.50` is `"0.50"`, `PORT: 0x1F` is `"0x1F"`, `DEBUG: true` is
//! `"true"`; a null map value (`KEY:`) is `""`; an empty optional string is `None`.

mod error;
mod schema;
mod subst;
mod yaml;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use fjord_core::openfaas::{FunctionDeployment, FunctionResources};
use serde::Serialize;

pub use error::{At, StackError};
pub use schema::PROVIDERS;
pub use yaml::{MAX_ALIASES, MAX_DEPTH, MAX_NODES};

/// Largest stack or environment file accepted, in bytes (before and after substitution).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// How to parse: where `${VAR}` values come from.
#[derive(Clone, Copy)]
pub struct ParseOptions<'a> {
    /// Looks up a variable for `${VAR}` substitution. The CLI passes the process environment;
    /// tests pass a fixed map.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl ParseOptions<'static> {
    /// Substitutes from the process environment, as faas-cli does.
    pub fn process_env() -> Self {
        ParseOptions { env: &process_env }
    }
}

impl std::fmt::Debug for ParseOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseOptions").finish_non_exhaustive()
    }
}

/// A parsed stack file and the warnings raised on the way (unknown keys, unset variables),
/// each formatted `file:line:column: ...`, in the order found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    pub stack: Stack,
    pub warnings: Vec<String>,
}

/// A resolved stack file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stack {
    /// `"1.0"` when given; no other version is accepted.
    pub version: Option<String>,
    pub provider: Provider,
    /// `configuration.templates`.
    pub templates: Vec<TemplateSource>,
    /// `configuration.copy`: extra paths copied into every build context.
    pub copy: Vec<String>,
    /// Sorted by name.
    pub functions: Vec<StackFunction>,
}

/// `provider:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provider {
    /// `openfaas` or `fjord` (see [`PROVIDERS`]).
    pub name: String,
    /// An `http://` or `https://` URL, when given. As in faas-cli, a gateway without a scheme
    /// gets `http://` and trailing slashes are dropped.
    pub gateway: Option<String>,
}

/// One of `configuration.templates`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateSource {
    pub name: String,
    /// A git URL, optionally pinned with `#ref`.
    pub source: Option<String>,
}

/// One entry of `functions:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackFunction {
    /// A DNS-1123 label.
    pub name: String,
    pub lang: Option<String>,
    /// Set whenever `lang` is.
    pub handler: Option<String>,
    pub image: String,
    pub fprocess: Option<String>,
    /// Inline `environment`, overridden by each `environment_file` in order (later files win).
    pub environment: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub skip_build: bool,
    pub constraints: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Only `memory` and `cpu`, both validated; `None` when neither is given.
    pub limits: Option<FunctionResources>,
    pub requests: Option<FunctionResources>,
    pub readonly_root_filesystem: bool,
    pub build_options: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    /// Build secret id → path.
    pub build_secrets: BTreeMap<String, String>,
    /// A DNS-1123 label, when given.
    pub namespace: Option<String>,
    /// e.g. `linux/amd64,linux/arm64`.
    pub platforms: Option<String>,
}

impl StackFunction {
    /// The OpenFaaS deployment for this function, with faas-cli's `deploy` merge rules:
    ///
    /// - `envProcess` = the `fprocess` field, else `template_fprocess` (the template's
    ///   `template.yml` `fprocess`; pass `None` for `lang: dockerfile`, as faas-cli does);
    /// - `envVars` = `environment` (already merged with `environment_file`) overridden by
    ///   `extra_env` (the `--env` flags);
    /// - `labels` / `annotations` = the YAML's overridden by the extras (flags win);
    /// - `secrets` = the YAML's then the extras not already listed (union, order kept);
    /// - `constraints`, `limits`, `requests`, `namespace`, `readOnlyRootFilesystem` from the
    ///   YAML.
    ///
    /// Empty maps and lists are `None` (omitted from the JSON).
    pub fn deployment(
        &self,
        template_fprocess: Option<&str>,
        extra_env: &BTreeMap<String, String>,
        extra_labels: &BTreeMap<String, String>,
        extra_annotations: &BTreeMap<String, String>,
        extra_secrets: &[String],
    ) -> FunctionDeployment {
        fn merged(
            base: &BTreeMap<String, String>,
            extra: &BTreeMap<String, String>,
        ) -> Option<BTreeMap<String, String>> {
            let mut out = base.clone();
            out.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            (!out.is_empty()).then_some(out)
        }
        let mut secrets = self.secrets.clone();
        for s in extra_secrets {
            if !secrets.contains(s) {
                secrets.push(s.clone());
            }
        }
        FunctionDeployment {
            service: self.name.clone(),
            image: self.image.clone(),
            namespace: self.namespace.clone(),
            env_process: self
                .fprocess
                .clone()
                .or_else(|| template_fprocess.map(str::to_string)),
            env_vars: merged(&self.environment, extra_env),
            constraints: (!self.constraints.is_empty()).then(|| self.constraints.clone()),
            secrets: (!secrets.is_empty()).then_some(secrets),
            labels: merged(&self.labels, extra_labels),
            annotations: merged(&self.annotations, extra_annotations),
            limits: self.limits.clone(),
            requests: self.requests.clone(),
            read_only_root_filesystem: self.readonly_root_filesystem,
            registry_auth: None,
            network: None,
        }
    }
}

pub(crate) enum ReadError {
    Io(std::io::Error),
    TooLarge(usize),
}

/// Reads a UTF-8 file of at most [`MAX_FILE_BYTES`], without reading more than one byte past it.
pub(crate) fn read_limited(path: &Path) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > MAX_FILE_BYTES {
        let size = std::fs::metadata(path)
            .ok()
            .and_then(|m| usize::try_from(m.len()).ok())
            .unwrap_or(bytes.len());
        return Err(ReadError::TooLarge(size));
    }
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not valid UTF-8",
        ))
    })
}

/// Reads and parses a stack file. Errors and warnings name it as `path` is written;
/// `environment_file` entries are resolved relative to its directory.
pub fn parse_file(path: &Path, opts: &ParseOptions) -> Result<Parsed, StackError> {
    let label = path.display().to_string();
    let text = read_limited(path).map_err(|e| match e {
        ReadError::Io(source) => StackError::Read {
            file: label.clone(),
            source,
        },
        ReadError::TooLarge(size) => StackError::TooLarge {
            file: label.clone(),
            size,
            limit: MAX_FILE_BYTES,
        },
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse_str(&text, &label, base_dir, opts)
}

/// The text the YAML parser sees after faas-cli's `${VAR}` / `${VAR:-default}` substitution
/// with `env` (unset and empty variables as faas-cli treats them). For tools that must reason
/// about a stack file before parsing it, e.g. the fuzz target's check for file paths.
pub fn substitute_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    subst::substitute(text, env).0.text
}

/// Parses stack file text. `file_label` names the file in errors and warnings; `base_dir` is
/// where `environment_file` entries are read from.
pub fn parse_str(
    text: &str,
    file_label: &str,
    base_dir: &Path,
    opts: &ParseOptions,
) -> Result<Parsed, StackError> {
    let too_large = |size| StackError::TooLarge {
        file: file_label.to_string(),
        size,
        limit: MAX_FILE_BYTES,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(text.len()));
    }
    let (src, subst_warnings) = subst::substitute(text, opts.env);
    if src.text.len() > MAX_FILE_BYTES {
        return Err(too_large(src.text.len()));
    }
    let mut warnings: Vec<(At, String)> = subst_warnings
        .into_iter()
        .map(|w| {
            let (line, column) = src.line_col_of_original(w.offset);
            let at = At {
                file: file_label.to_string(),
                line,
                column,
            };
            let text = format!("{at}: {}", w.message);
            (at, text)
        })
        .collect();
    let root = yaml::parse(&src, file_label)?;
    let mut walker = schema::Walker {
        warnings: Vec::new(),
        base_dir,
        file_label,
    };
    let stack = walker.stack(&root)?;
    warnings.append(&mut walker.warnings);
    // The stack file's warnings in document order, then each environment file's.
    warnings.sort_by(|(a, _), (b, _)| {
        (a.file != file_label, &a.file, a.line, a.column).cmp(&(
            b.file != file_label,
            &b.file,
            b.line,
            b.column,
        ))
    });
    let warnings = warnings.into_iter().map(|(_, text)| text).collect();
    Ok(Parsed { stack, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitute_env_is_the_parsers_substitution() {
        let env = |k: &str| match k {
            "OWNER" => Some("acme".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            substitute_env(
                "image: ${OWNER}/fn:${TAG:-1.0} x=${EMPTY:-d} $HOME ${",
                &env
            ),
            "image: acme/fn:1.0 x=d $HOME ${"
        );
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn function() -> StackFunction {
        let no_env = |_: &str| None;
        let parsed = parse_str(
            "provider: {name: openfaas}\nfunctions:\n  resize:\n    lang: python3\n    handler: ./resize\n    image: acme/resize:1\n",
            "stack.yml",
            Path::new("."),
            &ParseOptions { env: &no_env },
        )
        .unwrap();
        parsed.stack.functions.into_iter().next().unwrap()
    }

    #[test]
    fn deployment_of_a_bare_function_has_only_the_basics() {
        let f = function();
        let d = f.deployment(None, &map(&[]), &map(&[]), &map(&[]), &[]);
        assert_eq!(
            d,
            FunctionDeployment {
                service: "resize".into(),
                image: "acme/resize:1".into(),
                ..Default::default()
            }
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": "resize", "image": "acme/resize:1"})
        );
    }

    #[test]
    fn fprocess_field_beats_the_template() {
        let mut f = function();
        let d = f.deployment(
            Some("python3 index.py"),
            &map(&[]),
            &map(&[]),
            &map(&[]),
            &[],
        );
        assert_eq!(d.env_process.as_deref(), Some("python3 index.py"));
        f.fprocess = Some("./handler".into());
        let d = f.deployment(
            Some("python3 index.py"),
            &map(&[]),
            &map(&[]),
            &map(&[]),
            &[],
        );
        assert_eq!(d.env_process.as_deref(), Some("./handler"));
    }

    #[test]
    fn flags_win_over_yaml_for_env_labels_and_annotations() {
        let mut f = function();
        f.environment = map(&[("A", "yaml"), ("B", "yaml")]);
        f.labels = map(&[("team", "yaml"), ("tier", "web")]);
        f.annotations = map(&[("topic", "yaml")]);
        let d = f.deployment(
            None,
            &map(&[("B", "flag"), ("C", "flag")]),
            &map(&[("team", "flag")]),
            &map(&[("topic", "flag"), ("other", "x")]),
            &[],
        );
        assert_eq!(
            d.env_vars,
            Some(map(&[("A", "yaml"), ("B", "flag"), ("C", "flag")]))
        );
        assert_eq!(d.labels, Some(map(&[("team", "flag"), ("tier", "web")])));
        assert_eq!(
            d.annotations,
            Some(map(&[("other", "x"), ("topic", "flag")]))
        );
    }

    #[test]
    fn secrets_are_a_union_in_order() {
        let mut f = function();
        f.secrets = vec!["db".into(), "api-key".into()];
        let d = f.deployment(
            None,
            &map(&[]),
            &map(&[]),
            &map(&[]),
            &["api-key".into(), "s3".into()],
        );
        assert_eq!(
            d.secrets,
            Some(vec!["db".into(), "api-key".into(), "s3".into()])
        );
        let d = function().deployment(None, &map(&[]), &map(&[]), &map(&[]), &["s3".into()]);
        assert_eq!(d.secrets, Some(vec!["s3".into()]));
    }

    #[test]
    fn yaml_only_fields_carry_over() {
        let mut f = function();
        f.constraints = vec!["node.platform.os == linux".into()];
        f.namespace = Some("staging".into());
        f.readonly_root_filesystem = true;
        f.limits = Some(FunctionResources {
            memory: Some("128Mi".into()),
            ..Default::default()
        });
        f.requests = Some(FunctionResources {
            cpu: Some("100m".into()),
            ..Default::default()
        });
        let d = f.deployment(None, &map(&[]), &map(&[]), &map(&[]), &[]);
        assert_eq!(
            d.constraints,
            Some(vec!["node.platform.os == linux".into()])
        );
        assert_eq!(d.namespace.as_deref(), Some("staging"));
        assert!(d.read_only_root_filesystem);
        assert_eq!(d.limits.unwrap().memory.as_deref(), Some("128Mi"));
        assert_eq!(d.requests.unwrap().cpu.as_deref(), Some("100m"));
    }

    #[test]
    fn process_env_options_substitute_from_the_environment() {
        // PATH is set in every test environment.
        let opts = ParseOptions::process_env();
        assert!((opts.env)("PATH").is_some());
    }
}
