//! Each function's own network namespace (when fjord runs as root).
//!
//! Replicas listen on the loopback of their function's namespace, so no other function (and no
//! other host process) can reach them around the gateway, and no stranger can take over a
//! replica's port: only the function's own processes live in that namespace. The gateway
//! reaches a replica by creating its client socket inside the namespace ([`connect`]): a
//! socket belongs to the namespace it was created in, whatever the thread does afterwards.
//!
//! Outbound traffic (`--function-network nat`, the default) leaves through a veth pair to the
//! host and is masqueraded; an nftables table of this instance drops everything a function
//! sends to the host itself (its admin port, NATS, databases on any host address), to other
//! functions, and to loopback, link-local (cloud metadata), private and multicast networks
//! unless the operator allows them (`--function-egress-allow`). `none` gives loopback only.
//!
//! A namespace lives as long as fjord holds its descriptor or a function process runs in it,
//! so a crashed fjord leaves none behind (the veth pair goes with it).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns, unshare};

/// What functions may reach outside their namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionNetwork {
    /// Outbound through NAT, filtered (see the module docs).
    Nat,
    /// Loopback only.
    None,
}

impl std::str::FromStr for FunctionNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nat" => Ok(Self::Nat),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown function network {other:?}: expected nat or none"
            )),
        }
    }
}

/// Network settings of the process runtime.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub mode: FunctionNetwork,
    /// Where the point-to-point links of the functions' veth pairs are numbered from (a /30
    /// per function). `None`: the first of 10.203.0.0/16, 10.204.0.0/16, ... not used on
    /// this host.
    pub subnet: Option<Ipv4Net>,
    /// Destinations functions may reach although they are private, link-local or loopback
    /// networks (for example a database at 10.0.0.5/32).
    pub egress_allow: Vec<Ipv4Net>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: FunctionNetwork::Nat,
            subnet: None,
            egress_allow: Vec::new(),
        }
    }
}

/// Networks a function may not reach unless allowed: not the internet.
const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The host's namespace, to come back to after creating a socket in a function's.
static HOST_NETNS: OnceLock<OwnedFd> = OnceLock::new();

/// Namespace ids in use, by every pool of this process: the ids name namespaces in
/// [`REGISTRY`] (`n<id>` authorities), so two pools (two runtimes, or tests running several
/// at once) must never hand out the same one.
static USED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Where [`NetPool::allocate`] looks for a free id next.
static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn used() -> std::sync::MutexGuard<'static, Option<HashSet<u32>>> {
    USED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Namespaces by id, for the gateway's connector (read only when a connection is made).
static REGISTRY: RwLock<Option<HashMap<u32, Weak<NetNs>>>> = RwLock::new(None);

/// The host name the gateway uses for a replica in namespace `id` (`n<id>:<port>`).
pub fn authority_host(id: u32) -> String {
    format!("n{id}")
}

/// Runs `f` with this thread in namespace `ns`, then back in the host's.
fn in_netns<T>(ns: &OwnedFd, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = HOST_NETNS
        .get()
        .ok_or_else(|| io::Error::other("function network namespaces are not set up"))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let out = f();
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        // A thread left in a function's namespace would send other traffic there.
        tracing::error!(error = %e, "cannot return to the host network namespace");
        std::process::abort();
    }
    Ok(out)
}

/// Connects to `127.0.0.1:port` inside namespace `ns`.
pub async fn connect_in(ns: &OwnedFd, port: u16) -> io::Result<tokio::net::TcpStream> {
    let socket = in_netns(ns, tokio::net::TcpSocket::new_v4)??;
    socket.set_nodelay(true)?;
    socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}

/// Connects to a replica by the host part of its authority: `n<id>` is a function's
/// namespace, anything else a plain address on the host.
pub async fn connect(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    if let Some(id) = host.strip_prefix('n').and_then(|d| d.parse::<u32>().ok()) {
        let ns = REGISTRY
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|m| m.get(&id))
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the replica's function is gone")
            })?;
        return connect_in(&ns.fd, port).await;
    }
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One function's network namespace.
pub struct NetNs {
    pub id: u32,
    fd: OwnedFd,
    /// Keeps the pool (its nftables table) while a namespace lives.
    _pool: Arc<NetPool>,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs").field("id", &self.id).finish()
    }
}

