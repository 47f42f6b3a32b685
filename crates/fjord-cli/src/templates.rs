//! Function templates, shipped inside the binary (the repository's `templates/`). A stack
//! may override one with a local `template/<lang>/` folder next to it, as faas-cli does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use serde::Deserialize;

use crate::error::CliError;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../templates");

/// How a template's bundle is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    Pip,
    Npm,
    Cargo,
    /// No install step (gems are not fetched); `ruby -c` on every `.rb` file.
    Ruby,
    /// No install step (a `vendor/` from `composer install` is used as it is); `php -l` on
    /// every `.php` file.
    Php,
    /// `go build` of the handler's module with the template's `main.go` added to it as
    /// `fjordmain/`: a static binary, `handler`, is the whole bundle.
    Go,
    /// `javac` + `jar` of the template's model and entrypoint with the handler's sources,
    /// `libs/*.jar` on the classpath; an AppCDS archive made by a trial start.
    Java,
    None,
}

/// `template.yml`.
#[derive(Debug, Clone, Deserialize)]
pub struct TemplateSpec {
    pub language: String,
    pub fprocess: String,
    pub mode: String,
    pub build: BuildKind,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub welcome_message: Option<String>,
    /// The base image of `fjord build --image` (its layers come first).
    #[serde(default)]
    pub base_image: Option<String>,
}

/// Where a template's files come from.
pub enum Source {
    Embedded(&'static Dir<'static>),
    Local(PathBuf),
}

pub struct Template {
    pub spec: TemplateSpec,
    pub source: Source,
}

fn parse_spec(text: &str, what: &str) -> Result<TemplateSpec, CliError> {
    serde_saphyr::from_str(text).map_err(|e| CliError::Other(format!("{what}: {e}")))
}

