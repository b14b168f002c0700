//! The simulated internet of `connect_sim`: NATs (RFC 4787 mapping and filtering), one-way
//! latency with seeded per-datagram jitter and loss, and one event queue in simulated time.
//!
//! - UDP between peers is routed at send time through the sender's NAT (the mapping is
//!   created and the destination remembered for filtering) and filtered by the receiver's
//!   NAT *at arrival time*, so a datagram that arrives before the inside opened the NAT
//!   toward its source is dropped, as in reality. Private (10/8) destinations are not routed.
//! - The control connections (QUIC to the punch server in reality) are reliable, ordered
//!   byte pipes with the same latency and jitter: a frame never overtakes the previous one.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

/// Inbound filtering of a NAT (RFC 4787 section 5); mapping is always endpoint-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to a mapping ("full cone").
    EndpointIndependent,
    /// Only IPs the inside sent to ("restricted cone").
    AddressDependent,
    /// Only (IP, port)s the inside sent to ("port-restricted cone").
    AddressAndPortDependent,
}

/// A NAT behaviour with its printed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatKind {
    /// Name for the report.
    pub name: &'static str,
    /// Inbound filtering.
    pub filtering: Filtering,
}

/// Endpoint-independent mapping and filtering.
pub const FULL_CONE: NatKind = NatKind {
    name: "eim/full-cone",
    filtering: Filtering::EndpointIndependent,
};
/// Endpoint-independent mapping, address-dependent filtering.
pub const RESTRICTED: NatKind = NatKind {
    name: "eim/restricted",
    filtering: Filtering::AddressDependent,
};
/// Endpoint-independent mapping, address-and-port-dependent filtering (the common case).
pub const PORT_RESTRICTED: NatKind = NatKind {
    name: "eim/port-restricted",
    filtering: Filtering::AddressAndPortDependent,
};

/// One NAT in front of one peer socket.
#[derive(Debug)]
pub struct Nat {
    kind: NatKind,
    public_ip: IpAddr,
    inside: SocketAddr,
    /// The public port of the socket's mapping (endpoint-independent: one for all remotes).
    port: Option<u16>,
    /// Remotes the inside sent to through the mapping.
    sent_to: HashSet<SocketAddr>,
}

impl Nat {
    /// A NAT with public address `public_ip` in front of the socket `inside`.
    pub fn new(kind: NatKind, public_ip: Ipv4Addr, inside: SocketAddr) -> Self {
        Self {
            kind,
            public_ip: IpAddr::V4(public_ip),
            inside,
            port: None,
            sent_to: HashSet::new(),
        }
    }

    /// A datagram from the inside to `to` leaves: its public source address.
    pub fn outbound(&mut self, to: SocketAddr, rng: &mut StdRng) -> SocketAddr {
        let port = *self
            .port
            .get_or_insert_with(|| rng.gen_range(20_000..60_000));
        self.sent_to.insert(to);
        SocketAddr::new(self.public_ip, port)
    }

    /// A datagram from `from` to the public `to` arrives: the inside address if it passes.
    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        if to.ip() != self.public_ip || Some(to.port()) != self.port {
            return None;
        }
        let allowed = match self.kind.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self.sent_to.iter().any(|r| r.ip() == from.ip()),
            Filtering::AddressAndPortDependent => self.sent_to.contains(&from),
        };
        allowed.then_some(self.inside)
    }
}

/// What travels.
#[derive(Debug)]
pub enum Payload {
    /// Control-stream bytes from peer `peer` to the punch server.
    ToServer { peer: usize, bytes: Vec<u8> },
    /// Control-stream bytes from the punch server to peer `peer`.
    ToPeer { peer: usize, bytes: Vec<u8> },
    /// A UDP datagram on the internet (public addresses).
    Udp {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    payload: Payload,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the earliest entry is the greatest, for the max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Datagram counters of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    /// Datagrams sent by peers.
    pub sent: u64,
    /// Dropped by a NAT's inbound filter.
    pub filtered: u64,
    /// Sent to a private address of another network.
    pub unroutable: u64,
    /// Lost at random.
    pub lost: u64,
}

/// The network: NATs, latency, and the queue of everything in flight.
#[derive(Debug)]
pub struct Net {
    one_way: Duration,
    jitter: Duration,
    loss: f64,
    /// One NAT per peer, by peer index.
    pub nats: Vec<Nat>,
    queue: BinaryHeap<Entry>,
    seq: u64,
    /// Last arrival on each control pipe: (peer, to the server?) -> instant.
    last_ctrl: Vec<[Option<Instant>; 2]>,
    /// Counters.
    pub stats: NetStats,
}

impl Net {
    /// A network with the given one-way latency, jitter bound and loss (UDP only).
    pub fn new(one_way: Duration, jitter: Duration, loss: f64, nats: Vec<Nat>) -> Self {
        let peers = nats.len();
        Self {
            one_way,
            jitter,
            loss,
            nats,
            queue: BinaryHeap::new(),
            seq: 0,
            last_ctrl: vec![[None; 2]; peers],
            stats: NetStats::default(),
        }
    }

    /// One path delay: the one-way latency plus uniform jitter in `[0, jitter]`.
    pub fn delay(&self, rng: &mut StdRng) -> Duration {
        let j = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        self.one_way + Duration::from_micros(rng.gen_range(0..=j))
    }

    fn push(&mut self, at: Instant, payload: Payload) {
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            payload,
        });
    }

    /// Control bytes on peer `peer`'s pipe, `up` toward the server; in order.
    pub fn send_ctrl(
        &mut self,
        now: Instant,
        peer: usize,
        up: bool,
        bytes: Vec<u8>,
        rng: &mut StdRng,
    ) {
        let at = now + self.delay(rng);
        // In order: a frame never arrives before the previous one on the same pipe.
        let slot = &mut self.last_ctrl[peer][usize::from(up)];
        let at = slot.map_or(at, |last| at.max(last));
        *slot = Some(at);
        let payload = if up {
            Payload::ToServer { peer, bytes }
        } else {
            Payload::ToPeer { peer, bytes }
        };
        self.push(at, payload);
    }

    /// A datagram from peer `peer`'s socket to `to`.
    pub fn send_udp(
        &mut self,
        now: Instant,
        peer: usize,
        to: SocketAddr,
        bytes: Vec<u8>,
        rng: &mut StdRng,
    ) {
        self.stats.sent += 1;
        let private = matches!(to.ip(), IpAddr::V4(v4) if v4.is_private());
        if private {
            // Another network's private address: the internet does not route it.
            self.stats.unroutable += 1;
            return;
        }
        let from = self.nats[peer].outbound(to, rng);
        if self.loss > 0.0 && rng.gen_bool(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let at = now + self.delay(rng);
        self.push(at, Payload::Udp { from, to, bytes });
    }

    /// When the next thing arrives.
    pub fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|e| e.at)
    }

    /// The next arrival due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Payload> {
        if self.queue.peek().is_some_and(|e| e.at <= now) {
            self.queue.pop().map(|e| e.payload)
        } else {
            None
        }
    }

    /// Where an arriving datagram goes: the peer index and its socket, if a NAT lets it in.
    pub fn route_inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<usize> {
        let hit = self.nats.iter().position(|n| n.inbound(from, to).is_some());
        if hit.is_none() {
            self.stats.filtered += 1;
        }
        hit
    }
}
