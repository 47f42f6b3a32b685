//! Letting go of memory fjord no longer uses: the pages of its binary that only start-up
//! ran, and the free heap a load left behind ([`HeapTrimmer`]).
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

/// Gives the allocator's free heap back to the kernel once the server is quiet.
///
/// glibc keeps what a load freed in its arenas (one per thread that allocated under
/// contention): after a c=64 load through the gateway, ~12 MiB of the 21 MiB anonymous
/// memory was free heap that stayed resident for good. `malloc_trim` returns those pages;
/// it locks each arena while it walks it, so it runs only when the process used little CPU
/// since the last check (no load to delay, nothing about to reuse the pages).
pub struct HeapTrimmer {
    last_cpu: Option<std::time::Duration>,
    last_check: std::time::Instant,
    /// The free heap right after the last trim (trimmed pages still count as free).
    free_after_trim: Option<usize>,
    /// A check found the server busy since the last trim.
    busy_since_trim: bool,
}

/// Below this much free heap a trim is not worth its walk of the arenas.
const TRIM_MIN_FREE_BYTES: usize = 1 << 20;

/// Quiet: at most this share of one CPU used since the last check.
const QUIET_CPU_SHARE: f64 = 0.05;

impl Default for HeapTrimmer {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapTrimmer {
    pub fn new() -> Self {
        Self {
            last_cpu: process_cpu_time(),
            last_check: std::time::Instant::now(),
            free_after_trim: None,
            busy_since_trim: false,
        }
    }

    /// Call every few seconds (blocking: it may walk the heap). Returns the free heap it
    /// gave back, in bytes, when it trimmed.
    pub fn tick(&mut self) -> Option<usize> {
        let (cpu, now) = (process_cpu_time(), std::time::Instant::now());
        let used = cpu.zip(self.last_cpu).map(|(c, l)| c.saturating_sub(l));
        let wall = now - self.last_check;
        (self.last_cpu, self.last_check) = (cpu, now);
        if !is_quiet(used, wall) {
            self.busy_since_trim = true;
            return None;
        }
        let free = heap_free_bytes()?;
        if !worth_trimming(free, self.free_after_trim, self.busy_since_trim) {
            return None;
        }
        trim_heap();
        (self.free_after_trim, self.busy_since_trim) = (Some(free), false);
        // The trim's own work is not load.
        self.last_cpu = process_cpu_time();
        Some(free)
    }
}

/// Enough free heap, and something may have changed since the last trim: the server was
/// busy in between, or the free heap moved (what was trimmed stays counted as free, so an
/// idle server is not walked again every check).
fn worth_trimming(free: usize, free_after_trim: Option<usize>, busy_since_trim: bool) -> bool {
    free >= TRIM_MIN_FREE_BYTES
        && (busy_since_trim
            || free_after_trim.is_none_or(|f| free.abs_diff(f) >= TRIM_MIN_FREE_BYTES))
}

/// Whether `used` CPU time over `wall` is quiet; unknown CPU time is not.
fn is_quiet(used: Option<std::time::Duration>, wall: std::time::Duration) -> bool {
    match used {
        Some(u) => u.as_secs_f64() <= QUIET_CPU_SHARE * wall.as_secs_f64(),
        None => false,
    }
}

/// This process's user + system CPU time.
fn process_cpu_time() -> Option<std::time::Duration> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let us = |t: nix::sys::time::TimeVal| {
        std::time::Duration::from_secs(t.tv_sec().max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Some(us(u.user_time()) + us(u.system_time()))
}

/// Bytes the allocator holds free (glibc's `mallinfo2().fordblks`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_free_bytes() -> Option<usize> {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    Some(unsafe { libc::mallinfo2() }.fordblks)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_free_bytes() -> Option<usize> {
    None
}

/// Returns every free page of the heap to the kernel (glibc's `malloc_trim(0)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes the allocator's own locks; no pointer is passed.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

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

    #[test]
    fn quiet_is_little_cpu_over_the_interval() {
        use std::time::Duration;
        let five = Duration::from_secs(5);
        assert!(is_quiet(Some(Duration::from_millis(100)), five));
        assert!(is_quiet(Some(Duration::from_millis(250)), five));
        assert!(!is_quiet(Some(Duration::from_millis(300)), five));
        assert!(!is_quiet(None, five));
    }

    #[test]
    fn a_trim_is_repeated_only_after_work_or_a_change_of_the_free_heap() {
        const MIB: usize = 1 << 20;
        assert!(worth_trimming(10 * MIB, None, false));
        assert!(!worth_trimming(MIB / 2, None, true));
        // Idle since the last trim, same free heap: nothing new to give back.
        assert!(!worth_trimming(10 * MIB, Some(10 * MIB), false));
        assert!(!worth_trimming(10 * MIB + MIB / 2, Some(10 * MIB), false));
        assert!(worth_trimming(12 * MIB, Some(10 * MIB), false));
        assert!(worth_trimming(8 * MIB, Some(10 * MIB), false));
        assert!(worth_trimming(10 * MIB, Some(10 * MIB), true));
    }

    /// Memory a burst freed goes back to the kernel: RssAnon drops by most of it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trimming_returns_freed_heap_to_the_kernel() {
        fn anon_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        // 64 MiB in 4 KiB blocks (below the mmap threshold: heap, not separate mappings),
        // touched, then all freed but the last, which keeps the heap's top in place so
        // only a trim (not free's own top trimming) can give the rest back.
        let mut blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let last = blocks.pop();
        drop(blocks);
        assert!(heap_free_bytes().unwrap() >= 48 << 20);
        let before = anon_kb();
        trim_heap();
        let after = anon_kb();
        drop(last);
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RssAnon {before} KiB before the trim, {after} KiB after"
        );
    }
}
