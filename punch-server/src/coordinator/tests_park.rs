//! Parking on a simulated clock: who is parked and when, keep-alives (good, lost, forged,
//! retransmitted, from a new address), expiry, and the wake-up of a parked target (lost
//! wakes, a moved peer, the held request delivered after it is back).

use std::net::SocketAddr;
use std::time::Duration;

use mesh::coord::park::{self, ParkKey, ParkMessage};
use mesh::coord::{ClientMsg, ErrorKind, ServerMsg};

use super::tests::{ms, peer, Harness};
use super::*;

const SECS: Duration = Duration::from_secs(1);

fn config() -> CoordConfig {
    CoordConfig {
        park_after: Some(20 * SECS),
        park_keepalive: 15 * SECS,
        park_misses: 3,
        ..CoordConfig::default()
    }
}

/// Where `join` connects peer `n` from.
fn addr_of(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 4000 + u16::from(n)))
}

impl Harness {
    /// What was sent, without the RTT pings.
    fn drain_no_pings(&mut self) -> Vec<(u64, ServerMsg)> {
        self.drain()
            .into_iter()
            .filter(|(_, m)| !matches!(m, ServerMsg::Ping { .. }))
            .collect()
    }

    fn transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| self.c.poll_transmit()).collect()
    }

    /// Joins `conn` as peer `n`, offering parking, lets it idle until parked and returns
    /// its key (the ping and park messages are drained).
    fn join_and_park(&mut self, conn: u64, n: u8) -> ParkKey {
        self.join(conn, n, ms(10));
        self.msg(conn, ClientMsg::Capabilities { park: true });
        self.advance(20 * SECS);
        let key = self
            .drain()
            .into_iter()
            .find_map(|(c, m)| match m {
                ServerMsg::Park { key, keepalive } if c == conn => {
                    assert_eq!(keepalive, self.c.config().park_keepalive);
                    Some(key)
                }
                _ => None,
            })
            .expect("Park");
        assert!(self.closes().contains(&(conn, CloseReason::Parked)));
        key
    }

    /// A keep-alive of peer `n` from `from`; the answer.
    fn keepalive(&mut self, n: u8, key: &ParkKey, tx: u8, from: SocketAddr) -> ParkMessage {
        let req = park::keepalive_request(&peer(n), key, [tx; 12]).expect("encode");
        self.c.handle_keepalive(self.now, from, &req);
        let out = self.transmits();
        let [(to, answer)] = out.as_slice() else {
            panic!("one answer expected, got {}", out.len());
        };
        assert_eq!(*to, from);
        if let Some(ParkMessage::Success { .. }) = park::parse(answer) {
            assert!(park::verify(answer, key), "answers are signed");
        }
        park::parse(answer).expect("a park message")
    }
}

#[test]
fn only_idle_peers_that_offered_it_are_parked() {
    let mut h = Harness::new(config());
    // An old peer (no `Capabilities`) and a new one.
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    h.msg(2, ClientMsg::Capabilities { park: true });
    // Activity (not pings) at 15 s keeps peer 2 connected past 20 s.
    h.advance(15 * SECS);
    h.drain();
    h.msg(2, ClientMsg::Ping { ts: 1 });
    h.msg(2, ClientMsg::Register { candidates: vec![] });
    h.drain();
    h.advance(10 * SECS);
    assert_eq!(h.c.parked(), 0);
    h.drain();
    h.advance(10 * SECS);
    let parks: Vec<_> = h
        .drain()
        .into_iter()
        .filter(|(_, m)| matches!(m, ServerMsg::Park { .. }))
        .collect();
    assert_eq!(parks.len(), 1);
    assert_eq!(parks[0].0, 2);
    assert_eq!(h.closes(), vec![(2, CloseReason::Parked)]);
    assert_eq!(
        (h.c.connections(), h.c.parked(), h.c.registered()),
        (1, 1, 2)
    );
    // Much later the old peer is still connected and never parked.
    for _ in 0..10 {
        h.advance(30 * SECS);
    }
    assert_eq!(h.c.conn_of(&peer(1)), Some(ConnId(1)));
    assert_eq!(h.c.stats().parked, 1);
}

#[test]
fn a_connection_with_a_pending_request_is_not_parked() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    h.msg(2, ClientMsg::Capabilities { park: true });
    h.advance(15 * SECS);
    h.drain();
    h.request(5); // waits for conn 2's answer until 25 s
    h.advance(9 * SECS);
    assert_eq!(h.c.parked(), 0, "a target with a pending request stays");
    h.advance(3 * SECS); // the request timed out at 25 s
    assert_eq!(h.c.parked(), 1);
}

