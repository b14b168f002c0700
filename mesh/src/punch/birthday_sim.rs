//! Birthday probing in simulated time through NAT models, over many seeds: a random-port
//! symmetric NAT (address-and-port-dependent mapping and filtering) on the hard side, an
//! endpoint-independent mapping NAT with address-and-port-dependent filtering (RFC 4787
//! "port-restricted") on the easy side. The success rate must match the analytic figure,
//! and no round may exceed its probe budget.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::birthday::{
    success_probability, BirthdayConfig, BirthdayEvent, BirthdayProber, BirthdaySide,
};
use super::Credentials;

const ONE_WAY: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(1);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The hard side's NAT: a fresh random public port per (socket, destination); inbound only
/// from that destination.
struct SymmetricNat {
    public_ip: IpAddr,
    by_flow: HashMap<(usize, SocketAddr), u16>,
    by_port: HashMap<u16, (usize, SocketAddr)>,
}

impl SymmetricNat {
    fn outbound(&mut self, rng: &mut StdRng, socket: usize, dest: SocketAddr) -> SocketAddr {
        let port = match self.by_flow.get(&(socket, dest)) {
            Some(p) => *p,
            None => loop {
                let p = rng.gen_range(1024..=65535u16);
                if !self.by_port.contains_key(&p) {
                    self.by_flow.insert((socket, dest), p);
                    self.by_port.insert(p, (socket, dest));
                    break p;
                }
            },
        };
        SocketAddr::new(self.public_ip, port)
    }

    /// The local socket a datagram from `from` to public `port` reaches, if the filter lets
    /// it in.
    fn inbound(&self, from: SocketAddr, port: u16) -> Option<usize> {
        match self.by_port.get(&port) {
            Some((socket, dest)) if *dest == from => Some(*socket),
            _ => None,
        }
    }
}

/// The easy side's NAT: one public port; inbound only from addresses it sent to.
struct PortRestrictedNat {
    public: SocketAddr,
    sent_to: HashSet<SocketAddr>,
}

/// (arrival, to the hard side?, destination, source, bytes)
type Wire = VecDeque<(Instant, bool, SocketAddr, SocketAddr, Vec<u8>)>;

struct Outcome {
    hard: Option<(usize, SocketAddr)>,
    easy: Option<SocketAddr>,
    hard_checks: u64,
    easy_checks: u64,
    hard_cap: u64,
    easy_cap: u64,
    hard_answered: u64,
    easy_answered: u64,
    elapsed: Duration,
}

fn run(seed: u64, config: &BirthdayConfig) -> Outcome {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let creds = Credentials {
        local_ufrag: "hard".into(),
        local_pwd: "hardpassword-0123456789".into(),
        remote_ufrag: "easy".into(),
        remote_pwd: "easypassword-0123456789".into(),
    };
    let mut hard_nat = SymmetricNat {
        public_ip: ip("198.18.0.10"),
        by_flow: HashMap::new(),
        by_port: HashMap::new(),
    };
    let mut easy_nat = PortRestrictedNat {
        public: "198.18.0.20:40000".parse().expect("addr"),
        sent_to: HashSet::new(),
    };
    let seeded = |n: u64| BirthdayConfig {
        seed: Some(seed * 2 + n),
        ..config.clone()
    };
    let start_at = start + Duration::from_millis(10);
    let mut hard = BirthdayProber::new(
        BirthdaySide::Hard {
            easy: easy_nat.public,
        },
        seeded(0),
        creds.clone(),
        start_at,
    );
    let mut easy = BirthdayProber::new(
        BirthdaySide::Easy {
            hard_ip: hard_nat.public_ip,
        },
        seeded(1),
        creds.swapped(),
        start_at,
    );
    let mut wire: Wire = VecDeque::new();
    let mut out = Outcome {
        hard: None,
        easy: None,
        hard_checks: 0,
        easy_checks: 0,
        hard_cap: hard.check_cap(),
        easy_cap: easy.check_cap(),
        hard_answered: 0,
        easy_answered: 0,
        elapsed: Duration::ZERO,
    };
    let mut now = start;
    let end = start_at + config.budget + Duration::from_millis(200);
    while now < end && (out.hard.is_none() || out.easy.is_none()) {
        now += TICK;
        // Deliver.
        while let Some(pos) = wire.iter().position(|w| w.0 <= now) {
            let Some((_, to_hard, dest, from, bytes)) = wire.remove(pos) else {
                break;
            };
            if to_hard {
                if let Some(socket) = hard_nat.inbound(from, dest.port()) {
                    hard.handle_input(now, socket, from, &bytes);
                }
            } else if easy_nat.sent_to.contains(&from) {
                easy.handle_input(now, 0, from, &bytes);
            }
        }
        hard.handle_timeout(now);
        easy.handle_timeout(now);
        while let Some(t) = hard.poll_transmit() {
            let src = hard_nat.outbound(&mut rng, t.socket, t.destination);
            wire.push_back((now + ONE_WAY, false, t.destination, src, t.contents));
        }
        while let Some(t) = easy.poll_transmit() {
            easy_nat.sent_to.insert(t.destination);
            wire.push_back((
                now + ONE_WAY,
                true,
                t.destination,
                easy_nat.public,
                t.contents,
            ));
        }
        while let Some(e) = hard.poll_event() {
            if let BirthdayEvent::Validated { socket, remote, .. } = e {
                out.hard = Some((socket, remote));
                out.elapsed = out.elapsed.max(now - start_at);
            }
        }
        while let Some(e) = easy.poll_event() {
            if let BirthdayEvent::Validated { remote, .. } = e {
                out.easy = Some(remote);
                out.elapsed = out.elapsed.max(now - start_at);
            }
        }
    }
    out.hard_checks = hard.counters().checks_sent;
    out.easy_checks = easy.counters().checks_sent;
    out.hard_answered = hard.counters().answered;
    out.easy_answered = easy.counters().answered;
    out
}

