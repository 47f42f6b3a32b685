//! Hostile archives: each way out of the target directory, tried against the extractor, with a
//! check that nothing around the scratch root was created or changed.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::raw::{Entry, Kind, tar, tar_gz};
use crate::{BundleError, Existing, Extractor, MANIFEST, Symlinks};

/// `<tmp>/p/sentinel` (0600), and the root four directories below `p`, so that an escape
/// with up to four `..` lands somewhere the snapshot sees.
struct Scratch {
    _t: tempfile::TempDir,
    parent: PathBuf,
    root: PathBuf,
}

fn scratch() -> Scratch {
    let t = tempfile::tempdir().unwrap();
    let parent = t.path().join("p");
    let root = parent.join("a/b/c/root");
    std::fs::create_dir_all(&root).unwrap();
    let sentinel = parent.join("sentinel");
    std::fs::write(&sentinel, "sentinel").unwrap();
    std::fs::set_permissions(&sentinel, std::fs::Permissions::from_mode(0o600)).unwrap();
    Scratch {
        _t: t,
        parent,
        root,
    }
}

/// Everything under `p` but below the root: kind, mode, owner, content or target.
fn snapshot(s: &Scratch) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                format!("file {:?}", std::fs::read(&p).unwrap())
            } else {
                "dir".into()
            };
            if p == skip {
                // The root itself is the extractor's to change.
                out.insert(p, "the root".into());
                continue;
            }
            out.insert(
                p.clone(),
                format!("{what} {:o} {}:{}", m.mode(), m.uid(), m.gid()),
            );
            if m.is_dir() {
                walk(&p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&s.parent, &s.root, &mut out);
    out
}

/// Extracts the entries (plain tar) into the scratch root and finishes the tree.
fn extract_with(ex: &Extractor, entries: &[Entry]) -> (Scratch, Result<(), BundleError>) {
    let s = scratch();
    let before = snapshot(&s);
    let root = std::fs::File::open(&s.root).unwrap();
    let data = tar(entries);
    let r = ex
        .extract(&data[..], root.as_fd())
        .and_then(|()| ex.finish(root.as_fd()));
    assert_eq!(snapshot(&s), before, "something outside the root changed");
    (s, r)
}

fn extract(entries: &[Entry]) -> (Scratch, Result<(), BundleError>) {
    extract_with(&Extractor::default(), entries)
}

/// Asserts a refusal naming `entry`, with `why` in the reason.
fn refused(r: Result<(), BundleError>, entry: &str, why: &str) {
    match r {
        Err(BundleError::Entry { entry: e, reason }) => {
            assert_eq!(e, format!("{entry:?}"), "{reason}");
            assert!(
                reason.contains(why),
                "entry {e}: {reason} (expected {why:?})"
            );
        }
        other => panic!("expected entry {entry} to be refused ({why}), got {other:?}"),
    }
}

/// Same entries through `read_manifest` (the upload check): refused too, naming the entry.
fn refused_at_upload(entries: &[Entry], entry: &str) {
    let t = tempfile::tempdir().unwrap();
    let mut all = entries.to_vec();
    all.push(Entry::file(MANIFEST, MANIFEST_JSON.as_bytes()));
    let path = t.path().join("b.tgz");
    std::fs::write(&path, tar_gz(&all)).unwrap();
    match crate::read_manifest(&path) {
        Err(e @ BundleError::Entry { .. }) => {
            assert!(e.to_string().contains(&format!("{entry:?}")), "{e}")
        }
        other => panic!("upload check of {entry}: {other:?}"),
    }
}

const MANIFEST_JSON: &str = r#"{"name":"f","language":"bash","fprocess":"./run.sh","mode":"fork"}"#;

/// The chain of the issue: `d → .`, `d/d/d/d/up → ../../../..` (made through `d`, so at the
/// root, four levels up), then files written through `up`.
fn issue_chain() -> Vec<Entry> {
    vec![
        Entry::symlink("d", "."),
        Entry::symlink("d/d/d/d/up", "../../../.."),
        Entry::file("up/sentinel", b"pwned"),
        Entry::file("up/created", b"pwned"),
    ]
}