impl NetNs {
    /// The descriptor a function process joins (`setns` before exec).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(m) = REGISTRY.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            m.remove(&self.id);
        }
        // The veth pair disappears with the namespace (when its last process exits).
        if let Some(u) = used().as_mut() {
            u.remove(&self.id);
        }
    }
}

/// Addresses and rules shared by every function of this fjord instance.
pub struct NetPool {
    mode: FunctionNetwork,
    /// `fj<instance>`: host-side interfaces are `fj<instance>-<id>`.
    prefix: String,
    subnet: Ipv4Net,
    /// Whether the nftables table is in place (else functions get loopback only).
    table: Option<String>,
    turned_forwarding_on: bool,
}

impl std::fmt::Debug for NetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetPool")
            .field("mode", &self.mode)
            .field("subnet", &self.subnet)
            .finish()
    }
}

fn run_ip(batch: &str) -> io::Result<()> {
    run_with_stdin(Command::new(ip_program()).args(["-batch", "-"]), batch)
}

fn ip_program() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else if std::path::Path::new("/sbin/ip").exists() {
        "/sbin/ip"
    } else {
        "ip"
    }
}

fn nft_program() -> Option<&'static str> {
    ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// IPv4 addresses configured on this host (to pick a subnet no one uses).
fn host_addresses() -> Vec<Ipv4Net> {
    let Ok(out) = Command::new(ip_program())
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet")?;
            it.next()?.parse().ok()
        })
        .collect()
}

/// Subnets in use by the fjord instances of this host, so two instances started at the same
/// moment never number their links alike: `<subnet> <pid> <instance> <start>` per line (the
/// start time, in clock ticks after boot, tells a reused pid apart), under a lock.
const SUBNETS_FILE: &str = "/run/fjord/subnets";

