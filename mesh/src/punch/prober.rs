//! The [`Prober`] state machine: checks, answers, validation, nomination, budget.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::stun::{encode_request, encode_success, Kind, Parsed, Reject, RoleAttr};
use super::types::pair_priority;
use super::{
    Candidate, CandidateKind, Credentials, NoDirectPath, PairOutcome, ProbeConfig, ProbeCounters,
    ProbeEvent, Role, Transmit,
};

/// Floor of the retransmission delay, so a zero in the configuration cannot make a pair
/// due at every instant.
const MIN_RTO: Duration = Duration::from_millis(1);

/// Address equality that treats an IPv4-mapped IPv6 address (as a dual-stack socket
/// reports IPv4 sources) as the IPv4 address it maps.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// One candidate pair; with one socket, a pair is identified by its remote address.
#[derive(Debug)]
struct Pair {
    remote: Candidate,
    priority: u64,
    checks: u32,
    /// When the next check on this pair is due; `None`: no check scheduled.
    next_due: Option<Instant>,
    rto: Duration,
    /// Round-trip time of the first successful check.
    validated: Option<Duration>,
    /// Controlled side: an authenticated USE-CANDIDATE request arrived on this pair.
    peer_nominated: bool,
    /// A triggered check is pending (goes before ordinary checks).
    triggered: bool,
    /// When the peer was last heard on this pair: an authenticated request from it, or an
    /// accepted answer to one of our checks.
    heard: Option<Instant>,
}

/// An outstanding check.
#[derive(Debug)]
struct InFlight {
    transaction: [u8; 12],
    pair: usize,
    sent: Instant,
    /// Carried USE-CANDIDATE.
    nominating: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Checking,
    /// Nominated this pair; the controlling side keeps sending USE-CANDIDATE checks on it
    /// until one is answered or `until`.
    Nominated {
        pair: usize,
        until: Instant,
    },
    Failed,
}

/// Sans-IO connectivity checks for one punch attempt (see the [module docs](super)).
///
/// Drive it like quinn-proto: feed datagrams with [`handle_input`](Self::handle_input) and
/// timer expiries with [`handle_timeout`](Self::handle_timeout); after each call drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event) and re-arm
/// the timer from [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Prober {
    config: ProbeConfig,
    role: Role,
    creds: Credentials,
    /// `"<local ufrag>:"`: the USERNAME prefix of checks addressed to us.
    username_in: String,
    /// `"<remote ufrag>:<local ufrag>"`: the USERNAME of our checks.
    username_out: String,
    tie_breaker: u64,
    /// Priority of our base (host) candidate, for pair priorities.
    local_priority: u32,
    /// PRIORITY attribute value: what a peer-reflexive candidate of ours would get.
    prflx_priority: u32,
    pairs: Vec<Pair>,
    learned: usize,
    in_flight: VecDeque<InFlight>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ProbeEvent>,
    counters: ProbeCounters,
    now: Instant,
    start_at: Instant,
    deadline: Instant,
    /// Pacing gate: no check before this.
    next_check_at: Instant,
    outcome: Outcome,
    /// Our address as the peer saw it in its latest accepted answer.
    seen_as: Option<SocketAddr>,
    rng: StdRng,
}

