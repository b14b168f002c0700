//! Birthday probing (Tailscale's "birthday paradox" NAT traversal) between a peer behind an
//! address-and-port-dependent mapping NAT (the *hard* side, RFC 4787 "symmetric") and a peer
//! behind an endpoint-independent mapping NAT (the *easy* side), as a sans-IO state machine
//! ([`BirthdayProber`]).
//!
//! A symmetric NAT gives each (local socket, destination) its own public port, so the easy
//! side cannot know where to send. Both sides make the odds instead:
//!
//! 1. **Hard side.** The driver opens [`BirthdayConfig::hard_sockets`] extra sockets (256 by
//!    default). From each, the prober sends a check to the easy side's public address, at
//!    most [`BirthdayConfig::hard_rounds`] times, paced: every socket now has a mapping on
//!    the hard NAT whose filter lets the easy side's address in.
//! 2. **Easy side.** The prober sends checks from its one socket to the hard side's public
//!    IP at ports drawn at random without repetition from [`BirthdayConfig::ports`], one
//!    every [`BirthdayConfig::probe_interval`], at most [`BirthdayConfig::max_probes`] (1024
//!    by default). Each check also opens the easy NAT's filter for that port.
//! 3. **The hit.** A check that lands on one of the hard side's mapped ports reaches its
//!    socket. The hard prober answers from that socket (the answer passes the easy NAT,
//!    whose filter the check just opened) and sends its own check back (a triggered check,
//!    RFC 8445 section 7.3.1.4). The easy side decides (it is the controlling agent): it
//!    validates the first pair that answers one of its checks and nominates it at once with
//!    a check carrying USE-CANDIDATE (RFC 8445 section 8.1.1); the hard side validates
//!    only the pair the easy side nominated, never its own first answer, so both sides
//!    name the same pair even when hits cross in one round trip.
//!    [`BirthdayEvent::Validated`] names the socket and the remote on both sides.
//! 4. **Budget.** Nothing is sent before `start_at`, and after the first validated pair or
//!    [`BirthdayConfig::budget`] nothing but answers; [`BirthdayEvent::Failed`] ends a
//!    round with nothing found. The probe caps are hard limits ([`BirthdayCounters`]).
//!
//! With `n` mapped ports among `N` possible ones and `k` distinct probes, the chance that
//! no probe hits is `C(N-n, k) / C(N, k)`, close to `exp(-k n / N)`: 256 sockets and 1024
//! probes over 64,512 ports succeed about 98.3 % of the time ([`success_probability`]).
//! After the hit, [`BirthdayProber::consent`] sends a check on the validated pair (the
//! driver calls it while the path lives, RFC 7675): the answers keep the pair's NAT
//! mappings open and tell the driver the path is alive on an idle connection.
//!
//! Checks are STUN Binding requests with the per-attempt short-term credentials of
//! RFC 8445 (only peers the coordinator introduced can validate anything); answers to
//! requests that do not authenticate are never sent.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::stun::{encode_request, encode_success, Kind, Parsed, RoleAttr};
use super::{Candidate, CandidateKind, Credentials};

/// Which side of a birthday round this peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthdaySide {
    /// Behind the symmetric NAT: many sockets, each sending to the easy side's address.
    Hard {
        /// The easy side's public (server-reflexive) address.
        easy: SocketAddr,
    },
    /// Behind the endpoint-independent mapping NAT: random ports of the hard side's IP.
    Easy {
        /// The hard side's public IP.
        hard_ip: IpAddr,
    },
}

/// Tunables of a birthday round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthdayConfig {
    /// Extra sockets the hard side opens. Default 256.
    pub hard_sockets: usize,
    /// Checks per hard socket, spread over the round. Default 3.
    pub hard_rounds: u32,
    /// Most checks the easy side sends in one round. Default 1024.
    pub max_probes: usize,
    /// Gap between two checks of one side. Default 2 ms (500 per second).
    pub probe_interval: Duration,
    /// Ports the easy side draws from. Default 1024-65535.
    pub ports: RangeInclusive<u16>,
    /// Time from `start_at` after which the round gives up. Default 5 s.
    pub budget: Duration,
    /// Seed of port draws and transaction ids (tests); `None` draws from the OS.
    pub seed: Option<u64>,
}

