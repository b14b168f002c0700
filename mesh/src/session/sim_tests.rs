//! Simulation tests of the membership core: joins (sequential and concurrent), host crashes
//! (also in the middle of a join), partitions and broken links, with jitter and
//! retransmission delays, over many seeds. After every step no two linked members may both
//! be hosts; once the network is quiet every group of linked members shares one full view.

use std::time::Duration;

use super::sim::{id, AppPolicy, Ix, NetConfig, World};
use super::{
    Event, JoinFailure, LeaveReason, MembershipConfig, RejectReason, SessionEnd, SessionMsg,
};

const SEEDS: u64 = 200;

fn lossy() -> NetConfig {
    NetConfig {
        loss: 0.1,
        jitter: Duration::from_millis(10),
        ..NetConfig::default()
    }
}

/// Host 0, then joiners 1..n one after the other, in a world of `n + 2` nodes (the last
/// two free for later joiners).
fn mesh_of(seed: u64, n: usize, net: NetConfig) -> World {
    let mut w = World::new(seed, n + 2, net, MembershipConfig::default());
    w.host(0);
    for i in 1..n {
        w.join(i, 0);
        w.run_for(Duration::from_secs(2));
    }
    w.run_for(Duration::from_secs(1));
    w
}

fn ended(w: &World, i: Ix) -> Option<SessionEnd> {
    w.nodes[i].events.iter().find_map(|(_, e)| match e {
        Event::Ended(why) => Some(why.clone()),
        _ => None,
    })
}

fn assert_ok(w: &World, seed: u64) {
    assert!(
        w.split_hosts.is_empty(),
        "seed {seed}: two linked hosts {:?}",
        w.split_hosts
    );
    if let Err(e) = w.check_consistent() {
        panic!("seed {seed}: {e}");
    }
}

#[test]
fn sequential_joins_form_a_full_mesh_with_the_first_member_as_host() {
    for seed in 0..SEEDS {
        let w = mesh_of(seed, 8, lossy());
        assert_ok(&w, seed);
        assert_eq!(w.members().len(), 8, "seed {seed}");
        for i in 0..8 {
            let c = w.core(i).expect("alive");
            assert_eq!(c.host_id(), Some(id(0)), "seed {seed}");
            assert_eq!(
                c.view().members,
                (0..8).map(id).collect::<Vec<_>>(),
                "join order"
            );
            assert_eq!(c.view().epoch, 7);
        }
    }
}

#[test]
fn concurrent_joins_serialize_into_one_order() {
    for seed in 0..SEEDS {
        let mut w = World::new(seed, 6, lossy(), MembershipConfig::default());
        w.host(0);
        for i in 1..6 {
            w.join(i, 0);
        }
        w.run_for(Duration::from_secs(8));
        assert_ok(&w, seed);
        assert_eq!(
            w.members().len(),
            6,
            "seed {seed}: all five concurrent joiners got in"
        );
        let view = w.core(0).expect("host").view().clone();
        assert_eq!(view.epoch, 5, "one epoch per joiner");
        // Every member saw the joins one at a time, in the same order.
        for i in 1..6 {
            let c = w.core(i).expect("member");
            assert_eq!(c.view(), &view, "seed {seed}");
        }
    }
}

#[test]
fn a_crashed_host_is_replaced_by_the_longest_standing_member() {
    for seed in 0..SEEDS {
        let mut w = mesh_of(seed, 5, lossy());
        let t0 = w.now;
        w.crash(0);
        w.run_for(Duration::from_secs(10));
        assert_ok(&w, seed);
        assert_eq!(w.members(), vec![1, 2, 3, 4], "seed {seed}");
        for i in 1..5 {
            let c = w.core(i).expect("alive");
            assert_eq!(c.host_id(), Some(id(1)), "seed {seed}");
            let changed = w.nodes[i].events.iter().find_map(|(t, e)| match e {
                Event::HostChanged { old, new } => Some((*t, *old, *new)),
                _ => None,
            });
            let (t, old, new) = changed.expect("a host change");
            assert_eq!((old, new), (id(0), id(1)));
            // Detection (3 s) plus a few message delays.
            assert!(
                t - t0 < Duration::from_secs(4),
                "seed {seed}: took {:?}",
                t - t0
            );
            let left = w.nodes[i].events.iter().any(|(_, e)| {
                *e == Event::MemberLeft {
                    peer: id(0),
                    reason: LeaveReason::Lost,
                }
            });
            assert!(left, "seed {seed}: member {i} saw the host leave");
        }
    }
}