#[test]
fn keepalives_keep_a_parked_peer_and_missing_ones_drop_it() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    let key = h.join_and_park(2, 2);
    for tx in 1..=5 {
        h.advance(15 * SECS);
        assert!(matches!(
            h.keepalive(2, &key, tx, addr_of(2)),
            ParkMessage::Success { mapped: Some(m), .. } if m == addr_of(2)
        ));
        assert_eq!(h.c.parked(), 1);
    }
    assert_eq!(h.c.stats().keepalives, 5);
    // Lost keep-alives: three intervals later the entry is gone.
    h.advance(44 * SECS);
    assert_eq!(h.c.parked(), 1);
    h.advance(2 * SECS);
    assert_eq!((h.c.parked(), h.c.registered()), (0, 1));
    assert_eq!(h.c.stats().park_expired, 1);
    // Now it is unknown, and a late keep-alive is refused (the peer dials again).
    assert!(matches!(
        h.keepalive(2, &key, 9, addr_of(2)),
        ParkMessage::Unauthorized { .. }
    ));
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 1,
            target: peer(2),
        },
    );
    assert!(matches!(
        h.drain().as_slice(),
        [(
            1,
            ServerMsg::Error {
                kind: ErrorKind::UnknownTarget,
                ..
            }
        )]
    ));
}

#[test]
fn a_forged_keepalive_is_refused_and_moves_nothing() {
    let mut h = Harness::new(config());
    let key = h.join_and_park(2, 2);
    let thief = SocketAddr::from(([198, 19, 9, 9], 9999));
    h.advance(40 * SECS);
    assert!(matches!(
        h.keepalive(2, &ParkKey([0x55; 32]), 1, thief),
        ParkMessage::Unauthorized { .. }
    ));
    assert_eq!(h.c.stats().keepalives_refused, 1);
    // Not extended: the real peer's last keep-alive was the park itself (at 20 s).
    h.advance(6 * SECS);
    assert_eq!(
        h.c.parked(),
        0,
        "a forged keep-alive must not keep the entry"
    );
    let _ = key;
}

#[test]
fn a_retransmitted_keepalive_is_answered_but_moves_nothing() {
    let mut h = Harness::new(config());
    let key = h.join_and_park(2, 2);
    h.advance(15 * SECS);
    h.keepalive(2, &key, 1, addr_of(2));
    // The same message again (a retransmission, or a replay from elsewhere).
    let elsewhere = SocketAddr::from(([198, 19, 1, 1], 1));
    assert!(matches!(
        h.keepalive(2, &key, 1, elsewhere),
        ParkMessage::Success { .. }
    ));
    assert_eq!(h.c.stats().keepalives, 1);
    // A wake still goes to the real address.
    h.join(1, 1, ms(10));
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 1,
            target: peer(2),
        },
    );
    let wakes = h.transmits();
    assert_eq!(wakes.len(), 1);
    assert_eq!(wakes[0].0, addr_of(2));
}

#[test]
fn a_parked_target_is_woken_and_gets_the_held_request() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    let key = h.join_and_park(2, 2);
    h.advance(5 * SECS);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 7,
            target: peer(2),
        },
    );
    assert_eq!(h.drain(), vec![], "nothing to the requester yet");
    let wakes = h.transmits();
    assert_eq!(wakes.len(), 1);
    assert_eq!(wakes[0].0, addr_of(2));
    assert!(park::verify(&wakes[0].1, &key));
    assert!(matches!(
        park::parse(&wakes[0].1),
        Some(ParkMessage::Wake { peer: p, .. }) if p == peer(2)
    ));
    // The peer comes back 100 ms later on a new connection and registers.
    h.advance(ms(100));
    h.c.handle_connected(h.now, ConnId(3), peer(2), addr_of(2));
    assert_eq!(h.c.parked(), 0);
    assert!(matches!(
        h.drain().as_slice(),
        [(3, ServerMsg::Ping { .. })]
    ));
    h.msg(3, ClientMsg::Register { candidates: vec![] });
    let out = h.drain();
    assert!(matches!(out[0], (3, ServerMsg::Registered { .. })));
    let id = match out.get(1) {
        Some((3, ServerMsg::Incoming { request_id, from })) if *from == peer(1) => *request_id,
        other => panic!("expected the held Incoming, got {other:?}"),
    };
    // No more wakes once it is back.
    h.advance(5 * SECS);
    assert!(h.transmits().is_empty());
    h.msg(3, ClientMsg::Accept { request_id: id });
    let gos = h.drain();
    assert!(gos
        .iter()
        .any(|(c, m)| *c == 1 && matches!(m, ServerMsg::Go(g) if g.request_id == 7)));
    assert!(gos
        .iter()
        .any(|(c, m)| *c == 3 && matches!(m, ServerMsg::Go(_))));
    assert_eq!(h.c.stats().unparked, 1);
}

