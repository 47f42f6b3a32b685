//! [`Extractor::oci_layer`]: OCI whiteouts in overlayfs form, tar modes and owners, and the
//! same refusals as for bundles. Needs root (mknod, chown, trusted.* xattrs), as fjord does.

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::raw::{Entry, Kind, tar};
use crate::{BundleError, Extractor};

fn extract(entries: &[Entry]) -> (tempfile::TempDir, Result<(), BundleError>) {
    extract_bytes(&tar(entries))
}

fn extract_bytes(archive: &[u8]) -> (tempfile::TempDir, Result<(), BundleError>) {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::File::open(t.path()).unwrap();
    let r = Extractor::default()
        .oci_layer(true)
        .extract(archive, root.as_fd());
    (t, r)
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn opaque(p: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(p, "trusted.overlay.opaque", &mut buf).ok()?;
    Some(buf[..n].to_vec())
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    let (t, r) = extract(&[
        Entry::dir("a"),
        Entry::file("a/.wh.gone", b""),
        Entry::file(".wh.top", b""),
        Entry::file("a/.wh..wh..opq", b""),
        Entry::file("a/.wh..wh.plnk", b""),
        // Same layer: a whiteout hides only lower layers, so the file stays…
        Entry::file("keep", b"k"),
        Entry::file(".wh.keep", b""),
        // … and an entry after a whiteout of its name replaces it.
        Entry::file(".wh.later", b""),
        Entry::file("later", b"l"),
        Entry::file("deep/er/.wh..wh..opq", b""),
    ]);
    r.unwrap();
    let p = t.path();
    assert!(is_whiteout(&p.join("a/gone")));
    assert!(is_whiteout(&p.join("top")));
    assert_eq!(opaque(&p.join("a")), Some(b"y".to_vec()));
    assert_eq!(opaque(&p.join("deep/er")), Some(b"y".to_vec()));
    assert_eq!(opaque(&p.join("deep")), None);
    assert!(!p.join("a/.wh..wh.plnk").exists() && !p.join("a/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(p.join("keep")).unwrap(), b"k");
    assert_eq!(std::fs::read(p.join("later")).unwrap(), b"l");
    let names: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".wh."))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_whiteout_needs_a_name() {
    let (_t, r) = extract(&[Entry::file("a/.wh.", b"")]);
    assert!(
        matches!(&r, Err(BundleError::Entry { reason, .. }) if reason.contains("whiteout")),
        "{r:?}"
    );
}

#[test]
fn modes_and_owners_come_from_the_tar_without_setuid() {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, t: tar::EntryType, mode: u32, uid: u64, data: &[u8], link: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid + 1);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("d", tar::EntryType::Directory, 0o750, 7, b"", "");
    add("d/suid", tar::EntryType::Regular, 0o4755, 1000, b"x", "");
    add("d/sgid", tar::EntryType::Regular, 0o2711, 0, b"x", "");
    add("tmp", tar::EntryType::Directory, 0o1777, 0, b"", "");
    add(
        "implicit/parent/f",
        tar::EntryType::Regular,
        0o600,
        5,
        b"x",
        "",
    );
    add("sh", tar::EntryType::Symlink, 0o777, 3, b"", "/bin/busybox");
    let archive = b.into_inner().unwrap();
    let (t, r) = extract_bytes(&archive);
    r.unwrap();
    let md = |n: &str| std::fs::symlink_metadata(t.path().join(n)).unwrap();
    let d = md("d");
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o750, 7, 8));
    let f = md("d/suid");
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o755, 1000, 1001));
    assert_eq!(f.mtime(), 1_000_000);
    assert_eq!(md("d/sgid").mode() & 0o7777, 0o711);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("implicit").mode() & 0o7777, 0o755);
    assert_eq!(md("implicit/parent/f").mode() & 0o7777, 0o600);
    let l = md("sh");
    assert!(l.file_type().is_symlink());
    assert_eq!((l.uid(), l.mtime()), (3, 1_000_000));
    assert_eq!(
        std::fs::read_link(t.path().join("sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}

#[test]
fn layers_are_refused_what_bundles_are() {
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![Entry::file("../x", b"")], "`..`"),
        (vec![Entry::file("/x", b"")], "absolute"),
        (
            vec![
                Entry::symlink("evil", "/etc"),
                Entry::file("evil/pwned", b""),
            ],
            "symlink",
        ),
        (
            vec![Entry {
                name: b"dev".to_vec(),
                kind: Kind::CharDevice,
                mode: 0o644,
            }],
            "character device",
        ),
        (vec![Entry::hard_link("h", "/etc/passwd")], "absolute"),
    ];
    for (entries, why) in cases {
        let (_t, r) = extract(&entries);
        match r {
            Err(BundleError::Entry { reason, .. }) => {
                assert!(reason.contains(why), "{entries:?}: {reason}")
            }
            other => panic!("{entries:?}: {other:?}"),
        }
    }
}

#[test]
fn bundles_keep_wh_names_as_plain_files() {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::File::open(t.path()).unwrap();
    Extractor::default()
        .extract(&tar(&[Entry::file(".wh.x", b"plain")])[..], root.as_fd())
        .unwrap();
    assert_eq!(std::fs::read(t.path().join(".wh.x")).unwrap(), b"plain");
}
