//! A deterministic network for probing tests: two peers, each on the open internet or behind
//! a modelled NAT (RFC 4787 mapping and filtering, no hairpinning), or both behind one NAT;
//! one-way delay plus random jitter (so datagrams reorder), random loss, a simulated clock.
//!
//! Per step of [`run`]:
//! 1. Both probers' transmits are routed at send time: inside one LAN straight to the
//!    neighbour; otherwise through the sender's NAT (a mapping is allocated per the mapping
//!    behaviour and the destination is remembered for filtering), or dropped (a private
//!    address of another LAN, or the sender's own NAT's public address: no hairpin).
//! 2. The earliest of (next arrival, probers' timers) happens. An arrival from the internet
//!    passes the destination NAT's inbound filter *at arrival time* (so a probe that
//!    arrives before the peer's own probe opened the NAT is dropped, as in reality).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// The five NAT kinds of the lab matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NatType {
    /// Public address, no filtering.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

pub(super) const ALL_NATS: [NatType; 5] = [
    NatType::None,
    NatType::FullCone,
    NatType::Restricted,
    NatType::PortRestricted,
    NatType::Symmetric,
];

/// Whether a direct path exists between peers behind `a` and `b` (different NATs).
pub(super) fn punchable(a: NatType, b: NatType) -> bool {
    use NatType::*;
    !matches!(
        (a, b),
        (Symmetric, PortRestricted) | (PortRestricted, Symmetric) | (Symmetric, Symmetric)
    )
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

const STUN_SERVER: ([u8; 4], u16) = ([198, 18, 9, 9], 3478);

struct Nat {
    typ: NatType,
    public_ip: IpAddr,
    lan: [u8; 2],
    /// (internal, remote for address-and-port-dependent mapping) -> public port
    ports: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port -> (internal address, remotes sent to)
    sessions: HashMap<u16, (SocketAddr, HashSet<SocketAddr>)>,
}

impl Nat {
    fn outbound(&mut self, from: SocketAddr, to: SocketAddr, rng: &mut StdRng) -> SocketAddr {
        let key = match self.typ {
            NatType::Symmetric => (from, Some(to)),
            _ => (from, None),
        };
        let taken: HashSet<u16> = self.ports.values().copied().collect();
        let port = *self.ports.entry(key).or_insert_with(|| loop {
            let p = rng.gen_range(20_000..60_000);
            if !taken.contains(&p) {
                break p;
            }
        });
        self.sessions
            .entry(port)
            .or_insert_with(|| (from, HashSet::new()))
            .1
            .insert(to);
        SocketAddr::new(self.public_ip, port)
    }

    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let (internal, remotes) = self.sessions.get(&to.port())?;
        let allowed = match self.typ {
            NatType::None | NatType::FullCone => true,
            NatType::Restricted => remotes.iter().any(|r| r.ip() == from.ip()),
            NatType::PortRestricted | NatType::Symmetric => remotes.contains(&from),
        };
        allowed.then_some(*internal)
    }

    fn in_lan(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v) if v.octets()[0] == 10 && v.octets()[1..3] == self.lan)
    }
}

/// One simulated run.
#[derive(Debug, Clone)]
pub(super) struct Scenario {
    pub a: NatType,
    pub b: NatType,
    /// Both peers behind one NAT of type `a` (no hairpinning).
    pub same_nat: bool,
    pub one_way: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub seed: u64,
    /// B knows neither password (an impostor).
    pub wrong_password: bool,
    pub config: ProbeConfig,
}

impl Scenario {
    pub fn new(a: NatType, b: NatType, seed: u64) -> Self {
        Scenario {
            a,
            b,
            same_nat: false,
            one_way: Duration::from_millis(25),
            jitter: Duration::from_millis(4),
            loss: 0.0,
            seed,
            wrong_password: false,
            config: ProbeConfig::default(),
        }
    }
}

/// What one side ended with.
#[derive(Debug, Clone)]
pub(super) struct Side {
    pub event: Option<ProbeEvent>,
    /// Time from the common start to the event.
    pub at: Duration,
    pub counters: ProbeCounters,
    /// The peer's socket address on its LAN (its host candidate).
    pub local: SocketAddr,
}

impl Side {
    pub fn nominated(&self) -> Option<SocketAddr> {
        match self.event {
            Some(ProbeEvent::Nominated { remote, .. }) => Some(remote),
            _ => None,
        }
    }
}

struct Peer {
    local: SocketAddr,
    nat: Option<usize>,
    prober: Prober,
    event: Option<(ProbeEvent, Instant)>,
}

enum Hop {
    Lan(usize),
    Internet,
}

struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    hop: Hop,
}

fn creds(me: &str, peer: &str) -> Credentials {
    Credentials {
        local_ufrag: format!("u{me}"),
        local_pwd: format!("password-of-{me}-0123456789"),
        remote_ufrag: format!("u{peer}"),
        remote_pwd: format!("password-of-{peer}-0123456789"),
    }
}

