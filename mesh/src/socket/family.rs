//! Address families of the one socket: dual-stack binding and the one place where
//! IPv4-mapped IPv6 addresses are turned into IPv4 addresses and back.
//!
//! Flow:
//! 1. [`bind_udp`] binds a UDP socket. The IPv6 wildcard (`[::]:PORT`, the default of
//!    [`crate::direct::DirectConfig::bind`]) is bound as one dual-stack socket
//!    (`IPV6_V6ONLY` off, RFC 3493 section 5.3), so it reaches IPv4 and IPv6 peers alike; on a
//!    host without IPv6 it falls back to `0.0.0.0:PORT`.
//! 2. [`SocketFamily::of`] records what the bound socket can reach.
//! 3. Every address that comes in from the kernel goes through [`canonical`] first: a
//!    dual-stack socket reports an IPv4 source as `[::ffff:a.b.c.d]:p` (RFC 4291 section
//!    2.5.5.2), and everything above the socket (path table, prober, STUN, candidates) sees
//!    plain IPv4 instead.
//! 4. Every address going out to the kernel goes through [`SocketFamily::to_socket`]: IPv4
//!    becomes IPv4-mapped on a dual-stack socket, and a family the socket cannot reach is
//!    refused (`None`) rather than failing in the kernel.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// What a bound UDP socket can send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFamily {
    /// An IPv4 socket: IPv4 destinations only.
    V4,
    /// An IPv6 socket with `IPV6_V6ONLY` on: IPv6 destinations only.
    V6Only,
    /// An IPv6 socket with `IPV6_V6ONLY` off: both families, IPv4 as IPv4-mapped.
    Dual,
}

impl SocketFamily {
    /// The family of a bound socket.
    pub fn of(socket: &UdpSocket) -> io::Result<Self> {
        if socket.local_addr()?.is_ipv4() {
            return Ok(Self::V4);
        }
        let only_v6 = socket2::SockRef::from(socket).only_v6()?;
        Ok(if only_v6 { Self::V6Only } else { Self::Dual })
    }

    /// Whether the socket can send to `addr` (any form of it).
    pub fn reaches(self, addr: SocketAddr) -> bool {
        self.to_socket(addr).is_some()
    }

    /// `addr` as the kernel wants it for this socket, or `None` if the socket cannot reach
    /// its family.
    pub fn to_socket(self, addr: SocketAddr) -> Option<SocketAddr> {
        match (self, canonical(addr)) {
            (Self::V4, a @ SocketAddr::V4(_)) => Some(a),
            (Self::V6Only, a @ SocketAddr::V6(_)) => Some(a),
            (Self::Dual, SocketAddr::V4(v4)) => Some(SocketAddr::new(
                IpAddr::V6(v4.ip().to_ipv6_mapped()),
                v4.port(),
            )),
            (Self::Dual, a @ SocketAddr::V6(_)) => Some(a),
            _ => None,
        }
    }

    /// Whether IPv6 destinations are reachable.
    pub fn has_v6(self) -> bool {
        self != Self::V4
    }

    /// Whether IPv4 destinations are reachable.
    pub fn has_v4(self) -> bool {
        self != Self::V6Only
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into the IPv4 address it maps; any
/// other address unchanged (the port and nothing else kept: flow info and scope of a mapped
/// address mean nothing for IPv4).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Binds a UDP socket at `addr`: the IPv6 wildcard as one dual-stack socket (falling back
/// to the IPv4 wildcard on the same port when the host has no IPv6), anything else as
/// given (an IPv6 address other than the wildcard keeps the system's `IPV6_V6ONLY`).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    if addr.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return UdpSocket::bind(addr);
    }
    match bind_dual(addr.port()) {
        Ok(socket) => Ok(socket),
        Err(e) if no_ipv6(&e) => {
            tracing::debug!(error = %e, "no IPv6 on this host, binding IPv4 only");
            UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
        }
        Err(e) => Err(e),
    }
}

fn bind_dual(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    Ok(socket.into())
}

/// Errors that mean "this host has no IPv6" (module not loaded, disabled by sysctl).
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn canonical_unmaps_only_ipv4_mapped_addresses() {
        assert_eq!(canonical(a("[::ffff:10.0.0.1]:5")), a("10.0.0.1:5"));
        assert_eq!(canonical(a("10.0.0.1:5")), a("10.0.0.1:5"));
        assert_eq!(canonical(a("[2001:db8::1]:5")), a("[2001:db8::1]:5"));
        // IPv4-compatible (deprecated) addresses are not mapped ones.
        assert_eq!(canonical(a("[::10.0.0.1]:5")), a("[::10.0.0.1]:5"));
        assert_eq!(canonical(a("[::1]:5")), a("[::1]:5"));
    }

    #[test]
    fn to_socket_maps_for_dual_and_refuses_the_other_family() {
        let v4 = a("127.0.0.1:9");
        let mapped = a("[::ffff:127.0.0.1]:9");
        let v6 = a("[::1]:9");
        assert_eq!(SocketFamily::Dual.to_socket(v4), Some(mapped));
        assert_eq!(SocketFamily::Dual.to_socket(mapped), Some(mapped));
        assert_eq!(SocketFamily::Dual.to_socket(v6), Some(v6));
        assert_eq!(SocketFamily::V4.to_socket(mapped), Some(v4));
        assert_eq!(SocketFamily::V4.to_socket(v6), None);
        assert_eq!(SocketFamily::V6Only.to_socket(v4), None);
        assert_eq!(SocketFamily::V6Only.to_socket(v6), Some(v6));
    }

    #[test]
    fn the_ipv6_wildcard_binds_one_socket_for_both_families() -> anyhow::Result<()> {
        let socket = bind_udp(a("[::]:0"))?;
        let family = SocketFamily::of(&socket)?;
        // Hosts without IPv6 fall back to IPv4; both are valid outcomes of the default.
        if family == SocketFamily::V4 {
            return Ok(());
        }
        assert_eq!(family, SocketFamily::Dual);
        let port = socket.local_addr()?.port();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut buf = [0u8; 16];
        for (bind, to) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
            let client = UdpSocket::bind(a(bind))?;
            let to: IpAddr = to.parse()?;
            client.send_to(b"hi", SocketAddr::new(to, port))?;
            let (n, from) = socket.recv_from(&mut buf)?;
            assert_eq!(&buf[..n], b"hi");
            assert_eq!(canonical(from), client.local_addr()?);
            let back = family.to_socket(canonical(from)).expect("reachable");
            socket.send_to(b"ok", back)?;
            client.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let (n, _) = client.recv_from(&mut buf)?;
            assert_eq!(&buf[..n], b"ok");
        }
        Ok(())
    }

    #[test]
    fn explicit_addresses_bind_as_given() -> anyhow::Result<()> {
        let socket = bind_udp(a("127.0.0.1:0"))?;
        assert_eq!(SocketFamily::of(&socket)?, SocketFamily::V4);
        Ok(())
    }
}
