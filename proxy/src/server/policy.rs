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
//! 4. The relay IP is allowed whatever its range (loopback only with loopback peers
//!    allowed): a peer there is another allocation of
//!    this proxy (relay-to-relay, RFC 8445's relayed-relayed pairs when both players are
//!    behind symmetric NATs), which the core hands over internally per packet
//!    ([`Own::relay_peer`]); the listening port and ports not allocated are refused there.
//!    Other own IPs are refused, except a loopback own IP when loopback is allowed (tests
//!    on one machine).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::PeerPolicy;

/// The proxy's own addresses.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    /// Relay IP (first), and the listening IP if concrete.
    pub ips: Vec<IpAddr>,
    /// The listening port.
    pub listen_port: u16,
}

impl Own {
    /// Whether `ip` is one of the proxy's IPs.
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip.to_canonical())
    }

    /// The relay IP.
    pub fn relay_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// Where a packet to `peer` goes when `peer` is one of the proxy's own addresses:
    /// `None` for a foreign peer (sent out as usual; so is any port but the listening one
    /// of an own loopback IP when `loopback_peers`, for tests on one machine),
    /// `Some(Ok(port))` for another live allocation's relay address (`is_relay_port`
    /// answers for the port; `from_port`, the sender's own, is refused), `Some(Err(()))`
    /// for any other own address (the listening port, a port not allocated): dropped.
    pub fn relay_peer(
        &self,
        peer: SocketAddr,
        from_port: u16,
        loopback_peers: bool,
        is_relay_port: impl Fn(u16) -> bool,
    ) -> Option<Result<u16, ()>> {
        let ip = peer.ip().to_canonical();
        if !self.is_own_ip(ip) {
            return None;
        }
        let port = peer.port();
        if port == self.listen_port || port == from_port {
            return Some(Err(()));
        }
        if Some(ip) == self.relay_ip() && is_relay_port(port) {
            return Some(Ok(port));
        }
        if ip.is_loopback() && loopback_peers {
            return None;
        }
        Some(Err(()))
    }
}

/// Whether `ip` may be a peer under `policy`.
pub(crate) fn peer_allowed(policy: &PeerPolicy, own: &Own, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if Some(ip) == own.relay_ip() && (policy.allow_loopback_peers || !ip.is_loopback()) {
        // Relay-to-relay: checked per packet against the live allocations (a loopback
        // relay IP only with loopback peers allowed, as any loopback peer).
        return true;
    }
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
        assert!(
            allowed(loopback, "203.0.113.5"),
            "the relay IP, for relay-to-relay"
        );
        assert!(allowed(PeerPolicy::default(), "203.0.113.5"));
        assert!(!allowed(loopback, "224.0.0.1"));
        assert!(!allowed(loopback, "169.254.0.1"));
    }

    #[test]
    fn own_ports_are_recognised() {
        let o = own();
        let relay = |p: u16| p == 50005 || p == 50006;
        let to = |a: &str| o.relay_peer(a.parse().expect("a"), 50006, false, relay);
        assert_eq!(
            to("203.0.113.5:50005"),
            Some(Ok(50005)),
            "another allocation"
        );
        assert_eq!(to("203.0.113.5:50006"), Some(Err(())), "its own relay port");
        assert_eq!(to("203.0.113.5:3478"), Some(Err(())), "the listening port");
        assert_eq!(to("203.0.113.5:40000"), Some(Err(())), "not allocated");
        assert_eq!(to("127.0.0.1:50005"), Some(Err(())), "not the relay IP");
        assert_eq!(to("198.51.100.1:50005"), None, "foreign");
        let local = |a: &str| o.relay_peer(a.parse().expect("a"), 50006, true, relay);
        assert_eq!(
            local("127.0.0.1:40000"),
            None,
            "a local process, loopback allowed"
        );
        assert_eq!(local("127.0.0.1:3478"), Some(Err(())), "the listening port");
    }
}