impl Default for BirthdayConfig {
    fn default() -> Self {
        BirthdayConfig {
            hard_sockets: 256,
            hard_rounds: 3,
            max_probes: 1024,
            probe_interval: Duration::from_millis(2),
            ports: 1024..=65535,
            budget: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// Index of a local socket: 0 on the easy side, 0..hard_sockets on the hard side.
pub type SocketIndex = usize;

/// A datagram to send from one of the round's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthdayTransmit {
    /// The local socket to send from.
    pub socket: SocketIndex,
    /// Where to.
    pub destination: SocketAddr,
    /// The STUN message.
    pub contents: Vec<u8>,
}

/// What a round reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirthdayEvent {
    /// A pair works: `socket` reaches `remote` (the connection moves to it; the driver
    /// closes the other sockets).
    Validated {
        /// The local socket of the pair.
        socket: SocketIndex,
        /// The peer's address on the pair.
        remote: SocketAddr,
        /// Round-trip time of the validating check (the easy side's); on the hard side,
        /// which follows the easy side's nomination, its latest answered check's (zero
        /// when none was answered before the nomination).
        rtt: Duration,
    },
    /// The budget ran out without a pair.
    Failed {
        /// Checks sent (all sockets).
        checks: u64,
    },
}

/// Counters of a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BirthdayCounters {
    /// Checks sent (all sockets).
    pub checks_sent: u64,
    /// Authenticated requests answered.
    pub answered: u64,
    /// Datagrams that did not authenticate (dropped).
    pub unauthenticated: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    transaction: [u8; 12],
    socket: SocketIndex,
    destination: SocketAddr,
    sent: Instant,
}

/// One birthday round (see the module docs).
#[derive(Debug)]
pub struct BirthdayProber {
    side: BirthdaySide,
    config: BirthdayConfig,
    creds: Credentials,
    username_in: String,
    username_out: String,
    tie_breaker: u64,
    rng: StdRng,
    start_at: Instant,
    deadline: Instant,
    next_send: Instant,
    /// Hard side: next socket to send from and checks sent so far.
    hard_sent: u64,
    /// Easy side: ports already probed.
    probed: HashSet<u16>,
    in_flight: VecDeque<InFlight>,
    transmits: VecDeque<BirthdayTransmit>,
    events: VecDeque<BirthdayEvent>,
    counters: BirthdayCounters,
    done: bool,
    /// The validated pair.
    validated: Option<(SocketIndex, SocketAddr)>,
    /// Round-trip time of the latest answered check.
    last_rtt: Option<Duration>,
}

