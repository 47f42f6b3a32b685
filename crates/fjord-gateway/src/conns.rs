//! Connection limits: idle connections must not exhaust the gateway's descriptors or keep
//! new clients (and `/healthz`, `/system`) out.
//!
//! - **Per client address** (`--max-connections-per-ip`): beyond it a new connection gets a
//!   plain `429` and is closed. Counts live in a sharded map, touched once when a connection
//!   opens and once when it closes (never per request).
//! - **Global** (`--max-connections`, default 3/4 of the open-files limit): beyond it the
//!   gateway still accepts, and asks its *oldest* connections to close (HTTP/1: an idle one
//!   closes at once, a busy one after its current request; HTTP/2: GOAWAY). Refusing new
//!   connections instead would let whoever holds the existing ones (idle, in the attack)
//!   starve everybody else; closing the oldest recycles slots towards new clients, and HTTP
//!   clients reopen a closed keep-alive connection on their own. Only far beyond the limit
//!   ([`ConnLimits::hard`]) is a new connection refused (`503`).
//! - **Idle time**: a connection must send its first bytes within `--header-timeout` (hyper's
//!   header timeout only starts once it knows the protocol), and HTTP/1 keep-alive
//!   connections idle longer than that are closed by hyper.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const SHARDS: usize = 64;
/// Oldest connections asked to close per accepted connection over the limit.
const EVICT_PER_ACCEPT: usize = 2;
/// Connections being refused at once (each holds its socket for up to a second while its
/// answer is sent): beyond, refused connections are just closed.
const MAX_REFUSING: usize = 1024;

