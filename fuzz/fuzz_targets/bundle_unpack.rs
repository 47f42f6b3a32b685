//! The bundle extractor (`fjord_bundle::Extractor`): archives made of hostile entries —
//! symlinks, hard links, directories, files and fifos whose names and targets are drawn from
//! `a`, `d`, `up`, `sentinel`, `.`, `..` and `/` — unpacked into a scratch root four
//! directories below a scratch parent that holds a sentinel file.
//!
//! Properties: nothing outside the root is created, removed or changed (the whole parent is
//! compared, metadata included, after every input); the tree holds only files, directories
//! and symlinks, with no setuid, setgid, sticky or world-writable bit; with contained links
//! (what bundles get) every symlink that resolves stays inside the root; the upload check
//! (`Extractor::check`) accepts exactly what extraction accepts; a bundle unpacked with
//! `unpack` is either complete at its destination or leaves nothing there.
//!
//! Input: one flags byte (bit 0: any symlink target allowed; bit 1: later entries replace
//! earlier ones; bit 2: also a bundle through `unpack`), then entries of a kind byte, a name
//! and a target (each a count byte and that many token bytes), and a mode byte.

#![no_main]

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fjord_bundle::raw::{Entry, Kind, tar, tar_gz};
use fjord_bundle::{Existing, Extractor, Symlinks};
use libfuzzer_sys::fuzz_target;

const TOKENS: [&str; 10] = ["a", "d", "up", "sentinel", ".", "..", "", "..", "x", "root"];
const MANIFEST: &str = r#"{"name":"f","language":"bash","fprocess":"./run.sh","mode":"fork"}"#;

struct Scratch {
    parent: PathBuf,
    root: PathBuf,
    archive: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

/// `/dev/shm/fjord-fuzz-bundle-<pid>/{sentinel, a/sentinel, a/b/c/sibling/, a/b/c/root/}`
/// (or under `$TMPDIR` without /dev/shm):
/// an escape with up to four `..` lands somewhere the snapshot sees.
fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        // A tmpfs when there is one: on a busy disk each unlink can take milliseconds.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // Earlier runs' scratch directories, whose process is gone.
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("fjord-fuzz-bundle-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let base = tmp.join(format!("fjord-fuzz-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let parent = base.join("p");
        let root = parent.join("a/b/c/root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(parent.join("a/b/c/sibling")).unwrap();
        std::fs::write(parent.join("sentinel"), "sentinel").unwrap();
        std::fs::write(parent.join("a/sentinel"), "sentinel").unwrap();
        let mut s = Scratch {
            archive: base.join("bundle.tgz"),
            parent,
            root,
            before: BTreeMap::new(),
        };
        s.before = snapshot(&s);
        s
    })
}

/// Everything under the parent but inside the root: kind, mode, owner, size, times, content.
fn snapshot(s: &Scratch) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![s.parent.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == s.root {
                out.insert(p, "the root".into());
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_symlink() {
                format!("{:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                format!("{:?}", std::fs::read(&p).unwrap())
            } else {
                stack.push(p.clone());
                String::new()
            };
            out.insert(
                p,
                format!(
                    "{:o} {}:{} {} {}.{} {}.{} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ),
            );
        }
    }
    out
}

fn parse(data: &[u8]) -> Option<(u8, Vec<Entry>)> {
    let (&flags, mut rest) = data.split_first()?;
    let mut take = || -> Option<u8> {
        let (&b, r) = rest.split_first()?;
        rest = r;
        Some(b)
    };
    let mut entries = Vec::new();
    while entries.len() < 24 {
        let Some(kind) = take() else { break };
        let mut path = || -> Option<Vec<u8>> {
            let n = take()? % 8;
            let parts: Option<Vec<&str>> = (0..n)
                .map(|_| take().map(|t| TOKENS[t as usize % TOKENS.len()]))
                .collect();
            Some(parts?.join("/").into_bytes())
        };
        let (Some(name), Some(target), Some(mode)) = (path(), path(), take()) else {
            break;
        };
        let kind = match kind % 5 {
            0 => Kind::File(target.clone()),
            1 => Kind::Dir,
            2 => Kind::Symlink(target),
            3 => Kind::HardLink(target),
            _ => Kind::Fifo,
        };
        // Mode bits 7..0 spread over setuid/setgid/sticky, owner x and the world bits.
        let mode = u32::from(mode & 0o7) << 9
            | u32::from(mode >> 3 & 0o7) << 6
            | 0o4
            | u32::from(mode >> 6) << 1;
        entries.push(Entry { name, kind, mode });
    }
    Some((flags, entries))
}

/// The tree's own invariants.
fn check_tree(root: &Path, contained: bool) {
    let canonical_root = root.canonicalize().unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            if ft.is_symlink() {
                if contained {
                    if let Ok(real) = p.canonicalize() {
                        assert!(
                            real.starts_with(&canonical_root),
                            "{} resolves to {}, outside the root",
                            p.display(),
                            real.display()
                        );
                    }
                }
                continue;
            }
            assert!(
                ft.is_dir() || ft.is_file(),
                "{} is a special file",
                p.display()
            );
            assert_eq!(m.mode() & 0o7002, 0, "{}: mode {:o}", p.display(), m.mode());
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
}

/// Empties `dir` (not removing it: that would change its parent, which the snapshot sees).
fn reset(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            // std's remove_dir_all does not follow symlinks.
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, entries)) = parse(data) else {
        return;
    };
    let s = scratch();
    let contained = flags & 1 == 0;
    let ex = Extractor::default()
        .symlinks(if contained {
            Symlinks::Contained
        } else {
            Symlinks::Any
        })
        .existing(if flags & 2 == 0 {
            Existing::Refuse
        } else {
            Existing::Replace
        })
        .limits(1 << 20, 64);

    reset(&s.root);
    let archive = tar(&entries);
    let root = std::fs::File::open(&s.root).unwrap();
    let extracted = ex
        .extract(&archive[..], root.as_fd())
        .and_then(|()| ex.finish(root.as_fd()));
    assert_eq!(snapshot(s), s.before, "something outside the root changed");
    if extracted.is_ok() {
        check_tree(&s.root, contained);
    }
    let checked = ex.check(&archive[..], |_, _| Ok(()));
    assert_eq!(
        checked.is_ok(),
        extracted.is_ok(),
        "the upload check and extraction disagree: check {checked:?}, extraction {extracted:?}"
    );

    if flags & 4 != 0 {
        reset(&s.root);
        let mut bundle = entries;
        bundle.push(Entry::file("manifest.json", MANIFEST.as_bytes()));
        std::fs::write(&s.archive, tar_gz(&bundle)).unwrap();
        let dest = s.root.join("run/bundle");
        match ex.unpack(&s.archive, &dest) {
            Ok(m) => {
                assert_eq!(m.fprocess, "./run.sh");
                check_tree(&dest, contained);
            }
            Err(_) => assert_eq!(
                std::fs::read_dir(s.root.join("run")).map_or(0, |d| d.count()),
                0,
                "a refused bundle left something behind"
            ),
        }
        assert_eq!(snapshot(s), s.before, "something outside the root changed");
    }
});
