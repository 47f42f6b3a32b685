//! `fjord build`: template + handler → a bundle, without Docker. Dependencies are installed
//! with the real tools (pip, npm, cargo) into the bundle, which is packed and addressed by
//! its sha256. A fingerprint of every input skips work when nothing changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use fjord_bundle::Manifest;
use fjord_stack::StackFunction;

use crate::error::CliError;
use crate::image::ImageOptions;
use crate::templates::{self, BuildKind, Template};

/// Files and folders of a handler that are never part of its inputs.
const SKIP: [&str; 6] = [
    "node_modules",
    "target",
    "__pycache__",
    ".git",
    "build",
    ".venv",
];

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub digest: String,
    pub archive: PathBuf,
    pub cached: bool,
    /// With `--image`: the OCI image made from the bundle.
    pub image: Option<crate::image::BuiltImage>,
}

/// Where a function's build output lives: `<stack dir>/build/<name>/`.
pub fn build_dir(stack_dir: &Path, name: &str) -> PathBuf {
    stack_dir.join("build").join(name)
}

/// The last build of a function, if any.
pub fn last_build(stack_dir: &Path, name: &str) -> Option<Built> {
    let dir = build_dir(stack_dir, name);
    let digest = std::fs::read_to_string(dir.join("digest"))
        .ok()?
        .trim()
        .to_string();
    let archive = dir.join("bundle.tar.gz");
    archive.exists().then_some(Built {
        digest,
        archive,
        cached: true,
        image: None,
    })
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let r = rel.join(&name);
        let ft = e.file_type()?;
        if ft.is_dir() {
            collect(root, &r, out)?;
        } else if ft.is_file() {
            out.push((r, std::fs::read(e.path())?));
        }
    }
    Ok(())
}

fn copy_handler(src: &Path, dest: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    collect(src, Path::new(""), &mut files)?;
    for (rel, bytes) in files {
        let out = dest.join(&rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&out, bytes)?;
        let mode = std::fs::metadata(src.join(&rel))?.permissions();
        std::fs::set_permissions(&out, mode)?;
    }
    Ok(())
}

/// Lays out a build context in `ctx`: the template's runtime files at the root and the
/// handler folder as `function/`. (Public for the template contract tests, which run the
/// templates from a context laid out exactly so.)
pub fn assemble(template: &Template, handler: &Path, ctx: &Path) -> Result<(), CliError> {
    template.write_runtime(ctx)?;
    copy_handler(handler, &ctx.join("function"))?;
    Ok(())
}

/// Runs one build step, turning a failure into an error that names the function and the
/// step and shows the tool's output.
fn step(function: &str, name: &str, cmd: &mut Command) -> Result<(), CliError> {
    let out = cmd.output().map_err(|e| CliError::Build {
        function: function.into(),
        step: name.into(),
        output: format!("cannot run {:?}: {e}", cmd.get_program()),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines[lines.len().saturating_sub(60)..].join("\n");
    Err(CliError::Build {
        function: function.into(),
        step: name.into(),
        output: format!("{shown}\n({})", out.status),
    })
}

/// Checks the syntax of every `*.<ext>` file of the build context (the shim and the handler,
/// a `vendor/` folder excepted: third-party code is not the user's to fix) with `program
/// args.. FILE`, one file at a time, so a syntax error fails the build naming the user's file
/// and line rather than the first request. `package`: the Debian package that provides
/// `program`, named when it is missing.
fn syntax_check(
    function: &str,
    ctx: &Path,
    ext: &str,
    program: &str,
    args: &[&str],
    package: &str,
) -> Result<(), CliError> {
    let mut files = Vec::new();
    collect(ctx, Path::new(""), &mut files)?;
    for (rel, _) in files {
        if rel.extension().is_none_or(|e| e != ext)
            || rel.components().any(|c| c.as_os_str() == "vendor")
        {
            continue;
        }
        let mut cmd = Command::new(program);
        cmd.args(args).arg(ctx.join(&rel));
        match step(function, &format!("{program} syntax check"), &mut cmd) {
            Err(CliError::Build { output, .. }) if output.starts_with("cannot run") => {
                return Err(CliError::Build {
                    function: function.into(),
                    step: format!("{program} syntax check"),
                    output: format!(
                        "{output}\n{program} is not installed: install the {package} package (apt-get install {package})"
                    ),
                });
            }
            r => r?,
        }
    }
    Ok(())
}

/// A warning when the handler's Gemfile lists gems that were not vendored (fjord does not
/// fetch gems, and they would be missing at the first request).
fn unvendored_gems(handler: &Path) -> Option<String> {
    let gemfile = std::fs::read_to_string(handler.join("Gemfile")).ok()?;
    let lists_gems = gemfile.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("gem ") || l.starts_with("gem(")
    });
    let vendored = ["vendor/bundle", "bundle"]
        .iter()
        .any(|d| handler.join(d).join("bundler/setup.rb").is_file());
    (lists_gems && !vendored).then(|| {
        "warning: the Gemfile lists gems but they are not vendored (no vendor/bundle/bundler/setup.rb): \
         run `bundle install --standalone` with path vendor/bundle where rubygems.org is reachable \
         (docs/templates.md)"
            .to_string()
    })
}