/// Counts per client address in a sharded map: one short lock of one shard per change.
pub struct IpCounts {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl IpCounts {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.shards[shard_of(ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one for `ip` unless it has `max` already.
    pub fn try_add(&self, ip: IpAddr, max: u32) -> bool {
        let mut m = self.shard(&ip);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove_one(&self, ip: IpAddr) {
        let mut m = self.shard(&ip);
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// One open connection, as the eviction table sees it.
pub struct ConnEntry {
    evicted: AtomicBool,
    /// Wakes the connection's task to start its graceful close (lock-free: polled with the
    /// connection on every wake-up).
    waker: futures_util::task::AtomicWaker,
}

impl ConnEntry {
    /// Asks the connection to close; false if it was asked already.
    fn evict(&self) -> bool {
        if self.evicted.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.waker.wake();
        true
    }

    /// Resolves once the connection is asked to close.
    pub fn closing(&self) -> Closing<'_> {
        Closing(self)
    }
}

/// See [`ConnEntry::closing`].
pub struct Closing<'a>(&'a ConnEntry);

impl std::future::Future for Closing<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let e = self.0;
        if e.evicted.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        e.waker.register(cx.waker());
        // Asked between the check and the registration: do not miss it.
        if e.evicted.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// One worker's open connections, oldest first.
#[derive(Default)]
struct Table {
    seq: u64,
    open: BTreeMap<u64, Arc<ConnEntry>>,
}

/// Connection counts shared by every HTTP worker.
pub struct ConnLimits {
    total: AtomicUsize,
    /// Above this, the oldest connections are asked to close.
    pub max: usize,
    /// Above this, new connections are refused outright.
    pub hard: usize,
    max_per_ip: u32,
    per_ip: IpCounts,
    tables: Box<[Mutex<Table>]>,
    /// Signalled when a worker's table becomes empty (drain at shutdown).
    drained: Box<[Notify]>,
    refusing: AtomicUsize,
}

/// Why a connection is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    PerIp(u32),
    Full(usize),
}

/// Holds a connection's place in the counts; releases it when dropped.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
    worker: usize,
    seq: u64,
    pub entry: Arc<ConnEntry>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let l = &self.limits;
        l.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            l.per_ip.remove_one(ip);
        }
        let mut t = l.tables[self.worker]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        t.open.remove(&self.seq);
        if t.open.is_empty() {
            l.drained[self.worker].notify_waiters();
        }
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(a) => u32::from(*a) as u64,
        IpAddr::V6(a) => {
            let v = u128::from(*a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    };
    // Fibonacci hashing: neighbouring addresses land in different shards.
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

impl ConnLimits {
    /// `max_per_ip` 0: no per-address limit.
    pub fn new(workers: usize, max: usize, max_per_ip: u32) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            total: AtomicUsize::new(0),
            max,
            hard: max.saturating_add(max / 8).saturating_add(16),
            max_per_ip,
            per_ip: IpCounts::new(),
            tables: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            drained: (0..workers.max(1)).map(|_| Notify::new()).collect(),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Counts a new connection of `worker` from `ip`, or says why it is refused. Over the
    /// global limit, the oldest connections are asked to close.
    pub fn admit(self: &Arc<Self>, worker: usize, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        let ip = ip.to_canonical();
        let counted_ip = if self.max_per_ip > 0 {
            if !self.per_ip.try_add(ip, self.max_per_ip) {
                return Err(Refusal::PerIp(self.max_per_ip));
            }
            Some(ip)
        } else {
            None
        };
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ConnEntry {
            evicted: AtomicBool::new(false),
            waker: futures_util::task::AtomicWaker::new(),
        });
        let seq = {
            let mut t = self.tables[worker]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            t.seq += 1;
            let seq = t.seq;
            t.open.insert(seq, entry.clone());
            seq
        };
        // From here the guard undoes the counts, whatever happens.
        let guard = ConnGuard {
            limits: self.clone(),
            ip: counted_ip,
            worker,
            seq,
            entry,
        };
        if total > self.hard {
            return Err(Refusal::Full(self.max));
        }
        if total > self.max {
            self.evict_oldest(worker, (total - self.max).min(EVICT_PER_ACCEPT), seq);
        }
        Ok(guard)
    }

    /// Asks up to `n` of the oldest connections to close: this worker's first, then the
    /// others' (a cross-thread lock, only while over the limit). Never `except` (the new one).
    fn evict_oldest(&self, worker: usize, n: usize, except: u64) {
        let mut left = n;
        let count = self.tables.len();
        for k in 0..count {
            let w = (worker + k) % count;
            let t = self.tables[w].lock().unwrap_or_else(|p| p.into_inner());
            // Connections asked already (busy ones finish their request first) are skipped;
            // the scan is bounded so a long run of them costs little.
            for (seq, e) in t.open.iter().take(1024) {
                if left == 0 {
                    return;
                }
                if (w != worker || *seq != except) && e.evict() {
                    left -= 1;
                }
            }
        }
    }

    /// Asks every connection of `worker` to close (shutdown), then waits until they did.
    pub async fn drain(&self, worker: usize) {
        loop {
            let notified = self.drained[worker].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let t = self.tables[worker]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if t.open.is_empty() {
                    return;
                }
                for e in t.open.values() {
                    e.evict();
                }
            }
            notified.await;
        }
    }

    /// Open connections now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Answers a refused plain-HTTP connection with a short response and closes it.
    pub fn refuse(self: &Arc<Self>, mut stream: tokio::net::TcpStream, why: Refusal) {
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let (status, body) = match why {
            Refusal::PerIp(n) => (
                "429 Too Many Requests",
                format!(
                    "too many connections from your address: at most {n} at once (--max-connections-per-ip)\n"
                ),
            ),
            Refusal::Full(n) => (
                "503 Service Unavailable",
                format!(
                    "the server has too many connections (--max-connections {n}); retry shortly\n"
                ),
            ),
        };
        let msg = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let this = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                stream.write_all(msg.as_bytes()).await?;
                stream.shutdown().await?;
                // Read what the client sent until it closes: closing with unread data would
                // reset the connection and the client might never see the answer.
                let mut sink = [0u8; 4096];
                let mut total = 0;
                while total < (64 << 10) {
                    let n = stream.read(&mut sink).await?;
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                Ok::<(), std::io::Error>(())
            })
            .await;
            this.refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Bounds on fork-mode processes running at once: per function and per client address, so
/// a flood of requests to a public fork-mode function cannot start thousands of host
/// processes (429 with `Retry-After` beyond).
pub struct ForkLimits {
    pub per_function: u64,
    pub per_ip: u32,
    ips: IpCounts,
}

/// One running fork-mode process's place in the counts, released when its response ends.
pub struct ForkPermit {
    limits: Arc<ForkLimits>,
    metrics: Arc<fjord_control::metrics::FunctionMetrics>,
    ip: Option<IpAddr>,
}

impl Drop for ForkPermit {
    fn drop(&mut self) {
        self.metrics.forks.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            self.limits.ips.remove_one(ip);
        }
    }
}

impl ForkLimits {
    /// 0: no limit.
    pub fn new(per_function: u64, per_ip: u32) -> Arc<Self> {
        Arc::new(Self {
            per_function,
            per_ip,
            ips: IpCounts::new(),
        })
    }

