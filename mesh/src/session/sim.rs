//! (Test support, also used by the `join_sim` benchmark.) A simulated network for [`Membership`] cores: simulated time, per-link latency with
//! jitter, retransmission delays standing in for loss (streams are reliable), partitions,
//! crashes, and a driver model that dials, allows and closes as the real driver does.
//!
//! Steps of [`World::run_until`]: take the earliest of (a delivery, a dial completing, a
//! core's timer), advance the clock to it, feed it in, then drain every core's transmits
//! and events into the network. Everything is seeded, so a failing seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Decision, Event, Membership, MembershipConfig, SessionMsg};
use crate::identity::PeerId;

/// Node index in the world.
pub type Ix = usize;

pub fn id(i: Ix) -> PeerId {
    let mut b = [0u8; 32];
    b[0] = 1;
    b[1] = i as u8;
    PeerId::from_bytes(b)
}

fn ix(p: &PeerId) -> Ix {
    usize::from(p.as_bytes()[1])
}

/// Network parameters.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// One-way latency.
    pub one_way: Duration,
    /// Up to this much extra per message (order kept per link).
    pub jitter: Duration,
    /// Probability that a message needs one retransmission (one extra RTT plus a bit).
    pub loss: f64,
    /// Time a dial to the host takes (punching and the QUIC handshake).
    pub dial_time: Duration,
    /// Time a dial to another member takes (more when the member answers the punch
    /// server's `Incoming` itself).
    pub member_dial_time: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            one_way: Duration::from_millis(25),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            dial_time: Duration::from_millis(185),
            member_dial_time: Duration::from_millis(185),
        }
    }
}

#[derive(Debug)]
enum Action {
    Deliver { from: Ix, to: Ix, msg: SessionMsg },
    Closed { at: Ix, peer: Ix },
    DialDone { from: Ix, to: Ix, tries: u32 },
}

/// How the host's application answers join requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppPolicy {
    Accept,
    /// Never answers: the default applies at the decision timeout.
    Silent,
    RejectAll,
}

pub struct Node {
    pub core: Option<Membership>,
    pub alive: bool,
    pub allowed: BTreeSet<Ix>,
    pub events: Vec<(Instant, Event)>,
    pub app: AppPolicy,
}

pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub rng: StdRng,
    pub net: NetConfig,
    pub config: MembershipConfig,
    pub nodes: Vec<Node>,
    pub links: BTreeSet<(Ix, Ix)>,
    /// Pairs that cannot exchange packets (both directions).
    pub cut: BTreeSet<(Ix, Ix)>,
    queue: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    last_delivery: BTreeMap<(Ix, Ix), Instant>,
    /// Every (a, b) pair that were both hosts while linked: must stay empty.
    pub split_hosts: Vec<(Duration, Ix, Ix)>,
}

fn pair(a: Ix, b: Ix) -> (Ix, Ix) {
    (a.min(b), a.max(b))
}

