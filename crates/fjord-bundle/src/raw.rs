//! Tar archives written entry by entry exactly as given — `..`, absolute names, links
//! anywhere, devices — which [`crate::pack`] never makes but a hostile client can upload.
//! For tests and fuzzing.

use std::io::Write;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Fifo,
    CharDevice,
}

/// One entry: its name (at most 100 bytes), kind and mode bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
}

impl Entry {
    pub fn file(name: &str, content: &[u8]) -> Self {
        Self {
            name: name.into(),
            kind: Kind::File(content.to_vec()),
            mode: 0o644,
        }
    }
    pub fn dir(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Dir,
            mode: 0o755,
        }
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
        }
    }
    pub fn hard_link(name: &str, target: &str) -> Self {
        Self {
            name: name.into(),
            kind: Kind::HardLink(target.into()),
            mode: 0o644,
        }
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

/// The entries as an uncompressed tar archive. Names and link targets longer than 100 bytes
/// are cut to 100.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let (t, data, link): (_, &[u8], &[u8]) = match &e.kind {
            Kind::File(d) => (tar::EntryType::Regular, d, b""),
            Kind::Dir => (tar::EntryType::Directory, b"", b""),
            Kind::Symlink(l) => (tar::EntryType::Symlink, b"", l),
            Kind::HardLink(l) => (tar::EntryType::Link, b"", l),
            Kind::Fifo => (tar::EntryType::Fifo, b"", b""),
            Kind::CharDevice => (tar::EntryType::Char, b"", b""),
        };
        let old = h.as_old_mut();
        let n = e.name.len().min(100);
        old.name[..n].copy_from_slice(&e.name[..n]);
        let n = link.len().min(100);
        old.linkname[..n].copy_from_slice(&link[..n]);
        h.set_entry_type(t);
        h.set_mode(e.mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data).expect("writing to a Vec");
    }
    b.into_inner().expect("writing to a Vec")
}

/// The entries as a tar.gz, the form of a bundle.
pub fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar(entries)).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}
