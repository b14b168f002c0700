//! The plain data of probing: candidates, credentials, role, configuration, outputs.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a candidate address comes from (RFC 8445 section 5.1.1), which sets its type
/// preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// A local interface address of the socket.
    Host,
    /// The socket's address as a STUN server (the punch server) sees it.
    ServerReflexive,
    /// A port mapping on the router, made with UPnP IGD.
    Upnp,
    /// Learned from a check that arrived from an address nobody announced.
    PeerReflexive,
}

impl CandidateKind {
    /// RFC 8445 section 5.1.2.2 recommended type preferences; a UPnP mapping is an explicit
    /// forward, so it ranks between peer-reflexive and server-reflexive.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::Upnp => 105,
            CandidateKind::ServerReflexive => 100,
        }
    }
}

/// A transport address a peer may be reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// Where it comes from.
    pub kind: CandidateKind,
    /// RFC 8445 section 5.1.2.1 priority.
    pub priority: u32,
}

impl Candidate {
    /// A candidate with the RFC 8445 priority for `kind` and the local preference of its
    /// address family ([`Candidate::family_preference`]; one socket, one component).
    pub fn new(addr: SocketAddr, kind: CandidateKind) -> Self {
        Self::with_local_preference(addr, kind, Self::family_preference(addr))
    }

    /// Local preference by address (RFC 8421 section 4): a global IPv6 address ranks above
    /// IPv4, which needs NAT traversal far more often; other IPv6 addresses (loopback,
    /// link-local, unique local) rank with IPv4. Within one candidate type only: the type
    /// preference still decides first.
    pub fn family_preference(addr: SocketAddr) -> u16 {
        match addr.ip().to_canonical() {
            std::net::IpAddr::V6(v6) if is_global_v6(&v6) => u16::MAX,
            _ => u16::MAX - 1,
        }
    }

    /// A candidate with an explicit local preference (e.g. to rank several interfaces).
    pub fn with_local_preference(addr: SocketAddr, kind: CandidateKind, local: u16) -> Self {
        Candidate {
            addr,
            kind,
            priority: Self::priority_of(kind, local),
        }
    }

    /// RFC 8445 section 5.1.2.1: `2^24 * type pref + 2^8 * local pref + (256 - component)`,
    /// with component 1.
    pub fn priority_of(kind: CandidateKind, local_preference: u16) -> u32 {
        (kind.type_preference() << 24) + (u32::from(local_preference) << 8) + (256 - 1)
    }
}

/// Global unicast (2000::/3, RFC 4291 section 2.4), the range ISPs hand out.
fn is_global_v6(ip: &std::net::Ipv6Addr) -> bool {
    ip.segments()[0] & 0xe000 == 0x2000
}

/// RFC 8445 section 6.1.2.3 pair priority from the controlling side's candidate priority
/// `g` and the controlled side's `d`.
pub(crate) fn pair_priority(g: u32, d: u32) -> u64 {
    let (g, d) = (u64::from(g), u64::from(d));
    (1u64 << 32) * g.min(d) + 2 * g.max(d) + u64::from(g > d)
}

/// Per-attempt short-term credentials (RFC 8445 section 5.3, RFC 8489 section 9.1), handed
/// out by the punch coordinator.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Our username fragment.
    pub local_ufrag: String,
    /// Our password: the key the peer uses for checks to us and we use for our answers.
    pub local_pwd: String,
    /// The peer's username fragment.
    pub remote_ufrag: String,
    /// The peer's password: the key for our checks and for verifying its answers.
    pub remote_pwd: String,
}

impl Credentials {
    /// The same credentials as seen from the other side.
    pub fn swapped(&self) -> Self {
        Self {
            local_ufrag: self.remote_ufrag.clone(),
            local_pwd: self.remote_pwd.clone(),
            remote_ufrag: self.local_ufrag.clone(),
            remote_pwd: self.local_pwd.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never log the passwords.
        f.debug_struct("Credentials")
            .field("local_ufrag", &self.local_ufrag)
            .field("remote_ufrag", &self.remote_ufrag)
            .finish_non_exhaustive()
    }
}

/// Who nominates (RFC 8445 section 6.1.1, with roles fixed by the coordinator instead of
/// negotiated): the dialer is controlling, the listener controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The dialer: nominates the first validated pair.
    Controlling,
    /// The listener: follows the dialer's nomination.
    Controlled,
}