/// Whether a line of the subnets file names a server that still runs.
fn entry_is_live(pid: &str, start: Option<&str>) -> bool {
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    match (
        crate::process_start(pid),
        start.and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(now), Some(recorded)) => now == recorded,
        // Written by an older fjord, without its start time.
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Whether an nftables table name is one fjord makes (`fjord_` and four hex digits).
fn is_fjord_table(name: &str) -> bool {
    name.strip_prefix("fjord_")
        .is_some_and(|id| id.len() == 4 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Deletes the tables of fjord servers that ended without removing theirs (killed, or the
/// machine's power cut before a reboot kept `/run`): every table filters every packet of this
/// host, so left ones pile up and slow all of its networking (90 of them added ~50 µs to a
/// loopback round trip). Runs under the subnets file's lock, which every server holds while
/// it records itself there and before it installs its table: a table no live line names is
/// nobody's.
fn remove_tables_of_ended_servers(nft: &str, live: &HashSet<String>) {
    let Ok(out) = Command::new(nft).args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        if !is_fjord_table(name) || live.contains(name) {
            continue;
        }
        let removed = Command::new(nft)
            .args(["delete", "table", "inet", name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if removed {
            tracing::info!(
                table = name,
                "removed the nftables table of a fjord serve that ended without removing it"
            );
        }
    }
}

fn choose_subnet(config: &NetworkConfig, instance: &str) -> io::Result<Ipv4Net> {
    use std::io::{Read, Seek};
    std::fs::create_dir_all("/run/fjord")?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(SUBNETS_FILE)?;
    let lock = nix::fcntl::Flock::lock(file.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    // Entries of live instances other than this one (a restarted instance takes a new one).
    let mut entries: Vec<(Ipv4Net, String)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let net = it.next()?.parse().ok()?;
            let pid = it.next()?;
            let inst = it.next()?;
            (entry_is_live(pid, it.next()) && inst != instance).then(|| (net, l.to_string()))
        })
        .collect();
    if let Some(nft) = nft_program() {
        let live = entries
            .iter()
            .filter_map(|(_, l)| l.split_whitespace().nth(2))
            .chain([instance])
            .map(str::to_string)
            .collect();
        remove_tables_of_ended_servers(nft, &live);
    }
    let in_use = host_addresses();
    let free = |n: &Ipv4Net| {
        !in_use
            .iter()
            .any(|a| n.contains(&a.addr()) || a.contains(n))
            && !entries.iter().any(|(e, _)| e.contains(n) || n.contains(e))
    };
    let subnet = if let Some(s) = config.subnet {
        if s.prefix_len() > 29 {
            return Err(io::Error::other(format!(
                "--function-subnet {s}: too small, give at least a /29"
            )));
        }
        if !free(&s) {
            return Err(io::Error::other(format!(
                "--function-subnet {s} overlaps an address of this host or another fjord instance's functions: choose another"
            )));
        }
        s
    } else {
        (203u8..=250)
            .filter_map(|b| Ipv4Net::new(Ipv4Addr::new(10, b, 0, 0), 16).ok())
            .find(free)
            .ok_or_else(|| {
                io::Error::other("no free 10.x.0.0/16 for function networks: set --function-subnet")
            })?
    };
    let pid = std::process::id();
    let start = i32::try_from(pid)
        .ok()
        .and_then(crate::process_start)
        .unwrap_or_default();
    entries.push((subnet, format!("{subnet} {pid} {instance} {start}")));
    let out: String = entries.iter().map(|(_, l)| format!("{l}\n")).collect();
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(out.as_bytes())?;
    drop(lock);
    Ok(subnet)
}

/// Nameservers of the host that functions must reach to resolve names.
fn nameservers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

fn ruleset(table: &str, prefix: &str, subnet: Ipv4Net, allow: &[Ipv4Net], guard: bool) -> String {
    let mut allowed: Vec<String> = allow.iter().map(|n| n.to_string()).collect();
    for ns in nameservers() {
        if ns.is_loopback() {
            tracing::warn!(nameserver = %ns, "the host's nameserver is on loopback: functions cannot reach it; name resolution inside functions needs a nameserver on another address in /etc/resolv.conf");
        } else {
            allowed.push(format!("{ns}/32"));
        }
    }
    let ifs = format!("\"{prefix}-*\"");
    let mut r = format!("table inet {table} {{\n");
    r += "  chain input {\n    type filter hook input priority filter - 1; policy accept;\n";
    r += &format!("    iifname {ifs} drop\n  }}\n");
    r += "  chain forward {\n    type filter hook forward priority filter - 1; policy accept;\n";
    r += &format!("    iifname {ifs} oifname \"fj*\" drop\n");
    if !allowed.is_empty() {
        r += &format!(
            "    iifname {ifs} ip daddr {{ {} }} accept\n",
            allowed.join(", ")
        );
    }
    r += &format!(
        "    iifname {ifs} ip daddr {{ {} }} drop\n",
        DENIED.join(", ")
    );
    r += &format!("    iifname {ifs} meta nfproto ipv4 accept\n    iifname {ifs} drop\n");
    r += &format!("    oifname {ifs} ct state established,related accept\n");
    r += &format!("    oifname {ifs} drop\n");
    if guard {
        // fjord turned forwarding on: keep the host from routing anything else.
        r += "    iifname != \"fj*\" oifname != \"fj*\" drop\n";
    }
    r += "  }\n";
    r += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    r += &format!("    ip saddr {subnet} oifname != {ifs} masquerade\n  }}\n}}\n");
    r
}

impl NetPool {
    /// Sets up function networking for this instance. `instance`: a short id of the data dir.
    pub fn new(config: &NetworkConfig, instance: &str) -> io::Result<Arc<Self>> {
        let ip_works = Command::new(ip_program())
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ip_works {
            return Err(io::Error::other(
                "the ip command (iproute2) is missing: install iproute2",
            ));
        }
        let host = File::open("/proc/self/ns/net")?;
        let _ = HOST_NETNS.set(OwnedFd::from(host));
        REGISTRY
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new);
        let short: String = instance.chars().take(4).collect();
        let prefix = format!("fj{short}");
        let table = format!("fjord_{short}");
        let mut mode = config.mode;
        let mut subnet = Ipv4Net::new(Ipv4Addr::new(10, 203, 0, 0), 16).expect("valid");
        let mut installed = None;
        let mut turned_forwarding_on = false;
        if mode == FunctionNetwork::Nat {
            match Self::install_rules(config, &prefix, &table) {
                Ok((s, forwarding)) => {
                    subnet = s;
                    turned_forwarding_on = forwarding;
                    tracing::info!(%subnet, nftables_table = %table, "functions reach the internet through NAT from their own network namespaces (private, link-local and host addresses blocked; --function-egress-allow opens some)");
                    installed = Some(table);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "function outbound network unavailable: functions get loopback only (install nftables, or pass --function-network none to silence this)");
                    mode = FunctionNetwork::None;
                }
            }
        }
        Ok(Arc::new(Self {
            mode,
            prefix,
            subnet,
            table: installed,
            turned_forwarding_on,
        }))
    }

    /// Installs this instance's table; returns its subnet and whether it turned forwarding on.
    fn install_rules(
        config: &NetworkConfig,
        prefix: &str,
        table: &str,
    ) -> io::Result<(Ipv4Net, bool)> {
        let nft = nft_program().ok_or_else(|| io::Error::other("nft (nftables) not found"))?;
        let subnet = choose_subnet(config, table)?;
        let forward = IP_FORWARD;
        let guard = std::fs::read_to_string(forward)?.trim() == "0";
        // A table of an earlier run of this instance (killed) is replaced.
        let _ = Command::new(nft)
            .args(["delete", "table", "inet", table])
            .stderr(Stdio::null())
            .status();
        run_with_stdin(
            Command::new(nft).args(["-f", "-"]),
            &ruleset(table, prefix, subnet, &config.egress_allow, guard),
        )?;
        if guard {
            std::fs::write(forward, "1")?;
            tracing::info!(
                "set {forward}=1 for function outbound traffic (fjord's nftables table drops all other forwarding)"
            );
        }
        Ok((subnet, guard))
    }

    pub fn mode(&self) -> FunctionNetwork {
        self.mode
    }

    /// Removes this instance's nftables table (at shutdown), and turns IPv4 forwarding back
    /// off if fjord turned it on and no other fjord instance still uses it.
    pub fn remove_rules(&self) {
        let (Some(table), Some(nft)) = (&self.table, nft_program()) else {
            return;
        };
        let _ = Command::new(nft)
            .args(["delete", "table", "inet", table])
            .stderr(Stdio::null())
            .status();
        if self.turned_forwarding_on
            && let Ok(out) = Command::new(nft).args(["list", "tables"]).output()
            && !String::from_utf8_lossy(&out.stdout).contains("fjord_")
        {
            let _ = std::fs::write(IP_FORWARD, "0");
        }
    }

    fn allocate(&self) -> io::Result<u32> {
        let slots = 1u32 << (32 - u32::from(self.subnet.prefix_len()) - 2);
        let mut used = used();
        let used = used.get_or_insert_with(HashSet::new);
        // Round robin from after the last id handed out: an id just freed names a namespace
        // the kernel may still be tearing down (with its veth pair), and a client may still
        // hold its `n<id>` authority. Container replicas come and go fast.
        let start = NEXT_ID.load(std::sync::atomic::Ordering::Relaxed) % slots;
        let id = (0..slots)
            .map(|i| (start + i) % slots)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                io::Error::other("function subnet exhausted: set a larger --function-subnet")
            })?;
        used.insert(id);
        NEXT_ID.store(id + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(id)
    }

    /// Creates a function's namespace (blocking: run it off the async threads).
    pub fn create(self: &Arc<Self>) -> io::Result<Arc<NetNs>> {
        self.create_with(true)
    }

    /// [`create`](Self::create); `outbound: false` (a function's `com.fjord.network: none`)
    /// gives loopback only, whatever the server's mode.
    pub fn create_with(self: &Arc<Self>, outbound: bool) -> io::Result<Arc<NetNs>> {
        let id = self.allocate()?;
        // From here on, dropping `ns` gives the id back.
        let pool = self.clone();
        let setup = if outbound && self.mode == FunctionNetwork::Nat {
            let base = u32::from(self.subnet.network()) + id * 4;
            Some((
                format!("{}-{id}", self.prefix),
                Ipv4Addr::from(base + 1),
                Ipv4Addr::from(base + 2),
            ))
        } else {
            None
        };
        if let Some((host_if, _, _)) = &setup
            && std::path::Path::new("/sys/class/net")
                .join(host_if)
                .exists()
        {
            // The veth of an earlier namespace with this id, still being torn down.
            let _ = run_ip(&format!("link del {host_if}\n"));
        }
        let inner = setup.clone();
        // unshare(CLONE_NEWNET) moves only the calling thread: a short-lived thread makes the
        // namespace, and the `ip` it starts configures it from inside.
        let fd = std::thread::spawn(move || -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let fd = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
            let mut batch = String::from("link set lo up\n");
            if let Some((host_if, outer, inner)) = &inner {
                batch += &format!(
                    "link add eth0 type veth peer name {host_if} netns /proc/{}/ns/net\n\
                     addr add {inner}/30 dev eth0\nlink set eth0 up\nroute add default via {outer}\n",
                    std::process::id()
                );
            }
            run_ip(&batch)?;
            Ok(fd)
        })
        .join()
        .map_err(|_| io::Error::other("network namespace setup panicked"))?;
        let ns = Arc::new(NetNs {
            id,
            fd: fd.map_err(|e| {
                if let Some(u) = used().as_mut() {
                    u.remove(&id);
                }
                io::Error::other(format!(
                    "cannot create the function's network namespace: {e}"
                ))
            })?,
            _pool: pool,
        });
        if let Some((host_if, outer, _)) = setup {
            run_ip(&format!(
                "addr add {outer}/30 dev {host_if}\nlink set {host_if} up\n"
            ))
            .map_err(|e| io::Error::other(format!("cannot set up {host_if}: {e}")))?;
        }
        REGISTRY
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(id, Arc::downgrade(&ns));
        Ok(ns)
    }
}