    /// A place for one more process of the function whose counters are `metrics`, for a
    /// client at `ip` (`None`: not counted per address, e.g. a queued call).
    pub fn acquire(
        self: &Arc<Self>,
        function: &str,
        metrics: &Arc<fjord_control::metrics::FunctionMetrics>,
        ip: Option<IpAddr>,
    ) -> Result<ForkPermit, crate::error::ApiError> {
        let running = metrics.forks.fetch_add(1, Ordering::Relaxed);
        let mut permit = ForkPermit {
            limits: self.clone(),
            metrics: metrics.clone(),
            ip: None,
        };
        if self.per_function > 0 && running >= self.per_function {
            return Err(crate::error::ApiError::TooManyRequests(format!(
                "function {function} has {} processes running, its limit (--max-forks-per-function); retry later",
                self.per_function
            )));
        }
        if let Some(ip) = ip.map(|i| i.to_canonical())
            && self.per_ip > 0
        {
            if !self.ips.try_add(ip, self.per_ip) {
                return Err(crate::error::ApiError::TooManyRequests(format!(
                    "your address has {} fork-mode calls running, its limit (--max-forks-per-ip); retry later",
                    self.per_ip
                )));
            }
            permit.ip = Some(ip);
        }
        Ok(permit)
    }
}

/// The connection limit when none is given: 3/4 of the open-files limit, leaving the rest
/// to replicas' pipes, logs and the databases.
pub fn default_max_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
    (usize::try_from(soft).unwrap_or(usize::MAX) / 4 * 3).max(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn per_ip_limit_counts_open_connections() {
        let l = ConnLimits::new(1, 100, 2);
        let a = l.admit(0, ip("10.0.0.1")).unwrap();
        let _b = l.admit(0, ip("10.0.0.1")).unwrap();
        assert_eq!(l.admit(0, ip("10.0.0.1")).err(), Some(Refusal::PerIp(2)));
        // Another address is not affected; an IPv4-mapped address is the same client.
        let _c = l.admit(0, ip("10.0.0.2")).unwrap();
        assert_eq!(
            l.admit(0, ip("::ffff:10.0.0.1")).err(),
            Some(Refusal::PerIp(2))
        );
        drop(a);
        let _d = l.admit(0, ip("10.0.0.1")).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[tokio::test]
    async fn over_the_limit_the_oldest_are_asked_to_close() {
        let l = ConnLimits::new(2, 3, 0);
        let g: Vec<_> = (0..3)
            .map(|i| l.admit(i % 2, ip("10.0.0.1")).unwrap())
            .collect();
        assert!(g.iter().all(|c| !c.entry.evicted.load(Ordering::Relaxed)));
        let newest = l.admit(0, ip("10.0.0.9")).unwrap();
        // Worker 0's oldest goes first; never the new connection.
        assert!(g[0].entry.evicted.load(Ordering::Relaxed));
        assert!(!newest.entry.evicted.load(Ordering::Relaxed));
        // Far beyond: refused.
        let mut more = Vec::new();
        let refused = loop {
            match l.admit(1, ip("10.0.0.9")) {
                Ok(c) => more.push(c),
                Err(r) => break r,
            }
        };
        assert_eq!(refused, Refusal::Full(3));
        assert_eq!(l.open(), 3 + 1 + more.len());
    }
}
