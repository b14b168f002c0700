//! Probing under simulated time, loss, reordering and NAT models, over many seeds; plus
//! unit tests of the prober's edges (start time, foreign input, bounds).
//!
//! `cargo test -p mesh --lib punch -- --nocapture` prints the nomination-time and loss
//! figures; `PUNCH_SIM_SEEDS=1000` runs more seeds per case.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::sim::{punchable, run, NatType, Scenario, ALL_NATS};
use super::stun::{encode_request, RoleAttr};
use super::*;

/// Seeds per case: 100, or `PUNCH_SIM_SEEDS` for a longer soak.
fn seeds() -> u64 {
    std::env::var("PUNCH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}
const RTT_MS: f64 = 50.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let (p50, p99) = (percentile(times, 0.5), percentile(times, 0.99));
    println!(
        "{label}: n={} p50={:.1} ms ({:.2} RTT) p99={:.1} ms ({:.2} RTT) max={:.1} ms",
        times.len(),
        p50.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3 / RTT_MS,
        p99.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3 / RTT_MS,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    (p50, p99)
}

#[test]
fn nat_matrix_nominates_or_fails_cleanly_over_many_seeds() {
    let budget = ProbeConfig::default().budget;
    let (mut dialer, mut listener) = (Vec::new(), Vec::new());
    for a in ALL_NATS {
        for b in ALL_NATS {
            for seed in 0..seeds() {
                let (sa, sb) = run(&Scenario::new(a, b, seed));
                if punchable(a, b) {
                    let (ra, rb) = (sa.nominated(), sb.nominated());
                    assert!(
                        ra.is_some() && rb.is_some(),
                        "{a:?} x {b:?} seed {seed}: {sa:?} {sb:?}"
                    );
                    dialer.push(sa.at);
                    listener.push(sb.at);
                } else {
                    for side in [&sa, &sb] {
                        let Some(ProbeEvent::Failed(e)) = &side.event else {
                            panic!(
                                "{a:?} x {b:?} seed {seed}: expected NoDirectPath, got {side:?}"
                            );
                        };
                        assert!(!e.tried.is_empty(), "{e}");
                        assert!(e.elapsed <= budget + Duration::from_millis(10), "{e}");
                        assert!(side.at <= budget + Duration::from_millis(10));
                        assert!(e
                            .tried
                            .iter()
                            .all(|(_, o)| !matches!(o, PairOutcome::Validated { .. })));
                    }
                }
            }
        }
    }
    let (_, p99) = report(
        "dialer nominated after start, 50 ms RTT, 0% loss",
        &mut dialer,
    );
    report(
        "listener nominated after start, 50 ms RTT, 0% loss",
        &mut listener,
    );
    // Worst case is a symmetric NAT on the listener's side: the path opens through a
    // peer-reflexive candidate and a triggered check, 1.5 RTT plus pacing and jitter.
    assert!(p99 <= Duration::from_millis(100), "dialer p99 {p99:?}");
}

#[test]
fn nomination_time_without_symmetric_nats_is_about_one_rtt() {
    let mut dialer = Vec::new();
    for a in ALL_NATS.into_iter().filter(|n| *n != NatType::Symmetric) {
        for b in ALL_NATS.into_iter().filter(|n| *n != NatType::Symmetric) {
            for seed in 0..seeds() {
                let (sa, sb) = run(&Scenario::new(a, b, 1000 + seed));
                assert!(sa.nominated().is_some() && sb.nominated().is_some());
                dialer.push(sa.at);
            }
        }
    }
    let (p50, p99) = report("dialer, cone NATs only, 50 ms RTT", &mut dialer);
    assert!(p50 <= Duration::from_millis(65), "p50 {p50:?}");
    assert!(p99 <= Duration::from_millis(70), "p99 {p99:?}");
}

#[test]
fn twenty_percent_loss_with_reordering_still_punches() {
    let (mut ok, mut total, mut worst) = (0u32, 0u32, (1.0f64, NatType::None, NatType::None));
    let mut times = Vec::new();
    for a in ALL_NATS {
        for b in ALL_NATS {
            let mut pair_ok = 0u32;
            for seed in 0..seeds() {
                let mut s = Scenario::new(a, b, 5000 + seed);
                s.loss = 0.2;
                s.jitter = Duration::from_millis(20);
                let (sa, sb) = run(&s);
                let both = sa.nominated().is_some() && sb.nominated().is_some();
                if punchable(a, b) {
                    if both {
                        pair_ok += 1;
                        times.push(sa.at);
                    }
                } else {
                    assert!(!both, "{a:?} x {b:?} cannot have a direct path");
                }
            }
            if punchable(a, b) {
                ok += pair_ok;
                total += seeds() as u32;
                let rate = f64::from(pair_ok) / seeds() as f64;
                if rate < worst.0 {
                    worst = (rate, a, b);
                }
            }
        }
    }
    let rate = f64::from(ok) / f64::from(total);
    println!(
        "20% loss, 25+0..20 ms one-way: {ok}/{total} punchable runs nominated ({:.2}%), worst pair {:?} x {:?} at {:.0}%",
        rate * 100.0,
        worst.1,
        worst.2,
        worst.0 * 100.0
    );
    report("dialer nominated after start, 20% loss", &mut times);
    assert!(rate >= 0.99, "success rate {rate}");
}

#[test]
fn peers_behind_one_nat_connect_over_host_candidates_without_hairpinning() {
    for nat in [
        NatType::FullCone,
        NatType::PortRestricted,
        NatType::Symmetric,
    ] {
        for seed in 0..seeds() {
            let mut s = Scenario::new(nat, nat, seed);
            s.same_nat = true;
            s.one_way = Duration::from_millis(1);
            let (sa, sb) = run(&s);
            assert_eq!(
                sa.nominated(),
                Some(sb.local),
                "{nat:?} seed {seed}: {sa:?}"
            );
            assert_eq!(
                sb.nominated(),
                Some(sa.local),
                "{nat:?} seed {seed}: {sb:?}"
            );
        }
    }
}

#[test]
fn an_impostor_without_the_passwords_never_validates_a_pair() {
    for (a, b) in [
        (NatType::None, NatType::None),
        (NatType::FullCone, NatType::FullCone),
        (NatType::Restricted, NatType::PortRestricted),
    ] {
        for seed in 0..20 {
            let mut s = Scenario::new(a, b, 9000 + seed);
            s.wrong_password = true;
            let (sa, sb) = run(&s);
            for side in [&sa, &sb] {
                let Some(ProbeEvent::Failed(e)) = &side.event else {
                    panic!("{a:?} x {b:?} seed {seed}: {side:?}");
                };
                assert!(e
                    .tried
                    .iter()
                    .all(|(_, o)| !matches!(o, PairOutcome::Validated { .. })));
                assert!(side.counters.unauthenticated > 0, "{:?}", side.counters);
                assert_eq!(side.counters.responses_accepted, 0);
            }
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn creds() -> Credentials {
    Credentials {
        local_ufrag: "me".into(),
        local_pwd: "my-password-0123456789".into(),
        remote_ufrag: "you".into(),
        remote_pwd: "your-password-0123456789".into(),
    }
}

fn prober(now: Instant, start_at: Instant) -> Prober {
    let local = [Candidate::new(addr("10.0.0.1:5000"), CandidateKind::Host)];
    let remote = [
        Candidate::new(addr("10.0.0.2:5000"), CandidateKind::Host),
        Candidate::new(addr("198.18.0.2:40000"), CandidateKind::ServerReflexive),
    ];
    let config = ProbeConfig {
        seed: Some(7),
        ..ProbeConfig::default()
    };
    Prober::new(
        now,
        config,
        Role::Controlled,
        creds(),
        &local,
        &remote,
        start_at,
    )
}

/// A check from the peer to us, keyed with our password.
fn check_to_us(tid: u8, key: &[u8]) -> Vec<u8> {
    encode_request(
        &[tid; 12],
        "me:you",
        key,
        1,
        RoleAttr::Controlling(1),
        false,
    )
}

#[test]
fn nothing_is_sent_before_the_start_time() {
    let now = Instant::now();
    let start = now + Duration::from_millis(100);
    let mut p = prober(now, start);
    assert_eq!(p.poll_timeout(), Some(start));
    p.handle_timeout(now + Duration::from_millis(50));
    assert!(p.poll_transmit().is_none());
    // An early check is answered, but only from the start time on.
    let early = check_to_us(1, b"my-password-0123456789");
    assert!(p.handle_input(
        now + Duration::from_millis(60),
        addr("198.18.0.9:1234"),
        &early
    ));
    assert!(p.poll_transmit().is_none());
    p.handle_timeout(start);
    let sent: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
    assert!(sent
        .iter()
        .any(|t| t.destination == addr("198.18.0.9:1234")));
    assert!(p.counters().checks_sent >= 1);
}

#[test]
fn foreign_and_unauthenticated_input_is_dropped_and_counted() {
    let now = Instant::now();
    let mut p = prober(now, now);
    let from = addr("198.18.0.2:40000");
    assert!(!p.handle_input(now, from, b"\x40 a QUIC packet, not STUN at all"));
    let other_attempt = encode_request(
        &[2; 12],
        "someone:you",
        b"x",
        1,
        RoleAttr::Controlling(1),
        false,
    );
    assert!(
        !p.handle_input(now, from, &other_attempt),
        "another attempt's ufrag is not ours"
    );
    let forged = check_to_us(3, b"wrong-password");
    assert!(p.handle_input(now, from, &forged), "ours, but dropped");
    let c = p.counters();
    assert_eq!(
        (c.foreign, c.unauthenticated, c.requests_answered),
        (2, 1, 0)
    );
    // A response to a transaction we never sent is not ours either.
    let resp = super::stun::encode_success(&[4; 12], from, b"your-password-0123456789");
    assert!(!p.handle_input(now, from, &resp));
}

#[test]
fn learned_candidates_and_queues_are_bounded() {
    let now = Instant::now();
    let mut p = prober(now, now);
    let key = b"my-password-0123456789";
    for i in 0..500u32 {
        let from = SocketAddr::from(([198, 18, 7, (i % 250) as u8], 1000 + (i as u16)));
        assert!(p.handle_input(now, from, &check_to_us((i % 200) as u8, key)));
    }
    let config = ProbeConfig::default();
    assert!(p.remote_candidates().count() <= 2 + config.max_peer_reflexive);
    assert_eq!(
        p.counters().peer_reflexive_learned,
        config.max_peer_reflexive as u64
    );
    let queued = std::iter::from_fn(|| p.poll_transmit()).count();
    assert!(queued <= config.max_queued, "{queued}");
    assert!(p.counters().dropped_bounded > 0);
}

#[test]
fn an_answer_needs_the_right_key_and_the_right_source() {
    let now = Instant::now();
    let local = [Candidate::new(addr("10.0.0.1:5000"), CandidateKind::Host)];
    let remote = [Candidate::new(
        addr("198.18.0.2:40000"),
        CandidateKind::ServerReflexive,
    )];
    let config = ProbeConfig {
        seed: Some(3),
        ..ProbeConfig::default()
    };
    let mut p = Prober::new(
        now,
        config,
        Role::Controlling,
        creds(),
        &local,
        &remote,
        now,
    );
    p.handle_timeout(now);
    let check = p.poll_transmit().expect("first check");
    assert_eq!(check.destination, addr("198.18.0.2:40000"));
    let tid = super::stun::Parsed::parse(&check.contents)
        .expect("our own check parses")
        .transaction;
    let seen = addr("198.18.0.1:30000");
    let later = now + Duration::from_millis(50);
    let forged = super::stun::encode_success(&tid, seen, b"guessed");
    assert!(p.handle_input(later, check.destination, &forged));
    let genuine = super::stun::encode_success(&tid, seen, b"your-password-0123456789");
    assert!(
        p.handle_input(later, addr("198.18.0.3:40000"), &genuine),
        "wrong source"
    );
    assert_eq!(p.poll_event(), None);
    let c = p.counters();
    assert_eq!(
        (c.unauthenticated, c.asymmetric, c.responses_accepted),
        (1, 1, 0)
    );
    assert!(p.handle_input(later, check.destination, &genuine));
    assert_eq!(
        p.poll_event(),
        Some(ProbeEvent::Nominated {
            remote: check.destination,
            rtt: Duration::from_millis(50)
        })
    );
    assert_eq!(p.seen_as(), Some(seen));
    // Regular nomination: the next check on the pair carries USE-CANDIDATE.
    p.handle_timeout(later + Duration::from_millis(5));
    // (Earlier transmits include an ordinary retransmission that went out before.)
    let flags: Vec<bool> = std::iter::from_fn(|| p.poll_transmit())
        .filter_map(
            |t| match super::stun::Parsed::parse(&t.contents).ok()?.kind {
                super::stun::Kind::Request(r) => Some(r.use_candidate),
                _ => None,
            },
        )
        .collect();
    assert_eq!(flags.last(), Some(&true), "{flags:?}");
}

#[test]
fn ipv4_mapped_sources_match_ipv4_candidates() {
    let now = Instant::now();
    let mut p = prober(now, now);
    let mapped_src = addr("[::ffff:198.18.0.2]:40000");
    assert!(p.handle_input(now, mapped_src, &check_to_us(5, b"my-password-0123456789")));
    assert_eq!(
        p.counters().peer_reflexive_learned,
        0,
        "same as the announced srflx"
    );
}