impl Drop for NetPool {
    fn drop(&mut self) {
        self.remove_rules();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fjords_own_table_names_are_taken_as_fjords() {
        assert!(is_fjord_table("fjord_06a0"));
        assert!(is_fjord_table("fjord_FFFF"));
        for other in [
            "fjord_06a",
            "fjord_06a0x",
            "fjord_zzzz",
            "fjord_",
            "nat",
            "xfjord_06a0",
        ] {
            assert!(!is_fjord_table(other), "{other}");
        }
    }

    #[test]
    fn a_line_names_a_live_server_only_with_its_own_start_time() {
        let me = std::process::id().to_string();
        let start = crate::process_start(std::process::id() as i32).expect("this process runs");
        assert!(entry_is_live(&me, Some(&start.to_string())));
        // The same pid started at another moment: the pid was reused.
        assert!(!entry_is_live(&me, Some(&(start + 1).to_string())));
        // Lines of an older fjord, without a start time.
        assert!(entry_is_live(&me, None));
        assert!(!entry_is_live("not-a-pid", None));
        // pid_max is at most 2^22: this pid cannot run.
        assert!(!entry_is_live("4194305", None));
    }

    #[test]
    fn ruleset_blocks_host_and_private_and_allows_listed() {
        let allow: Vec<Ipv4Net> = vec!["10.9.0.0/16".parse().unwrap()];
        let r = ruleset(
            "fjord_ab12",
            "fjab12",
            "10.203.0.0/16".parse().unwrap(),
            &allow,
            true,
        );
        assert!(r.contains("chain input"));
        assert!(r.contains("iifname \"fjab12-*\" drop\n  }"));
        assert!(r.contains("10.9.0.0/16"));
        assert!(r.contains("169.254.0.0/16"));
        let accept = r.find("10.9.0.0/16").unwrap();
        let deny = r.find("169.254.0.0/16").unwrap();
        assert!(accept < deny, "allowed networks come before the deny list");
        assert!(r.contains("masquerade"));
        assert!(r.contains("iifname != \"fj*\" oifname != \"fj*\" drop"));
    }

    #[test]
    fn network_modes_parse() {
        assert_eq!("nat".parse::<FunctionNetwork>(), Ok(FunctionNetwork::Nat));
        assert_eq!("none".parse::<FunctionNetwork>(), Ok(FunctionNetwork::None));
        assert!("bridge".parse::<FunctionNetwork>().is_err());
    }
}