/// Tunables of one probing attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Minimum gap between two checks (new or retransmitted) to any pair (RFC 8445 "Ta").
    /// Default 5 ms: a handful of pairs all get a first check within a few ms of the start,
    /// so both sides' first probes cross.
    pub pacing: Duration,
    /// Delay before a pair's first retransmission. Default 50 ms.
    pub retransmit_initial: Duration,
    /// The retransmission delay doubles up to this. Default 200 ms: about 20 checks per
    /// pair within the 4 s budget, so a pair whose check and answer both cross a lossy path
    /// (two 20 % loss links each way: 41 % per try) validates with odds of 1 - 0.59^20
    /// rather than 1 - 0.59^12 (about 1 failure in 400 dials, which CI hit).
    pub retransmit_max: Duration,
    /// Time after `start_at` without a nomination before giving up with
    /// [`NoDirectPath`]. Default 4 s. The [`Prober`](super::Prober) uses it as given; a
    /// [`DirectNode`](crate::direct::DirectNode) treats it as a floor and raises it per
    /// attempt to 20 times the path's RTT (the larger of its RTT to the punch server and
    /// twice the server's lead time to the common start, which reflects the peer's RTT),
    /// at most 4 times this value, so that a slow or busy machine gets as many
    /// retransmission rounds as a fast one.
    pub budget: Duration,
    /// Most announced remote candidates (pairs) checked; the highest-priority ones are kept.
    /// Default 16.
    pub max_pairs: usize,
    /// Most peer-reflexive candidates learned, on top of `max_pairs`. Default 4.
    pub max_peer_reflexive: usize,
    /// Most queued outgoing datagrams; beyond this, answers are dropped and counted.
    /// Default 64.
    pub max_queued: usize,
    /// Seed for transaction ids and the tie-breaker (tests); `None` draws from the OS.
    pub seed: Option<u64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            pacing: Duration::from_millis(5),
            retransmit_initial: Duration::from_millis(50),
            retransmit_max: Duration::from_millis(200),
            budget: Duration::from_secs(4),
            max_pairs: 16,
            max_peer_reflexive: 4,
            max_queued: 64,
            seed: None,
        }
    }
}

/// One datagram to send from the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The STUN message.
    pub contents: Vec<u8>,
}

/// What the prober reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// A pair is nominated: run QUIC to `remote`.
    Nominated {
        /// The peer's address on the nominated pair.
        remote: SocketAddr,
        /// Round-trip time of the check that validated it.
        rtt: Duration,
    },
    /// No pair worked within the budget.
    Failed(NoDirectPath),
}

/// How one pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    /// A check succeeded (round-trip time of the first success).
    Validated {
        /// Round-trip time.
        rtt: Duration,
    },
    /// Checks were sent but none was answered.
    NoResponse {
        /// Number of checks sent.
        checks: u32,
    },
    /// No check was sent before the attempt ended.
    NotTried,
}

/// No direct path exists (or none was found within the budget): what was tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no direct path after {elapsed:?}: {} pair(s) tried", .tried.len())]
pub struct NoDirectPath {
    /// Every remote address checked, with its outcome, in check-list order.
    pub tried: Vec<(SocketAddr, PairOutcome)>,
    /// Time from `start_at` to giving up.
    pub elapsed: Duration,
}

/// Counters of one attempt, as plain data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Checks sent (first transmissions, retransmissions and triggered checks).
    pub checks_sent: u64,
    /// Authenticated requests answered.
    pub requests_answered: u64,
    /// Authenticated responses that validated or confirmed a pair.
    pub responses_accepted: u64,
    /// Peer-reflexive candidates learned.
    pub peer_reflexive_learned: u64,
    /// Datagrams that were not STUN Binding messages for this attempt (not consumed).
    pub foreign: u64,
    /// STUN-looking datagrams with bad lengths, attributes or FINGERPRINT.
    pub malformed: u64,
    /// Requests or responses whose MESSAGE-INTEGRITY or USERNAME did not check out.
    pub unauthenticated: u64,
    /// Responses from an address other than the one the request went to.
    pub asymmetric: u64,
    /// Requests whose role attribute claimed our own role (coordinator bug or attack).
    pub role_conflicts: u64,
    /// Datagrams dropped because a bound (queue, learned candidates) was reached.
    pub dropped_bounded: u64,
}