impl BirthdayProber {
    /// A round starting at `start_at` (nothing is sent before).
    pub fn new(
        side: BirthdaySide,
        config: BirthdayConfig,
        creds: Credentials,
        start_at: Instant,
    ) -> Self {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        BirthdayProber {
            username_in: format!("{}:", creds.local_ufrag),
            username_out: format!("{}:{}", creds.remote_ufrag, creds.local_ufrag),
            tie_breaker: rng.gen(),
            deadline: start_at + config.budget,
            next_send: start_at,
            hard_sent: 0,
            probed: HashSet::new(),
            in_flight: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: BirthdayCounters::default(),
            done: false,
            validated: None,
            last_rtt: None,
            rng,
            start_at,
            side,
            config,
            creds,
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> BirthdayCounters {
        self.counters
    }

    /// Most checks this round may send in total.
    pub fn check_cap(&self) -> u64 {
        match self.side {
            BirthdaySide::Hard { .. } => {
                self.config.hard_sockets as u64 * u64::from(self.config.hard_rounds)
            }
            BirthdaySide::Easy { .. } => self.config.max_probes as u64,
        }
    }

    /// Offers a datagram received on `socket`; `true` if it belonged to this round.
    pub fn handle_input(
        &mut self,
        now: Instant,
        socket: SocketIndex,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(parsed) = Parsed::parse(data) else {
            return false;
        };
        match &parsed.kind {
            Kind::Request(req) => {
                if !req
                    .username
                    .as_bytes()
                    .starts_with(self.username_in.as_bytes())
                {
                    return false;
                }
                let authentic = &req.username.as_bytes()[self.username_in.len()..]
                    == self.creds.remote_ufrag.as_bytes()
                    && parsed.verify(self.creds.local_pwd.as_bytes());
                if !authentic {
                    self.counters.unauthenticated += 1;
                    return true;
                }
                let answer =
                    encode_success(&parsed.transaction, from, self.creds.local_pwd.as_bytes());
                self.queue(socket, from, answer);
                self.counters.answered += 1;
                // The hard side follows the easy side's nomination.
                let nominated = req.use_candidate && matches!(self.side, BirthdaySide::Hard { .. });
                if nominated && !self.done {
                    self.done = true;
                    self.validated = Some((socket, from));
                    let rtt = self.last_rtt.unwrap_or_default();
                    self.events.push_back(BirthdayEvent::Validated {
                        socket,
                        remote: from,
                        rtt,
                    });
                    return true;
                }
                // The request proves the path open from the peer's side: check it back at
                // once (the hard side learns its pair this way).
                if !self.done && now >= self.start_at {
                    self.send_check(now, socket, from);
                }
                true
            }
            Kind::Success { .. } => {
                let Some(pos) = self.in_flight.iter().position(|f| {
                    f.transaction == parsed.transaction
                        && f.socket == socket
                        && f.destination == from
                }) else {
                    return false;
                };
                if !parsed.verify(self.creds.remote_pwd.as_bytes()) {
                    self.counters.unauthenticated += 1;
                    return true;
                }
                let Some(flight) = self.in_flight.remove(pos) else {
                    return true;
                };
                self.last_rtt = Some(now.saturating_duration_since(flight.sent));
                // Only the easy side validates on an answer; it nominates the pair.
                if !self.done && matches!(self.side, BirthdaySide::Easy { .. }) {
                    self.done = true;
                    self.validated = Some((socket, from));
                    self.events.push_back(BirthdayEvent::Validated {
                        socket,
                        remote: from,
                        rtt: now.saturating_duration_since(flight.sent),
                    });
                    self.consent(now);
                }
                true
            }
        }
    }

    /// The validated pair (local socket, remote), once there is one.
    pub fn validated(&self) -> Option<(SocketIndex, SocketAddr)> {
        self.validated
    }

    /// Sends one consent check on the validated pair (nothing before it validated); the
    /// easy side's carry USE-CANDIDATE, so a lost nomination is repeated with each. The
    /// driver paces these; they are not counted against the probing caps.
    pub fn consent(&mut self, now: Instant) {
        let Some((socket, remote)) = self.validated else {
            return;
        };
        let transaction: [u8; 12] = self.rng.gen();
        let priority = Candidate::priority_of(CandidateKind::PeerReflexive, u16::MAX);
        let nominate = matches!(self.side, BirthdaySide::Easy { .. });
        let contents = encode_request(
            &transaction,
            &self.username_out,
            self.creds.remote_pwd.as_bytes(),
            priority,
            RoleAttr::Controlling(self.tie_breaker),
            nominate,
        );
        self.remember(InFlight {
            transaction,
            socket,
            destination: remote,
            sent: now,
        });
        self.queue(socket, remote, contents);
    }

    /// Sends the checks that are due; gives up at the budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done || now < self.start_at {
            return;
        }
        if now >= self.deadline {
            self.done = true;
            self.events.push_back(BirthdayEvent::Failed {
                checks: self.counters.checks_sent,
            });
            return;
        }
        while self.next_send <= now && self.counters.checks_sent < self.check_cap() {
            match self.side {
                BirthdaySide::Hard { easy } => {
                    let socket = (self.hard_sent % self.config.hard_sockets.max(1) as u64) as usize;
                    self.hard_sent += 1;
                    self.send_check(now, socket, easy);
                }
                BirthdaySide::Easy { hard_ip } => {
                    let Some(port) = self.draw_port() else {
                        break;
                    };
                    self.send_check(now, 0, SocketAddr::new(hard_ip, port));
                }
            }
            self.next_send += self.pace();
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<BirthdayTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BirthdayEvent> {
        self.events.pop_front()
    }

    /// When [`BirthdayProber::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        if self.counters.checks_sent >= self.check_cap() {
            return Some(self.deadline);
        }
        Some(self.next_send.min(self.deadline))
    }