impl Prober {
    /// A prober that starts checking at `start_at` (nothing is sent before) and gives up
    /// `config.budget` later. Remote candidates are de-duplicated by address (the highest
    /// priority wins), ordered by pair priority and bounded by `config.max_pairs`;
    /// unspecified addresses and port 0 are skipped.
    pub fn new(
        now: Instant,
        config: ProbeConfig,
        role: Role,
        creds: Credentials,
        local_candidates: &[Candidate],
        remote_candidates: &[Candidate],
        start_at: Instant,
    ) -> Self {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let local_priority = local_candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Host)
            .chain(local_candidates.iter())
            .map(|c| c.priority)
            .next()
            .unwrap_or_else(|| Candidate::priority_of(CandidateKind::Host, u16::MAX));
        let mut remotes: Vec<Candidate> = Vec::new();
        for c in remote_candidates {
            if c.addr.ip().is_unspecified() || c.addr.port() == 0 {
                continue;
            }
            match remotes.iter_mut().find(|r| r.addr == c.addr) {
                Some(r) if r.priority < c.priority => *r = *c,
                Some(_) => {}
                None => remotes.push(*c),
            }
        }
        let mut prober = Prober {
            username_in: format!("{}:", creds.local_ufrag),
            username_out: format!("{}:{}", creds.remote_ufrag, creds.local_ufrag),
            tie_breaker: rng.gen(),
            local_priority,
            prflx_priority: Candidate::priority_of(CandidateKind::PeerReflexive, u16::MAX),
            pairs: Vec::new(),
            learned: 0,
            in_flight: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: ProbeCounters::default(),
            now,
            start_at,
            deadline: start_at + config.budget,
            next_check_at: start_at,
            outcome: Outcome::Checking,
            seen_as: None,
            rng,
            config,
            role,
            creds,
        };
        for c in remotes {
            let pair = prober.new_pair(c, Some(start_at));
            prober.pairs.push(pair);
        }
        prober.pairs.sort_by_key(|p| Reverse(p.priority));
        prober.pairs.truncate(prober.config.max_pairs);
        prober
    }

    fn new_pair(&self, remote: Candidate, due: Option<Instant>) -> Pair {
        let (g, d) = match self.role {
            Role::Controlling => (self.local_priority, remote.priority),
            Role::Controlled => (remote.priority, self.local_priority),
        };
        Pair {
            remote,
            priority: pair_priority(g, d),
            checks: 0,
            next_due: due,
            rto: self.config.retransmit_initial.max(MIN_RTO),
            validated: None,
            peer_nominated: false,
            triggered: false,
            heard: None,
        }
    }

    /// Our role in this attempt.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Counters so far.
    pub fn counters(&self) -> ProbeCounters {
        self.counters
    }

    /// The nominated remote address, once there is one.
    pub fn nominated(&self) -> Option<SocketAddr> {
        match self.outcome {
            Outcome::Nominated { pair, .. } => self.pairs.get(pair).map(|p| p.remote.addr),
            _ => None,
        }
    }

    /// Our own address as the peer saw it (XOR-MAPPED-ADDRESS of the latest accepted
    /// answer): a local peer-reflexive candidate in RFC 8445 terms, useful for diagnostics.
    pub fn seen_as(&self) -> Option<SocketAddr> {
        self.seen_as
    }

    /// The remote candidates being checked, peer-reflexive ones included.
    pub fn remote_candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.pairs.iter().map(|p| &p.remote)
    }

    /// Offers a received datagram. Returns `true` if it belonged to this attempt (a check
    /// addressed to our ufrag, or a response to one of our transactions), whether or not it
    /// authenticated; `false` leaves it to other consumers of the socket.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.now = self.now.max(now);
        let parsed = match Parsed::parse(data) {
            Ok(parsed) => parsed,
            Err(Reject::Foreign) => {
                self.counters.foreign += 1;
                return false;
            }
            Err(Reject::Malformed) => {
                self.counters.malformed += 1;
                return false;
            }
        };
        let accepted_before = self.counters.responses_accepted;
        let consumed = match &parsed.kind {
            Kind::Request(req) => {
                let ours = req
                    .username
                    .as_bytes()
                    .starts_with(self.username_in.as_bytes());
                if ours {
                    let authentic = &req.username.as_bytes()[self.username_in.len()..]
                        == self.creds.remote_ufrag.as_bytes()
                        && parsed.verify(self.creds.local_pwd.as_bytes());
                    if authentic {
                        self.on_request(from, &parsed, req.priority, req.role, req.use_candidate);
                    } else {
                        self.counters.unauthenticated += 1;
                    }
                } else {
                    self.counters.foreign += 1;
                }
                ours
            }
            Kind::Success { mapped } => {
                let ours = self.on_success(from, &parsed);
                if ours && self.counters.responses_accepted > accepted_before {
                    self.seen_as = (*mapped).or(self.seen_as);
                }
                ours
            }
        };
        self.send_due_checks();
        consumed
    }

    fn on_request(
        &mut self,
        from: SocketAddr,
        parsed: &Parsed<'_>,
        priority: Option<u32>,
        role: Option<RoleAttr>,
        use_candidate: bool,
    ) {
        let conflict = matches!(
            (self.role, role),
            (Role::Controlling, Some(RoleAttr::Controlling(_)))
                | (Role::Controlled, Some(RoleAttr::Controlled(_)))
        );
        if conflict {
            self.counters.role_conflicts += 1;
        }
        let answer = encode_success(&parsed.transaction, from, self.creds.local_pwd.as_bytes());
        self.queue(from, answer);
        self.counters.requests_answered += 1;

        let index = match self
            .pairs
            .iter()
            .position(|p| same_addr(p.remote.addr, from))
        {
            Some(i) => i,
            None if self.learned < self.config.max_peer_reflexive => {
                let kind = CandidateKind::PeerReflexive;
                let priority = priority.unwrap_or(Candidate::priority_of(kind, u16::MAX));
                let pair = self.new_pair(
                    Candidate {
                        addr: from,
                        kind,
                        priority,
                    },
                    None,
                );
                self.pairs.push(pair);
                self.learned += 1;
                self.counters.peer_reflexive_learned += 1;
                self.pairs.len() - 1
            }
            None => {
                self.counters.dropped_bounded += 1;
                return;
            }
        };
        self.pairs[index].heard = Some(self.now);
        if self.outcome != Outcome::Checking {
            return;
        }
        let now = self.now;
        let pair = &mut self.pairs[index];
        if pair.validated.is_none() && !pair.triggered {
            // Triggered check (RFC 8445 section 7.3.1.4): the request proves the path is
            // open from the peer's side, so check it right away.
            pair.triggered = true;
            pair.next_due = Some(now);
        }
        if self.role == Role::Controlled && use_candidate && !conflict {
            pair.peer_nominated = true;
            if let Some(rtt) = pair.validated {
                self.nominate(index, rtt);
            }
        }
    }

    /// A success response: `true` if it answers one of our transactions.
    fn on_success(&mut self, from: SocketAddr, parsed: &Parsed<'_>) -> bool {
        let Some(slot) = self
            .in_flight
            .iter()
            .position(|f| f.transaction == parsed.transaction)
        else {
            self.counters.foreign += 1;
            return false;
        };
        if !parsed.verify(self.creds.remote_pwd.as_bytes()) {
            self.counters.unauthenticated += 1;
            return true;
        }
        let Some(flight) = self.in_flight.get(slot) else {
            return true;
        };
        let index = flight.pair;
        let nominating = flight.nominating;
        let rtt = self.now.saturating_duration_since(flight.sent);
        if !self
            .pairs
            .get(index)
            .is_some_and(|p| same_addr(p.remote.addr, from))
        {
            self.counters.asymmetric += 1;
            return true;
        }
        self.in_flight.remove(slot);
        self.counters.responses_accepted += 1;
        let pair = &mut self.pairs[index];
        pair.heard = Some(self.now);
        if pair.validated.is_none() {
            pair.validated = Some(rtt);
        }
        match self.outcome {
            Outcome::Checking => {
                pair.next_due = None;
                pair.triggered = false;
                if self.role == Role::Controlling || pair.peer_nominated {
                    self.nominate(index, rtt);
                }
            }
            Outcome::Nominated {
                pair: nominated, ..
            } if nominated == index && nominating => {
                // The peer has seen our USE-CANDIDATE: stop sending on the pair.
                pair.next_due = None;
            }
            _ => {}
        }
        true
    }

    fn nominate(&mut self, index: usize, rtt: Duration) {
        let until = self.now + self.config.budget;
        self.outcome = Outcome::Nominated { pair: index, until };
        for (i, pair) in self.pairs.iter_mut().enumerate() {
            pair.triggered = false;
            pair.next_due = None;
            if i == index && self.role == Role::Controlling {
                // Regular nomination: a check with USE-CANDIDATE on the chosen pair.
                pair.next_due = Some(self.now);
                pair.rto = self.config.retransmit_initial.max(MIN_RTO);
            }
        }
        self.in_flight.retain(|f| f.pair == index);
        let remote = self.pairs[index].remote.addr;
        self.events.push_back(ProbeEvent::Nominated { remote, rtt });
    }

    /// Consent freshness (RFC 7675 section 5.1): queues one check on the nominated pair now,
    /// outside the pacing and retransmission schedule (the caller paces these). Its answer
    /// refreshes [`Prober::nominated_heard_at`]. `false` if no pair is nominated.
    pub fn check_nominated(&mut self, now: Instant) -> bool {
        self.now = self.now.max(now);
        let Outcome::Nominated { pair, .. } = self.outcome else {
            return false;
        };
        if self.now < self.start_at {
            return false;
        }
        self.send_check(pair);
        self.pairs[pair].next_due = None;
        true
    }

    /// When the peer was last heard on the nominated pair (an authenticated check from it or
    /// an accepted answer); `None` without a nominated pair.
    pub fn nominated_heard_at(&self) -> Option<Instant> {
        match self.outcome {
            Outcome::Nominated { pair, .. } => self.pairs.get(pair).and_then(|p| p.heard),
            _ => None,
        }
    }

    /// Advances timers: starts, sends due checks, gives up at the budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.outcome == Outcome::Checking && self.now >= self.deadline {
            self.fail();
            return;
        }
        self.send_due_checks();
    }

    fn fail(&mut self) {
        self.outcome = Outcome::Failed;
        self.in_flight.clear();
        let mut tried: Vec<&Pair> = self.pairs.iter().collect();
        tried.sort_by_key(|p| Reverse(p.priority));
        let tried = tried
            .into_iter()
            .map(|p| {
                let outcome = match (p.validated, p.checks) {
                    (Some(rtt), _) => PairOutcome::Validated { rtt },
                    (None, 0) => PairOutcome::NotTried,
                    (None, checks) => PairOutcome::NoResponse { checks },
                };
                (p.remote.addr, outcome)
            })
            .collect();
        for pair in &mut self.pairs {
            pair.next_due = None;
        }
        let elapsed = self.now.saturating_duration_since(self.start_at);
        self.events
            .push_back(ProbeEvent::Failed(NoDirectPath { tried, elapsed }));
    }

    /// The pair whose check goes next: triggered first, then the earliest due, then the
    /// highest priority.
    fn next_pair(&self) -> Option<(usize, Instant)> {
        self.pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.next_due.map(|due| (i, due, p)))
            .min_by_key(|(_, due, p)| (!p.triggered, *due, Reverse(p.priority)))
            .map(|(i, due, _)| (i, due))
    }

    fn send_due_checks(&mut self) {
        if self.now < self.start_at {
            return;
        }
        if let Outcome::Nominated { until, .. } = self.outcome {
            if self.now >= until {
                self.pairs.iter_mut().for_each(|p| p.next_due = None);
                return;
            }
        }
        if self.outcome == Outcome::Failed || self.now < self.next_check_at {
            return;
        }
        let Some((index, due)) = self.next_pair() else {
            return;
        };
        if due > self.now {
            return;
        }
        self.send_check(index);
        self.next_check_at = self.now + self.config.pacing;
    }

    fn send_check(&mut self, index: usize) {
        let use_candidate = matches!(self.outcome, Outcome::Nominated { pair, .. } if pair == index)
            && self.role == Role::Controlling;
        let transaction: [u8; 12] = self.rng.gen();
        let role = match self.role {
            Role::Controlling => RoleAttr::Controlling(self.tie_breaker),
            Role::Controlled => RoleAttr::Controlled(self.tie_breaker),
        };
        let contents = encode_request(
            &transaction,
            &self.username_out,
            self.creds.remote_pwd.as_bytes(),
            self.prflx_priority,
            role,
            use_candidate,
        );
        let now = self.now;
        let max_rto = self.config.retransmit_max;
        let pair = &mut self.pairs[index];
        pair.checks = pair.checks.saturating_add(1);
        pair.triggered = false;
        pair.next_due = Some(now + pair.rto);
        pair.rto = (pair.rto * 2).min(max_rto).max(MIN_RTO);
        let destination = pair.remote.addr;
        self.in_flight.push_back(InFlight {
            transaction,
            pair: index,
            sent: now,
            nominating: use_candidate,
        });
        // Bounded: forget the oldest transactions (their late answers become foreign).
        let cap = 4 * (self.config.max_pairs + self.config.max_peer_reflexive) + 8;
        while self.in_flight.len() > cap {
            self.in_flight.pop_front();
        }
        self.counters.checks_sent += 1;
        self.queue(destination, contents);
    }

    fn queue(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        if self.transmits.len() >= self.config.max_queued {
            self.counters.dropped_bounded += 1;
            return;
        }
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    /// The next datagram to send. Nothing before `start_at`: answers to checks that
    /// arrive early wait in the queue until then.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.now < self.start_at {
            return None;
        }
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next; `None` once there
    /// is nothing left to time (the outcome is out and no nomination check is pending).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.now < self.start_at {
            return Some(self.start_at);
        }
        let check = self.next_pair().map(|(_, due)| due.max(self.next_check_at));
        match self.outcome {
            Outcome::Checking => Some(check.map_or(self.deadline, |c| c.min(self.deadline))),
            Outcome::Nominated { until, .. } => check.map(|c| c.min(until)),
            Outcome::Failed => None,
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.events.pop_front()
    }
}