/// Names of the templates shipped in the binary.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = EMBEDDED
        .dirs()
        .filter(|d| d.get_file(d.path().join("template.yml")).is_some())
        .filter_map(|d| d.path().file_name()?.to_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Upstream OpenFaaS template names whose contract a shipped template implements under
/// fjord's shorter name, so existing stack.yml files (`lang: ruby-http`) build unchanged.
const ALIASES: [(&str, &str); 4] = [
    ("ruby-http", "ruby"),
    ("php8", "php"),
    ("java11", "java"),
    // fjord's short name for the plainer of the two Go contracts.
    ("go", "golang-middleware"),
];

/// Finds a template: `<stack_dir>/template/<lang>` first, then the shipped ones (by name or
/// by the upstream name they stand for).
pub fn find(lang: &str, stack_dir: &Path) -> Result<Template, CliError> {
    let local = stack_dir.join("template").join(lang);
    if local.join("template.yml").is_file() {
        let text = std::fs::read_to_string(local.join("template.yml"))?;
        return Ok(Template {
            spec: parse_spec(&text, &local.join("template.yml").display().to_string())?,
            source: Source::Local(local),
        });
    }
    let lang = ALIASES
        .iter()
        .find(|(upstream, _)| *upstream == lang)
        .map_or(lang, |(_, shipped)| *shipped);
    let dir = EMBEDDED
        .get_dir(lang)
        .filter(|d| d.get_file(Path::new(lang).join("template.yml")).is_some());
    match dir {
        Some(d) => {
            let text = d
                .get_file(Path::new(lang).join("template.yml"))
                .and_then(|f| f.contents_utf8())
                .unwrap_or_default();
            let spec = parse_spec(text, &format!("template {lang}"))?;
            if spec.language != lang {
                return Err(CliError::Other(format!(
                    "template {lang}: its template.yml says language {:?}",
                    spec.language
                )));
            }
            Ok(Template {
                spec,
                source: Source::Embedded(d),
            })
        }
        None => Err(CliError::Usage(format!(
            "no template {lang:?}{}; available: {} (or put one in {}/)",
            closest(lang).map_or(String::new(), |n| format!(" (did you mean {n}?)")),
            names().join(", "),
            stack_dir.join("template").display()
        ))),
    }
}

/// The shipped template name (or upstream alias) a mistyped `lang` most likely meant.
fn closest(lang: &str) -> Option<String> {
    names()
        .into_iter()
        .chain(ALIASES.iter().map(|(upstream, _)| upstream.to_string()))
        .map(|n| (strsim::jaro_winkler(lang, &n), n))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

fn write_embedded(
    dir: &Dir<'_>,
    strip: &Path,
    dest: &Path,
    filter: &dyn Fn(&Path) -> bool,
) -> std::io::Result<()> {
    for f in dir.files() {
        let rel = f.path().strip_prefix(strip).unwrap_or(f.path());
        if !filter(rel) {
            continue;
        }
        let out = dest.join(rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&out, f.contents())?;
        // Keep scripts runnable: the embedded copy has no modes.
        if f.contents().starts_with(b"#!") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    for d in dir.dirs() {
        write_embedded(d, strip, dest, filter)?;
    }
    Ok(())
}

fn copy_local(
    src: &Path,
    rel: &Path,
    dest: &Path,
    filter: &dyn Fn(&Path) -> bool,
) -> std::io::Result<()> {
    for e in std::fs::read_dir(src.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        if !filter(&r) {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_local(src, &r, dest, filter)?;
        } else {
            let out = dest.join(&r);
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(e.path(), out)?;
        }
    }
    Ok(())
}

impl Template {
    fn write(&self, dest: &Path, filter: &dyn Fn(&Path) -> bool) -> Result<(), CliError> {
        match &self.source {
            Source::Embedded(d) => write_embedded(d, d.path(), dest, filter)?,
            Source::Local(p) => copy_local(p, Path::new(""), dest, filter)?,
        }
        Ok(())
    }

    /// The runtime shim: every file but `template.yml` and the `function/` skeleton.
    pub fn write_runtime(&self, dest: &Path) -> Result<(), CliError> {
        self.write(dest, &|p| {
            p != Path::new("template.yml") && !p.starts_with("function")
        })
    }

    /// The handler skeleton (`function/`), as `fjord new` copies it.
    pub fn write_skeleton(&self, dest: &Path) -> Result<(), CliError> {
        let tmp = dest.with_extension("fjord-new-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        self.write(&tmp, &|p| p.starts_with("function"))?;
        let from = tmp.join("function");
        if from.is_dir() {
            std::fs::rename(&from, dest)?;
        } else {
            std::fs::create_dir_all(dest)?;
        }
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(())
    }

    /// Fingerprint input: every file of the template with its path.
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        match &self.source {
            Source::Embedded(d) => collect_embedded(d, d.path(), &mut out),
            Source::Local(p) => collect_local(p, Path::new(""), &mut out),
        }
        out.sort();
        out
    }
}

fn collect_embedded(dir: &Dir<'_>, strip: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for f in dir.files() {
        out.push((
            f.path()
                .strip_prefix(strip)
                .unwrap_or(f.path())
                .to_path_buf(),
            f.contents().to_vec(),
        ));
    }
    for d in dir.dirs() {
        collect_embedded(d, strip, out);
    }
}

fn collect_local(src: &Path, rel: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    if let Ok(entries) = std::fs::read_dir(src.join(rel)) {
        for e in entries.flatten() {
            let r = rel.join(e.file_name());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_local(src, &r, out);
            } else if let Ok(bytes) = std::fs::read(e.path()) {
                out.push((r, bytes));
            }
        }
    }
}

#[cfg(test)]
mod closest_tests {
    #[test]
    fn a_typo_suggests_the_template_and_nonsense_suggests_nothing() {
        assert_eq!(super::closest("dockerfil").as_deref(), Some("dockerfile"));
        assert_eq!(
            super::closest("pyhton3-http").as_deref(),
            Some("python3-http")
        );
        assert_eq!(
            super::closest("golang-midleware").as_deref(),
            Some("golang-middleware")
        );
        assert_eq!(super::closest("cobol"), None);
    }
}
