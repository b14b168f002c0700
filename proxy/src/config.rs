//! Runtime configuration, kept apart from the command line (which only fills it in).
//!
//! Flow:
//!
//! 1. `main` parses flags and `PROXY_*` env vars (clap) into a [`ProxyConfig`]; tests and
//!    library users build one directly, starting from [`ProxyConfig::new`].
//! 2. [`ServerConfig::validate`] rejects settings that cannot work (an empty secret, a
//!    reversed port range, a wildcard relay IP, zero limits).
//! 3. The driver binds the sockets and hands the [`ServerConfig`] to the sans-IO
//!    [`crate::server::Server`], which applies the [`Limits`] and the [`PeerPolicy`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// Default listen address: all IPv4 interfaces, the IANA STUN/TURN port 3478.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);
/// Default realm of the long-term credentials.
pub const DEFAULT_REALM: &str = "p2p-mesh";
/// Default relay port range: the IANA dynamic range RFC 8656 section 7.2 recommends.
pub const DEFAULT_PORTS: PortRange = PortRange {
    lo: 49152,
    hi: 65535,
};
/// Allocation lifetime RFC 8656 prescribes when a client asks for less (10 minutes).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// An inclusive UDP port range, written `LO-HI` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port (at least 1).
    pub lo: u16,
    /// Highest port (at least `lo`).
    pub hi: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.hi.saturating_sub(self.lo)) + 1
    }

    /// Whether the range is empty (never true for a validated range).
    pub fn is_empty(&self) -> bool {
        self.hi < self.lo
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl FromStr for PortRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Ports(s.to_owned());
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || hi < lo {
            return Err(bad());
        }
        Ok(Self { lo, hi })
    }
}

/// Resource limits of the relay; every table the core keeps is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most allocations at once (default 10 000); more get 508 (Insufficient Capacity).
    /// The port range bounds them too.
    pub max_allocations: usize,
    /// Most allocations of one user (the `USER` part of the REST username) at once
    /// (default 8); more get 486 (Allocation Quota Reached).
    pub max_allocations_per_user: usize,
    /// Most allocations from one client IP at once (default 64, room for a household or
    /// carrier-grade NAT); more get 486.
    pub max_allocations_per_ip: usize,
    /// Relayed bytes per second per allocation, both directions together, as a token
    /// bucket holding one second of traffic (default 1 000 000, about 8 Mbit/s; 0 = no
    /// limit). Packets over the limit are dropped and counted.
    pub bandwidth_per_allocation: u64,
    /// Longest allocation lifetime granted (default 600 s). Requests for less than the
    /// RFC's 600 s default get the default (capped at this maximum).
    pub max_lifetime: Duration,
    /// Most permissions (peer IPs) per allocation (default 64); more get 508.
    pub max_permissions_per_allocation: usize,
    /// Most channels per allocation, including ones in their 5-minute cooldown after
    /// expiry (default 64); more get 508.
    pub max_channels_per_allocation: usize,
    /// Most outstanding EVEN-PORT reservations (default 1 000); more get 508.
    pub max_reservations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_allocations: 10_000,
            max_allocations_per_user: 8,
            max_allocations_per_ip: 64,
            bandwidth_per_allocation: 1_000_000,
            max_lifetime: DEFAULT_LIFETIME,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            max_reservations: 1_000,
        }
    }
}

/// Which peer addresses an allocation may reach. Refused peers get 403 (Forbidden) in
/// CreatePermission and ChannelBind; Send indications to them are dropped.
///
/// Always refused: unspecified (`0.0.0.0/8`, `::`), multicast, broadcast, link-local,
/// reserved `240.0.0.0/4`, and the proxy's own addresses (its relay IP and listen IP).
/// Refused unless allowed here: private ranges and loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Allow RFC 1918, carrier-grade NAT (`100.64.0.0/10`) and unique-local (`fc00::/7`)
    /// peers (default false).
    pub allow_private_peers: bool,
    /// Allow loopback peers, for tests on one machine (default false). The proxy's own
    /// IP is then allowed too when it is a loopback address, but never its listening
    /// port or its relay ports.
    pub allow_loopback_peers: bool,
}

