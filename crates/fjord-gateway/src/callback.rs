//! Where async callbacks may go. `X-Callback-Url` is chosen by whoever queues a call, so
//! without a rule fjord would POST to anything it can reach: loopback services, cloud metadata,
//! the private network (SSRF). By default callbacks only go to public addresses; the operator
//! allows more with `--callback-allow`. Host names are resolved once, every address is
//! checked, and the request is sent to a checked address (so DNS cannot change the answer
//! between the check and the connection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;

/// One `--callback-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackAllow {
    /// A network (a single IP is a /32 or /128).
    Net(IpNet),
    /// A host name, lower case without a trailing dot: any address it resolves to.
    Host(String),
}

impl CallbackAllow {
    /// Parses `10.0.0.0/8`, `127.0.0.1`, `::1`, `fd00::/8` or `hooks.internal`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(CallbackAllow::Net(n.trunc()));
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(CallbackAllow::Net(IpNet::from(ip)));
        }
        let host = normalize_host(s);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(CallbackAllow::Host(host))
        } else {
            Err(format!(
                "{s:?} is not a network (10.0.0.0/8), an IP address (127.0.0.1) or a host name (hooks.internal)"
            ))
        }
    }
}

fn normalize_host(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// The callback rule: the operator's allow list, and this gateway's own listening address.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    allow: Arc<[CallbackAllow]>,
    /// Known once the listening socket is bound (the port may have been 0).
    listening: Arc<OnceLock<SocketAddr>>,
    /// The dashboard's listener (`--ui-listen`): the same API, so never a callback target
    /// either.
    dashboard: Arc<OnceLock<SocketAddr>>,
}

const OWN: &str = "this gateway's own listening address";

/// Why a callback address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub addr: IpAddr,
    pub kind: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.kind == OWN {
            "fjord never sends callbacks to itself"
        } else {
            "fjord sends no callbacks there unless the operator allows it with --callback-allow"
        };
        write!(f, "{} is {}: {why}", self.addr, self.kind)
    }
}

impl std::error::Error for Refused {}

impl CallbackPolicy {
    pub fn new(allow: Vec<CallbackAllow>) -> Self {
        Self {
            allow: allow.into(),
            listening: Arc::default(),
            dashboard: Arc::default(),
        }
    }

    /// Records the address the gateway listens on, once bound.
    pub fn set_listening(&self, addr: SocketAddr) {
        let _ = self.listening.set(addr);
    }

    /// Records the dashboard listener's address, once bound.
    pub fn set_dashboard(&self, addr: SocketAddr) {
        let _ = self.dashboard.set(addr);
    }