/// A warning when composer.json requires packages (not just `php` or `ext-*`) and there is no
/// `vendor/autoload.php` (fjord does not run Composer).
fn unvendored_composer_packages(handler: &Path) -> Option<String> {
    let text = std::fs::read_to_string(handler.join("composer.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let packages: Vec<&str> = json
        .get("require")?
        .as_object()?
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "php" && !k.starts_with("ext-"))
        .collect();
    (!packages.is_empty() && !handler.join("vendor/autoload.php").is_file()).then(|| {
        format!(
            "warning: composer.json requires {} but there is no vendor/autoload.php: run \
             `composer install --no-dev` where Packagist is reachable (docs/templates.md)",
            packages.join(", ")
        )
    })
}

/// `step`, with "install PACKAGE" added when `program` cannot be started at all.
fn tool_step(function: &str, name: &str, cmd: &mut Command, package: &str) -> Result<(), CliError> {
    match step(function, name, cmd) {
        Err(CliError::Build { output, .. }) if output.starts_with("cannot run") => {
            let program = cmd.get_program().to_string_lossy().into_owned();
            Err(CliError::Build {
                function: function.into(),
                step: name.into(),
                output: format!(
                    "{output}\n{program} is not installed: install the {package} package (apt-get install {package})"
                ),
            })
        }
        r => r,
    }
}

/// The module path of a go.mod (`module handler/function`).
fn go_module_path(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("module")?;
        let path = rest.trim().trim_matches('"');
        (rest.starts_with([' ', '\t']) && !path.is_empty()).then(|| path.to_string())
    })
}

/// The import path of the golang-http SDK, which fjord ships (no module proxy here).
const GO_SDK: &str = "github.com/openfaas/templates-sdk/go-http";