/// Settings of the sans-IO core.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The IP of the relayed transport addresses (XOR-RELAYED-ADDRESS); relay sockets
    /// bind to it. Also one of the proxy's own addresses that peers may not be.
    pub relay_ip: IpAddr,
    /// The listening address as bound (port 0 resolved); its IP (if concrete) and port
    /// are the proxy's own too.
    pub listen: SocketAddr,
    /// Realm of the long-term credentials (default [`DEFAULT_REALM`]).
    pub realm: String,
    /// Shared secret of the TURN REST API credentials (coturn's `static-auth-secret`).
    pub auth_secret: String,
    /// Relay ports (default [`DEFAULT_PORTS`]).
    pub ports: PortRange,
    /// Resource limits.
    pub limits: Limits,
    /// Peer-address policy.
    pub policy: PeerPolicy,
    /// How long a nonce stays valid (default 600 s); an older one gets 438 (Stale Nonce).
    pub nonce_lifetime: Duration,
    /// Accept the channel numbers of RFC 5766, 0x4000-0x7FFF, instead of RFC 8656's
    /// 0x4000-0x4FFF (default false). coturn's clients (`turnutils_uclient`) still pick
    /// from the old range.
    pub rfc5766_channels: bool,
    /// Seed of the nonce key, port choice and reservation tokens (the driver draws a
    /// random one; tests fix it).
    pub seed: u64,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret and the seed stay out of logs.
        f.debug_struct("ServerConfig")
            .field("relay_ip", &self.relay_ip)
            .field("listen", &self.listen)
            .field("realm", &self.realm)
            .field("ports", &self.ports)
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("rfc5766_channels", &self.rfc5766_channels)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with the defaults, relaying on `relay_ip` with `auth_secret`.
    pub fn new(relay_ip: IpAddr, auth_secret: impl Into<String>) -> Self {
        Self {
            relay_ip,
            listen: DEFAULT_LISTEN,
            realm: DEFAULT_REALM.to_owned(),
            auth_secret: auth_secret.into(),
            ports: DEFAULT_PORTS,
            limits: Limits::default(),
            policy: PeerPolicy::default(),
            nonce_lifetime: Duration::from_secs(600),
            rfc5766_channels: false,
            seed: 0,
        }
    }

    /// The highest channel number accepted.
    pub fn channel_max(&self) -> u16 {
        if self.rfc5766_channels {
            crate::wire::CHANNEL_MAX_RFC5766
        } else {
            crate::wire::CHANNEL_MAX
        }
    }

    /// Checks the configuration; see [`ConfigError`] for what is rejected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ip = self.relay_ip;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ConfigError::RelayIp(ip));
        }
        if self.auth_secret.is_empty() {
            return Err(ConfigError::Invalid("the auth secret must not be empty"));
        }
        if self.realm.is_empty() || self.realm.len() > 127 || !self.realm.is_ascii() {
            return Err(ConfigError::Invalid(
                "the realm must be 1 to 127 ASCII characters",
            ));
        }
        if self.ports.is_empty() || self.ports.lo == 0 {
            return Err(ConfigError::Ports(self.ports.to_string()));
        }
        let l = &self.limits;
        if l.max_allocations == 0
            || l.max_allocations_per_user == 0
            || l.max_allocations_per_ip == 0
        {
            return Err(ConfigError::Invalid("allocation limits must be at least 1"));
        }
        if l.max_permissions_per_allocation == 0 || l.max_channels_per_allocation == 0 {
            return Err(ConfigError::Invalid(
                "permission and channel limits must be at least 1",
            ));
        }
        if l.max_lifetime < Duration::from_secs(60) || l.max_lifetime > Duration::from_secs(86_400)
        {
            return Err(ConfigError::Invalid(
                "the maximum lifetime must be 60 s to 1 day",
            ));
        }
        if self.nonce_lifetime < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "the nonce lifetime must be at least 1 s",
            ));
        }
        Ok(())
    }
}

/// Everything the proxy binary needs: the core's settings plus the driver's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// UDP address of STUN/TURN (default `0.0.0.0:3478`; port 0 picks one).
    pub listen: SocketAddr,
    /// TCP address of `/metrics` and `/healthz` (default: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Coalesce runs of datagrams to one destination into GSO sends (default true).
    pub gso: bool,
    /// The sans-IO core's settings (its `listen` is filled in after binding).
    pub server: ServerConfig,
}

impl ProxyConfig {
    /// A configuration with the defaults, relaying on `relay_ip` with `auth_secret`.
    pub fn new(relay_ip: IpAddr, auth_secret: impl Into<String>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            metrics_listen: None,
            gso: true,
            server: ServerConfig::new(relay_ip, auth_secret),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The relay IP must be a concrete unicast address.
    #[error("--relay-ip {0} must be a concrete unicast address of this host")]
    RelayIp(IpAddr),
    /// The port range is malformed.
    #[error("--ports {0:?} must be LO-HI with 1 <= LO <= HI <= 65535")]
    Ports(String),
    /// Another setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse() {
        assert_eq!("1000-2000".parse(), Ok(PortRange { lo: 1000, hi: 2000 }));
        assert_eq!("5-5".parse::<PortRange>().map(|r| r.len()), Ok(1));
        for bad in ["", "10", "0-10", "20-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(DEFAULT_PORTS.to_string(), "49152-65535");
        assert_eq!(DEFAULT_PORTS.len(), 16384);
    }

    #[test]
    fn defaults_are_valid_and_bad_settings_are_not() {
        let ok = ServerConfig::new("192.0.2.1".parse().expect("ip"), "s");
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.relay_ip = "0.0.0.0".parse().expect("ip");
        assert!(matches!(c.validate(), Err(ConfigError::RelayIp(_))));
        let mut c = ok.clone();
        c.auth_secret.clear();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.limits.max_allocations_per_user = 0;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.limits.max_lifetime = Duration::from_secs(1);
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = ServerConfig::new("192.0.2.1".parse().expect("ip"), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
