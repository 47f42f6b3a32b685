//! Reading processes from /proc: RSS, CPU time, and finding replicas by command line.

use std::fs;

/// Resident set size in KiB.
pub fn rss_kb(pid: i32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The anonymous part of the resident set (heap, stacks, relocated data) in KiB: memory
/// only this process holds, unlike the file pages of its binary and libraries, which the
/// page cache keeps and other processes share.
pub fn anon_kb_of(pid: i32) -> anyhow::Result<u64> {
    status_kb(pid, "RssAnon:")
        .ok_or_else(|| anyhow::anyhow!("cannot read RssAnon of pid {pid} from /proc"))
}

/// Resident set size in KiB, or an error naming the process (gone, or /proc unreadable):
/// a reading that is missing must not turn into a figure.
pub fn rss_kb_of(pid: i32) -> anyhow::Result<u64> {
    rss_kb(pid).ok_or_else(|| anyhow::anyhow!("cannot read the RSS of pid {pid} from /proc"))
}

/// Samples a process's RSS every `period` until [`finish`](Self::finish)ed: the
/// "max under load" of a figure is the largest reading while the load ran.
pub struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<(f64, f64)>>>,
}

impl RssSampler {
    pub fn start(pid: i32, period: std::time::Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            async move {
                let t0 = std::time::Instant::now();
                let mut samples = Vec::new();
                loop {
                    samples.push((t0.elapsed().as_secs_f64(), rss_kb_of(pid)? as f64));
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tokio::time::sleep(period) => {}
                    }
                }
                // One last reading at the end of the load.
                samples.push((t0.elapsed().as_secs_f64(), rss_kb_of(pid)? as f64));
                Ok(samples)
            }
        });
        Self { stop, task }
    }

    /// Every (seconds since start, KiB) reading; an error if any reading failed.
    pub async fn finish(self) -> anyhow::Result<Vec<(f64, f64)>> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// The largest KiB of (seconds, KiB) samples.
pub fn max_kb(samples: &[(f64, f64)]) -> u64 {
    samples.iter().map(|s| s.1).fold(0.0, f64::max) as u64
}

/// [`cpu_ticks`], or an error naming the process.
pub fn cpu_ticks_of(pid: i32) -> anyhow::Result<u64> {
    cpu_ticks(pid).ok_or_else(|| anyhow::anyhow!("cannot read the CPU time of pid {pid}"))
}

/// utime + stime in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_per_second() -> f64 {
    // SAFETY-free: sysconf via nix.
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids whose command line contains every one of `needles` (as whole arguments).
pub fn find_by_args(needles: &[&str]) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    needles.iter().all(|n| args.contains(&n.as_bytes()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(pid))
        .collect()
}

/// CPU ticks summed over a set of pids (those that vanished count 0).
pub fn ticks_of(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sampler_keeps_every_reading_until_finished() {
        let me = std::process::id() as i32;
        let s = RssSampler::start(me, std::time::Duration::from_millis(10));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let samples = s.finish().await.expect("readings");
        assert!(samples.len() >= 3, "{samples:?}");
        assert!(max_kb(&samples) > 0);
        assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[tokio::test]
    async fn a_reading_that_fails_fails_the_sampler() {
        // Pid 0 has no /proc entry: an error, never a 0 KiB reading.
        let s = RssSampler::start(0, std::time::Duration::from_millis(10));
        let e = s.finish().await.expect_err("no such process");
        assert!(e.to_string().contains("pid 0"), "{e}");
        assert!(rss_kb_of(0).is_err());
    }
}