#[test]
fn a_host_that_leaves_is_replaced_at_once() {
    let mut w = mesh_of(1, 4, NetConfig::default());
    w.leave(0);
    // The goodbye goes out before the process exits.
    w.run_for(Duration::from_millis(200));
    w.crash(0);
    w.run_for(Duration::from_secs(2));
    assert_ok(&w, 1);
    for i in 1..4 {
        assert_eq!(w.core(i).and_then(|c| c.host_id()), Some(id(1)));
    }
}

#[test]
fn the_host_dying_mid_join_fails_the_join_and_the_rest_elect() {
    for seed in 0..SEEDS {
        let mut w = mesh_of(seed, 4, lossy());
        w.join(4, 0);
        // Somewhere in the join: between the request and the welcome.
        let at = Duration::from_millis(100 + seed % 400);
        w.run_for(at);
        w.crash(0);
        w.run_for(Duration::from_secs(12));
        assert_ok(&w, seed);
        let joined = w.core(4).is_some_and(|c| c.is_member());
        if joined {
            assert_eq!(w.members(), vec![1, 2, 3, 4], "seed {seed}");
        } else {
            assert!(
                matches!(ended(&w, 4), Some(SessionEnd::JoinFailed(_))),
                "seed {seed}: the joiner ended with a typed failure: {:?}",
                ended(&w, 4)
            );
            assert_eq!(w.members(), vec![1, 2, 3], "seed {seed}");
        }
        assert_eq!(
            w.core(1).and_then(|c| c.host_id()),
            Some(id(1)),
            "seed {seed}"
        );
    }
}

#[test]
fn a_member_leaving_during_a_join_still_lets_the_joiner_in() {
    for seed in 0..SEEDS {
        let mut w = mesh_of(seed, 4, lossy());
        w.join(4, 0);
        w.run_for(Duration::from_millis(50 + seed % 300));
        w.leave(2);
        w.run_for(Duration::from_millis(200));
        w.crash(2);
        w.run_for(Duration::from_secs(12));
        assert_ok(&w, seed);
        assert_eq!(w.members(), vec![0, 1, 3, 4], "seed {seed}");
    }
}

#[test]
fn a_joiner_that_never_reports_is_dropped_and_no_longer_expected() {
    let mut w = mesh_of(3, 3, NetConfig::default());
    // Joiner 3 asks, then goes silent for good (it crashes after its request).
    w.join(3, 0);
    w.run_for(Duration::from_millis(250));
    w.crash(3);
    // The host's join deadline (20 s) ends it even though the joiner's link looks alive
    // until the heartbeats stop.
    w.run_for(Duration::from_secs(25));
    assert_ok(&w, 3);
    assert_eq!(w.members(), vec![0, 1, 2]);
    for i in 1..3 {
        assert!(
            !w.nodes[i].allowed.contains(&3),
            "member {i} still expects the joiner"
        );
    }
}

#[test]
fn rejections_are_typed() {
    // Full.
    let mut cfg = MembershipConfig {
        max_players: 2,
        ..MembershipConfig::default()
    };
    let mut w = World::new(5, 3, NetConfig::default(), cfg.clone());
    w.host(0);
    w.join(1, 0);
    w.run_for(Duration::from_secs(2));
    w.join(2, 0);
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        ended(&w, 2),
        Some(SessionEnd::JoinFailed(JoinFailure::Rejected(
            RejectReason::Full
        )))
    );
    // The application says no.
    cfg.max_players = 8;
    let mut w = World::new(6, 2, NetConfig::default(), cfg.clone());
    w.host(0);
    w.nodes[0].app = AppPolicy::RejectAll;
    w.join(1, 0);
    w.run_for(Duration::from_secs(3));
    assert_eq!(
        ended(&w, 1),
        Some(SessionEnd::JoinFailed(JoinFailure::Rejected(
            RejectReason::App("no".into())
        )))
    );
    // Locked.
    let mut w = World::new(7, 2, NetConfig::default(), cfg.clone());
    w.host(0);
    w.set_locked(0, true);
    w.join(1, 0);
    w.run_for(Duration::from_secs(3));
    assert_eq!(
        ended(&w, 1),
        Some(SessionEnd::JoinFailed(JoinFailure::Rejected(
            RejectReason::Locked
        )))
    );
    // A silent application: the default (accept) applies after the decision timeout.
    let mut w = World::new(8, 2, NetConfig::default(), cfg);
    w.host(0);
    w.nodes[0].app = AppPolicy::Silent;
    w.join(1, 0);
    w.run_for(Duration::from_secs(4));
    assert!(w.core(1).is_some_and(|c| c.is_member()));
}

