//! Two [`PathManager`]s in simulated time over a direct link and a relay that appear and
//! disappear, with loss, over many seeds: relay first then direct, direct dies then relay,
//! both at once, the retry schedule, and never a switch to a path that was not validated.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ConnConfig, ConnEvent, PathKind, PathManager, SwitchReason};
use crate::punch::{Candidate, CandidateKind, Credentials, ProbeConfig, Prober, Role};

const TICK: Duration = Duration::from_millis(5);
/// One-way delay of every link.
const DELAY: Duration = Duration::from_millis(10);
/// Game traffic: each side sends a datagram on its active path this often.
const TRAFFIC_EVERY: Duration = Duration::from_millis(50);
const RELAY: &str = "198.18.0.5:3478";

fn a_addr() -> SocketAddr {
    "10.1.0.11:4000".parse().expect("addr")
}

fn b_addr() -> SocketAddr {
    "10.2.0.11:5000".parse().expect("addr")
}

/// What travels: a STUN datagram (over the direct link only) or game traffic on a path.
#[derive(Debug, Clone)]
enum Packet {
    Stun { from: SocketAddr, data: Vec<u8> },
    Data { direct: bool },
}

struct Side {
    core: PathManager,
    addr: SocketAddr,
    relay_path: Option<super::PathId>,
    events: Vec<(Duration, ConnEvent)>,
    next_traffic: Instant,
}

struct Sim {
    start: Instant,
    now: Instant,
    rng: StdRng,
    loss: f64,
    direct_up: bool,
    relay_up: bool,
    /// (arrival, to side 0 or 1, packet)
    in_flight: VecDeque<(Instant, usize, Packet)>,
    sides: [Side; 2],
    /// Rounds asked for by the controlling side, as times since the start.
    rounds_due: Vec<Duration>,
    round_no: u64,
    /// Last time a STUN datagram crossed the direct link (either way).
    last_direct_stun: Option<Instant>,
}

impl Sim {
    fn new(seed: u64, loss: f64, relay_up: bool, direct_up: bool) -> Self {
        let start = Instant::now();
        let config = |seed| ConnConfig {
            probe: ProbeConfig {
                seed: Some(seed),
                ..ProbeConfig::default()
            },
            seed: Some(seed),
            ..ConnConfig::default()
        };
        let side = |role, addr, seed| Side {
            core: PathManager::new(start, config(seed), role),
            addr,
            relay_path: None,
            events: Vec::new(),
            next_traffic: start,
        };
        let mut sim = Sim {
            start,
            now: start,
            rng: StdRng::seed_from_u64(seed),
            loss,
            direct_up,
            relay_up,
            in_flight: VecDeque::new(),
            sides: [
                side(Role::Controlling, a_addr(), seed),
                side(Role::Controlled, b_addr(), seed + 1000),
            ],
            rounds_due: Vec::new(),
            round_no: 0,
            last_direct_stun: None,
        };
        if relay_up {
            sim.add_relays();
        }
        sim
    }

    fn add_relays(&mut self) {
        let server: SocketAddr = RELAY.parse().expect("addr");
        for (i, side) in self.sides.iter_mut().enumerate() {
            let channel = 0x4000 + i as u16;
            side.relay_path = Some(side.core.add_relay(self.now, server, channel));
        }
    }

