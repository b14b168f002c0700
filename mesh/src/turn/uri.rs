//! TURN URIs (RFC 7065) as the punch server's `--turn-uri` takes them and peers receive
//! them: `turn:HOST[:PORT][?transport=udp]`.
//!
//! Steps of [`TurnUri::from_str`](std::str::FromStr):
//! 1. The scheme must be `turn:` (`turns:` is TLS, which the relays here do not speak).
//! 2. An optional query may only be `transport=udp` (the relays here are UDP only).
//! 3. The host is a DNS name, an IPv4 address, or an IPv6 address in brackets; the port
//!    defaults to 3478 (RFC 7065 section 3).
//!
//! [`TurnUri`]'s display form is canonical (`turn:HOST:PORT`, the query dropped), and is
//! what goes on the wire.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// The TURN default port over UDP (RFC 8656).
pub const DEFAULT_TURN_PORT: u16 = 3478;

/// Longest URI accepted, in bytes (it travels as a short string).
pub const MAX_URI_LEN: usize = 255;

/// A TURN relay's address: `turn:HOST:PORT` over UDP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUri {
    host: String,
    port: u16,
}

/// Why a string is not a usable TURN URI.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseTurnUriError {
    /// Not `turn:...`.
    #[error("{0:?} is not a TURN URI: it must start with `turn:` (e.g. turn:relay.example:3478)")]
    Scheme(String),
    /// A query other than `transport=udp`.
    #[error("{0:?}: only `?transport=udp` is supported")]
    Transport(String),
    /// Empty or invalid host.
    #[error("{0:?}: invalid host")]
    Host(String),
    /// Port not a number from 1 to 65535.
    #[error("{0:?}: invalid port")]
    Port(String),
    /// Longer than [`MAX_URI_LEN`].
    #[error("TURN URI longer than {MAX_URI_LEN} bytes")]
    TooLong,
}

impl TurnUri {
    /// The host: a DNS name or an IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`, with IPv6 in brackets: what a resolver takes.
    pub fn host_port(&self) -> String {
        match self.host.parse::<Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", self.host, self.port),
            Err(_) => format!("{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for TurnUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "turn:{}", self.host_port())
    }
}

impl FromStr for TurnUri {
    type Err = ParseTurnUriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_URI_LEN {
            return Err(ParseTurnUriError::TooLong);
        }
        let rest = s
            .strip_prefix("turn:")
            .ok_or_else(|| ParseTurnUriError::Scheme(s.to_owned()))?;
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !query.is_empty() && !query.eq_ignore_ascii_case("transport=udp") {
            return Err(ParseTurnUriError::Transport(s.to_owned()));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| ParseTurnUriError::Host(s.to_owned()))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| ParseTurnUriError::Host(s.to_owned()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| ParseTurnUriError::Port(s.to_owned()))?,
                ),
            };
            (ip, port)
        } else {
            match hostport.split_once(':') {
                // An IPv6 address needs its brackets.
                Some((_, p)) if p.contains(':') => {
                    return Err(ParseTurnUriError::Host(s.to_owned()))
                }
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None => DEFAULT_TURN_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| ParseTurnUriError::Port(s.to_owned()))?,
        };
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !(name_ok || host.parse::<IpAddr>().is_ok()) {
            return Err(ParseTurnUriError::Host(s.to_owned()));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let cases = [
            ("turn:127.0.0.1:3478", "turn:127.0.0.1:3478"),
            (
                "turn:relay.example:5349?transport=udp",
                "turn:relay.example:5349",
            ),
            ("turn:Relay.Example", "turn:relay.example:3478"),
            ("turn:[::1]:3480", "turn:[::1]:3480"),
            ("turn:[2001:db8::1]", "turn:[2001:db8::1]:3478"),
        ];
        for (input, shown) in cases {
            let uri: TurnUri = input.parse().expect(input);
            assert_eq!(uri.to_string(), shown);
            assert_eq!(uri.to_string().parse::<TurnUri>(), Ok(uri));
        }
        let uri: TurnUri = "turn:[::1]:3480".parse().expect("v6");
        assert_eq!((uri.host(), uri.port()), ("::1", 3480));
    }

    #[test]
    fn rejects_what_cannot_work() {
        for bad in [
            "turns:relay:5349",
            "stun:relay:3478",
            "relay:3478",
            "turn:",
            "turn::3478",
            "turn:relay:0",
            "turn:relay:99999",
            "turn:relay:x",
            "turn:relay:3478?transport=tcp",
            "turn:[::1",
            "turn:[zz]:1",
            "turn:re lay:1",
            "turn:::1:3478",
        ] {
            assert!(bad.parse::<TurnUri>().is_err(), "{bad}");
        }
        let long = format!("turn:{}:1", "a".repeat(MAX_URI_LEN));
        assert_eq!(long.parse::<TurnUri>(), Err(ParseTurnUriError::TooLong));
    }
}