#[test]
fn lost_wakes_are_retransmitted_a_bounded_number_of_times_then_the_request_times_out() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    h.join_and_park(2, 2);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 7,
            target: peer(2),
        },
    );
    let mut sent = h.transmits().len();
    for _ in 0..100 {
        h.advance(ms(100));
        sent += h.transmits().len();
    }
    assert_eq!(sent, 5, "wake_sends");
    assert!(matches!(
        h.drain_no_pings().as_slice(),
        [(
            1,
            ServerMsg::Error {
                kind: ErrorKind::Timeout,
                request_id: Some(7),
                ..
            }
        )]
    ));
    // Still parked (its keep-alives may well be getting through), and a later request
    // starts a new round of wake-ups.
    assert_eq!(h.c.parked(), 1);
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 8,
            target: peer(2),
        },
    );
    assert_eq!(h.transmits().len(), 1);
}

#[test]
fn a_peer_that_moved_is_woken_at_its_new_address() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    let key = h.join_and_park(2, 2);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 7,
            target: peer(2),
        },
    );
    assert_eq!(h.transmits()[0].0, addr_of(2));
    // Its NAT rebound: the next keep-alive comes from elsewhere.
    let moved = SocketAddr::from(([198, 18, 0, 2], 50_000));
    let req = park::keepalive_request(&peer(2), &key, [3; 12]).expect("encode");
    h.c.handle_keepalive(h.now, moved, &req);
    let out = h.transmits();
    assert_eq!(out.len(), 2, "answer and wake");
    assert!(out.iter().all(|(to, _)| *to == moved));
    assert!(out
        .iter()
        .any(|(_, d)| matches!(park::parse(d), Some(ParkMessage::Wake { .. }))));
    // Later retransmissions go there too.
    h.advance(ms(250));
    assert!(h.transmits().iter().all(|(to, _)| *to == moved));
}

#[test]
fn a_parked_peer_with_held_requests_expires_only_after_them() {
    let mut h = Harness::new(CoordConfig {
        park_keepalive: SECS,
        park_misses: 2,
        ..config()
    });
    h.join(1, 1, ms(10));
    h.join_and_park(2, 2);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 7,
            target: peer(2),
        },
    );
    // Its keep-alive deadline (2 s) passes while it dials back: the entry stays.
    h.advance(3 * SECS);
    assert_eq!(h.c.parked(), 1);
    assert!(h.drain_no_pings().is_empty());
    // It never comes back: the request times out, then the entry goes.
    h.advance(7 * SECS);
    assert!(matches!(
        h.drain_no_pings().as_slice(),
        [(
            1,
            ServerMsg::Error {
                kind: ErrorKind::Timeout,
                request_id: Some(7),
                ..
            }
        )]
    ));
    h.advance(SECS);
    assert_eq!(h.c.parked(), 0);
    assert_eq!(h.c.stats().park_expired, 1);
}

#[test]
fn parked_peers_count_against_max_connections() {
    let mut h = Harness::new(CoordConfig {
        max_connections: 2,
        ..config()
    });
    h.join_and_park(1, 1);
    h.join(2, 2, ms(10));
    h.c.handle_connected(h.now, ConnId(3), peer(3), addr_of(3));
    assert!(h.closes().contains(&(3, CloseReason::ServerFull)));
    // The parked peer itself may come back.
    h.drain();
    h.c.handle_connected(h.now, ConnId(4), peer(1), addr_of(1));
    assert!(h.closes().is_empty());
    assert_eq!((h.c.connections(), h.c.parked()), (2, 0));
}

#[test]
fn never_parks_without_park_after() {
    let mut h = Harness::new(CoordConfig {
        park_after: None,
        ..config()
    });
    h.join(2, 2, ms(10));
    h.msg(2, ClientMsg::Capabilities { park: true });
    for _ in 0..10 {
        h.advance(30 * SECS);
    }
    assert_eq!(h.c.parked(), 0);
}

#[test]
fn a_signed_leave_forgets_the_parked_peer_at_once() {
    let mut h = Harness::new(config());
    h.join(1, 1, ms(10));
    let key = h.join_and_park(2, 2);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 7,
            target: peer(2),
        },
    );
    h.transmits();
    // A forged leave changes nothing.
    let forged = park::leave(&peer(2), &ParkKey([1; 32]), [1; 12]).expect("encode");
    h.c.handle_keepalive(h.now, addr_of(2), &forged);
    assert_eq!(h.c.parked(), 1);
    assert!(matches!(
        park::parse(&h.transmits()[0].1),
        Some(ParkMessage::Unauthorized { .. })
    ));
    let bye = park::leave(&peer(2), &key, [2; 12]).expect("encode");
    h.c.handle_keepalive(h.now, addr_of(2), &bye);
    assert_eq!((h.c.parked(), h.c.registered()), (0, 1));
    assert_eq!(h.c.stats().park_left, 1);
    assert!(matches!(
        h.drain_no_pings().as_slice(),
        [(
            1,
            ServerMsg::Error {
                kind: ErrorKind::TargetGone,
                request_id: Some(7),
                ..
            }
        )]
    ));
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 8,
            target: peer(2),
        },
    );
    assert!(matches!(
        h.drain_no_pings().as_slice(),
        [(
            1,
            ServerMsg::Error {
                kind: ErrorKind::UnknownTarget,
                ..
            }
        )]
    ));
}