#[test]
fn the_symlink_chain_of_the_issue_is_refused() {
    for policy in [Symlinks::Contained, Symlinks::Any] {
        let (s, r) = extract_with(&Extractor::default().symlinks(policy), &issue_chain());
        refused(r, "d/d/d/d/up", "beneath \"d\", which is a symlink");
        assert!(!s.root.join("up").exists());
    }
    refused_at_upload(&issue_chain(), "d/d/d/d/up");
}

#[test]
fn the_chain_through_unpack_leaves_nothing_behind() {
    let s = scratch();
    let before = snapshot(&s);
    let mut entries = issue_chain();
    entries.push(Entry::file(MANIFEST, MANIFEST_JSON.as_bytes()));
    let archive = s.parent.join("../evil.tgz");
    std::fs::write(&archive, tar_gz(&entries)).unwrap();
    let dest = s.root.join("x/y/bundle");
    let e = crate::unpack(&archive, &dest, None).unwrap_err();
    assert!(e.to_string().contains("d/d/d/d/up"), "{e}");
    assert_eq!(snapshot(&s), before);
    assert!(!dest.exists());
    // Not even the staging directory is left.
    assert_eq!(std::fs::read_dir(s.root.join("x/y")).unwrap().count(), 0);
}

#[test]
fn an_escaping_symlink_is_refused_but_followed_by_nothing_with_any_target_allowed() {
    let entries = [
        Entry::symlink("up", "../../../.."),
        Entry::file("up/created", b"pwned"),
    ];
    let (_, r) = extract(&entries);
    refused(r, "up", "outside the bundle");
    refused_at_upload(&entries, "up");
    // Image layers may hold such links; they are made, never followed.
    let (s, r) = extract_with(&Extractor::default().symlinks(Symlinks::Any), &entries);
    refused(r, "up/created", "beneath \"up\", which is a symlink");
    assert_eq!(
        std::fs::read_link(s.root.join("up")).unwrap(),
        Path::new("../../../..")
    );
    let (s, r) = extract_with(
        &Extractor::default().symlinks(Symlinks::Any),
        &[Entry::symlink("abs", "/"), Entry::file("abs/created", b"x")],
    );
    refused(r, "abs/created", "beneath \"abs\", which is a symlink");
    assert!(s.root.join("abs").is_symlink());
}

#[test]
fn symlink_targets_must_stay_inside() {
    let ok = [
        Entry::dir("node_modules/x/bin"),
        Entry::file("node_modules/x/bin/cli.js", b"js"),
        Entry::symlink("node_modules/.bin/x", "../x/bin/cli.js"),
        Entry::symlink("here", "."),
        Entry::symlink("a/b/top", "../.."),
        Entry::symlink("a/b/dangling", "nothing/yet"),
    ];
    let (s, r) = extract(&ok);
    r.unwrap();
    assert_eq!(
        std::fs::read(s.root.join("node_modules/.bin/x")).unwrap(),
        b"js"
    );
    for (target, why) in [
        ("/etc/passwd", "absolute"),
        ("x/../..", "`..` after a name"),
        ("here/../..", "`..` after a name"),
        ("../../..", "outside the bundle"),
        ("", "without a target"),
    ] {
        let entries = [Entry::symlink("a/b/l", target)];
        let (_, r) = extract(&entries);
        refused(r, "a/b/l", why);
        refused_at_upload(&entries, "a/b/l");
    }
}

