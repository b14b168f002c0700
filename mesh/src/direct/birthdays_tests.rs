//! [`Birthdays`] in simulated time: which side a node takes for a `Go` ([`side_for`]), how
//! often rounds may start ([`Birthdays::admits`]), whole rounds between a hard and an easy
//! node through NAT models over many seeds (a random-port symmetric NAT on the hard side,
//! a port-restricted one on the easy side, as in `punch::birthday_sim`), a round where
//! nothing lands, and keeping the found pair ([`Birthdays::keep`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::coord::{Candidate, CandidateKind, NatMapping};

#[path = "birthdays_sim.rs"]
mod sim;
use sim::*;

#[test]
fn only_a_random_mapping_facing_an_independent_one_gets_a_round() {
    let last = addr("198.18.0.2:2000");
    let candidates = vec![
        Candidate::new(CandidateKind::Host, addr("10.0.0.5:4000")),
        Candidate::new(CandidateKind::ServerReflexive, addr("198.18.0.1:1000")),
        Candidate::new(CandidateKind::ServerReflexive, last),
        // Not the server's observation: never taken for one.
        Candidate::new(CandidateKind::Upnp, addr("198.18.0.3:3000")),
        Candidate::new(CandidateKind::Relay, addr("198.18.0.4:4000")),
    ];
    let mappings = [
        None,
        Some(NatMapping::Random),
        Some(NatMapping::EndpointIndependent),
        Some(NatMapping::Predictable),
    ];
    for own in mappings {
        for theirs in mappings {
            let g = go(peer(9), candidates.clone(), theirs, credentials());
            let expected = match (own, theirs) {
                (Some(NatMapping::Random), Some(NatMapping::EndpointIndependent)) => {
                    Some(BirthdaySide::Hard { easy: last })
                }
                (Some(NatMapping::EndpointIndependent), Some(NatMapping::Random)) => {
                    Some(BirthdaySide::Easy { hard_ip: last.ip() })
                }
                _ => None,
            };
            assert_eq!(side_for(own, &g), expected, "own {own:?}, peer {theirs:?}");
        }
    }
}

#[test]
fn no_round_without_the_peers_reflexive_candidate() {
    let others = vec![
        Candidate::new(CandidateKind::Host, addr("10.0.0.5:4000")),
        Candidate::new(CandidateKind::Upnp, addr("198.18.0.3:3000")),
        Candidate::new(CandidateKind::Relay, addr("198.18.0.4:4000")),
    ];
    for candidates in [others, Vec::new()] {
        for (own, theirs) in [
            (NatMapping::Random, NatMapping::EndpointIndependent),
            (NatMapping::EndpointIndependent, NatMapping::Random),
        ] {
            let g = go(peer(9), candidates.clone(), Some(theirs), credentials());
            assert_eq!(side_for(Some(own), &g), None, "{candidates:?}");
        }
    }
}