/// Runs probing between A (controlling) and B (controlled) until both report an outcome.
pub(super) fn run(s: &Scenario) -> (Side, Side) {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let base = Instant::now();
    let start_at = base + Duration::from_millis(10);
    let stun = v4(STUN_SERVER.0, STUN_SERVER.1);
    let mut nats: Vec<Nat> = Vec::new();
    let site = |typ: NatType, lan: [u8; 2], public: [u8; 4], nats: &mut Vec<Nat>| {
        if typ == NatType::None {
            return None;
        }
        nats.push(Nat {
            typ,
            public_ip: IpAddr::V4(Ipv4Addr::from(public)),
            lan,
            ports: HashMap::new(),
            sessions: HashMap::new(),
        });
        Some(nats.len() - 1)
    };
    let nat_a = site(s.a, [1, 0], [198, 18, 0, 1], &mut nats);
    let (nat_b, local_b) = if s.same_nat {
        (nat_a, v4([10, 1, 0, 3], 5000))
    } else {
        let n = site(s.b, [2, 0], [198, 18, 0, 2], &mut nats);
        (
            n,
            if n.is_some() {
                v4([10, 2, 0, 2], 5000)
            } else {
                v4([198, 18, 1, 2], 5000)
            },
        )
    };
    let local_a = if nat_a.is_some() {
        v4([10, 1, 0, 2], 5000)
    } else {
        v4([198, 18, 1, 1], 5000)
    };

    // Gathering: host candidate, plus the mapping the STUN server saw.
    let mut gather = |local: SocketAddr, nat: Option<usize>, nats: &mut Vec<Nat>| {
        let mut c = vec![Candidate::new(local, CandidateKind::Host)];
        if let Some(n) = nat {
            let mapped = nats[n].outbound(local, stun, &mut rng);
            c.push(Candidate::new(mapped, CandidateKind::ServerReflexive));
        }
        c
    };
    let cands_a = gather(local_a, nat_a, &mut nats);
    let cands_b = gather(local_b, nat_b, &mut nats);

    let mut creds_b = creds("b", "a");
    if s.wrong_password {
        creds_b.local_pwd = "guessed-1".into();
        creds_b.remote_pwd = "guessed-2".into();
    }
    let config = |k: u64| ProbeConfig {
        seed: Some(s.seed.wrapping_mul(2).wrapping_add(k)),
        ..s.config.clone()
    };
    let skew = Duration::from_micros(rng.gen_range(0..3000));
    let mut peers = [
        Peer {
            local: local_a,
            nat: nat_a,
            prober: Prober::new(
                base,
                config(1),
                Role::Controlling,
                creds("a", "b"),
                &cands_a,
                &cands_b,
                start_at,
            ),
            event: None,
        },
        Peer {
            local: local_b,
            nat: nat_b,
            prober: Prober::new(
                base,
                config(2),
                Role::Controlled,
                creds_b,
                &cands_b,
                &cands_a,
                start_at + skew,
            ),
            event: None,
        },
    ];

    let mut queue: BTreeMap<(Instant, u64), Datagram> = BTreeMap::new();
    let mut seq = 0u64;
    let mut now = base;
    let give_up = start_at + s.config.budget * 3;
    for _ in 0..1_000_000 {
        for i in 0..2 {
            while let Some(t) = peers[i].prober.poll_transmit() {
                let (from, hop) = if let Some(n) = peers[i].nat {
                    if nats[n].in_lan(t.destination.ip()) {
                        let to = peers.iter().position(|p| p.local == t.destination);
                        match to {
                            Some(j) => (peers[i].local, Hop::Lan(j)),
                            None => continue,
                        }
                    } else if t.destination.ip() == nats[n].public_ip {
                        continue; // no hairpinning
                    } else {
                        (
                            nats[n].outbound(peers[i].local, t.destination, &mut rng),
                            Hop::Internet,
                        )
                    }
                } else {
                    (peers[i].local, Hop::Internet)
                };
                if rng.gen_bool(s.loss) {
                    continue;
                }
                let jitter = rng.gen_range(0..=s.jitter.as_micros() as u64);
                seq += 1;
                let at = now + s.one_way + Duration::from_micros(jitter);
                queue.insert(
                    (at, seq),
                    Datagram {
                        from,
                        to: t.destination,
                        bytes: t.contents,
                        hop,
                    },
                );
            }
            while let Some(ev) = peers[i].prober.poll_event() {
                if peers[i].event.is_none() {
                    peers[i].event = Some((ev, now));
                }
            }
        }
        if peers.iter().all(|p| p.event.is_some()) || now > give_up {
            break;
        }
        let timer = peers.iter().filter_map(|p| p.prober.poll_timeout()).min();
        let arrival = queue.keys().next().copied();
        match (arrival, timer) {
            (Some(key), t) if t.is_none_or(|t| key.0 <= t) => {
                now = now.max(key.0);
                let Some(d) = queue.remove(&key) else {
                    continue;
                };
                let target = match d.hop {
                    Hop::Lan(j) => Some((j, d.from)),
                    Hop::Internet => {
                        // Private addresses are not routed on the internet: only a NAT's
                        // public address or a peer without NAT is reachable.
                        let j = match nats.iter().position(|n| n.public_ip == d.to.ip()) {
                            Some(n) => nats[n]
                                .inbound(d.from, d.to)
                                .and_then(|a| peers.iter().position(|p| p.local == a)),
                            None => peers
                                .iter()
                                .position(|p| p.nat.is_none() && p.local == d.to),
                        };
                        j.map(|j| (j, d.from))
                    }
                };
                if let Some((j, from)) = target {
                    peers[j].prober.handle_input(now, from, &d.bytes);
                }
            }
            (_, Some(t)) => {
                now = now.max(t);
                for p in peers.iter_mut() {
                    if p.prober.poll_timeout().is_some_and(|t| t <= now) {
                        p.prober.handle_timeout(now);
                    }
                }
            }
            _ => break,
        }
    }
    let side = |p: &Peer| Side {
        event: p.event.as_ref().map(|e| e.0.clone()),
        at: p
            .event
            .as_ref()
            .map_or(Duration::MAX, |e| e.1.saturating_duration_since(start_at)),
        counters: p.prober.counters(),
        local: p.local,
    };
    (side(&peers[0]), side(&peers[1]))
}