#[test]
fn hard_links_only_to_files_inside() {
    for (target, why) in [
        ("../../../../sentinel", "`..`"),
        ("/etc/passwd", "absolute"),
        ("missing", "cannot be reached"),
        ("s", "is a symlink"),
        ("dir", "is a directory"),
        ("s/f", "cannot be reached"),
    ] {
        let entries = [
            Entry::dir("dir"),
            Entry::file("dir/f", b"f"),
            Entry::symlink("s", "dir"),
            Entry::hard_link("h", target),
        ];
        let (s, r) = extract(&entries);
        refused(r, "h", why);
        assert!(!s.root.join("h").exists());
        if target != "missing" && target != "s/f" {
            refused_at_upload(&entries, "h");
        }
    }
    // A hard link to a symlink would move the link to another directory, where its
    // relative target means something else: refused even with any target allowed.
    let (_, r) = extract_with(
        &Extractor::default().symlinks(Symlinks::Any),
        &[
            Entry::symlink("a/b/l", "../x"),
            Entry::hard_link("l2", "a/b/l"),
        ],
    );
    refused(r, "l2", "is a symlink");
    // To a file: fine, and the same file.
    let (s, r) = extract(&[Entry::file("f", b"content"), Entry::hard_link("sub/g", "f")]);
    r.unwrap();
    let (a, b) = (
        std::fs::metadata(s.root.join("f")).unwrap(),
        std::fs::metadata(s.root.join("sub/g")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn dotdot_and_absolute_names_are_refused() {
    for (name, why) in [
        ("../../../../sentinel", "`..`"),
        ("a/../../x", "`..`"),
        ("./../x", "`..`"),
        ("/tmp/x", "absolute"),
        ("//x", "absolute"),
    ] {
        let entries = [Entry::file(name, b"pwned")];
        let (_, r) = extract(&entries);
        refused(r, name, why);
        refused_at_upload(&entries, name);
    }
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, why) in [(Kind::Fifo, "fifo"), (Kind::CharDevice, "character device")] {
        let entries = [Entry {
            name: b"dev".to_vec(),
            kind,
            mode: 0o666,
        }];
        let (s, r) = extract(&entries);
        refused(r, "dev", why);
        assert!(std::fs::symlink_metadata(s.root.join("dev")).is_err());
        refused_at_upload(&entries, "dev");
    }
}

#[test]
fn nothing_is_written_through_a_symlinked_directory() {
    let entries = [
        Entry::dir("sub"),
        Entry::symlink("s", "sub"),
        Entry::file("s/f", b"through"),
    ];
    for policy in [Symlinks::Contained, Symlinks::Any] {
        let (s, r) = extract_with(&Extractor::default().symlinks(policy), &entries);
        refused(r, "s/f", "beneath \"s\", which is a symlink");
        assert!(!s.root.join("sub/f").exists());
    }
    refused_at_upload(&entries, "s/f");
}

#[test]
fn a_directory_or_file_cannot_take_the_place_of_a_symlink() {
    for second in [Entry::dir("x"), Entry::file("x", b"over")] {
        let entries = [
            Entry::dir("sub"),
            Entry::symlink("x", "sub"),
            second,
            Entry::file("x/f", b"through"),
        ];
        let (s, r) = extract(&entries);
        refused(r, "x", "clashes with a symlink");
        assert!(s.root.join("x").is_symlink());
        assert_eq!(std::fs::read_dir(s.root.join("sub")).unwrap().count(), 0);
        refused_at_upload(&entries, "x");
        // Replacing (image layers): the link goes, the new entry takes its place, and
        // nothing is written through the old link.
        let (s, r) = extract_with(&Extractor::default().existing(Existing::Replace), &entries);
        assert_eq!(std::fs::read_dir(s.root.join("sub")).unwrap().count(), 0);
        if matches!(entries[2].kind, Kind::Dir) {
            r.unwrap();
            assert_eq!(std::fs::read(s.root.join("x/f")).unwrap(), b"through");
        } else {
            refused(r, "x/f", "beneath \"x\", which is a file");
            assert_eq!(std::fs::read(s.root.join("x")).unwrap(), b"over");
        }
    }
    // A directory is never replaced, whatever the policy.
    let (s, r) = extract_with(
        &Extractor::default()
            .existing(Existing::Replace)
            .symlinks(Symlinks::Any),
        &[Entry::dir("d"), Entry::symlink("d", "/")],
    );
    refused(r, "d", "clashes with a directory");
    assert!(s.root.join("d").is_dir());
}

#[test]
fn names_repeat_only_as_directories() {
    let entries = [Entry::file("f", b"one"), Entry::file("f", b"two")];
    let (_, r) = extract(&entries);
    refused(r, "f", "clashes with a file");
    refused_at_upload(&entries, "f");
    let (s, r) = extract_with(&Extractor::default().existing(Existing::Replace), &entries);
    r.unwrap();
    assert_eq!(std::fs::read(s.root.join("f")).unwrap(), b"two");
    let (_, r) = extract(&[Entry::dir("d"), Entry::dir("d/"), Entry::dir("./d")]);
    r.unwrap();
}

#[test]
fn setuid_and_absurd_modes_are_normalised() {
    let entries = [
        Entry::file("suid", b"x").mode(0o6755),
        Entry::file("all", b"x").mode(0o7777),
        Entry::file("none", b"x").mode(0),
        Entry::file("ww", b"x").mode(0o666),
        Entry::dir("d").mode(0o7777),
    ];
    let mode =
        |s: &Scratch, p: &str| std::fs::symlink_metadata(s.root.join(p)).unwrap().mode() & 0o7777;
    let (s, r) = extract(&entries);
    r.unwrap();
    for (p, m) in [
        ("suid", 0o755),
        ("all", 0o755),
        ("none", 0o644),
        ("ww", 0o644),
        ("d", 0o755),
        ("", 0o755),
    ] {
        assert_eq!(mode(&s, p), m, "{p}");
    }
    let gid = rustix::process::getgid().as_raw();
    let uid = rustix::process::getuid().as_raw();
    let (s, r) = extract_with(&Extractor::default().owner(Some((uid, gid))), &entries);
    r.unwrap();
    for (p, m) in [
        ("suid", 0o750),
        ("all", 0o750),
        ("none", 0o640),
        ("ww", 0o640),
        ("d", 0o750),
    ] {
        assert_eq!(mode(&s, p), m, "{p}");
    }
}

#[test]
fn limits_hold() {
    let entries = [Entry::file("a", &[1; 100]), Entry::file("b", &[2; 100])];
    let (_, r) = extract_with(&Extractor::default().limits(150, 10), &entries);
    assert!(
        matches!(r, Err(BundleError::Invalid(ref m)) if m.contains("too large")),
        "{r:?}"
    );
    let (_, r) = extract_with(&Extractor::default().limits(1000, 1), &entries);
    assert!(
        matches!(r, Err(BundleError::Invalid(ref m)) if m.contains("too large")),
        "{r:?}"
    );
    extract_with(&Extractor::default().limits(200, 2), &entries)
        .1
        .unwrap();
}

/// A bundle as `fjord build` makes them (npm's `.bin` links, a pip `--target` tree, an
/// executable shim) unpacks byte for byte.
#[test]
fn a_normal_bundle_unpacks_identically() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files: &[(&str, &[u8])] = &[
        ("index.js", b"require('./function/handler')\n"),
        ("function/handler.js", b"module.exports = () => 1\n"),
        (
            "function/node_modules/left-pad/index.js",
            b"module.exports = 1\n",
        ),
        (
            "function/node_modules/left-pad/bin/cli.js",
            b"#!/usr/bin/env node\n",
        ),
        ("deps/requests/__init__.py", b"# requests\n"),
        ("deps/bin/normalizer", b"#!/usr/bin/python3\n"),
        (
            "deps/requests-2.0.dist-info/RECORD",
            b"requests/__init__.py,,\n",
        ),
        ("empty", b""),
    ];
    for (p, c) in files {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, c).unwrap();
    }
    std::fs::set_permissions(
        src.join("deps/bin/normalizer"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(src.join("function/node_modules/.bin")).unwrap();
    std::fs::create_dir_all(src.join("function/emptydir")).unwrap();
    std::os::unix::fs::symlink(
        "../left-pad/bin/cli.js",
        src.join("function/node_modules/.bin/left-pad"),
    )
    .unwrap();
    std::os::unix::fs::symlink("function", src.join("fn")).unwrap();
    std::fs::write(src.join(MANIFEST), MANIFEST_JSON).unwrap();
    let archive = t.path().join("b.tgz");
    crate::pack(&src, &archive).unwrap();
    assert_eq!(crate::read_manifest(&archive).unwrap().fprocess, "./run.sh");
    let dest = t.path().join("run/1/bundle");
    let m = crate::unpack(&archive, &dest, None).unwrap();
    assert_eq!(m.mode, "fork");

    fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let v = if m.is_symlink() {
                    format!("link {:?}", std::fs::read_link(&p).unwrap())
                } else if m.is_dir() {
                    stack.push(p);
                    "dir".into()
                } else {
                    format!(
                        "file {:?} exec={}",
                        std::fs::read(&p).unwrap(),
                        m.mode() & 0o100 != 0
                    )
                };
                out.insert(rel, v);
            }
        }
        out
    }
    assert_eq!(tree(&dest), tree(&src));
    assert_eq!(
        std::fs::read(dest.join("function/node_modules/.bin/left-pad")).unwrap(),
        b"#!/usr/bin/env node\n"
    );
    // Nothing else next to it: the staging directory is gone.
    assert_eq!(
        std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn a_manifest_must_be_a_regular_file() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("b.tgz");
    std::fs::write(t.path().join("m.json"), MANIFEST_JSON).unwrap();
    std::fs::write(
        &archive,
        tar_gz(&[
            Entry::file("real.json", MANIFEST_JSON.as_bytes()),
            Entry::symlink(MANIFEST, "real.json"),
        ]),
    )
    .unwrap();
    let e = crate::unpack(&archive, &t.path().join("out"), None).unwrap_err();
    assert!(e.to_string().contains("no manifest.json"), "{e}");
    assert!(crate::read_manifest(&archive).is_err());
}

