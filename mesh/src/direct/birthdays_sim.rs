//! The simulation the birthday rounds' tests run in: two nodes' [`Birthdays`] through NAT
//! models (a random-port symmetric NAT on the hard side, a port-restricted one on the easy
//! side) with a fixed one-way delay and a 1 ms tick, driven the way the punch engine
//! drives them; the `Go`s, settings and ids the tests share.

use super::super::*;
use crate::coord::{Candidate, CandidateKind, Credentials, Go, NatMapping, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub(super) const TICK: Duration = Duration::from_millis(1);
/// One-way delay of every datagram.
pub(super) const ONE_WAY: Duration = Duration::from_millis(20);
/// Extra sockets of the hard side (`LocalSocket(1..=HARD_SOCKETS)`).
pub(super) const HARD_SOCKETS: u16 = 64;
/// Checks per hard socket (the prober's default).
pub(super) const HARD_ROUNDS: u32 = 3;
/// Most probes of the easy side.
pub(super) const MAX_PROBES: usize = 400;
/// The ports the hard NAT maps to and the easy side draws from.
pub(super) const FIRST_PORT: u16 = 20_000;
pub(super) const LAST_PORT: u16 = 20_999;
pub(super) const SEEDS: u64 = 50;
pub(super) const EASY_PUBLIC: &str = "198.18.0.20:40000";
pub(super) const HARD_IP: &str = "198.18.0.10";
/// Time from the first step to both rounds' common start.
pub(super) const START_IN: Duration = Duration::from_millis(10);

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub(super) fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

pub(super) fn easy_id() -> PeerId {
    peer(1)
}

pub(super) fn hard_id() -> PeerId {
    peer(2)
}

/// The `Go`'s credentials as the easy side gets them.
pub(super) fn credentials() -> Credentials {
    Credentials {
        local_ufrag: "easy".into(),
        local_pwd: "easypassword-0123456789".into(),
        remote_ufrag: "hard".into(),
        remote_pwd: "hardpassword-0123456789".into(),
    }
}

pub(super) fn go(
    peer: PeerId,
    peer_candidates: Vec<Candidate>,
    peer_mapping: Option<NatMapping>,
    credentials: Credentials,
) -> Go {
    Go {
        request_id: 7,
        peer,
        peer_candidates,
        credentials,
        start_in: START_IN,
        role: Role::Controlling,
        peer_mapping,
    }
}

/// The `Go` the hard node gets: the easy peer, its candidates and mapping.
pub(super) fn hard_go() -> Go {
    go(
        easy_id(),
        vec![
            Candidate::new(CandidateKind::Host, addr("10.0.0.2:5000")),
            Candidate::new(CandidateKind::ServerReflexive, addr(EASY_PUBLIC)),
        ],
        Some(NatMapping::EndpointIndependent),
        credentials().swapped(),
    )
}

/// The `Go` the easy node gets: the hard peer's reflexive address (the server's
/// observation of its primary socket: only the IP matters).
pub(super) fn easy_go() -> Go {
    go(
        hard_id(),
        vec![
            Candidate::new(CandidateKind::Host, addr("10.0.0.3:6000")),
            Candidate::new(
                CandidateKind::ServerReflexive,
                SocketAddr::new(ip(HARD_IP), 31_000),
            ),
        ],
        Some(NatMapping::Random),
        credentials(),
    )
}

pub(super) fn config(seed: u64) -> BirthdayConfig {
    BirthdayConfig {
        max_probes: MAX_PROBES,
        ports: FIRST_PORT..=LAST_PORT,
        seed: Some(seed),
        ..BirthdayConfig::default()
    }
}

pub(super) fn hard_ids() -> Vec<LocalSocket> {
    (1..=HARD_SOCKETS).map(LocalSocket).collect()
}

pub(super) fn is_request(data: &[u8]) -> bool {
    data.starts_with(&[0x00, 0x01])
}

pub(super) fn is_answer(data: &[u8]) -> bool {
    data.starts_with(&[0x01, 0x01])
}

/// The hard side's NAT: a fresh random public port per (local socket, destination);
/// inbound only from that destination.
#[derive(Default)]
pub(super) struct SymmetricNat {
    pub(super) by_flow: HashMap<(LocalSocket, SocketAddr), u16>,
    pub(super) by_port: HashMap<u16, (LocalSocket, SocketAddr)>,
}

impl SymmetricNat {
    pub(super) fn outbound(
        &mut self,
        rng: &mut StdRng,
        local: LocalSocket,
        dest: SocketAddr,
    ) -> SocketAddr {
        let port = match self.by_flow.get(&(local, dest)) {
            Some(p) => *p,
            None => loop {
                let p = rng.gen_range(FIRST_PORT..=LAST_PORT);
                if !self.by_port.contains_key(&p) {
                    self.by_flow.insert((local, dest), p);
                    self.by_port.insert(p, (local, dest));
                    break p;
                }
            },
        };
        SocketAddr::new(ip(HARD_IP), port)
    }

    /// The local socket a datagram from `from` to public `port` reaches, if the filter
    /// lets it in.
    pub(super) fn inbound(&self, from: SocketAddr, port: u16) -> Option<LocalSocket> {
        match self.by_port.get(&port) {
            Some((local, dest)) if *dest == from => Some(*local),
            _ => None,
        }
    }

    /// The public address of `local`'s mapping towards `dest`.
    pub(super) fn public_of(&self, local: LocalSocket, dest: SocketAddr) -> Option<SocketAddr> {
        let port = self.by_flow.get(&(local, dest))?;
        Some(SocketAddr::new(ip(HARD_IP), *port))
    }
}

/// The easy side's NAT: one public port; inbound only from addresses it sent to.
#[derive(Default)]
pub(super) struct PortRestrictedNat {
    pub(super) sent_to: HashSet<SocketAddr>,
}

/// A datagram in flight.
pub(super) struct Datagram {
    pub(super) at: Instant,
    pub(super) to_hard: bool,
    pub(super) dest: SocketAddr,
    pub(super) from: SocketAddr,
    pub(super) data: Vec<u8>,
}

/// A datagram a round took, and what [`Birthdays::offer`] said about it.
pub(super) struct Taken {
    pub(super) at: Instant,
    pub(super) from: SocketAddr,
    pub(super) local: LocalSocket,
    pub(super) data: Vec<u8>,
    pub(super) heard: Option<(PeerId, Found)>,
}

/// One node's rounds, driven as the engine drives them, and everything they did.
pub(super) struct Node {
    pub(super) rounds: Birthdays,
    pub(super) outputs: Vec<(Instant, BirthdayOutput)>,
    pub(super) sent: Vec<(Instant, BirthdayTransmit)>,
    pub(super) taken: Vec<Taken>,
}

impl Node {
    pub(super) fn new(config: BirthdayConfig) -> Self {
        Node {
            rounds: Birthdays::new(config),
            outputs: Vec::new(),
            sent: Vec::new(),
            taken: Vec::new(),
        }
    }

    pub(super) fn offer(
        &mut self,
        now: Instant,
        local: LocalSocket,
        from: SocketAddr,
        data: Vec<u8>,
    ) {
        if let Some(heard) = self.rounds.offer(now, local, from, &data) {
            self.rounds.after_input(now);
            self.taken.push(Taken {
                at: now,
                from,
                local,
                data,
                heard,
            });
        }
    }

    /// The engine's timer: the rounds' timers when due, then the kept pairs' use.
    pub(super) fn wake(&mut self, now: Instant, uses: Option<bool>) {
        if self.rounds.next_wake().is_some_and(|t| t <= now) {
            self.rounds.handle_timeout(now);
        }
        if let Some(uses) = uses {
            self.rounds.keep(now, |_, _| uses);
        }
    }

    pub(super) fn validated(&self) -> Option<(Instant, Found)> {
        self.outputs.iter().find_map(|(at, o)| match o {
            BirthdayOutput::Validated { found, .. } => Some((*at, *found)),
            _ => None,
        })
    }

    /// Requests (checks) and answers sent up to `until`.
    pub(super) fn sent_until(&self, until: Instant) -> (u64, u64) {
        let upto = || self.sent.iter().filter(move |(at, _)| *at <= until);
        let requests = upto().filter(|(_, t)| is_request(&t.contents)).count();
        let answers = upto().filter(|(_, t)| is_answer(&t.contents)).count();
        (requests as u64, answers as u64)
    }

    /// Outputs after `after`.
    pub(super) fn outputs_after(&self, after: Instant) -> Vec<(Instant, BirthdayOutput)> {
        self.outputs
            .iter()
            .filter(|(at, _)| *at > after)
            .cloned()
            .collect()
    }
}

/// A hard node and an easy node in one round, through their NATs.
pub(super) struct Sim {
    pub(super) seed: u64,
    pub(super) now: Instant,
    pub(super) start_at: Instant,
    pub(super) rng: StdRng,
    pub(super) hard: Node,
    pub(super) easy: Node,
    pub(super) hard_nat: SymmetricNat,
    pub(super) easy_nat: PortRestrictedNat,
    pub(super) wire: Vec<Datagram>,
    /// The hard node's sockets its rounds asked to close.
    pub(super) closed: HashSet<LocalSocket>,
    /// The network loses every datagram.
    pub(super) drop_all: bool,
    /// What `keep` is told about the pairs (`None`: it is not called).
    pub(super) uses: Option<bool>,
}

impl Sim {
    /// Both nodes admitted and started a round for their `Go`.
    pub(super) fn new(seed: u64, config: &BirthdayConfig) -> Self {
        let now = Instant::now();
        let start_at = now + START_IN;
        let seeded = |n: u64| BirthdayConfig {
            seed: Some(seed * 2 + n),
            ..config.clone()
        };
        let mut hard = Node::new(seeded(0));
        let mut easy = Node::new(seeded(1));
        let (hard_go, easy_go) = (hard_go(), easy_go());
        let hard_side = side_for(Some(NatMapping::Random), &hard_go).expect("the hard side");
        let easy_side =
            side_for(Some(NatMapping::EndpointIndependent), &easy_go).expect("the easy side");
        assert!(hard.rounds.admits(now, &easy_id()));
        assert!(easy.rounds.admits(now, &hard_id()));
        hard.rounds
            .start(now, easy_id(), hard_side, &hard_go, start_at, hard_ids());
        easy.rounds.start(
            now,
            hard_id(),
            easy_side,
            &easy_go,
            start_at,
            vec![LocalSocket::PRIMARY],
        );
        Sim {
            seed,
            now,
            start_at,
            rng: StdRng::seed_from_u64(seed),
            hard,
            easy,
            hard_nat: SymmetricNat::default(),
            easy_nat: PortRestrictedNat::default(),
            wire: Vec::new(),
            closed: HashSet::new(),
            drop_all: false,
            uses: None,
        }
    }

    /// One tick: deliveries, timers, sends, outputs (the engine's order).
    pub(super) fn step(&mut self) {
        self.now += TICK;
        let now = self.now;
        let seed = self.seed;
        let (due, later) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition::<Vec<_>, _>(|d| d.at <= now);
        self.wire = later;
        for d in due {
            if d.to_hard {
                let Some(local) = self.hard_nat.inbound(d.from, d.dest.port()) else {
                    continue;
                };
                if !self.closed.contains(&local) {
                    self.hard.offer(now, local, d.from, d.data);
                }
            } else if self.easy_nat.sent_to.contains(&d.from) {
                self.easy.offer(now, LocalSocket::PRIMARY, d.from, d.data);
            }
        }
        self.hard.wake(now, self.uses);
        self.easy.wake(now, self.uses);
        let easy_public = addr(EASY_PUBLIC);
        while let Some(t) = self.hard.rounds.poll_transmit() {
            assert!(
                now >= self.start_at,
                "seed {seed}: hard side sent before the start"
            );
            assert!(
                hard_ids().contains(&t.local),
                "seed {seed}: hard side sent from {:?}",
                t.local
            );
            assert!(
                !self.closed.contains(&t.local),
                "seed {seed}: hard side sent from closed {:?}",
                t.local
            );
            let from = self
                .hard_nat
                .outbound(&mut self.rng, t.local, t.destination);
            if !self.drop_all {
                self.wire.push(Datagram {
                    at: now + ONE_WAY,
                    to_hard: false,
                    dest: t.destination,
                    from,
                    data: t.contents.clone(),
                });
            }
            self.hard.sent.push((now, t));
        }
        while let Some(t) = self.easy.rounds.poll_transmit() {
            assert!(
                now >= self.start_at,
                "seed {seed}: easy side sent before the start"
            );
            assert_eq!(t.local, LocalSocket::PRIMARY, "seed {seed}");
            self.easy_nat.sent_to.insert(t.destination);
            if !self.drop_all {
                self.wire.push(Datagram {
                    at: now + ONE_WAY,
                    to_hard: true,
                    dest: t.destination,
                    from: easy_public,
                    data: t.contents.clone(),
                });
            }
            self.easy.sent.push((now, t));
        }
        while let Some(o) = self.hard.rounds.poll_output() {
            if let BirthdayOutput::Close(ids) = &o {
                self.closed.extend(ids.iter().copied());
            }
            self.hard.outputs.push((now, o));
        }
        while let Some(o) = self.easy.rounds.poll_output() {
            self.easy.outputs.push((now, o));
        }
    }

    /// Steps until `done` or `end` (the last step at `end`).
    pub(super) fn run_until(&mut self, end: Instant, done: impl Fn(&Sim) -> bool) {
        while self.now < end && !done(self) {
            self.step();
        }
    }

    /// Steps until both sides validated; panics when the budget passes first.
    pub(super) fn until_validated(&mut self) {
        let end = self.start_at + BirthdayConfig::default().budget;
        self.run_until(end, |s| {
            s.hard.validated().is_some() && s.easy.validated().is_some()
        });
        assert!(
            self.hard.validated().is_some() && self.easy.validated().is_some(),
            "seed {}: no pair; hard {:?}, easy {:?}",
            self.seed,
            self.hard.outputs,
            self.easy.outputs
        );
    }

    /// Both sides' pairs: (when, found) of the hard then the easy side.
    pub(super) fn pairs(&self) -> ((Instant, Found), (Instant, Found)) {
        let hard = self.hard.validated().expect("the hard side validated");
        let easy = self.easy.validated().expect("the easy side validated");
        (hard, easy)
    }
}

/// Drives a node's rounds with no network from `from` to `until`: its outputs.
pub(super) fn run_alone(
    rounds: &mut Birthdays,
    from: Instant,
    until: Instant,
) -> Vec<BirthdayOutput> {
    let mut outputs = Vec::new();
    let mut now = from;
    while now <= until {
        if rounds.next_wake().is_some_and(|t| t <= now) {
            rounds.handle_timeout(now);
        }
        while rounds.poll_transmit().is_some() {}
        outputs.extend(std::iter::from_fn(|| rounds.poll_output()));
        now += TICK;
    }
    outputs
}