    /// The gap between sends: the hard side spreads its rounds over the budget.
    fn pace(&self) -> Duration {
        match self.side {
            BirthdaySide::Easy { .. } => self.config.probe_interval,
            BirthdaySide::Hard { .. } => {
                let per_round = self.config.hard_sockets.max(1) as u32;
                let first_round = self.hard_sent <= u64::from(per_round);
                if first_round {
                    // Open every mapping quickly: the easy side's probes start at once.
                    self.config.probe_interval / 4
                } else {
                    let rounds = self.config.hard_rounds.max(1);
                    self.config.budget / (rounds * per_round)
                }
            }
        }
    }

    fn draw_port(&mut self) -> Option<u16> {
        let (lo, hi) = (*self.config.ports.start(), *self.config.ports.end());
        let span = usize::from(hi.saturating_sub(lo)) + 1;
        if self.probed.len() >= span {
            return None;
        }
        loop {
            let port = self.rng.gen_range(lo..=hi);
            if self.probed.insert(port) {
                return Some(port);
            }
        }
    }

    fn send_check(&mut self, now: Instant, socket: SocketIndex, destination: SocketAddr) {
        if self.counters.checks_sent >= self.check_cap() + self.counters.answered {
            return; // triggered checks are bounded by the answers, the rest by the cap
        }
        let transaction: [u8; 12] = self.rng.gen();
        let priority = Candidate::priority_of(CandidateKind::PeerReflexive, u16::MAX);
        let role = RoleAttr::Controlling(self.tie_breaker);
        let contents = encode_request(
            &transaction,
            &self.username_out,
            self.creds.remote_pwd.as_bytes(),
            priority,
            role,
            false,
        );
        self.remember(InFlight {
            transaction,
            socket,
            destination,
            sent: now,
        });
        self.counters.checks_sent += 1;
        self.queue(socket, destination, contents);
    }

    /// Keeps a check's transaction for its answer (bounded: the oldest go first).
    fn remember(&mut self, flight: InFlight) {
        self.in_flight.push_back(flight);
        let cap = self.config.hard_sockets.max(self.config.max_probes) * 2 + 16;
        while self.in_flight.len() > cap {
            self.in_flight.pop_front();
        }
    }

    fn queue(&mut self, socket: SocketIndex, destination: SocketAddr, contents: Vec<u8>) {
        self.transmits.push_back(BirthdayTransmit {
            socket,
            destination,
            contents,
        });
    }
}

/// The chance that `probes` distinct random ports out of `ports` hit at least one of
/// `mapped` ports: `1 - C(ports - mapped, probes) / C(ports, probes)`.
pub fn success_probability(mapped: usize, probes: usize, ports: usize) -> f64 {
    if probes + mapped > ports {
        return 1.0;
    }
    // Product form of the ratio of binomials, stable for large numbers.
    let miss: f64 = (0..probes)
        .map(|i| (ports - mapped - i) as f64 / (ports - i) as f64)
        .product();
    1.0 - miss
}
