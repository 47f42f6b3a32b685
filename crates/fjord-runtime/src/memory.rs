//! Letting go of the pages of fjord's binary that only start-up ran.
//!
//! fjord is one large binary (~30 MB of code). Start-up (argument parsing, TLS, the stores,
//! restoring functions, the runtimes' checks) touches much of it, and the kernel maps up to
//! 64 KiB around each page it faults in, so an idle server kept ~12 MiB of the binary
//! mapped that it never runs again. Those pages are clean copies of the file: dropping their
//! mappings loses nothing. The page cache keeps them, and code that runs again is mapped
//! back by a minor fault, so the resident set becomes what the server actually runs.

// madvise on this process's own mappings.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

/// A mapping of the executable whose pages may all be unmapped.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    len: usize,
    rss_kb: u64,
}

/// The mappings of `exe` in `smaps` (the text of `/proc/self/smaps`) that are not writable
/// (nothing can dirty them meanwhile) and hold no private copies ("Anonymous": relocated
/// data, which MADV_DONTNEED would reset to the file's bytes).
fn clean_mappings_of(smaps: &str, exe: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    // The mapping being read, while it may still qualify.
    let mut current: Option<CleanMapping> = None;
    let mut anonymous_free = false;
    let mut finish = |m: Option<CleanMapping>, anonymous_free: bool| {
        if let Some(m) = m
            && anonymous_free
        {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        // A mapping's header: `start-end perms offset device inode [path]`, the path padded
        // and possibly holding spaces.
        let mut header = line.splitn(6, ' ');
        if let Some((start, end)) = header.next().and_then(|r| r.split_once('-'))
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(current.take(), anonymous_free);
            anonymous_free = false;
            let perms = header.next().unwrap_or("");
            let path = header.nth(3).map(str::trim);
            if path == Some(exe) && perms.as_bytes().get(1) == Some(&b'-') && end > start {
                current = Some(CleanMapping {
                    start,
                    len: end - start,
                    rss_kb: 0,
                });
            }
            continue;
        }
        let Some(m) = current.as_mut() else {
            continue;
        };
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        let kb = fields.next().and_then(|v| v.parse::<u64>().ok());
        match (first, kb) {
            ("Rss:", Some(kb)) => m.rss_kb = kb,
            ("Anonymous:", Some(kb)) => anonymous_free = kb == 0,
            _ => {}
        }
    }
    finish(current, anonymous_free);
    out
}

/// Unmaps the resident pages of the executable's read-only, unmodified mappings; returns
/// how many KiB were resident in them before.
pub fn release_binary_pages() -> std::io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in clean_mappings_of(&smaps, &exe.to_string_lossy()) {
        let Some(addr) = NonNull::new(m.start as *mut c_void) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process, read-only and without
        // private pages: MADV_DONTNEED only drops page-table entries to clean file pages,
        // which the next access maps again with the same bytes.
        unsafe { nix::sys::mman::madvise(addr, m.len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) }
            .map_err(std::io::Error::from)?;
        released += m.rss_kb;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d000000000-55d000200000 r--p 00000000 fd:01 123 /usr/bin/fjord serve
Rss:                1024 kB
Anonymous:             0 kB
55d000200000-55d002000000 r-xp 00200000 fd:01 123 /usr/bin/fjord serve
Size:              30720 kB
Rss:               12288 kB
Anonymous:             0 kB
55d002000000-55d002100000 r--p 02000000 fd:01 123 /usr/bin/fjord serve
Rss:                 800 kB
Anonymous:           780 kB
55d002100000-55d002200000 rw-p 02100000 fd:01 123 /usr/bin/fjord serve
Rss:                  64 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
Rss:                  40 kB
Anonymous:            40 kB
";

    #[test]
    fn only_read_only_unmodified_mappings_of_the_binary_are_released() {
        let found = clean_mappings_of(SMAPS, "/usr/bin/fjord serve");
        assert_eq!(
            found,
            vec![
                CleanMapping {
                    start: 0x55d000000000,
                    len: 0x200000,
                    rss_kb: 1024
                },
                CleanMapping {
                    start: 0x55d000200000,
                    len: 0x1e00000,
                    rss_kb: 12288
                },
            ],
            "relocated data (Anonymous > 0), writable data, other files and anonymous memory stay"
        );
        assert!(clean_mappings_of(SMAPS, "/usr/bin/other").is_empty());
    }

    fn resident_kb_of_binary() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        clean_mappings_of(&smaps, &exe.to_string_lossy())
            .iter()
            .map(|m| m.rss_kb)
            .sum()
    }

    #[test]
    fn released_pages_come_back_when_run_and_the_process_goes_on() {
        let before = resident_kb_of_binary();
        assert!(before > 0, "this test binary has resident code");
        let released = release_binary_pages().unwrap();
        assert!(released > 0);
        let after = resident_kb_of_binary();
        assert!(
            after < before,
            "resident {before} KiB before, {after} after"
        );
        // Code and read-only data still work: formatting, a hash map, a regex-free parse.
        let m: std::collections::HashMap<String, usize> =
            (0..100).map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(m["k42"], 42);
        assert_eq!(
            clean_mappings_of(SMAPS, "/usr/bin/fjord serve").len(),
            2,
            "the parser, run again after its pages were dropped"
        );
    }
}
