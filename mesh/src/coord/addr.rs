//! [`PunchAddr`]: how a peer names its punch server, `ID@HOST:PORT`.
//!
//! Steps of parsing:
//! 1. Split at the first `@`: the part before is the server's [`PeerId`] (52 base32
//!    characters), which the QUIC-TLS handshake must prove. Without `@` the address is
//!    *insecure* (any server key accepted), allowed only where the caller opts in
//!    ([`PunchAddr::expected_id`] with `allow_insecure`, the CLI's `--insecure`).
//! 2. The rest is `HOST:PORT`: `HOST` a DNS name, an IPv4 address, or an IPv6 address in
//!    brackets (`[::1]:7000`); `PORT` 1-65535.
//!
//! Names are resolved later, by the driver, with [`PunchAddr::resolve`]: an asynchronous
//! lookup (never blocking a runtime thread), bounded by 5 s, that picks
//! the first address of the local socket's family.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::identity::{ParsePeerIdError, PeerId};
use crate::socket::{canonical, SocketFamily};

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// Longest wait for [`PunchAddr::resolve`].
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The address of a punch server, with the key it must prove (unless insecure).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PunchAddr {
    id: Option<PeerId>,
    host: String,
    port: u16,
}

/// Why a text is not a [`PunchAddr`], or may not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParsePunchAddrError {
    /// Nothing given.
    #[error("empty punch server address (expected ID@HOST:PORT)")]
    Empty,
    /// The part before `@` is not a peer id.
    #[error("invalid punch server id before '@': {0}")]
    BadId(#[from] ParsePeerIdError),
    /// No `:PORT` after the host.
    #[error("punch server address {0:?} has no port (expected ID@HOST:PORT)")]
    MissingPort(String),
    /// The port is not a number in 1-65535.
    #[error("invalid port {0:?} in punch server address (expected 1-65535)")]
    BadPort(String),
    /// The host is empty, too long, has invalid characters, or is an IPv6 address without
    /// brackets.
    #[error("invalid host {0:?} in punch server address (IPv6 needs brackets: ID@[::1]:PORT)")]
    BadHost(String),
    /// A bare `HOST:PORT` where the server key must be verified.
    #[error(
        "punch server address {0} names no server id: use ID@HOST:PORT, or pass --insecure \
         (development only) to accept any server key"
    )]
    Insecure(String),
}

impl PunchAddr {
    /// An address with an expected server id.
    pub fn new(id: PeerId, host: impl Into<String>, port: u16) -> Self {
        Self {
            id: Some(id),
            host: host.into(),
            port,
        }
    }

    /// The server id the handshake must prove; `None` for an insecure address.
    pub fn id(&self) -> Option<PeerId> {
        self.id
    }

    /// The host: a DNS name or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether no server id is given (any key would be accepted).
    pub fn is_insecure(&self) -> bool {
        self.id.is_none()
    }

    /// The server id to verify; an insecure address is an error unless `allow_insecure`.
    pub fn expected_id(&self, allow_insecure: bool) -> Result<Option<PeerId>, ParsePunchAddrError> {
        match self.id {
            Some(id) => Ok(Some(id)),
            None if allow_insecure => Ok(None),
            None => Err(ParsePunchAddrError::Insecure(self.to_string())),
        }
    }

    /// `HOST:PORT` (IPv6 in brackets), as `ToSocketAddrs` and DNS lookups take it.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The server's address to use from a socket of `family`: the first address the socket
    /// reaches, and from a dual-stack socket the first IPv4 address if there is one (the
    /// reflexive IPv4 address the server reports is what NATed peers punch with; IPv6 host
    /// addresses need no server to be reached). The lookup is asynchronous (tokio's
    /// resolver; an IP literal needs none) and bounded by 5 s.
    ///
    /// Errors: the lookup's own error; [`io::ErrorKind::TimedOut`] after the timeout;
    /// [`io::ErrorKind::NotFound`] when no address the socket reaches exists.
    pub async fn resolve(&self, family: SocketFamily) -> io::Result<SocketAddr> {
        let host_port = self.host_port();
        let lookup = tokio::net::lookup_host(host_port.as_str());
        let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {RESOLVE_TIMEOUT:?}"),
                )
            })??;
        let reachable: Vec<SocketAddr> = addrs
            .map(canonical)
            .filter(|a| family.reaches(*a))
            .collect();
        reachable
            .iter()
            .find(|a| a.is_ipv4())
            .or(reachable.first())
            .copied()
            .ok_or_else(|| {
                let family = if family.has_v4() { "IPv4" } else { "IPv6" };
                io::Error::new(io::ErrorKind::NotFound, format!("no {family} address"))
            })
    }
}

impl fmt::Display for PunchAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.id {
            write!(f, "{id}@")?;
        }
        f.write_str(&self.host_port())
    }
}

fn valid_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_host_port(s: &str) -> Result<(String, u16), ParsePunchAddrError> {
    let bad_host = || ParsePunchAddrError::BadHost(s.to_owned());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad_host)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad_host())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| ParsePunchAddrError::MissingPort(s.to_owned()))?;
        (ip.to_string(), port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| ParsePunchAddrError::MissingPort(s.to_owned()))?;
        if host.contains(':') || host.is_empty() {
            return Err(bad_host());
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => (ip.to_string(), port),
            Err(_) if valid_dns_name(host) => (host.to_ascii_lowercase(), port),
            Err(_) => return Err(bad_host()),
        }
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0 && !port.starts_with('+'))
        .ok_or_else(|| ParsePunchAddrError::BadPort(port.to_owned()))?;
    Ok((host, port))
}

impl FromStr for PunchAddr {
    type Err = ParsePunchAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParsePunchAddrError::Empty);
        }
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (Some(id.parse::<PeerId>()?), rest),
            None => (None, s),
        };
        let (host, port) = parse_host_port(rest)?;
        Ok(Self { id, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insecure(s: &str) -> PunchAddr {
        s.parse().expect("valid address")
    }

    #[tokio::test]
    async fn resolve_picks_an_address_the_socket_reaches() {
        let literal4 = insecure("127.0.0.1:7000");
        let literal6 = insecure("[::1]:7000");
        let v4: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let v6: SocketAddr = "[::1]:7000".parse().expect("addr");
        assert_eq!(literal4.resolve(SocketFamily::V4).await.expect("v4"), v4);
        assert_eq!(
            literal6.resolve(SocketFamily::V6Only).await.expect("v6"),
            v6
        );
        // A dual-stack socket reaches both.
        assert_eq!(literal4.resolve(SocketFamily::Dual).await.expect("v4"), v4);
        assert_eq!(literal6.resolve(SocketFamily::Dual).await.expect("v6"), v6);
        let wrong = literal6
            .resolve(SocketFamily::V4)
            .await
            .expect_err("no IPv4 address");
        assert_eq!(wrong.kind(), io::ErrorKind::NotFound);
        let wrong = literal4
            .resolve(SocketFamily::V6Only)
            .await
            .expect_err("no IPv6 address");
        assert_eq!(wrong.kind(), io::ErrorKind::NotFound);
    }
}
