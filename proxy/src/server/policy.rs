//! The peer-address policy: which peers an allocation may reach (RFC 8656 section 21.2
//! leaves this to the operator; open relays are abused to reach private networks).
//!
//! Steps, for every XOR-PEER-ADDRESS in CreatePermission and ChannelBind:
//!
//! 1. Canonicalize IPv4-mapped IPv6 addresses, so `::ffff:127.0.0.1` is loopback.
//! 2. Refuse what is never a peer: unspecified and "this network" (`0.0.0.0/8`, `::`),
//!    multicast, broadcast, reserved `240.0.0.0/4`, link-local (`169.254.0.0/16`,
//!    `fe80::/10`).
//! 3. Refuse loopback unless `allow_loopback_peers`, and private ranges (RFC 1918,
//!    `100.64.0.0/10`, `fc00::/7`) unless `allow_private_peers`.
//! 4. Refuse the proxy's own IPs, except a loopback own IP when loopback is allowed (tests
//!    on one machine). Its listening port and relay ports stay refused per packet
//!    ([`Own::is_own_port`]), so nothing loops through the relay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::PeerPolicy;

/// The proxy's own addresses.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    /// Relay IP, and the listening IP if concrete.
    pub ips: Vec<IpAddr>,
    /// The listening port.
    pub listen_port: u16,
}

impl Own {
    /// Whether `ip` is one of the proxy's IPs.
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip.to_canonical())
    }

    /// Whether `addr` is the listening address or could be a relay port of the proxy
    /// (`is_relay_port` answers for the port).
    pub fn is_own_port(&self, addr: SocketAddr, is_relay_port: impl Fn(u16) -> bool) -> bool {
        self.is_own_ip(addr.ip()) && (addr.port() == self.listen_port || is_relay_port(addr.port()))
    }
}

/// Whether `ip` may be a peer under `policy`.
pub(crate) fn peer_allowed(policy: &PeerPolicy, own: &Own, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let (never, loopback, private) = match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    if never {
        return false;
    }
    if loopback && !policy.allow_loopback_peers {
        return false;
    }
    if private && !policy.allow_private_peers {
        return false;
    }
    // An own loopback IP is allowed with loopback peers; other own IPs never are.
    !own.is_own_ip(ip) || loopback
}

/// `(never a peer, loopback, private)` for an IPv4 address.
fn classify_v4(ip: Ipv4Addr) -> (bool, bool, bool) {
    let [a, b, ..] = ip.octets();
    let never = a == 0 || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() || a >= 240;
    let cgnat = a == 100 && (64..128).contains(&b);
    (never, ip.is_loopback(), ip.is_private() || cgnat)
}

/// `(never a peer, loopback, private)` for an IPv6 address.
fn classify_v6(ip: Ipv6Addr) -> (bool, bool, bool) {
    let first = ip.segments()[0];
    let link_local = first & 0xffc0 == 0xfe80;
    let unique_local = first & 0xfe00 == 0xfc00;
    let never = ip.is_unspecified() || ip.is_multicast() || link_local;
    (never, ip.is_loopback(), unique_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        Own {
            ips: vec![
                "203.0.113.5".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
            ],
            listen_port: 3478,
        }
    }

    fn allowed(policy: PeerPolicy, ip: &str) -> bool {
        peer_allowed(&policy, &own(), ip.parse().expect("ip"))
    }

    #[test]
    fn default_policy_refuses_special_and_private_addresses() {
        let p = PeerPolicy::default();
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.9.9.9",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "169.254.1.1",
            "240.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "203.0.113.5",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!allowed(p, ip), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "198.18.0.10",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(allowed(p, ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn flags_open_private_and_loopback_but_never_the_rest() {
        let private = PeerPolicy {
            allow_private_peers: true,
            ..PeerPolicy::default()
        };
        assert!(allowed(private, "10.1.2.3"));
        assert!(allowed(private, "fd00::1"));
        assert!(!allowed(private, "127.0.0.1"));
        let loopback = PeerPolicy {
            allow_loopback_peers: true,
            ..PeerPolicy::default()
        };
        assert!(
            allowed(loopback, "127.0.0.1"),
            "own loopback IP with loopback allowed"
        );
        assert!(allowed(loopback, "::1"));
        assert!(!allowed(loopback, "10.1.2.3"));
        assert!(!allowed(loopback, "203.0.113.5"), "own public IP never");
        assert!(!allowed(loopback, "224.0.0.1"));
        assert!(!allowed(loopback, "169.254.0.1"));
    }

    #[test]
    fn own_ports_are_recognised() {
        let o = own();
        let relay = |p: u16| (50000..=50010).contains(&p);
        assert!(o.is_own_port("127.0.0.1:3478".parse().expect("a"), relay));
        assert!(o.is_own_port("127.0.0.1:50005".parse().expect("a"), relay));
        assert!(!o.is_own_port("127.0.0.1:40000".parse().expect("a"), relay));
        assert!(!o.is_own_port("127.0.0.2:3478".parse().expect("a"), relay));
    }
}
