//! Applies the stack.yml schema to a parsed [`Node`] tree: types, required fields, validation,
//! unknown-key warnings and the `environment_file` merge.

use std::collections::BTreeMap;
use std::path::Path;

use fjord_core::names::validate_label;
use fjord_core::openfaas::FunctionResources;
use fjord_core::quantity::{parse_cpu, parse_memory};

use crate::error::{At, StackError};
use crate::subst::Substituted;
use crate::yaml::{self, Key, Kind, Node, ScalarKind, join};
use crate::{Provider, Stack, StackFunction, TemplateSource};

/// Provider names accepted in `provider.name`.
pub const PROVIDERS: &[&str] = &["openfaas", "fjord"];

const TOP_KEYS: &[&str] = &["version", "provider", "configuration", "functions"];
const PROVIDER_KEYS: &[&str] = &["name", "gateway"];
const CONFIGURATION_KEYS: &[&str] = &["templates", "copy"];
const TEMPLATE_KEYS: &[&str] = &["name", "source"];
const RESOURCE_KEYS: &[&str] = &["memory", "cpu"];
const ENVIRONMENT_FILE_KEYS: &[&str] = &["environment"];
const FUNCTION_KEYS: &[&str] = &[
    "lang",
    "handler",
    "image",
    "fprocess",
    "environment",
    "environment_file",
    "secrets",
    "skip_build",
    "constraints",
    "labels",
    "annotations",
    "limits",
    "requests",
    "readonly_root_filesystem",
    "build_options",
    "build_args",
    "build_secrets",
    "namespace",
    "platforms",
];

const STRING: &str = "a string";
const STRING_HINT: &str = "write a single value, quoted if it contains special characters";
const BOOL: &str = "a boolean";
const BOOL_HINT: &str = "write true or false";
const LIST: &str = "a list of strings";
const LIST_HINT: &str = "write a YAML list, e.g. [a, b] or one `- item` per line";
const MAPPING: &str = "a mapping";
const MAPPING_HINT: &str = "write `key: value` entries indented under it";

/// Collects warnings while the tree is walked; knows where environment files live.
pub(crate) struct Walker<'a> {
    /// Where each warning is, for ordering, and its text.
    pub warnings: Vec<(At, String)>,
    /// Directory `environment_file` entries are relative to.
    pub base_dir: &'a Path,
    /// The stack file's label; environment files are labelled relative to its directory.
    pub file_label: &'a str,
}

/// A mapping's entries, with unknown keys already warned about.
struct Fields<'n> {
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }
}

fn invalid_type(node: &Node, path: &str, expected: &'static str, hint: &'static str) -> StackError {
    StackError::InvalidType {
        at: node.at.clone(),
        path: display_path(path),
        found: node.kind.type_name(),
        expected,
        hint,
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        String::from("(top level)")
    } else {
        path.to_string()
    }
}

/// The entries of a mapping (null counts as empty).
fn entries<'n>(node: &'n Node, path: &str) -> Result<&'n [(Key, Node)], StackError> {
    match &node.kind {
        Kind::Map(entries) => Ok(entries),
        Kind::Null => Ok(&[]),
        _ => Err(invalid_type(node, path, MAPPING, MAPPING_HINT)),
    }
}

/// A scalar as a string; null is `None`; empty strings are `None` too.
fn opt_string(node: Option<&Node>, path: &str) -> Result<Option<String>, StackError> {
    let Some(node) = node else { return Ok(None) };
    match &node.kind {
        Kind::Null => Ok(None),
        Kind::Scalar { text, .. } if text.is_empty() => Ok(None),
        Kind::Scalar { text, .. } => Ok(Some(text.clone())),
        _ => Err(invalid_type(node, path, STRING, STRING_HINT)),
    }
}

fn boolean(node: Option<&Node>, path: &str) -> Result<bool, StackError> {
    let Some(node) = node else { return Ok(false) };
    match &node.kind {
        Kind::Null => Ok(false),
        Kind::Scalar {
            kind: ScalarKind::Bool(b),
            ..
        } => Ok(*b),
        _ => Err(invalid_type(node, path, BOOL, BOOL_HINT)),
    }
}