    fn remove_relays(&mut self) {
        for side in &mut self.sides {
            if let Some(id) = side.relay_path.take() {
                side.core.remove_path(self.now, id);
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.gen_bool(self.loss)
    }

    /// Both sides get a fresh round with new credentials, starting together shortly.
    fn start_round(&mut self) {
        self.round_no += 1;
        let n = self.round_no;
        let creds = Credentials {
            local_ufrag: format!("a{n}"),
            local_pwd: format!("apassword{n}xxxxxxxxxxx"),
            remote_ufrag: format!("b{n}"),
            remote_pwd: format!("bpassword{n}xxxxxxxxxxx"),
        };
        let start_at = self.now + 3 * DELAY;
        let cand = |addr| Candidate::new(addr, CandidateKind::Host);
        let (a, b) = (a_addr(), b_addr());
        self.sides[0].core.start_direct_round(
            self.now,
            creds.clone(),
            &[cand(a)],
            &[cand(b)],
            start_at,
        );
        self.sides[1].core.start_direct_round(
            self.now,
            creds.swapped(),
            &[cand(b)],
            &[cand(a)],
            start_at,
        );
    }

    /// Both sides take over a round that started before the connection existed (the
    /// introduction's, as the engine hands it to a live connection's core).
    fn adopt_first_round(&mut self) {
        self.round_no += 1;
        let creds = Credentials {
            local_ufrag: "first".into(),
            local_pwd: "firstpasswordxxxxxxxxxxx".into(),
            remote_ufrag: "other".into(),
            remote_pwd: "otherpasswordxxxxxxxxxxx".into(),
        };
        let start_at = self.now + 3 * DELAY;
        let cand = |addr| Candidate::new(addr, CandidateKind::Host);
        let (a, b) = (a_addr(), b_addr());
        let probe = |seed| ProbeConfig {
            seed: Some(seed),
            ..ProbeConfig::default()
        };
        let now = self.now;
        let first = Prober::new(
            now,
            probe(1),
            Role::Controlling,
            creds.clone(),
            &[cand(a)],
            &[cand(b)],
            start_at,
        );
        let second = Prober::new(
            now,
            probe(2),
            Role::Controlled,
            creds.swapped(),
            &[cand(b)],
            &[cand(a)],
            start_at,
        );
        self.sides[0].core.adopt_round(now, first);
        self.sides[1].core.adopt_round(now, second);
    }

    fn run_until(&mut self, until: Duration) {
        while self.elapsed() < until {
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += TICK;
        let now = self.now;
        // Deliver what arrived.
        while let Some(pos) = self.in_flight.iter().position(|(at, ..)| *at <= now) {
            let Some((_, to, packet)) = self.in_flight.remove(pos) else {
                break;
            };
            let side = &mut self.sides[to];
            match packet {
                Packet::Stun { from, data } => {
                    self.last_direct_stun = Some(now);
                    side.core.handle_input(now, from, &data);
                }
                Packet::Data { direct: true } => {
                    let peer = self.sides[1 - to].addr;
                    let side = &mut self.sides[to];
                    if let Some(id) = side.core.direct_path_to(peer) {
                        side.core.on_receive(now, id);
                    }
                }
                Packet::Data { direct: false } => {
                    if let Some(id) = side.relay_path {
                        side.core.on_receive(now, id);
                    }
                }
            }
        }
        for i in 0..2 {
            let side = &mut self.sides[i];
            if side.core.poll_timeout().is_some_and(|t| t <= now) {
                side.core.handle_timeout(now);
            }
            // Game traffic on the active path.
            if now >= side.next_traffic {
                side.next_traffic = now + TRAFFIC_EVERY;
                if let Some((_, kind)) = side.core.active() {
                    let direct = kind.is_direct();
                    let up = if direct {
                        self.direct_up
                    } else {
                        self.relay_up
                    };
                    if up && !self.lost() {
                        let delay = if direct { DELAY } else { 2 * DELAY };
                        self.in_flight
                            .push_back((now + delay, 1 - i, Packet::Data { direct }));
                    }
                }
            }
            // STUN goes over the direct link only.
            while let Some(t) = self.sides[i].core.poll_transmit() {
                let peer = self.sides[1 - i].addr;
                if t.destination == peer && self.direct_up && !self.lost() {
                    let from = self.sides[i].addr;
                    self.in_flight.push_back((
                        now + DELAY,
                        1 - i,
                        Packet::Stun {
                            from,
                            data: t.contents,
                        },
                    ));
                }
            }
            let mut round = false;
            while let Some(event) = self.sides[i].core.poll_event() {
                self.check_event(&event);
                if event == ConnEvent::DirectRoundDue {
                    round = true;
                }
                let at = self.elapsed();
                self.sides[i].events.push((at, event));
            }
            if round {
                self.rounds_due.push(self.elapsed());
                // Signalled to the peer (through the relay or the coordinator).
                self.start_round();
            }
        }
    }

    /// Never a switch to a path that was not validated: a direct path only right after
    /// checks crossed the direct link, a relay only while the relay is set up.
    fn check_event(&self, event: &ConnEvent) {
        if let ConnEvent::PathChanged { kind, .. } = event {
            match kind {
                PathKind::Direct { .. } => {
                    let crossed = self
                        .last_direct_stun
                        .is_some_and(|t| self.now - t <= Duration::from_millis(100));
                    assert!(
                        crossed,
                        "switch to an unvalidated direct path at {:?}",
                        self.elapsed()
                    );
                }
                PathKind::Relay { .. } | PathKind::RelayedPeer { .. } | PathKind::Routed { .. } => {
                    assert!(self.relay_up, "switch to a relay that is down");
                }
            }
        }
    }

    fn active_kind(&self, side: usize) -> Option<bool> {
        self.sides[side].core.active().map(|(_, k)| k.is_direct())
    }

    /// The first time after `after` that `side` switched to a direct (or relay) path.
    fn switched_at(&self, side: usize, direct: bool, after: Duration) -> Option<Duration> {
        self.sides[side].events.iter().find_map(|(at, e)| match e {
            ConnEvent::PathChanged { kind, .. } if *at >= after && kind.is_direct() == direct => {
                Some(*at)
            }
            _ => None,
        })
    }
}

const SEEDS: u64 = 40;

/// p50 and max of some durations, for the FIGURE lines.
fn spread(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn relay_first_then_direct_when_the_direct_path_opens() {
    let mut took_all = Vec::new();
    for seed in 0..SEEDS {
        let loss = if seed % 2 == 0 { 0.0 } else { 0.05 };
        let mut sim = Sim::new(seed, loss, true, false);
        sim.run_until(Duration::from_secs(10));
        for side in 0..2 {
            assert_eq!(
                sim.active_kind(side),
                Some(false),
                "seed {seed}: on the relay"
            );
            let first = &sim.sides[side].events.iter().find_map(|(_, e)| match e {
                ConnEvent::PathChanged { reason, .. } => Some(*reason),
                _ => None,
            });
            assert_eq!(*first, Some(SwitchReason::First), "seed {seed}");
        }
        sim.direct_up = true;
        sim.run_until(Duration::from_secs(30));
        for side in 0..2 {
            assert_eq!(sim.active_kind(side), Some(true), "seed {seed} side {side}");
            let at = sim.switched_at(side, true, Duration::from_secs(10));
            let took = at.expect("switched") - Duration::from_secs(10);
            // A round starts at most 5 s after the opening, then probing takes a few RTTs.
            assert!(took <= Duration::from_secs(6), "seed {seed}: {took:?}");
            took_all.push(took);
        }
    }
    let (p50, max) = spread(took_all);
    eprintln!("FIGURE conn upgrade: direct path open -> switched, p50 {p50:?} max {max:?}");
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_and_comes_back() {
    let mut took_all = Vec::new();
    for seed in 0..SEEDS {
        let loss = if seed % 2 == 0 { 0.0 } else { 0.05 };
        let mut sim = Sim::new(seed, loss, true, true);
        sim.run_until(Duration::from_secs(10));
        assert_eq!(sim.active_kind(0), Some(true), "seed {seed}: direct");
        assert_eq!(sim.active_kind(1), Some(true), "seed {seed}: direct");
        sim.direct_up = false;
        sim.run_until(Duration::from_secs(20));
        for side in 0..2 {
            assert_eq!(sim.active_kind(side), Some(false), "seed {seed}: relay");
            let at = sim.switched_at(side, false, Duration::from_secs(10));
            let took = at.expect("fell back") - Duration::from_secs(10);
            assert!(took <= Duration::from_millis(3500), "seed {seed}: {took:?}");
            took_all.push(took);
        }
        sim.direct_up = true;
        sim.run_until(Duration::from_secs(30));
        for side in 0..2 {
            assert_eq!(
                sim.active_kind(side),
                Some(true),
                "seed {seed}: direct again"
            );
        }
    }
    let (p50, max) = spread(took_all);
    eprintln!("FIGURE conn downgrade: direct path dead -> on the relay, p50 {p50:?} max {max:?}");
}

#[test]
fn both_paths_dying_reports_no_path_until_one_returns() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 0.0, true, true);
        sim.run_until(Duration::from_secs(5));
        sim.direct_up = false;
        sim.relay_up = false;
        sim.remove_relays(); // the TURN client lost its allocation
        sim.run_until(Duration::from_secs(10));
        for side in 0..2 {
            assert_eq!(sim.active_kind(side), None, "seed {seed}");
            assert!(
                sim.sides[side]
                    .events
                    .iter()
                    .any(|(at, e)| *e == ConnEvent::NoPath && *at >= Duration::from_secs(5)),
                "seed {seed}: NoPath"
            );
        }
        sim.relay_up = true;
        sim.add_relays();
        sim.run_until(Duration::from_secs(11));
        for side in 0..2 {
            assert_eq!(
                sim.active_kind(side),
                Some(false),
                "seed {seed}: relay back"
            );
        }
    }
}

#[test]
fn direct_rounds_are_retried_every_5_s_then_at_most_every_60_s() {
    let mut sim = Sim::new(7, 0.0, true, false);
    sim.run_until(Duration::from_secs(400));
    let due = &sim.rounds_due;
    assert!(
        due.first().is_some_and(|d| *d <= TICK),
        "the first round at once"
    );
    for pair in due.windows(2) {
        let gap = pair[1] - pair[0];
        if pair[1] <= Duration::from_secs(60) {
            assert!(gap <= Duration::from_secs(5) + TICK, "early gap {gap:?}");
        }
        assert!(gap <= Duration::from_secs(60) + TICK, "gap {gap:?}");
    }
    let late: Vec<Duration> = due
        .windows(2)
        .filter(|p| p[0] >= Duration::from_secs(200))
        .map(|p| p[1] - p[0])
        .collect();
    assert!(
        late.iter().all(|g| *g >= Duration::from_secs(20)),
        "backed off late: {late:?}"
    );
    // Never a direct path: the link never opened.
    assert_eq!(sim.active_kind(0), Some(false));
}

#[test]
fn without_a_relay_the_first_direct_path_is_the_first_path() {
    let mut sim = Sim::new(3, 0.0, false, true);
    sim.run_until(Duration::from_secs(3));
    for side in 0..2 {
        let first = sim.sides[side].events.iter().find_map(|(_, e)| match e {
            ConnEvent::PathChanged { kind, reason, .. } => Some((kind.is_direct(), *reason)),
            _ => None,
        });
        assert_eq!(first, Some((true, SwitchReason::First)), "side {side}");
    }
    // An idle game: no traffic, only consent checks keep the path alive.
    let before = sim.sides[0].events.len();
    for side in &mut sim.sides {
        side.next_traffic = sim.start + Duration::from_secs(3600);
    }
    sim.run_until(Duration::from_secs(20));
    assert_eq!(sim.active_kind(0), Some(true), "consent keeps an idle path");
    assert_eq!(sim.sides[0].events.len(), before, "no switch while idle");
}

#[test]
fn an_adopted_first_round_moves_both_sides_to_direct_without_a_new_round() {
    let mut took = Vec::new();
    for seed in 0..SEEDS {
        let loss = if seed % 2 == 0 { 0.0 } else { 0.05 };
        let mut sim = Sim::new(seed, loss, true, true);
        sim.adopt_first_round();
        sim.run_until(Duration::from_secs(5));
        for side in 0..2 {
            assert_eq!(sim.active_kind(side), Some(true), "seed {seed} side {side}");
            took.push(
                sim.switched_at(side, true, Duration::ZERO)
                    .expect("switched"),
            );
        }
        assert!(
            sim.rounds_due.is_empty(),
            "seed {seed}: the adopted round sufficed"
        );
        // Idle afterwards: the adopted round's consent checks keep the path.
        for side in &mut sim.sides {
            side.next_traffic = sim.start + Duration::from_secs(3600);
        }
        let before = sim.sides[0].events.len();
        sim.run_until(Duration::from_secs(25));
        assert_eq!(
            sim.active_kind(0),
            Some(true),
            "seed {seed}: consent keeps it"
        );
        assert_eq!(sim.sides[0].events.len(), before, "seed {seed}: no switch");
        // The direct link fails while idle: consent checks go unanswered, both sides fall
        // back to the relay within the dead time and a check interval.
        sim.direct_up = false;
        let cut = sim.elapsed();
        sim.run_until(cut + Duration::from_secs(6));
        for side in 0..2 {
            let back = sim.switched_at(side, false, cut).expect("fell back");
            assert!(
                back - cut <= Duration::from_millis(4100),
                "seed {seed}: {:?}",
                back - cut
            );
        }
    }
    let (p50, max) = spread(took);
    println!("FIGURE adopted first round -> direct: p50 {p50:?} max {max:?}");
}

#[test]
fn a_direct_path_adopted_without_its_round_lives_on_traffic_only() {
    let mut sim = Sim::new(9, 0.0, true, true);
    // Validated by a round outside the cores (checks crossed just now).
    sim.last_direct_stun = Some(sim.now);
    let b = b_addr();
    sim.sides[0].core.adopt_direct(sim.now, b, None);
    assert_eq!(sim.active_kind(0), Some(true));
    // No consent checks can be sent without the round's credentials: while traffic
    // flows the path lives; the controlling side asks for no round meanwhile.
    sim.sides[1].core.adopt_direct(sim.now, a_addr(), None);
    sim.run_until(Duration::from_secs(5));
    assert_eq!(sim.active_kind(0), Some(true));
    assert!(sim.rounds_due.is_empty());
}
