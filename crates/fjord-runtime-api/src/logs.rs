//! Per-function log capture: a bounded in-memory ring for `/system/logs` (tail, since,
//! follow) and an append-only file in the data dir, rotated by size.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Lines kept in memory per function.
const RING_LINES: usize = 2000;
/// Rotate the log file past this size (one previous file is kept as `.1`).
const ROTATE_BYTES: u64 = 8 << 20;
/// Longer lines are cut, so one runaway line cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 << 10;

#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Increases by one per entry; lets a follower skip entries it already sent.
    pub seq: u64,
    pub timestamp: SystemTime,
    pub instance: Arc<str>,
    /// The line, ending in `\n` as in OpenFaaS.
    pub text: String,
}

struct Ring {
    entries: VecDeque<Arc<LogEntry>>,
    next_seq: u64,
    /// Opened on the first line, so idle functions hold no file descriptor.
    file: FileState,
}

enum FileState {
    Closed(PathBuf),
    Open(LogFile),
    None,
}

struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file, size })
    }

    fn append(&mut self, e: &LogEntry) {
        let line = format!(
            "{} {} {}",
            humantime::format_rfc3339_nanos(e.timestamp),
            e.instance,
            e.text
        );
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size > ROTATE_BYTES {
            let old = self.path.with_extension("log.1");
            let _ = fs::rename(&self.path, old);
            if let Ok(f) = Self::open(self.path.clone()) {
                *self = f;
            }
        }
    }
}

/// One function's logs.
pub struct LogBook {
    ring: Mutex<Ring>,
    /// Created by the first follower: a broadcast channel preallocates its slots, which
    /// adds up over thousands of idle functions.
    tx: std::sync::OnceLock<broadcast::Sender<Arc<LogEntry>>>,
    /// The gateway adds a line per invocation (annotation `com.fjord.log.requests: "true"`);
    /// off by default, so the invoke path reads only this flag.
    report_requests: std::sync::atomic::AtomicBool,
}

/// The annotation that turns on a log line per invocation.
pub const ANNOTATION_LOG_REQUESTS: &str = "com.fjord.log.requests";

impl LogBook {
    /// Whether the gateway logs a line per invocation of this function.
    pub fn reports_requests(&self) -> bool {
        self.report_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_report_requests(&self, on: bool) {
        self.report_requests
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// `file`: where to append; `None` keeps logs in memory only.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                next_seq: 0,
                file: file.map_or(FileState::None, FileState::Closed),
            }),
            tx: std::sync::OnceLock::new(),
            report_requests: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records one line (a trailing newline is added when missing).
    pub fn push(&self, instance: &Arc<str>, text: &str) {
        self.push_at(instance, text, SystemTime::now());
    }

    /// Records one line written at `timestamp` (a pod's line, timed by its kubelet).
    pub fn push_at(&self, instance: &Arc<str>, text: &str, timestamp: SystemTime) {
        let mut text = if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_string()
        } else {
            text.to_string()
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Arc::new(LogEntry {
            seq: ring.next_seq,
            timestamp,
            instance: instance.clone(),
            text,
        });
        ring.next_seq += 1;
        if let FileState::Closed(p) = &ring.file {
            ring.file = match LogFile::open(p.clone()) {
                Ok(f) => FileState::Open(f),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot open log file; keeping logs in memory only");
                    FileState::None
                }
            };
        }
        if let FileState::Open(f) = &mut ring.file {
            f.append(&entry);
        }
        if ring.entries.len() == RING_LINES {
            ring.entries.pop_front();
        }
        ring.entries.push_back(entry.clone());
        drop(ring);
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(entry);
        }
    }

    /// Entries at or after `since`, the last `tail` of them (`None` = all kept).
    pub fn snapshot(&self, since: Option<SystemTime>, tail: Option<usize>) -> Vec<Arc<LogEntry>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let matching: Vec<Arc<LogEntry>> = ring
            .entries
            .iter()
            .filter(|e| since.is_none_or(|s| e.timestamp >= s))
            .cloned()
            .collect();
        let skip = tail.map_or(0, |t| matching.len().saturating_sub(t));
        matching.into_iter().skip(skip).collect()
    }

    /// New entries as they are pushed. Subscribe before taking a snapshot, then skip
    /// entries whose `seq` the snapshot already had.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogEntry>> {
        self.tx
            .get_or_init(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// Deletes the function's log files (when the function is removed).
    pub fn remove_files(&self) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let path = match std::mem::replace(&mut ring.file, FileState::None) {
            FileState::Open(f) => Some(f.path),
            FileState::Closed(p) => Some(p),
            FileState::None => None,
        };
        if let Some(p) = path {
            let _ = fs::remove_file(&p);
            let _ = fs::remove_file(p.with_extension("log.1"));
        }
    }
}

/// Where a function's log file lives under the data dir.
pub fn log_path(data_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    data_dir
        .join("logs")
        .join(namespace)
        .join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_tail_since_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/ns/f.log");
        let book = LogBook::new(Some(path.clone()));
        let inst: Arc<str> = Arc::from("f-1");
        let mut rx = book.subscribe();
        book.push(&inst, "line 0");
        assert_eq!(rx.try_recv().unwrap().text, "line 0\n");
        for i in 1..(RING_LINES + 10) {
            book.push(&inst, &format!("line {i}"));
        }
        let all = book.snapshot(None, None);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(
            all.last().unwrap().text,
            format!("line {}\n", RING_LINES + 9)
        );
        let tail = book.snapshot(None, Some(3));
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].text, format!("line {}\n", RING_LINES + 7));
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(book.snapshot(Some(future), None).is_empty());
        let on_disk = fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk.lines().count(), RING_LINES + 10);
        assert!(on_disk.lines().next().unwrap().ends_with(" f-1 line 0"));
        book.push(&inst, &"x".repeat(MAX_LINE_BYTES * 2));
        assert_eq!(
            book.snapshot(None, Some(1))[0].text.len(),
            MAX_LINE_BYTES + 1
        );
        book.remove_files();
        assert!(!path.exists());
    }
}