#[test]
fn an_unreachable_member_fails_the_join_naming_it() {
    let mut w = mesh_of(9, 3, NetConfig::default());
    // The joiner cannot reach member 2 (e.g. both behind symmetric NATs).
    w.cut.insert((2, 3));
    w.join(3, 0);
    w.run_for(Duration::from_secs(5));
    assert_eq!(
        ended(&w, 3),
        Some(SessionEnd::JoinFailed(JoinFailure::MemberUnreachable {
            peer: id(2)
        }))
    );
    assert_ok(&w, 9);
    assert_eq!(w.members(), vec![0, 1, 2]);
}

#[test]
fn a_broken_link_between_members_removes_the_later_joined() {
    for seed in 0..SEEDS {
        let mut w = mesh_of(seed, 5, lossy());
        w.cut.insert((2, 4));
        w.run_for(Duration::from_secs(8));
        assert_ok(&w, seed);
        assert_eq!(w.members(), vec![0, 1, 2, 3], "seed {seed}");
        assert_eq!(ended(&w, 4), Some(SessionEnd::Removed), "seed {seed}");
    }
}

#[test]
fn partitions_never_make_two_linked_hosts_and_heal_into_consistent_groups() {
    for seed in 0..SEEDS {
        let n = 6;
        let mut w = mesh_of(seed, n, lossy());
        // A random side, random duration; sometimes the host crashes too.
        let side: Vec<Ix> = (0..n)
            .filter(|_| rand::Rng::gen_bool(&mut w.rng, 0.5))
            .collect();
        w.partition(&side);
        if seed % 3 == 0 {
            w.crash(0);
        }
        let d = Duration::from_millis(500 + (seed * 137) % 8000);
        w.run_for(d);
        w.heal();
        w.run_for(Duration::from_secs(15));
        assert_ok(&w, seed);
        // Every live node is either a consistent member or ended with a reason.
        for i in 0..n {
            if w.nodes[i].alive && !w.core(i).is_some_and(|c| c.is_member()) {
                assert!(ended(&w, i).is_some(), "seed {seed}: node {i} is stuck");
            }
        }
    }
}

#[test]
fn forged_views_and_out_of_order_messages_close_only_that_link() {
    let mut w = mesh_of(11, 4, NetConfig::default());
    // Member 2 claims to be host with a new epoch: a violation at every receiver.
    let forged = SessionMsg::View {
        view: super::View {
            epoch: 99,
            members: vec![id(2), id(1), id(3)],
            locked: false,
        },
    };
    let now = w.now;
    if let Some(c) = w.nodes[1].core.as_mut() {
        c.handle_input(now, id(2), forged);
        c.handle_input(
            now,
            id(3),
            SessionMsg::Welcome {
                view: c.view().clone(),
                grant: None,
                expected: vec![],
            },
        );
    }
    let violations: Vec<_> =
        std::iter::from_fn(|| w.nodes[1].core.as_mut().and_then(|c| c.poll_event()))
            .filter(|e| matches!(e, Event::Violation { .. }))
            .collect();
    assert_eq!(violations.len(), 2, "{violations:?}");
    let c = w.core(1).expect("alive");
    assert_eq!(c.host_id(), Some(id(0)), "no forged host");
    assert_eq!(c.view().epoch, 3, "no forged epoch");
}
