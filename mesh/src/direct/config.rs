//! Settings of a [`super::DirectNode`], with documented defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::coord::PunchAddr;
use crate::punch::birthday::BirthdayConfig;
use crate::punch::ProbeConfig;
use crate::route::ForwardConfig;
use crate::socket::EndpointOptions;
use crate::turn::allocation::AllocationConfig;
use crate::upnp::UpnpConfig;

/// What a node does with an incoming connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncomingPolicy {
    /// Accept every request (the target still verifies the dialer's key in the QUIC
    /// handshake). Default.
    #[default]
    AcceptAll,
    /// Accept the peers on the node's [`super::Allowlist`] (or everyone while it is open);
    /// hold others briefly, then refuse them. Session members use this.
    Allowlist,
    /// Refuse every request (a node that only dials).
    RefuseAll,
}

/// Settings of a [`super::DirectNode`].
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// The punch server: `ID@HOST:PORT`, or a bare `HOST:PORT` when `insecure` is set.
    pub punch: PunchAddr,
    /// Accept a punch server named without its id (any key). Development only.
    pub insecure: bool,
    /// Local address of the one UDP socket. Default `[::]:0`: one dual-stack socket that
    /// reaches IPv4 and IPv6 peers (IPv4 only on a host without IPv6; see
    /// [`crate::socket::bind_udp`]).
    pub bind: SocketAddr,
    /// UPnP port mapping of the socket (`None`: off). Default on, with
    /// [`UpnpConfig::default`]. It runs in the background and never delays a connect; the
    /// mapped address is registered as a candidate as soon as it exists.
    pub upnp: Option<UpnpConfig>,
    /// Probing tunables. [`ProbeConfig::budget`] bounds each attempt: 4 s by default, or
    /// 20 path RTTs if that is longer (the path RTT is the larger of the node's RTT to the
    /// punch server and twice the server's lead time to the common start, which reflects
    /// the peer's RTT), at most 4 times the configured budget. A busy machine with a
    /// 250 ms server RTT thus probes for 5 s instead of 4 s.
    pub probe: ProbeConfig,
    /// The endpoint's tunables (path table, STUN queue, QUIC transport, handshake timeout).
    pub endpoint: EndpointOptions,
    /// What to do with incoming connect requests. Default [`IncomingPolicy::AcceptAll`].
    pub incoming: IncomingPolicy,
    /// Longest time [`super::DirectNode::start`] waits for the punch server to answer at
    /// all: resolving its name and completing a first QUIC handshake with it (across the
    /// registration attempts). Default 10 s; a server that does not answer by then fails
    /// the start with [`super::StartError::Unreachable`] (kind `unreachable`), a name not
    /// resolved by then with [`super::StartError::Resolve`]. It bounds
    /// only the first start: a node that registered once keeps dialing a lost server in
    /// the background (see `reconnect_min`).
    pub connect_timeout: Duration,
    /// Longest wait for `Registered` once the punch server's handshake is done (the
    /// handshake itself is bounded by the endpoint's handshake timeout). Default 5 s; a
    /// timed-out registration is retried twice on a fresh connection, so that heavy loss
    /// (20 % each way) only delays the start.
    pub register_timeout: Duration,
    /// Longest wait between `connect` and the server's `Go` (the target must answer in
    /// this time; the server's own request timeout is usually shorter). Default 10 s.
    pub request_timeout: Duration,
    /// Most punch attempts running at once (dialing and accepting). Default 32.
    pub max_attempts: usize,
    /// How long a prober keeps answering the peer's checks after its outcome, so the peer
    /// can finish its own validation. Default 5 s.
    pub linger: Duration,
    /// Bound of the queue of accepted connections not yet taken by `accept`. Default 64.
    pub accept_queue: usize,
    /// First wait before dialing the punch server again after the control connection was
    /// lost; it doubles after each failed attempt (±25 % jitter). Default 500 ms.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts. Default 30 s.
    pub reconnect_max: Duration,
    /// Let the punch server park the control connection while it is idle (announced with
    /// `Capabilities { park: true }`): the node then keeps its registration with small
    /// authenticated keep-alives from its socket and dials the server again when woken by
    /// a connect request or when it connects itself. Default on.
    pub park: bool,
    /// Allocate on every TURN relay the punch server offers and keep the allocations
    /// alive ([`super::DirectNode::relayed`]; `None` = never allocate). Default: RFC
    /// 8656's 600 s lifetime, refreshed at half of it.
    pub relays: Option<AllocationConfig>,
    /// Relay-only: this node's own address is never offered or revealed to peers (no host,
    /// reflexive or UPnP candidate; the punch server is asked to hide the address it
    /// sees; no probing), so every connection runs through a TURN relay and peers see
    /// only the relay's address, as EOS's ForceRelays and Steam's relay network offer
    /// players who hide their IP. Implies relays on (the default allocation config when
    /// [`DirectConfig::relays`] is `None`) and UPnP off. Default off.
    pub relay_only: bool,
    /// Port prediction (`mesh::direct::predicted`): observe how the NAT allocates ports
    /// for two fresh flows (against the punch server's RFC 5780 alternate address) at
    /// start and a few seconds after each introduction, and offer a window of predicted
    /// reflexive candidates when the allocation is sequential or has a fixed step.
    /// Nothing is offered for an endpoint-independent or random NAT, or when the server
    /// has no alternate address. Default on (off under `relay_only`).
    pub predict: bool,
    /// Birthday probing ([`crate::punch::birthday`]) with these settings: between a node
    /// behind a random-port NAT and one behind an endpoint-independent mapping, the first
    /// opens `hard_sockets` extra sockets (256) and the second sends up to `max_probes`
    /// (1024) paced checks to random ports, while the connection rides its relay; the
    /// pair that validates carries the connection. Needs the same observation of the
    /// NAT's mappings as port prediction (run even when `predict` is off), and a punch
    /// server that passes mappings on. `None` turns it off. Default on (off under
    /// `relay_only`).
    pub birthday: Option<BirthdayConfig>,
    /// What this node forwards for other members of its session as a router
    /// ([`crate::route`]): per-route budgets and the number of routes. Default
    /// [`ForwardConfig::default`] (2 MB/s and 4000 datagrams/s per route, 64 routes).
    pub router: ForwardConfig,
}

impl DirectConfig {
    /// The defaults for the punch server `punch`.
    pub fn new(punch: PunchAddr) -> Self {
        Self {
            punch,
            insecure: false,
            bind: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            upnp: Some(UpnpConfig::default()),
            probe: ProbeConfig::default(),
            endpoint: EndpointOptions::default(),
            incoming: IncomingPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            register_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_attempts: 32,
            linger: Duration::from_secs(5),
            accept_queue: 64,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            park: true,
            relays: Some(AllocationConfig::default()),
            relay_only: false,
            predict: true,
            birthday: Some(BirthdayConfig::default()),
            router: ForwardConfig::default(),
        }
    }
}