/// Builds a Go template: the handler's own module (`function/`, its go.mod and vendor/ as
/// they are) is the main module, with the template's `main.go` added as its package
/// `fjordmain`, so vendored dependencies resolve exactly as `go build` would for the user.
/// Offline (GOPROXY=off), static (CGO_ENABLED=0), caches under the stack's `build/`.
fn go_build(
    function: &str,
    stack_dir: &Path,
    ctx: &Path,
    root: &Path,
    build_args: &std::collections::BTreeMap<String, String>,
) -> Result<(), CliError> {
    // go wants absolute paths (GOPATH, GOCACHE, replace targets).
    let ctx = &std::path::absolute(ctx)?;
    let stack_dir = &std::path::absolute(stack_dir)?;
    let root = &std::path::absolute(root)?;
    let module_dir = ctx.join("function");
    let go_mod = module_dir.join("go.mod");
    if !go_mod.is_file() {
        std::fs::write(&go_mod, "module handler/function\n\ngo 1.19\n")?;
    }
    let module = go_module_path(&std::fs::read_to_string(&go_mod)?).ok_or_else(|| {
        CliError::Other(format!(
            "{function}: go.mod has no `module` line (the skeleton's is `module handler/function`)"
        ))
    })?;
    let shim = std::fs::read_to_string(ctx.join("main.go"))?
        .replace("\"handler/function\"", &format!("{module:?}"));
    std::fs::create_dir_all(module_dir.join("fjordmain"))?;
    std::fs::write(module_dir.join("fjordmain/main.go"), shim)?;

    let vendored = module_dir.join("vendor/modules.txt").is_file();
    let build = stack_dir.join("build");
    let go = |args: &[&str]| {
        let mut cmd = Command::new("go");
        cmd.args(args)
            .current_dir(&module_dir)
            .env("CGO_ENABLED", "0")
            .env("GOPROXY", "off")
            .env("GOSUMDB", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            .env("GOFLAGS", if vendored { "-mod=vendor" } else { "-mod=mod" })
            .env("GOCACHE", build.join(".go-cache"))
            .env("GOPATH", build.join(".go-path"));
        for (k, v) in build_args {
            cmd.env(k, v);
        }
        cmd
    };
    let sdk = ctx.join("sdk/go-http");
    if sdk.join("go.mod").is_file() {
        let require = format!("-require={GO_SDK}@v0.0.0");
        if !vendored {
            let replace = format!("-replace={GO_SDK}={}", sdk.display());
            tool_step(
                function,
                "go mod edit",
                &mut go(&["mod", "edit", &require, &replace]),
                "golang-go",
            )?;
        } else {
            let modules = std::fs::read_to_string(module_dir.join("vendor/modules.txt"))?;
            if !modules.contains(&format!("# {GO_SDK} ")) {
                // The real SDK is not vendored: fjord's copy goes in, listed as vendored.
                let dest = module_dir.join("vendor").join(GO_SDK);
                std::fs::create_dir_all(&dest)?;
                std::fs::copy(sdk.join("handler.go"), dest.join("handler.go"))?;
                let mut modules = modules;
                if !modules.is_empty() && !modules.ends_with('\n') {
                    modules.push('\n');
                }
                modules.push_str(&format!(
                    "# {GO_SDK} v0.0.0\n## explicit; go 1.19\n{GO_SDK}\n"
                ));
                std::fs::write(module_dir.join("vendor/modules.txt"), modules)?;
                tool_step(
                    function,
                    "go mod edit",
                    &mut go(&["mod", "edit", &require]),
                    "golang-go",
                )?;
            }
        }
    }
    let out = root.join("handler");
    let r = tool_step(
        function,
        "go build",
        go(&["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(&out)
            .arg("./fjordmain"),
        "golang-go",
    );
    // go prints the paths of the main module's files relative to it (`./handler.go:5:3`):
    // made absolute here, then the user's by `user_paths`.
    r.map_err(|e| match e {
        CliError::Build {
            function,
            step,
            output,
        } => {
            let mut output = output
                .lines()
                .map(|l| match l.strip_prefix("./") {
                    Some(rest) => format!("{}/{rest}", module_dir.display()),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            if output.contains("GOPROXY=off") || output.contains("cannot find module") {
                output.push_str(
                    "\nfjord builds Go offline: vendor the dependencies (`go mod vendor` where \
                     the Go module proxy is reachable) and keep vendor/ in the handler folder",
                );
            }
            CliError::Build {
                function,
                step,
                output,
            }
        }
        other => other,
    })
}

/// Every `*.java` under `dir` (sorted), `skip` folders (relative to `dir`) left out.
fn java_sources(dir: &Path, skip: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if dir.is_dir() {
        collect(dir, Path::new(""), &mut files)?;
    }
    Ok(files
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| rel.extension().is_some_and(|e| e == "java"))
        .filter(|rel| !skip.iter().any(|s| rel.starts_with(s)))
        .map(|rel| dir.join(rel))
        .collect())
}

/// Builds the java template: javac of the model, the entrypoint and the handler's sources
/// (`src/main/java`, as Gradle and Maven lay them out, or every `.java` of the folder),
/// `libs/*.jar` on the classpath; `handler.jar` (Main-Class, and a Class-Path naming the
/// libs, so `java -jar handler.jar` needs no wildcard) and `libs/` are the bundle, with
/// `app.jsa`, the AppCDS archive of a trial start.
fn java_build(
    function: &str,
    ctx: &Path,
    root: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), CliError> {
    let handler = ctx.join("function");
    let main_java = handler.join("src/main/java");
    let mut sources = java_sources(&ctx.join("model"), &[])?;
    sources.extend(java_sources(&ctx.join("entrypoint"), &[])?);
    if main_java.is_dir() {
        sources.extend(java_sources(&main_java, &[])?);
    } else {
        sources.extend(java_sources(&handler, &["src/test", "libs"])?);
    }
    let mut libs: Vec<PathBuf> = std::fs::read_dir(handler.join("libs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jar"))
                .collect()
        })
        .unwrap_or_default();
    libs.sort();
    let classes = ctx.join(".classes");
    let _ = std::fs::remove_dir_all(&classes);
    std::fs::create_dir_all(&classes)?;
    let classpath = std::env::join_paths(&libs)
        .map_err(|e| CliError::Other(format!("{function}: libs/: {e}")))?;
    let mut javac = Command::new("javac");
    javac
        .args(["-encoding", "UTF-8", "-nowarn", "-d"])
        .arg(&classes)
        .arg("-cp")
        .arg(&classpath)
        .args(&sources);
    tool_step(function, "javac", &mut javac, "openjdk-17-jdk-headless")?;
    // Resources (src/main/resources) go in the jar beside the classes.
    let resources = handler.join("src/main/resources");
    if resources.is_dir() {
        copy_handler(&resources, &classes)?;
    }
    std::fs::create_dir_all(root.join("libs"))?;
    let mut class_path = Vec::new();
    for lib in &libs {
        let name = lib.file_name().unwrap_or_default();
        std::fs::copy(lib, root.join("libs").join(name))?;
        class_path.push(format!("libs/{}", name.to_string_lossy()));
    }
    let manifest = ctx.join(".manifest");
    let mut text = "Main-Class: com.openfaas.entrypoint.App\n".to_string();
    if !class_path.is_empty() {
        // Manifest lines are at most 72 bytes: continuation lines start with a space.
        let value = class_path.join(" ");
        let mut line = String::from("Class-Path: ");
        for c in value.chars() {
            if line.len() >= 70 {
                text.push_str(&line);
                text.push('\n');
                line = String::from(" ");
            }
            line.push(c);
        }
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&manifest, text)?;
    tool_step(
        function,
        "jar",
        Command::new("jar")
            .arg("--create")
            .arg("--file")
            .arg(root.join("handler.jar"))
            .arg("--manifest")
            .arg(&manifest)
            .arg("-C")
            .arg(&classes)
            .arg("."),
        "openjdk-17-jdk-headless",
    )?;
    // The bundle's files get mtime 0 when packed and unpacked, and CDS refuses jars whose
    // mtime changed since the archive was made: give them that mtime now.
    let epoch = std::fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH);
    for jar in
        std::iter::once(root.join("handler.jar")).chain(class_path.iter().map(|c| root.join(c)))
    {
        std::fs::File::options()
            .write(true)
            .open(&jar)?
            .set_times(epoch)?;
    }
    progress("java class data sharing archive");
    tool_step(
        function,
        "java trial start (class data sharing archive)",
        Command::new("java")
            .args([
                "-XX:ArchiveClassesAtExit=app.jsa",
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-XX:-UsePerfData",
                "-Xlog:cds=off",
                "-Xlog:cds+dynamic=off",
                "-jar",
                "handler.jar",
            ])
            .current_dir(root)
            .env("FJORD_JAVA_TRAIN", "1"),
        "openjdk-17-jre-headless",
    )?;
    Ok(())
}

/// Builds one function of a stack. A failing step's output names the user's files, not
/// their copies in the build context (`build/<name>/context/function/...`).
pub fn build(
    stack_dir: &Path,
    f: &StackFunction,
    no_cache: bool,
    image: Option<&ImageOptions>,
    progress: &dyn Fn(&str),
) -> Result<Built, CliError> {
    build_in_context(stack_dir, f, no_cache, image, progress).map_err(|e| match e {
        CliError::Build {
            function,
            step,
            output,
        } => {
            let handler = stack_dir.join(f.handler.as_deref().unwrap_or("."));
            let shown = handler
                .strip_prefix(".")
                .unwrap_or(&handler)
                .display()
                .to_string();
            let shown = if shown.is_empty() {
                ".".to_string()
            } else {
                shown
            };
            CliError::Build {
                function,
                step,
                output: user_paths(
                    &output,
                    &build_dir(stack_dir, &f.name).join("context"),
                    &shown,
                ),
            }
        }
        other => other,
    })
}

/// Rewrites build-context paths in a tool's output to the user's handler folder: absolute
/// ones (`<ctx>/function/handler.py`) and the relative ones cargo prints (`--> function/...`).
fn user_paths(output: &str, ctx: &Path, handler: &str) -> String {
    let abs = ctx.join("function");
    let canon = std::fs::canonicalize(&abs).unwrap_or_else(|_| abs.clone());
    let mut text = output.replace(&canon.display().to_string(), handler);
    text = text.replace(&abs.display().to_string(), handler);
    text.replace("--> function/", &format!("--> {handler}/"))
}

fn build_in_context(
    stack_dir: &Path,
    f: &StackFunction,
    no_cache: bool,
    image: Option<&ImageOptions>,
    progress: &dyn Fn(&str),
) -> Result<Built, CliError> {
    let lang = f.lang.as_deref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: has no lang, so there is nothing to build",
            f.name
        ))
    })?;
    let handler = stack_dir.join(f.handler.as_deref().unwrap_or("."));
    if !handler.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: handler folder {} does not exist",
            f.name,
            handler.display()
        )));
    }
    let dir = build_dir(stack_dir, &f.name);
    if lang == crate::dockerfile::LANG {
        // The Dockerfile is the whole recipe: no template, no bundle, an image with or
        // without --image (as faas-cli builds it).
        std::fs::create_dir_all(&dir)?;
        let default = ImageOptions::default();
        let opts = image.unwrap_or(&default);
        let (built, cached) = crate::dockerfile::build(f, &handler, &dir, opts, progress)?;
        return Ok(Built {
            digest: built.digest.clone(),
            archive: built.layout.clone(),
            cached,
            image: Some(built),
        });
    }
    let template = templates::find(lang, stack_dir)?;
    std::fs::create_dir_all(&dir)?;

    // The fingerprint of every input.
    let mut h = fjord_bundle::Hasher::default();
    h.update(b"fjord-build-1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(lang.as_bytes());
    h.update(f.fprocess.as_deref().unwrap_or("").as_bytes());
    for (k, v) in &f.build_args {
        h.update(format!("\0arg {k}={v}").as_bytes());
    }
    for (p, bytes) in template.files() {
        h.update(format!("\0t {} {}\0", p.display(), bytes.len()).as_bytes());
        h.update(&bytes);
    }
    let mut handler_files = Vec::new();
    collect(&handler, Path::new(""), &mut handler_files)?;
    for (p, bytes) in &handler_files {
        h.update(format!("\0h {} {}\0", p.display(), bytes.len()).as_bytes());
        h.update(bytes);
    }
    let inputs = h.finish().to_string();
    let spec = &template.spec;
    // What the bundle's directory is (only the binary for cargo builds).
    let root = match spec.build {
        BuildKind::Cargo | BuildKind::Go | BuildKind::Java => dir.join("bundle"),
        _ => dir.join("context"),
    };
    let fprocess = f.fprocess.clone().unwrap_or_else(|| spec.fprocess.clone());
    // The image is made from the bundle's directory, cached or new; the base image's tag
    // is resolved again each time (it may have moved).
    let with_image = |mut b: Built| -> Result<Built, CliError> {
        if let Some(opts) = image {
            b.image = Some(crate::image::build(
                f, &template, &root, &dir, &fprocess, &spec.env, opts, progress,
            )?);
        }
        Ok(b)
    };
    if !no_cache
        && std::fs::read_to_string(dir.join("inputs")).ok().as_deref() == Some(inputs.as_str())
        && root.is_dir()
        && let Some(b) = last_build(stack_dir, &f.name)
    {
        progress("unchanged: using the cached bundle");
        return with_image(b);
    }

    progress("assembling");
    let ctx = dir.join("context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    assemble(&template, &handler, &ctx)?;

    match spec.build {
        BuildKind::Pip => {
            let req = ctx.join("function/requirements.txt");
            if std::fs::metadata(&req)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
            {
                progress("pip install");
                let mut cmd = Command::new("/usr/bin/python3");
                cmd.args([
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--no-warn-script-location",
                    "--target",
                ])
                .arg(ctx.join("deps"))
                .arg("-r")
                .arg(&req);
                for (k, v) in &f.build_args {
                    cmd.env(k, v);
                }
                step(&f.name, "pip install", &mut cmd)?;
            }
            // Byte-code once, at build: the bundle is read-only at run time, so Python could
            // not cache it there. Hash-based .pyc files need no timestamps. Also finds syntax
            // errors now rather than at the first request.
            progress("python compile");
            step(
                &f.name,
                "python compile (syntax check)",
                Command::new("/usr/bin/python3")
                    .args([
                        "-m",
                        "compileall",
                        "-q",
                        "-f",
                        "--invalidation-mode",
                        "unchecked-hash",
                    ])
                    .arg(&ctx),
            )?;
        }
        BuildKind::Npm => {
            if ctx.join("function/package.json").exists() {
                progress("npm install");
                let mut cmd = Command::new("npm");
                cmd.args([
                    "install",
                    "--omit=dev",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .current_dir(ctx.join("function"));
                for (k, v) in &f.build_args {
                    cmd.env(k, v);
                }
                step(&f.name, "npm install", &mut cmd)?;
            }
            for js in ["function/handler.js", "index.js"] {
                if ctx.join(js).exists() {
                    step(
                        &f.name,
                        &format!("node --check {js}"),
                        Command::new("node").arg("--check").arg(ctx.join(js)),
                    )?;
                }
            }
        }
        BuildKind::Cargo => {
            progress("cargo build --release");
            let target = stack_dir.join("build").join(".cargo-target");
            step(
                &f.name,
                "cargo build --release",
                Command::new("cargo")
                    .args(["build", "--release", "--quiet", "--manifest-path"])
                    .arg(ctx.join("Cargo.toml"))
                    .env("CARGO_TARGET_DIR", &target),
            )?;
            // Only the binary ships.
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            let binary = target.join("release/main");
            std::fs::copy(&binary, root.join("main")).map_err(|e| {
                CliError::Other(format!(
                    "{}: `cargo build --release` finished but its binary {} cannot be copied ({e}): the template's Cargo.toml must build a binary named `main`",
                    f.name,
                    binary.display()
                ))
            })?;
        }
        BuildKind::Ruby => {
            progress("ruby syntax check");
            // RubyGems is not needed to parse (and costs ~30 ms a file).
            syntax_check(
                &f.name,
                &ctx,
                "rb",
                "ruby",
                &["--disable-gems", "-c"],
                "ruby",
            )?;
            if let Some(w) = unvendored_gems(&ctx.join("function")) {
                progress(&w);
            }
        }
        BuildKind::Php => {
            progress("php syntax check");
            syntax_check(&f.name, &ctx, "php", "php", &["-l"], "php-cli")?;
            if let Some(w) = unvendored_composer_packages(&ctx.join("function")) {
                progress(&w);
            }
        }
        BuildKind::Go => {
            progress("go build");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            go_build(&f.name, stack_dir, &ctx, &root, &f.build_args)?;
        }
        BuildKind::Java => {
            progress("javac");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            java_build(&f.name, &ctx, &root, progress)?;
        }
        BuildKind::None => {}
    }

    Manifest {
        name: f.name.clone(),
        language: lang.to_string(),
        fprocess: fprocess.clone(),
        mode: spec.mode.clone(),
        env: spec.env.clone(),
        fjord_version: env!("CARGO_PKG_VERSION").to_string(),
    }
    .write_dir(&root)
    .map_err(|e| CliError::Other(e.to_string()))?;

    progress("packing");
    let archive = dir.join("bundle.tar.gz");
    let digest = fjord_bundle::pack(&root, &archive).map_err(|e| CliError::Other(e.to_string()))?;
    std::fs::write(dir.join("digest"), digest.as_str())?;
    std::fs::write(dir.join("inputs"), &inputs)?;
    with_image(Built {
        digest: digest.to_string(),
        archive,
        cached: false,
        image: None,
    })
}

#[cfg(test)]
mod user_path_tests {
    use super::*;

    #[test]
    fn build_context_paths_become_the_handler_folder() {
        let ctx = Path::new("/work/app/build/greet/context");
        let out = "  File \"/work/app/build/greet/context/function/handler.py\", line 3\n\
                   error[E0308]: mismatched types\n --> function/src/lib.rs:5:9\n";
        let got = user_paths(out, ctx, "greet");
        assert!(got.contains("File \"greet/handler.py\", line 3"), "{got}");
        assert!(got.contains("--> greet/src/lib.rs:5:9"), "{got}");
        assert!(!got.contains("context"), "{got}");
    }
}
