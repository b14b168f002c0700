//! Runtime configuration, kept apart from the command line (which only fills it in).
//!
//! Flow:
//!
//! 1. `main` parses flags and env vars (clap) into a [`ServerConfig`]; library users and
//!    tests build one directly, starting from [`ServerConfig::default`].
//! 2. [`ServerConfig::validate`] rejects combinations that cannot work, e.g. an alternate
//!    address for RFC 5780 behaviour discovery that is not a distinct, concrete IP.
//! 3. The driver binds the sockets from it and gives [`StunConfig`] to every sans-IO core.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

/// Default STUN listen address: all IPv4 interfaces, the IANA STUN port 3478.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);

/// Default key file of the server's identity (`--key-file`, `PUNCH_KEY_FILE`), relative to
/// the working directory; created with a fresh Ed25519 key on first start.
pub const DEFAULT_KEY_FILE: &str = "punch-server.key";

/// Everything the punch server needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Primary STUN address (default `0.0.0.0:3478`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Alternate address for RFC 5780 behaviour discovery (default: none). When set, the
    /// server binds all four (IP, port) combinations of primary and alternate; both IPs
    /// must be concrete, distinct and of one family. Port 0 picks a free port.
    pub alt_addr: Option<SocketAddr>,
    /// Address of the HTTP endpoint serving `/metrics` and `/healthz` (default: none).
    pub metrics_listen: Option<SocketAddr>,
    /// Coalesce runs of responses to one destination into GSO sends (default true). Off
    /// means one `sendmsg` per response, which is what traffic from many sources gets
    /// anyway; the benchmark uses it to measure that case.
    pub gso: bool,
    /// Settings of the sans-IO core.
    pub stun: StunConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            alt_addr: None,
            metrics_listen: None,
            gso: true,
            stun: StunConfig::default(),
        }
    }
}

/// Settings of one sans-IO STUN core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunConfig {
    /// Requests per second allowed per source (IPv4 address or IPv6 /64); 0 = no limit.
    /// Default 100: far more than any STUN client needs, far less than a flood.
    pub rate_limit_per_sec: u32,
    /// Burst size of the per-source token bucket (default 200).
    pub rate_limit_burst: u32,
    /// Slots of the rate-limit hash table, which never grows (default 65 536, ~1 MiB).
    pub rate_limit_slots: usize,
    /// Seed of the rate-limit hash (the driver sets a random one; default 0).
    pub rate_limit_seed: u64,
    /// Largest request accepted, in bytes (default 548, the RFC 8489 §6.2.1 UDP guidance
    /// for IPv4 without path MTU knowledge).
    pub max_request_len: usize,
    /// A response may be at most this many times the size of its request (default 4). A
    /// response that would be larger first loses the optional RFC 5780 attributes, then is
    /// dropped. IPv4 responses always fit; only bare IPv6 requests in RFC 5780 mode shrink.
    pub max_amplification: usize,
}

impl Default for StunConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: 100,
            rate_limit_burst: 200,
            rate_limit_slots: 1 << 16,
            rate_limit_seed: 0,
            max_request_len: 548,
            max_amplification: 4,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Primary and alternate addresses are of different families.
    #[error("--listen {listen} and --alt-addr {alt} must be of the same address family")]
    FamilyMismatch {
        /// Primary address.
        listen: SocketAddr,
        /// Alternate address.
        alt: SocketAddr,
    },
    /// RFC 5780 needs concrete IPs to put into OTHER-ADDRESS and RESPONSE-ORIGIN.
    #[error("with --alt-addr, {0} must be a concrete IP, not a wildcard")]
    WildcardWithAlt(SocketAddr),
    /// RFC 5780 needs two different IPs.
    #[error("--alt-addr must use a different IP than --listen ({0})")]
    SameIp(IpAddr),
    /// RFC 5780 needs two different ports.
    #[error("--alt-addr must use a different port than --listen ({0})")]
    SamePort(u16),
    /// A core setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
}

impl ServerConfig {
    /// Checks the configuration; see [`ConfigError`] for what is rejected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(alt) = self.alt_addr {
            let listen = self.listen;
            if listen.is_ipv4() != alt.is_ipv4() {
                return Err(ConfigError::FamilyMismatch { listen, alt });
            }
            for a in [listen, alt] {
                if a.ip().is_unspecified() {
                    return Err(ConfigError::WildcardWithAlt(a));
                }
            }
            if listen.ip() == alt.ip() {
                return Err(ConfigError::SameIp(alt.ip()));
            }
            if listen.port() != 0 && listen.port() == alt.port() {
                return Err(ConfigError::SamePort(alt.port()));
            }
        }
        if self.stun.max_request_len < crate::wire::HEADER_LEN {
            return Err(ConfigError::Invalid(
                "max request length below a STUN header",
            ));
        }
        if self.stun.max_amplification == 0 {
            return Err(ConfigError::Invalid("max amplification must be at least 1"));
        }
        if self.stun.rate_limit_per_sec != 0 && self.stun.rate_limit_slots == 0 {
            return Err(ConfigError::Invalid("rate limit needs at least one slot"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_alt(listen: &str, alt: &str) -> ServerConfig {
        ServerConfig {
            listen: listen.parse().expect("addr"),
            alt_addr: Some(alt.parse().expect("addr")),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        assert_eq!(ServerConfig::default().listen.port(), 3478);
    }

    #[test]
    fn alt_checks() {
        assert_eq!(with_alt("127.0.0.1:0", "127.0.0.2:0").validate(), Ok(()));
        assert!(matches!(
            with_alt("0.0.0.0:3478", "127.0.0.2:3479").validate(),
            Err(ConfigError::WildcardWithAlt(_))
        ));
        assert!(matches!(
            with_alt("127.0.0.1:3478", "127.0.0.1:3479").validate(),
            Err(ConfigError::SameIp(_))
        ));
        assert!(matches!(
            with_alt("127.0.0.1:3478", "127.0.0.2:3478").validate(),
            Err(ConfigError::SamePort(3478))
        ));
        assert!(matches!(
            with_alt("127.0.0.1:3478", "[::1]:3479").validate(),
            Err(ConfigError::FamilyMismatch { .. })
        ));
    }
}