    /// Whether the allow list names `host` (a host name from the URL).
    fn host_allowed(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.allow
            .iter()
            .any(|a| matches!(a, CallbackAllow::Host(h) if *h == host))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|a| matches!(a, CallbackAllow::Net(n) if n.contains(&ip)))
    }

    /// Checks one address a callback would connect to (`host` as written in the URL).
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), Refused> {
        let ip = addr.ip().to_canonical();
        // Never the gateway itself, even in an allowed network: a callback could re-queue
        // itself forever (a function's response headers travel with it), or hit /system.
        if self.is_own(ip, addr.port()) {
            return Err(Refused {
                addr: ip,
                kind: OWN,
            });
        }
        if self.host_allowed(host) || self.ip_allowed(ip) || self.ip_allowed(addr.ip()) {
            return Ok(());
        }
        if let Some(kind) = special(ip) {
            return Err(Refused { addr: ip, kind });
        }
        Ok(())
    }

    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        [self.listening.get(), self.dashboard.get()]
            .into_iter()
            .flatten()
            .any(|l| Self::is_at(l, ip, port))
    }

    fn is_at(l: &SocketAddr, ip: IpAddr, port: u16) -> bool {
        if l.port() != port {
            return false;
        }
        if l.ip().to_canonical() == ip {
            return true;
        }
        // Listening on every address: is `ip` one of this host's? Only a local address can
        // be bound.
        l.ip().is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok()
    }

    /// Resolves `host` (once) and returns the addresses a callback may connect to, or why
    /// none. Addresses that fail the check are left out; if all do, the first refusal.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| ResolveError::Dns(format!("cannot resolve {bare}: {e}")))?
                .collect(),
        };
        let mut first_refusal = None;
        let mut ok = Vec::with_capacity(addrs.len());
        for a in addrs {
            match self.check(bare, a) {
                Ok(()) => ok.push(a),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match (ok.is_empty(), first_refusal) {
            (false, _) => Ok(ok),
            (true, Some(r)) => Err(ResolveError::Refused(r)),
            (true, None) => Err(ResolveError::Dns(format!("{bare} has no address"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not allowed: final, never retried.
    #[error("refused: {0}")]
    Refused(Refused),
    /// Maybe temporary.
    #[error("{0}")]
    Dns(String),
}

/// What kind of non-public address `ip` is (IPv4-mapped forms already canonical), or `None`.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        // 0.0.0.0 reaches this host on Linux.
        [0, ..] => "an unspecified (0.0.0.0/8) address",
        [127, ..] => "a loopback address",
        [10, ..] => "a private address",
        [172, b, ..] if (16..32).contains(&b) => "a private address",
        [192, 168, ..] => "a private address",
        [100, b, ..] if (64..128).contains(&b) => "a shared (CGNAT, 100.64.0.0/10) address",
        // Includes cloud metadata services (169.254.169.254).
        [169, 254, ..] => "a link-local address",
        // IETF protocol assignments; some clouds' metadata lives here (192.0.0.192).
        [192, 0, 0, _] => "a reserved (192.0.0.0/24) address",
        [a, ..] if (224..240).contains(&a) => "a multicast address",
        [a, ..] if a >= 240 => "a reserved or broadcast address",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    Some(match s[0] {
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        _ => {
            // IPv4 embedded in IPv6: IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96)
            // reach the IPv4 address they carry.
            let embedded = (s[..6] == [0; 6]) || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]);
            if embedded {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return special_v4(v4);
            }
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_refuses_internal_addresses() {
        let p = CallbackPolicy::new(vec![]);
        for a in [
            "127.0.0.1:80",
            "127.9.9.9:80",
            "0.0.0.0:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "172.31.255.255:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "169.254.169.254:80",
            "192.0.0.192:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[::1]:80",
            "[::]:80",
            "[fe80::1]:80",
            "[fd00:ec2::254]:80",
            "[ff02::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::a00:1]:80",
        ] {
            assert!(p.check("x", sa(a)).is_err(), "{a} must be refused");
        }
        for a in [
            "1.1.1.1:80",
            "172.32.0.1:80",
            "100.128.0.1:80",
            "[2606:4700::1111]:80",
        ] {
            assert_eq!(p.check("x", sa(a)), Ok(()), "{a} is public");
        }
    }

    #[test]
    fn allow_list_networks_ips_and_hosts() {
        let allow = ["10.0.0.0/8", "127.0.0.1", "Hooks.Internal.", "::1"]
            .iter()
            .map(|s| CallbackAllow::parse(s).unwrap())
            .collect();
        let p = CallbackPolicy::new(allow);
        assert_eq!(p.check("a", sa("10.9.9.9:1")), Ok(()));
        assert_eq!(p.check("a", sa("127.0.0.1:1")), Ok(()));
        assert_eq!(p.check("a", sa("[::ffff:127.0.0.1]:1")), Ok(()));
        assert_eq!(p.check("a", sa("[::1]:1")), Ok(()));
        assert!(p.check("a", sa("127.0.0.2:1")).is_err());
        assert!(p.check("a", sa("192.168.0.1:1")).is_err());
        assert_eq!(p.check("hooks.internal", sa("192.168.0.1:1")), Ok(()));
        assert_eq!(p.check("HOOKS.internal.", sa("192.168.0.1:1")), Ok(()));
        for bad in ["", "a b", "http://x", "10.0.0.0/33", "-/-"] {
            assert!(CallbackAllow::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_listening_address_is_refused() {
        let p = CallbackPolicy::new(vec![CallbackAllow::parse("127.0.0.0/8").unwrap()]);
        p.set_listening(sa("0.0.0.0:8080"));
        // Even in an allowed network.
        let r = p.check("x", sa("127.0.0.1:8080")).unwrap_err();
        assert!(r.to_string().contains("itself"), "{r}");
        assert_eq!(p.check("x", sa("127.0.0.1:8081")), Ok(()));
        assert!(p.is_own("127.0.0.1".parse().unwrap(), 8080));
        assert!(!p.is_own("127.0.0.1".parse().unwrap(), 8081));
        assert!(!p.is_own("1.1.1.1".parse().unwrap(), 8080));
    }

    #[test]
    fn the_dashboards_address_is_refused_too() {
        let p = CallbackPolicy::new(vec![CallbackAllow::parse("127.0.0.0/8").unwrap()]);
        p.set_listening(sa("127.0.0.1:8080"));
        p.set_dashboard(sa("127.0.0.1:8081"));
        for port in [8080, 8081] {
            let r = p.check("x", sa(&format!("127.0.0.1:{port}"))).unwrap_err();
            assert!(r.to_string().contains("itself"), "{r}");
        }
        assert_eq!(p.check("x", sa("127.0.0.1:8082")), Ok(()));
    }

    #[tokio::test]
    async fn resolve_checks_every_address() {
        let p = CallbackPolicy::new(vec![]);
        let e = p.resolve("localhost", 80).await.unwrap_err();
        assert!(matches!(e, ResolveError::Refused(_)), "{e}");
        let e = p.resolve("[::1]", 80).await.unwrap_err();
        assert!(matches!(e, ResolveError::Refused(_)), "{e}");
        let ok = CallbackPolicy::new(vec![CallbackAllow::parse("localhost").unwrap()]);
        assert!(!ok.resolve("localhost", 80).await.unwrap().is_empty());
    }
}
