//! UPnP IGD port mapping (UPnP Device Architecture 1.1 SSDP discovery, IGD
//! `WANIPConnection` `AddPortMapping` / `AddAnyPortMapping` / `DeletePortMapping`) with
//! `igd-next`, giving the peer's UDP socket a UPnP-mapped candidate address.
//!
//! Flow (decisions in a sans-IO state machine, `machine.rs`; I/O in `driver.rs`):
//! 1. [`PortMapper::start`] spawns a background tokio task and returns at once: nothing
//!    here ever delays a connect. The state starts as [`UpnpState::Searching`].
//! 2. The task searches for the gateway (SSDP `M-SEARCH` from the socket's local IP, so it
//!    leaves the right interface; [`UpnpConfig::search_timeout`], 2 s by default) and asks
//!    for its external address. A reserved or private external address (a lab's
//!    198.18.0.0/15, a double NAT) is used as is and only logged at debug level.
//! 3. It maps the socket's UDP port: the same external port first, any port if that one is
//!    taken, with a lease ([`UpnpConfig::lease`], 600 s by default), and publishes
//!    [`UpnpState::Mapped`] through a `tokio::sync::watch` channel
//!    ([`PortMapper::subscribe`]); [`PortMapper::mapped_candidate`] is the candidate.
//! 4. It renews at half the lease; failures are retried with bounded backoff, and a lost
//!    mapping starts a new round. No gateway after [`UpnpConfig::search_attempts`] tries
//!    gives [`UpnpState::Unavailable`] (and a new round after
//!    [`UpnpConfig::rediscover_after`]).
//! 5. [`PortMapper::shutdown`] removes the mapping and waits (bounded) for the task;
//!    dropping the handle asks the task to do the same in the background.
//!
//! Every network wait has a timeout ([`UpnpConfig::request_timeout`] for each SOAP call).

mod driver;
#[cfg(test)]
mod fake_igd;
mod machine;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use driver::PortMapper;

/// What the port mapper currently offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpState {
    /// Looking for a gateway or (re)creating the mapping.
    Searching,
    /// The socket is reachable at `external` through the gateway.
    Mapped {
        /// The mapped external address (the UPnP candidate).
        external: SocketAddr,
        /// When the lease ends unless renewed (`None`: permanent mapping).
        lease_until: Option<Instant>,
    },
    /// No mapping: no gateway, the gateway refused, or the mapper was stopped.
    Unavailable {
        /// Why, for logs and diagnostics (`"stopped"` after shutdown).
        reason: String,
    },
}

impl UpnpState {
    /// The external address if mapped.
    pub fn mapped(&self) -> Option<SocketAddr> {
        match self {
            UpnpState::Mapped { external, .. } => Some(*external),
            _ => None,
        }
    }

    /// A short name: `searching`, `mapped` or `unavailable`.
    pub fn name(&self) -> &'static str {
        match self {
            UpnpState::Searching => "searching",
            UpnpState::Mapped { .. } => "mapped",
            UpnpState::Unavailable { .. } => "unavailable",
        }
    }
}

/// Settings of a [`PortMapper`]; [`UpnpConfig::default`] suits games.
#[derive(Debug, Clone)]
pub struct UpnpConfig {
    /// How long one SSDP search waits for a gateway (default 2 s).
    pub search_timeout: Duration,
    /// Deadline of each SOAP request to the gateway (default 3 s).
    pub request_timeout: Duration,
    /// Lease asked for; zero asks for a permanent mapping (default 600 s).
    pub lease: Duration,
    /// Searches per round before the state becomes unavailable (default 3).
    pub search_attempts: u32,
    /// Failed map requests before the state becomes unavailable (default 3).
    pub map_attempts: u32,
    /// First retry delay, doubled per failure (default 1 s).
    pub retry_base: Duration,
    /// Longest retry delay (default 30 s).
    pub retry_max: Duration,
    /// A new round this long after giving up (default 300 s; `None`: never).
    pub rediscover_after: Option<Duration>,
    /// Mapping description shown by the gateway (default `"mesh"`).
    pub description: String,
    /// How long [`PortMapper::shutdown`] waits for the mapping's removal (default 8 s:
    /// a map request in flight and the removal, each within `request_timeout`).
    pub shutdown_timeout: Duration,
    /// Where the SSDP `M-SEARCH` goes (default the SSDP multicast group
    /// 239.255.255.250:1900; tests point it at a loopback address).
    pub ssdp_addr: SocketAddr,
}

impl Default for UpnpConfig {
    fn default() -> Self {
        UpnpConfig {
            search_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            lease: Duration::from_secs(600),
            search_attempts: 3,
            map_attempts: 3,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            rediscover_after: Some(Duration::from_secs(300)),
            description: "mesh".into(),
            shutdown_timeout: Duration::from_secs(8),
            ssdp_addr: SocketAddr::from(([239, 255, 255, 250], 1900)),
        }
    }
}

/// Errors of the port mapper's handle (the protocol's failures are [`UpnpState`]s).
#[derive(Debug, thiserror::Error)]
pub enum UpnpError {
    /// [`PortMapper::start`] was called outside a tokio runtime.
    #[error("UPnP port mapper needs a tokio runtime")]
    NoRuntime,
    /// The background task did not finish within the shutdown timeout.
    #[error("UPnP port mapper did not stop within {0:?} (mapping may stay until its lease ends)")]
    ShutdownTimeout(Duration),
    /// The background task panicked or was cancelled.
    #[error("UPnP port mapper task failed: {0}")]
    Task(String),
}