#[test]
fn analytic_odds_of_the_defaults() {
    let p = success_probability(256, 1024, 64_512);
    assert!((0.982..0.985).contains(&p), "{p}");
    // Both sides hard would need tens of thousands of probes for the same odds.
    assert!(success_probability(256, 1024, 64_512 * 256 / 256) > 0.98);
    assert_eq!(success_probability(10, 100, 50), 1.0);
}

#[test]
fn success_rate_matches_the_analytic_figure_and_budgets_hold() {
    let config = BirthdayConfig::default();
    let seeds = 300;
    let mut wins = 0;
    let mut times = Vec::new();
    for seed in 0..seeds {
        let o = run(seed, &config);
        // Budgets: unsolicited checks within the cap, triggered ones only as answers.
        assert!(o.hard_checks <= o.hard_cap + o.hard_answered, "seed {seed}");
        assert!(o.easy_checks <= o.easy_cap + o.easy_answered, "seed {seed}");
        assert!(o.easy_cap == 1024 && o.hard_cap == 256 * 3);
        match (o.hard, o.easy) {
            (Some((_, remote)), Some(easy_remote)) => {
                // Both ends agree on one pair: the easy side's public address and the hard
                // socket's public mapping.
                assert_eq!(remote, "198.18.0.20:40000".parse().expect("addr"));
                assert_eq!(easy_remote.ip(), ip("198.18.0.10"));
                wins += 1;
                times.push(o.elapsed);
            }
            (None, None) => {}
            other => panic!("seed {seed}: one side validated alone: {other:?}"),
        }
    }
    let rate = f64::from(wins) / seeds as f64;
    let analytic = success_probability(256, 1024, 64_512);
    // Probes sent before all 256 mappings exist can only miss, so the simulated rate sits
    // a little under the analytic one; 300 seeds give a standard error of about 0.8 %.
    assert!(
        rate >= analytic - 0.04 && rate <= 1.0,
        "success {rate:.3} against analytic {analytic:.3}"
    );
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    eprintln!(
        "FIGURE birthday 256 sockets x 1024 probes: {wins}/{seeds} = {rate:.3} (analytic \
         {analytic:.3}), time to both sides validated p50 {p50:?} p99 {p99:?} (40 ms RTT)"
    );
    assert!(p50 < config.budget, "p50 {p50:?}");
}

#[test]
fn fewer_sockets_and_probes_lower_the_odds_as_predicted() {
    let config = BirthdayConfig {
        hard_sockets: 64,
        max_probes: 256,
        ..BirthdayConfig::default()
    };
    let seeds = 300;
    let wins = (0..seeds)
        .filter(|s| {
            let o = run(1000 + s, &config);
            assert!(o.easy_checks <= o.easy_cap + o.easy_answered);
            o.easy.is_some()
        })
        .count();
    let rate = wins as f64 / seeds as f64;
    let analytic = success_probability(64, 256, 64_512);
    eprintln!("FIGURE birthday 64 sockets x 256 probes: {rate:.3} (analytic {analytic:.3})");
    assert!(
        (rate - analytic).abs() < 0.08,
        "success {rate:.3} against analytic {analytic:.3}"
    );
}

#[test]
fn forged_checks_are_never_answered() {
    let start = Instant::now();
    let creds = Credentials {
        local_ufrag: "hard".into(),
        local_pwd: "hardpassword-0123456789".into(),
        remote_ufrag: "easy".into(),
        remote_pwd: "easypassword-0123456789".into(),
    };
    let mut hard = BirthdayProber::new(
        BirthdaySide::Hard {
            easy: "198.18.0.20:40000".parse().expect("addr"),
        },
        BirthdayConfig::default(),
        creds.clone(),
        start,
    );
    // A check from someone with the right ufrag but the wrong password.
    let mut wrong = creds.swapped();
    wrong.remote_pwd = "not-the-password-012345".into();
    let mut attacker = BirthdayProber::new(
        BirthdaySide::Easy {
            hard_ip: ip("198.18.0.10"),
        },
        BirthdayConfig::default(),
        wrong,
        start,
    );
    attacker.handle_timeout(start);
    let forged = attacker.poll_transmit().expect("a check");
    while hard.poll_transmit().is_some() {}
    let from: SocketAddr = "198.18.0.66:1234".parse().expect("addr");
    assert!(hard.handle_input(start, 0, from, &forged.contents));
    assert!(
        std::iter::from_fn(|| hard.poll_transmit()).all(|t| t.destination != from),
        "no answer to a forged check"
    );
    assert_eq!(hard.counters().unauthenticated, 1);
}