fn string_list(node: Option<&Node>, path: &str) -> Result<Vec<String>, StackError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    match &node.kind {
        Kind::Null => Ok(Vec::new()),
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match &item.kind {
                Kind::Scalar { text, .. } => Ok(text.clone()),
                _ => Err(invalid_type(
                    item,
                    &format!("{path}[{i}]"),
                    STRING,
                    STRING_HINT,
                )),
            })
            .collect(),
        _ => Err(invalid_type(node, path, LIST, LIST_HINT)),
    }
}

/// A `name: value` map of strings. Numbers and booleans keep their source spelling; a null
/// value is the empty string.
fn string_map(node: Option<&Node>, path: &str) -> Result<BTreeMap<String, String>, StackError> {
    let Some(node) = node else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (key, value) in entries(node, path)? {
        let text = match &value.kind {
            Kind::Null => String::new(),
            Kind::Scalar { text, .. } => text.clone(),
            _ => {
                return Err(invalid_type(
                    value,
                    &join(path, &key.name),
                    STRING,
                    STRING_HINT,
                ));
            }
        };
        out.insert(key.name.clone(), text);
    }
    Ok(out)
}

/// Normalises `provider.gateway` as faas-cli does: no scheme means `http://`, trailing slashes
/// are dropped. `None` for other schemes or embedded whitespace.
fn gateway_url(g: &str) -> Option<String> {
    if g.contains(char::is_whitespace) {
        return None;
    }
    let (scheme, rest) = g.split_once("://").unwrap_or(("http", g));
    let rest = rest.trim_end_matches('/');
    (matches!(scheme, "http" | "https") && !rest.is_empty()).then(|| format!("{scheme}://{rest}"))
}