/// As root: the extraction thread runs as the given uid (it cannot write where that uid
/// cannot), the result belongs to the owner, and the rest of the process stays root.
#[test]
fn extraction_runs_as_the_unprivileged_uid() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (uid, gid) = (2_999_999, 2_999_999);
    let s = scratch();
    // A root-only directory: the dropped thread may not write into it.
    let root_only = std::fs::File::open(&s.root).unwrap();
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ex = Extractor::default().extract_as(Some((uid, gid)));
    match ex.extract(&tar(&[Entry::file("f", b"x")])[..], root_only.as_fd()) {
        Err(BundleError::Io { source, .. }) => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{source}"
            )
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    assert!(rustix::process::geteuid().is_root());
    assert!(
        std::thread::spawn(|| rustix::process::geteuid().is_root())
            .join()
            .unwrap()
    );

    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("b.tgz");
    std::fs::write(
        &archive,
        tar_gz(&[
            Entry::file(MANIFEST, MANIFEST_JSON.as_bytes()),
            Entry::file("run.sh", b"#!/bin/sh\n").mode(0o4755),
            Entry::symlink("link", "run.sh"),
            Entry::file("sub/data", b"d"),
            Entry::hard_link("sub/same", "sub/data"),
        ]),
    )
    .unwrap();
    let dest = t.path().join("run/x");
    Extractor::default()
        .owner(Some((0, gid)))
        .extract_as(Some((uid, gid)))
        .unpack(&archive, &dest)
        .unwrap();
    for (p, m) in [
        ("", 0o750),
        (MANIFEST, 0o640),
        ("run.sh", 0o750),
        ("sub", 0o750),
        ("sub/data", 0o640),
        ("sub/same", 0o640),
    ] {
        let md = std::fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (m, 0, gid), "{p}");
    }
    let l = std::fs::symlink_metadata(dest.join("link")).unwrap();
    assert_eq!((l.uid(), l.gid()), (0, gid));
}