#[test]
fn a_peer_gets_one_round_per_interval_and_at_most_max_runs_probe_at_once() {
    let t0 = Instant::now();
    let budget = Duration::from_millis(500);
    let mut rounds = Birthdays::new(BirthdayConfig {
        budget,
        ..config(1)
    });
    let side = BirthdaySide::Easy {
        hard_ip: ip(HARD_IP),
    };
    let peers: Vec<PeerId> = (0..MAX_RUNS).map(|n| peer(10 + n as u8)).collect();
    for p in &peers {
        assert!(rounds.admits(t0, p));
        rounds.start(t0, *p, side, &easy_go(), t0, vec![LocalSocket::PRIMARY]);
        assert!(!rounds.admits(t0, p), "a second round with a running peer");
    }
    let another = peer(99);
    assert!(
        !rounds.admits(t0, &another),
        "{MAX_RUNS} rounds probe already"
    );
    assert!(!rounds.admits(t0 + budget / 2, &another));

    // Nothing answers: the rounds fail at the budget and free their slots.
    let end = t0 + budget + Duration::from_millis(10);
    let outputs = run_alone(&mut rounds, t0, end);
    let failed: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            BirthdayOutput::Failed { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect();
    assert_eq!(failed, peers, "{outputs:?}");
    assert!(rounds.admits(end, &another));

    // The peers themselves wait for the interval from their round's start.
    for p in &peers {
        assert!(!rounds.admits(end, p));
        assert!(!rounds.admits(t0 + PEER_INTERVAL - TICK, p));
        assert!(rounds.admits(t0 + PEER_INTERVAL, p));
    }
}

#[test]
fn hard_and_easy_nodes_both_validate_a_pair_over_many_seeds() {
    let easy_public = addr(EASY_PUBLIC);
    let mut times = Vec::new();
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, &config(seed));
        sim.until_validated();
        // A few more round trips: a second validation or a late close would show.
        let settle = sim.now + 4 * ONE_WAY;
        sim.run_until(settle, |_| false);
        let ((hard_at, _), (easy_at, _)) = sim.pairs();

        // The hard side: the pair, then every other extra socket closed once.
        let [(
            _,
            BirthdayOutput::Validated {
                peer,
                found,
                rtt,
                checks,
                after,
            },
        ), (close_at, BirthdayOutput::Close(closed))] = &sim.hard.outputs[..]
        else {
            panic!("seed {seed}: hard outputs {:?}", sim.hard.outputs);
        };
        assert_eq!(*peer, easy_id(), "seed {seed}");
        assert_eq!(found.remote, easy_public, "seed {seed}");
        assert!(hard_ids().contains(&found.local), "seed {seed}: {found:?}");
        // The hard side follows the nomination: its RTT is its latest answered check's,
        // zero when none was answered before the nomination came.
        assert!(*rtt == 2 * ONE_WAY || rtt.is_zero(), "seed {seed}: {rtt:?}");
        assert_eq!(*after, hard_at - sim.start_at, "seed {seed}");
        assert_eq!(*close_at, hard_at, "seed {seed}");
        let mut losers = closed.clone();
        losers.sort();
        losers.dedup();
        assert_eq!(
            losers.len(),
            closed.len(),
            "seed {seed}: twice in {closed:?}"
        );
        let expected: Vec<_> = hard_ids()
            .into_iter()
            .filter(|s| s != &found.local)
            .collect();
        assert_eq!(losers, expected, "seed {seed}");
        assert!(!closed.contains(&LocalSocket::PRIMARY));
        // Its checks: as many as went out, within the cap (triggered ones only as answers).
        let (requests, answers) = sim.hard.sent_until(hard_at);
        assert_eq!(*checks, requests, "seed {seed}");
        let cap = u64::from(HARD_SOCKETS) * u64::from(HARD_ROUNDS);
        assert!(*checks <= cap + answers, "seed {seed}: {checks} checks");
        let hard_found = *found;

        // The easy side: a pair on the hard side's IP from its primary socket, nothing to
        // close (that it is the hard side's pair: next test).
        let [(
            _,
            BirthdayOutput::Validated {
                peer,
                found,
                rtt,
                checks,
                after,
            },
        )] = &sim.easy.outputs[..]
        else {
            panic!("seed {seed}: easy outputs {:?}", sim.easy.outputs);
        };
        assert_eq!(*peer, hard_id(), "seed {seed}");
        assert_eq!(found.local, LocalSocket::PRIMARY, "seed {seed}");
        assert_eq!(found.remote.ip(), ip(HARD_IP), "seed {seed}");
        assert_eq!(*rtt, 2 * ONE_WAY, "seed {seed}");
        assert_eq!(*after, easy_at - sim.start_at, "seed {seed}");
        let (requests, answers) = sim.easy.sent_until(easy_at);
        // The probes, and the nomination of the pair sent when it validated.
        assert_eq!(*checks + 1, requests, "seed {seed}");
        assert!(
            *checks <= MAX_PROBES as u64 + answers,
            "seed {seed}: {checks} checks"
        );
        let easy_found = *found;

        // Each pair is handed out once.
        assert_eq!(sim.hard.rounds.take_found(&easy_id()), Some(hard_found));
        assert_eq!(sim.hard.rounds.take_found(&easy_id()), None);
        assert_eq!(sim.easy.rounds.take_found(&hard_id()), Some(easy_found));
        assert_eq!(sim.easy.rounds.take_found(&hard_id()), None);
        times.push(hard_at.max(easy_at) - sim.start_at);
    }
    times.sort();
    eprintln!(
        "birthdays: {SEEDS} seeds validated, {HARD_SOCKETS} sockets x {MAX_PROBES} probes over \
         {} ports, p50 {:?}, max {:?}",
        LAST_PORT - FIRST_PORT + 1,
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
fn a_round_where_nothing_lands_fails_at_the_budget_and_closes_every_hard_socket() {
    let config = config(7);
    let mut sim = Sim::new(7, &config);
    sim.drop_all = true;
    let deadline = sim.start_at + config.budget;
    sim.run_until(deadline + Duration::from_millis(100), |_| false);

    let cap = u64::from(HARD_SOCKETS) * u64::from(HARD_ROUNDS);
    assert_eq!(
        sim.hard.outputs,
        vec![
            (
                deadline,
                BirthdayOutput::Failed {
                    peer: easy_id(),
                    checks: cap,
                }
            ),
            (deadline, BirthdayOutput::Close(hard_ids())),
        ]
    );
    assert_eq!(
        sim.easy.outputs,
        vec![(
            deadline,
            BirthdayOutput::Failed {
                peer: hard_id(),
                checks: MAX_PROBES as u64,
            }
        )]
    );
    // Every check went out (no answers, so none was triggered), nothing after the end.
    assert_eq!(sim.hard.sent_until(deadline), (cap, 0));
    assert_eq!(sim.easy.sent_until(deadline), (MAX_PROBES as u64, 0));
    assert!(sim.hard.sent.iter().all(|(at, _)| *at < deadline));
    assert!(sim.easy.sent.iter().all(|(at, _)| *at < deadline));
    // Every hard socket sent its checks to the easy side's address.
    let from: HashSet<_> = sim.hard.sent.iter().map(|(_, t)| t.local).collect();
    assert_eq!(from, hard_ids().into_iter().collect());
    assert!(sim
        .hard
        .sent
        .iter()
        .all(|(_, t)| t.destination == addr(EASY_PUBLIC)));
    // The rounds are gone: no timer, no pair.
    assert_eq!(sim.hard.rounds.next_wake(), None);
    assert_eq!(sim.easy.rounds.next_wake(), None);
    assert_eq!(sim.hard.rounds.take_found(&easy_id()), None);
    assert_eq!(sim.easy.rounds.take_found(&hard_id()), None);
}

#[test]
fn a_kept_pair_gets_consent_checks_and_closes_after_the_grace_when_unused() {
    let mut sim = Sim::new(3, &config(3));
    sim.until_validated();
    let ((hard_at, hard_found), (easy_at, easy_found)) = sim.pairs();
    let winner = hard_found.local;
    let validated_outputs = sim.hard.outputs.len();
    // A kept pair holds no probing slot, but its peer gets no second round.
    assert!(sim.hard.rounds.admits(sim.now, &peer(99)));
    assert!(!sim.hard.rounds.admits(sim.now + PEER_INTERVAL, &easy_id()));

    // Used for a while: a consent check every second from the kept pair, never a close.
    sim.uses = Some(true);
    let used_until = hard_at.max(easy_at) + 30 * CONSENT_EVERY;
    sim.run_until(used_until, |_| false);
    assert_eq!(sim.hard.outputs.len(), validated_outputs, "nothing closed");
    assert!(sim.easy.outputs_after(easy_at).is_empty());
    for (node, at, found, from_peer) in [
        (&sim.hard, hard_at, hard_found, easy_id()),
        (&sim.easy, easy_at, easy_found, hard_id()),
    ] {
        let consent: Vec<_> = node
            .sent
            .iter()
            .filter(|(sent, t)| *sent > at && is_request(&t.contents))
            .collect();
        assert!(consent.len() >= 30, "{} consent checks", consent.len());
        for (k, (sent, t)) in (1u32..).zip(&consent) {
            assert_eq!(*sent, at + k * CONSENT_EVERY);
            assert_eq!((t.local, t.destination), (found.local, found.remote));
        }
        // Every datagram of the peer on the pair is reported heard; others are not.
        let after: Vec<_> = node.taken.iter().filter(|d| d.at > at).collect();
        let on_pair = after
            .iter()
            .filter(|d| (d.from, d.local) == (found.remote, found.local))
            .count();
        assert!(on_pair >= 2 * 29, "{on_pair} on the pair");
        for d in after {
            let expected =
                ((d.from, d.local) == (found.remote, found.local)).then_some((from_peer, found));
            assert_eq!(d.heard, expected, "from {} on {:?}", d.from, d.local);
        }
    }
    // An unrelated datagram on the kept socket, or one on a socket no round holds.
    let stranger = addr("198.18.0.99:1234");
    let peer_check = sim
        .hard
        .taken
        .iter()
        .rev()
        .find(|d| is_request(&d.data))
        .map(|d| d.data.clone())
        .expect("a check of the peer");
    assert_eq!(
        sim.hard
            .rounds
            .offer(sim.now, winner, stranger, b"not stun at all"),
        None
    );
    assert_eq!(
        sim.hard
            .rounds
            .offer(sim.now, LocalSocket(999), addr(EASY_PUBLIC), &peer_check),
        None
    );

    // Unused from now on: the pair goes after the grace, with its socket.
    sim.uses = Some(false);
    let unused_from = sim.now + TICK;
    sim.run_until(unused_from + KEEP_GRACE + 3 * CONSENT_EVERY, |_| false);
    assert_eq!(
        sim.hard.outputs_after(used_until),
        vec![(
            unused_from + KEEP_GRACE,
            BirthdayOutput::Close(vec![winner])
        )]
    );
    // The easy side's pair is on the primary socket: dropped, never closed.
    assert!(sim.easy.outputs_after(used_until).is_empty());
    for node in [&sim.hard, &sim.easy] {
        assert_eq!(node.rounds.next_wake(), None);
        assert!(node
            .sent
            .iter()
            .all(|(at, _)| *at <= unused_from + KEEP_GRACE));
    }
    assert!(sim
        .hard
        .sent
        .iter()
        .any(|(at, t)| *at > unused_from && is_request(&t.contents)));
    // The dropped pair is nobody's any more: its datagrams go unclaimed, nothing hands
    // it out.
    assert_eq!(
        sim.hard
            .rounds
            .offer(sim.now, winner, addr(EASY_PUBLIC), &peer_check),
        None
    );
    assert_eq!(sim.hard.rounds.take_found(&easy_id()), None);
    assert_eq!(sim.easy.rounds.take_found(&hard_id()), None);
}

#[test]
fn a_pair_used_again_within_the_grace_is_kept() {
    let mut sim = Sim::new(11, &config(11));
    sim.until_validated();
    let ((_, hard_found), _) = sim.pairs();
    let closes = |sim: &Sim| {
        sim.hard
            .outputs
            .iter()
            .filter(|(_, o)| *o == BirthdayOutput::Close(vec![hard_found.local]))
            .count()
    };

    sim.uses = Some(false);
    let first_unused = sim.now + TICK;
    sim.run_until(first_unused + KEEP_GRACE - CONSENT_EVERY, |_| false);
    sim.uses = Some(true);
    sim.step();
    sim.uses = Some(false);
    let unused_again = sim.now + TICK;
    sim.run_until(unused_again + KEEP_GRACE - TICK, |_| false);
    assert_eq!(closes(&sim), 0, "closed though used again");
    sim.step();
    assert_eq!(closes(&sim), 1);
    assert_eq!(
        sim.hard.outputs.last().map(|(at, _)| *at),
        Some(unused_again + KEEP_GRACE)
    );
}

/// The pair is one pair: the easy side's remote is the public mapping of the hard side's
/// socket towards the easy side (otherwise the easy side sends to a socket the hard side
/// closed as a loser). Hits from each direction can cross within one round trip (an easy
/// probe landing on hard socket `i` while a check from hard socket `j` comes through a port
/// the easy side probed earlier): before the easy side nominated its pair (USE-CANDIDATE)
/// and the hard side followed, 7 of these 50 seeds ended with two different pairs.
#[test]
fn both_sides_name_the_same_pair() {
    let easy_public = addr(EASY_PUBLIC);
    let mut mismatched = Vec::new();
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, &config(seed));
        sim.until_validated();
        let ((_, hard), (_, easy)) = sim.pairs();
        let hard_public = sim.hard_nat.public_of(hard.local, easy_public);
        if hard_public != Some(easy.remote) {
            mismatched.push((seed, hard.local, hard_public, easy.remote));
        }
    }
    assert!(
        mismatched.is_empty(),
        "{} of {SEEDS} seeds validated different pairs (seed, hard socket, its public \
         address, the easy side's remote): {mismatched:?}",
        mismatched.len()
    );
}