impl World {
    pub fn new(seed: u64, n: usize, net: NetConfig, config: MembershipConfig) -> Self {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|_| Node {
                core: None,
                alive: true,
                allowed: BTreeSet::new(),
                events: Vec::new(),
                app: AppPolicy::Accept,
            })
            .collect();
        Self {
            now,
            start: now,
            rng: StdRng::seed_from_u64(seed),
            net,
            config,
            nodes,
            links: BTreeSet::new(),
            cut: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            last_delivery: BTreeMap::new(),
            split_hosts: Vec::new(),
        }
    }

    pub fn core(&self, i: Ix) -> Option<&Membership> {
        self.nodes[i].core.as_ref().filter(|_| self.nodes[i].alive)
    }

    pub fn host(&mut self, i: Ix) {
        self.nodes[i].core = Some(Membership::host(id(i), self.config.clone()));
        self.pump(i);
    }

    pub fn join(&mut self, i: Ix, host: Ix) {
        let core = Membership::join(
            self.now,
            id(i),
            id(host),
            vec![i as u8],
            self.config.clone(),
        );
        self.nodes[i].core = Some(core);
        self.pump(i);
    }

    /// Node `i` leaves gracefully (its goodbyes go out through the network).
    pub fn leave(&mut self, i: Ix) {
        let now = self.now;
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.leave(now);
        }
        self.pump(i);
    }

    /// Locks or unlocks node `i`'s session (if it hosts).
    pub fn set_locked(&mut self, i: Ix, locked: bool) {
        let now = self.now;
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.set_locked(now, locked);
        }
        self.pump(i);
    }

    pub fn crash(&mut self, i: Ix) {
        self.nodes[i].alive = false;
        self.links.retain(|&(a, b)| a != i && b != i);
    }

    pub fn partition(&mut self, side: &[Ix]) {
        let n = self.nodes.len();
        for a in side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                self.cut.insert(pair(*a, b));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn schedule(&mut self, at: Instant, action: Action) {
        self.seq += 1;
        self.queue.insert((at, self.seq), action);
    }

    fn reachable(&self, a: Ix, b: Ix) -> bool {
        self.nodes[a].alive && self.nodes[b].alive && !self.cut.contains(&pair(a, b))
    }

    fn delay(&mut self) -> Duration {
        let jitter = self.net.jitter.mul_f64(self.rng.gen::<f64>());
        let mut d = self.net.one_way + jitter;
        while self.rng.gen::<f64>() < self.net.loss {
            d += self.net.one_way * 2 + Duration::from_millis(10);
        }
        d
    }

    /// Moves a node's transmits and events into the network and the driver model.
    fn pump(&mut self, i: Ix) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            if let Some((to, msg)) = core.poll_transmit() {
                let to = ix(&to);
                if self.links.contains(&pair(i, to)) && self.reachable(i, to) {
                    let d = self.delay();
                    let prev = self
                        .last_delivery
                        .get(&(i, to))
                        .copied()
                        .unwrap_or(self.now);
                    let at = (self.now + d).max(prev);
                    self.last_delivery.insert((i, to), at);
                    self.schedule(at, Action::Deliver { from: i, to, msg });
                }
                continue;
            }
            let Some(event) = core.poll_event() else {
                return;
            };
            self.nodes[i].events.push((self.now, event.clone()));
            match event {
                Event::Dial(p) => {
                    let to_host = self.nodes[ix(&p)]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.is_host());
                    let dial = if to_host {
                        self.net.dial_time
                    } else {
                        self.net.member_dial_time
                    };
                    let at = self.now + dial;
                    self.schedule(
                        at,
                        Action::DialDone {
                            from: i,
                            to: ix(&p),
                            tries: 0,
                        },
                    );
                }
                Event::Allow(p) => {
                    self.nodes[i].allowed.insert(ix(&p));
                }
                Event::Disallow(p) => {
                    self.nodes[i].allowed.remove(&ix(&p));
                }
                Event::Close(p) => {
                    // The driver flushes the stream before closing: the close follows
                    // what was already sent on the link.
                    let p = ix(&p);
                    if self.links.remove(&pair(i, p)) && self.reachable(i, p) {
                        let d = self.delay();
                        let prev = self.last_delivery.get(&(i, p)).copied().unwrap_or(self.now);
                        let at = (self.now + d).max(prev);
                        self.last_delivery.insert((i, p), at);
                        self.schedule(at, Action::Closed { at: p, peer: i });
                    }
                }
                Event::JoinRequest { peer, .. } => match self.nodes[i].app {
                    AppPolicy::Accept => {
                        core_of(&mut self.nodes[i]).decide(self.now, peer, Decision::Accept)
                    }
                    AppPolicy::RejectAll => core_of(&mut self.nodes[i]).decide(
                        self.now,
                        peer,
                        Decision::Reject("no".into()),
                    ),
                    AppPolicy::Silent => {}
                },
                _ => {}
            }
        }
    }

    fn accepts(&self, target: Ix, from: Ix) -> bool {
        let n = &self.nodes[target];
        n.alive && (n.allowed.contains(&from) || n.core.as_ref().is_some_and(|c| c.is_host()))
    }

    /// Runs until `until` (simulated), checking the no-split-host rule after every step.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_action = self.queue.keys().next().map(|k| k.0);
            let next_timer = (0..self.nodes.len())
                .filter_map(|i| self.core(i).and_then(Membership::poll_timeout))
                .min();
            let next = match (next_action, next_timer) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_action == Some(next) {
                let Some((_, action)) = self.queue.pop_first() else {
                    break;
                };
                self.apply(action);
            } else {
                for i in 0..self.nodes.len() {
                    if self
                        .core(i)
                        .and_then(Membership::poll_timeout)
                        .is_some_and(|t| t <= self.now)
                    {
                        core_of(&mut self.nodes[i]).handle_timeout(self.now);
                        self.pump(i);
                    }
                }
            }
            self.check_split_hosts();
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Deliver { from, to, msg } => {
                // Sent while the link was up: it arrives unless the path broke (a closed
                // link's last messages still arrive before its close).
                if self.reachable(from, to) {
                    if let Some(c) = self.nodes[to].core.as_mut() {
                        c.handle_input(self.now, id(from), msg);
                        self.pump(to);
                    }
                }
            }
            Action::Closed { at, peer } => {
                if self.nodes[at].alive {
                    if let Some(c) = self.nodes[at].core.as_mut() {
                        c.handle_link_down(self.now, id(peer));
                        self.pump(at);
                    }
                }
            }
            Action::DialDone { from, to, tries } => {
                if !self.nodes[from].alive {
                    return;
                }
                // As the driver does: a request from a peer not (yet) allowed is held for up
                // to a second, since the host's announcement may still be on its way.
                if self.reachable(from, to) && !self.accepts(to, from) && tries < 10 {
                    let at = self.now + Duration::from_millis(100);
                    self.schedule(
                        at,
                        Action::DialDone {
                            from,
                            to,
                            tries: tries + 1,
                        },
                    );
                    return;
                }
                let ok = self.reachable(from, to)
                    && self.accepts(to, from)
                    && self.nodes[to].core.is_some()
                    && !self.links.contains(&pair(from, to));
                if ok {
                    self.links.insert(pair(from, to));
                    core_of(&mut self.nodes[to]).handle_link_up(self.now, id(from));
                    self.pump(to);
                    if self.links.contains(&pair(from, to)) {
                        core_of(&mut self.nodes[from]).handle_link_up(self.now, id(to));
                        self.pump(from);
                    }
                } else {
                    core_of(&mut self.nodes[from]).handle_link_down(self.now, id(to));
                    self.pump(from);
                }
            }
        }
    }

    fn check_split_hosts(&mut self) {
        let hosts: Vec<Ix> = (0..self.nodes.len())
            .filter(|&i| self.core(i).is_some_and(Membership::is_host))
            .collect();
        for (k, &a) in hosts.iter().enumerate() {
            for &b in &hosts[k + 1..] {
                if self.links.contains(&pair(a, b)) {
                    self.split_hosts.push((self.now - self.start, a, b));
                }
            }
        }
    }

    /// Live members (not ended).
    pub fn members(&self) -> Vec<Ix> {
        (0..self.nodes.len())
            .filter(|&i| self.core(i).is_some_and(Membership::is_member))
            .collect()
    }

    /// Checks that every group of linked live members shares one view that names exactly
    /// that group, is fully linked, and has one host. Returns a description of the first
    /// problem.
    pub fn check_consistent(&self) -> Result<(), String> {
        let members = self.members();
        for &m in &members {
            let view = self
                .core(m)
                .map(|c| c.view().clone())
                .unwrap_or_else(|| unreachable!());
            for p in &view.members {
                let p = ix(p);
                if p == m {
                    continue;
                }
                let other = self.core(p).filter(|c| c.is_member());
                let Some(other) = other else {
                    return Err(format!(
                        "{m} lists {p}, which is not a live member (view {view:?})"
                    ));
                };
                if other.view() != &view {
                    return Err(format!(
                        "{m} and {p} disagree: {:?} vs {:?}",
                        view,
                        other.view()
                    ));
                }
                if !self.links.contains(&pair(m, p)) {
                    return Err(format!(
                        "{m} and {p} are members of one view but not linked"
                    ));
                }
            }
            for &q in &members {
                if q != m && self.links.contains(&pair(m, q)) && !view.contains(&id(q)) {
                    return Err(format!("{m} is linked to member {q} outside its view"));
                }
            }
        }
        Ok(())
    }
}

fn core_of(n: &mut Node) -> &mut Membership {
    n.core
        .as_mut()
        .unwrap_or_else(|| unreachable!("a node with traffic has a core"))
}