impl Walker<'_> {
    /// The mapping's fields; warns about each key not in `known`.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
    ) -> Result<Fields<'n>, StackError> {
        let entries = entries(node, path)?;
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                self.warnings.push((
                    key.at.clone(),
                    format!(
                        "{}: {}: unknown key {:?} ignored; it is not part of the stack.yml schema, check its spelling",
                        key.at,
                        join(path, &key.name),
                        key.name
                    ),
                ));
            }
        }
        Ok(Fields { entries })
    }

    pub(crate) fn stack(&mut self, root: &Node) -> Result<Stack, StackError> {
        if root.kind == Kind::Null {
            return Err(StackError::InvalidValue {
                at: At {
                    file: root.at.file.clone(),
                    line: 1,
                    column: 1,
                },
                path: display_path(""),
                message: String::from(
                    "the stack file is empty; it needs at least `provider:` with `name: openfaas` and a `functions:` mapping",
                ),
            });
        }
        if !matches!(root.kind, Kind::Map(_) | Kind::Null) {
            return Err(invalid_type(
                root,
                "",
                MAPPING,
                "a stack file is a mapping with `provider:` and `functions:`",
            ));
        }
        let top = self.fields(root, "", TOP_KEYS)?;

        let version = opt_string(top.get("version"), "version")?;
        if let (Some(v), Some(node)) = (&version, top.get("version"))
            && v != "1.0"
        {
            return Err(StackError::UnsupportedVersion {
                at: node.at.clone(),
                found: v.clone(),
            });
        }

        let provider = self.provider(root, top.get("provider"))?;

        let (templates, copy) = match top.get("configuration") {
            Some(node) => self.configuration(node)?,
            None => (Vec::new(), Vec::new()),
        };

        let mut functions = Vec::new();
        if let Some(node) = top.get("functions") {
            for (key, body) in entries(node, "functions")? {
                functions.push(self.function(key, body)?);
            }
        }
        functions.sort_by(|a: &StackFunction, b| a.name.cmp(&b.name));

        Ok(Stack {
            version,
            provider,
            templates,
            copy,
            functions,
        })
    }

    fn provider(&mut self, root: &Node, node: Option<&Node>) -> Result<Provider, StackError> {
        let missing = |at: &At, path: &str, field| StackError::MissingField {
            at: at.clone(),
            path: display_path(path),
            field,
            hint: "add `provider:` with `name: openfaas` (or `name: fjord`) and optionally `gateway: http://127.0.0.1:8080`",
        };
        let Some(node) = node.filter(|n| n.kind != Kind::Null) else {
            return Err(missing(&root.at, "", "provider"));
        };
        let fields = self.fields(node, "provider", PROVIDER_KEYS)?;
        let Some(name) = opt_string(fields.get("name"), "provider.name")? else {
            return Err(missing(&node.at, "provider", "name"));
        };
        if !PROVIDERS.contains(&name.as_str()) {
            return Err(StackError::UnsupportedProvider {
                at: fields.get("name").map_or(node.at.clone(), |n| n.at.clone()),
                found: name,
            });
        }
        let gateway = match (
            opt_string(fields.get("gateway"), "provider.gateway")?,
            fields.get("gateway"),
        ) {
            (Some(g), Some(n)) => Some(gateway_url(&g).ok_or_else(|| StackError::InvalidValue {
                at: n.at.clone(),
                path: String::from("provider.gateway"),
                message: format!(
                    "{g:?} is not an http:// or https:// URL; write e.g. `gateway: http://127.0.0.1:8080`"
                ),
            })?),
            _ => None,
        };
        Ok(Provider { name, gateway })
    }

    fn configuration(
        &mut self,
        node: &Node,
    ) -> Result<(Vec<TemplateSource>, Vec<String>), StackError> {
        let fields = self.fields(node, "configuration", CONFIGURATION_KEYS)?;
        let mut templates = Vec::new();
        if let Some(list) = fields.get("templates") {
            let items: &[Node] = match &list.kind {
                Kind::Seq(items) => items,
                Kind::Null => &[],
                _ => {
                    return Err(invalid_type(
                        list,
                        "configuration.templates",
                        "a list of mappings",
                        "write one `- name: <template>` entry per template, with an optional `source: <git URL>`",
                    ));
                }
            };
            for (i, item) in items.iter().enumerate() {
                let path = format!("configuration.templates[{i}]");
                let t = self.fields(item, &path, TEMPLATE_KEYS)?;
                let Some(name) = opt_string(t.get("name"), &join(&path, "name"))? else {
                    return Err(StackError::MissingField {
                        at: item.at.clone(),
                        path,
                        field: "name",
                        hint: "add `name: <template>` (e.g. `name: golang-middleware`)",
                    });
                };
                let source = opt_string(t.get("source"), &join(&path, "source"))?;
                templates.push(TemplateSource { name, source });
            }
        }
        let copy = string_list(fields.get("copy"), "configuration.copy")?;
        Ok((templates, copy))
    }

    fn resources(
        &mut self,
        node: Option<&Node>,
        path: &str,
    ) -> Result<Option<FunctionResources>, StackError> {
        let Some(node) = node else { return Ok(None) };
        let fields = self.fields(node, path, RESOURCE_KEYS)?;
        let mut out = FunctionResources::default();
        for (field, parse) in [
            ("memory", parse_memory as fn(&str) -> _),
            ("cpu", parse_cpu as fn(&str) -> _),
        ] {
            let field_path = join(path, field);
            let Some(value) = opt_string(fields.get(field), &field_path)? else {
                continue;
            };
            if let Err(source) = parse(&value) {
                return Err(StackError::InvalidQuantity {
                    at: fields.get(field).map_or(node.at.clone(), |n| n.at.clone()),
                    path: field_path,
                    source,
                });
            }
            match field {
                "memory" => out.memory = Some(value),
                _ => out.cpu = Some(value),
            }
        }
        Ok((out != FunctionResources::default()).then_some(out))
    }

    fn function(&mut self, key: &Key, body: &Node) -> Result<StackFunction, StackError> {
        let path = join("functions", &key.name);
        if let Err(source) = validate_label("function name", &key.name) {
            return Err(StackError::InvalidName {
                at: key.at.clone(),
                path,
                source,
            });
        }
        let f = self.fields(body, &path, FUNCTION_KEYS)?;
        let p = |field: &str| join(&path, field);

        let lang = opt_string(f.get("lang"), &p("lang"))?;
        let handler = opt_string(f.get("handler"), &p("handler"))?;
        let Some(image) = opt_string(f.get("image"), &p("image"))? else {
            return Err(StackError::MissingField {
                at: key.at.clone(),
                path,
                field: "image",
                hint: "add `image: <registry>/<name>:<tag>`; every function needs one, also those built from a template",
            });
        };
        if lang.is_some() && handler.is_none() {
            return Err(StackError::MissingField {
                at: key.at.clone(),
                path,
                field: "handler",
                hint: "a function with `lang` needs `handler: ./<dir>`, the directory holding its source",
            });
        }
        let namespace = opt_string(f.get("namespace"), &p("namespace"))?;
        if let (Some(ns), Some(node)) = (&namespace, f.get("namespace"))
            && let Err(source) = validate_label("namespace", ns)
        {
            return Err(StackError::InvalidName {
                at: node.at.clone(),
                path: p("namespace"),
                source,
            });
        }

        let mut environment = string_map(f.get("environment"), &p("environment"))?;
        let env_files_path = p("environment_file");
        let env_files = string_list(f.get("environment_file"), &env_files_path)?;
        for (i, file) in env_files.iter().enumerate() {
            let item_at = match f.get("environment_file").map(|n| &n.kind) {
                Some(Kind::Seq(items)) => items[i].at.clone(),
                _ => key.at.clone(),
            };
            let vars = self.environment_file(file, &format!("{env_files_path}[{i}]"), item_at)?;
            environment.extend(vars);
        }

        Ok(StackFunction {
            name: key.name.clone(),
            lang,
            handler,
            image,
            fprocess: opt_string(f.get("fprocess"), &p("fprocess"))?,
            environment,
            secrets: string_list(f.get("secrets"), &p("secrets"))?,
            skip_build: boolean(f.get("skip_build"), &p("skip_build"))?,
            constraints: string_list(f.get("constraints"), &p("constraints"))?,
            labels: string_map(f.get("labels"), &p("labels"))?,
            annotations: string_map(f.get("annotations"), &p("annotations"))?,
            limits: self.resources(f.get("limits"), &p("limits"))?,
            requests: self.resources(f.get("requests"), &p("requests"))?,
            readonly_root_filesystem: boolean(
                f.get("readonly_root_filesystem"),
                &p("readonly_root_filesystem"),
            )?,
            build_options: string_list(f.get("build_options"), &p("build_options"))?,
            build_args: string_map(f.get("build_args"), &p("build_args"))?,
            build_secrets: string_map(f.get("build_secrets"), &p("build_secrets"))?,
            namespace,
            platforms: opt_string(f.get("platforms"), &p("platforms"))?,
        })
    }

    /// Reads one `environment_file`: a YAML file with an `environment:` map. Like faas-cli,
    /// no `${VAR}` substitution is applied to it.
    fn environment_file(
        &mut self,
        file: &str,
        path: &str,
        at: At,
    ) -> Result<BTreeMap<String, String>, StackError> {
        let label = match Path::new(self.file_label).parent() {
            Some(dir) if !Path::new(file).is_absolute() => dir.join(file).display().to_string(),
            _ => file.to_string(),
        };
        let text = crate::read_limited(&self.base_dir.join(file)).map_err(|e| match e {
            crate::ReadError::Io(source) => StackError::ReadEnvironmentFile {
                at,
                path: path.to_string(),
                file: file.to_string(),
                source,
            },
            crate::ReadError::TooLarge(size) => StackError::TooLarge {
                file: label.clone(),
                size,
                limit: crate::MAX_FILE_BYTES,
            },
        })?;
        let src = Substituted::verbatim(&text);
        let root = yaml::parse(&src, &label)?;
        let fields = self.fields(&root, "", ENVIRONMENT_FILE_KEYS)?;
        string_map(fields.get("environment"), "environment")
    }
}

#[cfg(test)]
mod tests {
    use super::gateway_url;

    #[test]
    fn gateway_urls_are_normalised_like_faas_cli() {
        let g = |s| gateway_url(s);
        assert_eq!(g("http://gw:8080/").as_deref(), Some("http://gw:8080"));
        assert_eq!(
            g("https://gw.example.com").as_deref(),
            Some("https://gw.example.com")
        );
        assert_eq!(
            g("127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(g("ftp://gw"), None);
        assert_eq!(g("http://"), None);
        assert_eq!(g("http://a b"), None);
    }
}
