//! Coordinator tests on a simulated clock.
//!
//! 1. A harness connects peers, feeds messages (decoded, or as bytes through the framing)
//!    and collects what the coordinator sends and closes.
//! 2. Scenarios: happy path, refuse, unknown target, timeout, version mismatch, malformed
//!    input, every bound, re-registration and superseding, disconnects mid-request.
//! 3. Start time: simulated one-way delays show both `Go` arrive before the start and both
//!    sides start together.
//!
//! Rate limits across reconnects are tested in `tests_limits`, the property tests
//! (arbitrary bytes and message sequences) in `tests_props`, with this harness.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh::coord::{
    encode, Candidate, CandidateKind, ClientMsg, ErrorKind, Go, NatMapping, Role, ServerMsg,
    PROTOCOL_VERSION,
};
use mesh::identity::PeerId;

use super::*;

pub(super) fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A coordinator on a simulated clock (also used by `tests_limits`).
pub(super) struct Harness {
    pub(super) c: Coordinator,
    pub(super) now: Instant,
}

impl Harness {
    pub(super) fn new(config: CoordConfig) -> Self {
        let now = Instant::now();
        Self {
            c: Coordinator::new(config, now, [7; 32]),
            now,
        }
    }

    pub(super) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.c.handle_timeout(self.now);
    }

    pub(super) fn msg(&mut self, conn: u64, m: ClientMsg) {
        self.c.handle_message(self.now, ConnId(conn), m);
    }

    pub(super) fn bytes(&mut self, conn: u64, b: &[u8]) {
        self.c.handle_bytes(self.now, ConnId(conn), b);
    }

    pub(super) fn drain(&mut self) -> Vec<(u64, ServerMsg)> {
        std::iter::from_fn(|| self.c.poll_send())
            .map(|(c, m)| (c.0, m))
            .collect()
    }

    pub(super) fn closes(&mut self) -> Vec<(u64, CloseReason)> {
        std::iter::from_fn(|| self.c.poll_close())
            .map(|(c, r)| (c.0, r))
            .collect()
    }

    /// Connects `conn` as peer `n` from 198.18.0.n:4000+n, registers one host candidate,
    /// answers the first ping after `rtt`, and drains the output.
    pub(super) fn join(&mut self, conn: u64, n: u8, rtt: Duration) {
        let addr = SocketAddr::from(([198, 18, 0, n], 4000 + u16::from(n)));
        self.c
            .handle_connected(self.now, ConnId(conn), peer(n), addr);
        let ts = match self.drain().as_slice() {
            [(c, ServerMsg::Ping { ts })] if *c == conn => *ts,
            other => panic!("expected one ping, got {other:?}"),
        };
        let host = SocketAddr::from(([10, 0, 0, n], 5000));
        self.msg(
            conn,
            ClientMsg::Register {
                candidates: vec![Candidate::new(CandidateKind::Host, host)],
            },
        );
        assert!(matches!(
            self.drain().as_slice(),
            [(_, ServerMsg::Registered { rtt: None, .. })]
        ));
        // The pong arrives `rtt` later; the sample is taken on the shared clock.
        let now = self.now;
        self.c
            .handle_message(now + rtt, ConnId(conn), ClientMsg::Pong { ts });
        assert_eq!(self.c.rtt(ConnId(conn)), Some(rtt));
    }

    /// Peer on conn 1 asks for peer on conn 2 (peer ids 1 and 2); returns the server id.
    pub(super) fn request(&mut self, request_id: u64) -> u64 {
        self.msg(
            1,
            ClientMsg::Connect {
                request_id,
                target: peer(2),
            },
        );
        match self.drain().as_slice() {
            [(2, ServerMsg::Incoming { request_id, from })] if *from == peer(1) => *request_id,
            other => panic!("expected Incoming to conn 2, got {other:?}"),
        }
    }
}

pub(super) fn two_peers() -> Harness {
    let mut h = Harness::new(CoordConfig::default());
    h.join(1, 1, ms(30));
    h.join(2, 2, ms(90));
    h
}

pub(super) fn error_of(out: &[(u64, ServerMsg)], conn: u64) -> (Option<u64>, ErrorKind) {
    out.iter()
        .find_map(|(c, m)| match m {
            ServerMsg::Error {
                request_id, kind, ..
            } if *c == conn => Some((*request_id, *kind)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error for conn {conn} in {out:?}"))
}

pub(super) fn gos(out: Vec<(u64, ServerMsg)>) -> (Go, Go) {
    let mut a = None;
    let mut b = None;
    for (c, m) in out {
        match (c, m) {
            (1, ServerMsg::Go(g)) => a = Some(g),
            (2, ServerMsg::Go(g)) => b = Some(g),
            other => panic!("unexpected {other:?}"),
        }
    }
    (a.expect("go to requester"), b.expect("go to target"))
}

#[test]
fn happy_path() {
    let mut h = two_peers();
    let id = h.request(7);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let (a, b) = gos(h.drain());
    assert_eq!(
        (a.request_id, a.peer, a.role),
        (7, peer(2), Role::Controlling)
    );
    assert_eq!(
        (b.request_id, b.peer, b.role),
        (id, peer(1), Role::Controlled)
    );
    // Each side gets the other's host candidate and server-reflexive address.
    let addrs = |g: &Go| g.peer_candidates.iter().map(|c| c.addr).collect::<Vec<_>>();
    assert_eq!(addrs(&a), vec![sa("10.0.0.2:5000"), sa("198.18.0.2:4002")]);
    assert_eq!(a.peer_candidates[1].kind, CandidateKind::ServerReflexive);
    assert_eq!(addrs(&b)[1], sa("198.18.0.1:4001"));
    // Credentials mirror each other and are fresh per attempt.
    assert_eq!(a.credentials, b.credentials.swapped());
    assert_eq!(a.credentials.local_ufrag.len(), 8);
    assert_eq!(a.credentials.local_pwd.len(), 24);
    assert_ne!(a.credentials.local_pwd, a.credentials.remote_pwd);
    let id2 = h.request(8);
    h.msg(2, ClientMsg::Accept { request_id: id2 });
    let (a2, _) = gos(h.drain());
    assert_ne!(a2.credentials.local_pwd, a.credentials.local_pwd);
    // The Go messages encode.
    let mut buf = Vec::new();
    encode(&ServerMsg::Go(a), &mut buf).unwrap();
    assert_eq!(h.c.stats().accepted, 2);
    assert_eq!(h.c.pending_requests(), 0);
}

#[test]
fn nat_mappings_are_passed_on_to_peers_that_tell_their_own() {
    let mut h = two_peers();
    let (hard, easy) = (NatMapping::Random, NatMapping::EndpointIndependent);
    // Only the target tells: the requester (an older peer) is sent nothing new.
    h.msg(2, ClientMsg::NatMapping { mapping: easy });
    let id = h.request(7);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let (a, b) = gos(h.drain());
    assert_eq!((a.peer_mapping, b.peer_mapping), (None, None));
    // Both tell: each gets the other's, right before its Go, under its own request id.
    h.msg(1, ClientMsg::NatMapping { mapping: hard });
    let id = h.request(8);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let out = h.drain();
    let hint = |conn: u64| {
        out.iter()
            .position(|(c, m)| *c == conn && matches!(m, ServerMsg::PeerMapping { .. }))
    };
    let go_at = |conn: u64| {
        out.iter()
            .position(|(c, m)| *c == conn && matches!(m, ServerMsg::Go(_)))
    };
    let (h1, h2) = (hint(1).expect("hint 1"), hint(2).expect("hint 2"));
    assert!(h1 < go_at(1).expect("go 1") && h2 < go_at(2).expect("go 2"));
    assert_eq!(
        out[h1].1,
        ServerMsg::PeerMapping {
            request_id: 8,
            mapping: easy
        }
    );
    assert_eq!(
        out[h2].1,
        ServerMsg::PeerMapping {
            request_id: id,
            mapping: hard
        }
    );
}

#[test]
fn accept_all_policy_skips_the_incoming_round_trip() {
    let mut h = two_peers();
    h.msg(2, ClientMsg::Policy { accept_all: true });
    assert!(h.drain().is_empty());
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 5,
            target: peer(2),
        },
    );
    // No Incoming: both Go at once, with the same content as an explicit accept.
    let (a, b) = gos(h.drain());
    assert_eq!((a.request_id, a.role), (5, Role::Controlling));
    assert_eq!((b.peer, b.role), (peer(1), Role::Controlled));
    assert_eq!(a.credentials, b.credentials.swapped());
    assert_eq!(h.c.pending_requests(), 0);
    assert_eq!(h.c.stats().accepted, 1);
    // The rate limits still apply to pre-accepted requests.
    let mut limited = false;
    for id in 6..200 {
        h.msg(
            1,
            ClientMsg::Connect {
                request_id: id,
                target: peer(2),
            },
        );
        let out = h.drain();
        if out.iter().any(|(_, m)| {
            matches!(
                m,
                ServerMsg::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                }
            )
        }) {
            limited = true;
            break;
        }
    }
    assert!(limited, "pre-accepted requests are rate limited too");
    // Turning the policy off asks again.
    h.msg(2, ClientMsg::Policy { accept_all: false });
    h.advance(ms(60_000));
    h.drain();
    h.request(300);
}

#[test]
fn a_rate_limited_pre_accepted_request_only_tells_the_requester() {
    let mut h = Harness::new(CoordConfig {
        connect_rate: Rate {
            per_sec: 0,
            burst: 0,
        },
        attempt_rate: Rate {
            per_sec: 1,
            burst: 1,
        },
        ..CoordConfig::default()
    });
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    h.msg(2, ClientMsg::Policy { accept_all: true });
    let connect = |request_id| ClientMsg::Connect {
        request_id,
        target: peer(2),
    };
    h.msg(1, connect(1));
    gos(h.drain());
    // Over the attempt rate: the requester gets the error; the target, never asked, gets
    // nothing (an `Error` carrying a server id could fail one of its own requests).
    h.msg(1, connect(2));
    let out = h.drain();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(error_of(&out, 1), (Some(2), ErrorKind::RateLimited));
    assert_eq!(h.c.pending_requests(), 0);
}

#[test]
fn start_time_lets_both_sides_start_together() {
    let mut h = two_peers();
    let id = h.request(1);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let (a, b) = gos(h.drain());
    // Symmetric paths: Go takes rtt/2 (15 ms to peer 1, 45 ms to peer 2).
    let start_a = ms(15) + a.start_in;
    let start_b = ms(45) + b.start_in;
    assert_eq!(start_a, start_b, "both start at the same instant");
    // With one RTT sample each (rttvar = rtt / 2) the head room covers even a whole RTT
    // one way.
    assert!(ms(30) < start_a && ms(90) < start_b);
    // Better than RakNet's max(100 ms, 4 x larger ping) = 360 ms here.
    assert!(start_a < ms(360), "{start_a:?}");
}

#[test]
fn refuse_reaches_requester() {
    let mut h = two_peers();
    let id = h.request(3);
    h.msg(2, ClientMsg::Refuse { request_id: id });
    assert_eq!(error_of(&h.drain(), 1), (Some(3), ErrorKind::Refused));
    // Answering again: the request is gone.
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert_eq!(
        error_of(&h.drain(), 2),
        (Some(id), ErrorKind::UnknownRequest)
    );
    // Only the target may answer.
    let id = h.request(4);
    h.msg(1, ClientMsg::Accept { request_id: id });
    assert_eq!(
        error_of(&h.drain(), 1),
        (Some(id), ErrorKind::UnknownRequest)
    );
    assert_eq!(h.c.stats().refused, 1);
}

#[test]
fn unknown_target_and_not_registered() {
    let mut h = two_peers();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 5,
            target: peer(99),
        },
    );
    assert_eq!(error_of(&h.drain(), 1), (Some(5), ErrorKind::UnknownTarget));
    // A connected but unregistered peer is not a target, and cannot connect.
    let addr = SocketAddr::from(([198, 18, 0, 3], 4003));
    h.c.handle_connected(h.now, ConnId(3), peer(3), addr);
    h.drain();
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 6,
            target: peer(3),
        },
    );
    assert_eq!(error_of(&h.drain(), 1), (Some(6), ErrorKind::UnknownTarget));
    h.msg(
        3,
        ClientMsg::Connect {
            request_id: 1,
            target: peer(1),
        },
    );
    assert_eq!(error_of(&h.drain(), 3), (Some(1), ErrorKind::NotRegistered));
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 2,
            target: peer(1),
        },
    );
    assert_eq!(
        error_of(&h.drain(), 1),
        (Some(2), ErrorKind::InvalidRequest)
    );
    assert_eq!(h.c.stats().unknown_target, 2);
}

#[test]
fn unanswered_request_times_out() {
    let mut h = two_peers();
    let id = h.request(9);
    let deadline = h.now + h.c.config().request_timeout;
    assert!(h.c.poll_timeout().is_some_and(|t| t <= deadline));
    h.advance(h.c.config().request_timeout - ms(1));
    assert!(h
        .drain()
        .iter()
        .all(|(_, m)| matches!(m, ServerMsg::Ping { .. })));
    h.advance(ms(1));
    let out = h.drain();
    assert_eq!(error_of(&out, 1), (Some(9), ErrorKind::Timeout));
    assert!(out.contains(&(2, ServerMsg::Cancelled { request_id: id })));
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert_eq!(error_of(&h.drain(), 2).1, ErrorKind::UnknownRequest);
    assert_eq!(h.c.stats().timeouts, 1);
    assert_eq!(h.c.pending_requests(), 0);
}

#[test]
fn pings_repeat_and_only_matching_pongs_count() {
    let mut h = two_peers();
    let interval = h.c.config().ping_interval;
    h.advance(interval);
    let ts = match h.drain().as_slice() {
        [(_, ServerMsg::Ping { ts }), (_, ServerMsg::Ping { .. })] => *ts,
        other => panic!("{other:?}"),
    };
    let samples = h.c.stats().rtt_samples;
    h.msg(1, ClientMsg::Pong { ts: ts + 1 });
    assert_eq!(h.c.stats().rtt_samples, samples, "forged stamp ignored");
    h.now += ms(30);
    h.msg(1, ClientMsg::Pong { ts });
    h.msg(1, ClientMsg::Pong { ts });
    assert_eq!(h.c.stats().rtt_samples, samples + 1, "one sample per ping");
    h.msg(1, ClientMsg::Ping { ts: 77 });
    assert_eq!(h.drain(), vec![(1, ServerMsg::Pong { ts: 77 })]);
}

#[test]
fn version_mismatch_closes_with_a_clear_error() {
    let mut h = two_peers();
    let mut frame = Vec::new();
    encode(&ClientMsg::Ping { ts: 1 }, &mut frame).unwrap();
    frame[2] = PROTOCOL_VERSION + 1;
    h.bytes(1, &frame);
    let out = h.drain();
    assert_eq!(error_of(&out, 1), (None, ErrorKind::VersionMismatch));
    assert_eq!(h.closes(), vec![(1, CloseReason::VersionMismatch)]);
    assert_eq!(h.c.stats().version_mismatch, 1);
    assert_eq!(h.c.conn_of(&peer(1)), None);
    assert_eq!(h.c.registered(), 1);
}

#[test]
fn malformed_messages_are_counted_then_closed() {
    let mut h = two_peers();
    // A valid frame split across calls works.
    let mut ping = Vec::new();
    encode(&ClientMsg::Ping { ts: 5 }, &mut ping).unwrap();
    h.bytes(1, &ping[..4]);
    h.bytes(1, &ping[4..]);
    assert_eq!(h.drain(), vec![(1, ServerMsg::Pong { ts: 5 })]);
    let bad = [0, 2, PROTOCOL_VERSION, 0x7e];
    let max = h.c.config().max_malformed;
    for _ in 0..max {
        h.bytes(1, &bad);
        assert_eq!(error_of(&h.drain(), 1).1, ErrorKind::Malformed);
    }
    assert!(h.closes().is_empty());
    h.bytes(1, &bad);
    assert_eq!(h.closes(), vec![(1, CloseReason::TooManyMalformed)]);
    assert_eq!(h.c.stats().malformed, u64::from(max) + 1);
    // An oversized frame closes at once.
    h.bytes(2, &[0xff, 0xff, PROTOCOL_VERSION]);
    assert_eq!(error_of(&h.drain(), 2).1, ErrorKind::Malformed);
    assert_eq!(h.closes(), vec![(2, CloseReason::Malformed)]);
    assert_eq!(h.c.connections(), 0);
}

#[test]
fn per_peer_and_total_limits() {
    let config = CoordConfig {
        max_pending_per_peer: 2,
        max_incoming_per_peer: 3,
        max_pending_total: 5,
        connect_rate: Rate {
            per_sec: 0,
            burst: 0,
        },
        ..CoordConfig::default()
    };
    let mut h = Harness::new(config);
    for n in 1..=5 {
        h.join(u64::from(n), n, ms(10));
    }
    let connect = |h: &mut Harness, conn: u64, req: u64, target: u8| {
        h.msg(
            conn,
            ClientMsg::Connect {
                request_id: req,
                target: peer(target),
            },
        );
        h.drain()
    };
    connect(&mut h, 1, 1, 2);
    assert_eq!(
        error_of(&connect(&mut h, 1, 1, 3), 1).1,
        ErrorKind::InvalidRequest
    );
    connect(&mut h, 1, 2, 3);
    assert_eq!(
        error_of(&connect(&mut h, 1, 3, 4), 1).1,
        ErrorKind::LimitReached
    );
    connect(&mut h, 3, 1, 2);
    connect(&mut h, 4, 1, 2);
    // Target 2 has 3 waiting.
    assert_eq!(
        error_of(&connect(&mut h, 5, 1, 2), 5).1,
        ErrorKind::LimitReached
    );
    connect(&mut h, 5, 2, 4);
    // Total of 5 reached.
    assert_eq!(
        error_of(&connect(&mut h, 2, 1, 5), 2).1,
        ErrorKind::LimitReached
    );
    assert_eq!(h.c.pending_requests(), 5);
    assert_eq!(h.c.stats().limit_reached, 3);
}

#[test]
fn connect_and_attempt_rates_are_limited() {
    let config = CoordConfig {
        connect_rate: Rate {
            per_sec: 1,
            burst: 2,
        },
        attempt_rate: Rate {
            per_sec: 1,
            burst: 1,
        },
        ..CoordConfig::default()
    };
    let mut h = Harness::new(config);
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    let first = h.request(1);
    let second = h.request(2);
    h.msg(
        1,
        ClientMsg::Connect {
            request_id: 3,
            target: peer(2),
        },
    );
    assert_eq!(error_of(&h.drain(), 1), (Some(3), ErrorKind::RateLimited));
    h.msg(2, ClientMsg::Accept { request_id: first });
    assert_eq!(h.drain().len(), 2, "two Go");
    // The second accept exceeds the attempt rate of both peers.
    h.msg(2, ClientMsg::Accept { request_id: second });
    let out = h.drain();
    assert_eq!(error_of(&out, 1), (Some(2), ErrorKind::RateLimited));
    // The target learns the request it accepted is gone, under the server's id; never as
    // an `Error`, whose id it would take for one of its own requests.
    let to_target: Vec<&ServerMsg> = out
        .iter()
        .filter(|(c, _)| *c == 2)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        to_target,
        vec![&ServerMsg::Cancelled { request_id: second }]
    );
    // Tokens come back with time.
    h.now += Duration::from_secs(1);
    let third = h.request(4);
    h.msg(2, ClientMsg::Accept { request_id: third });
    gos(h.drain());
    // The general message rate drops floods silently.
    for i in 0..200 {
        h.msg(1, ClientMsg::Ping { ts: i });
    }
    let pongs = h.drain().len();
    assert!((95..=101).contains(&pongs), "{pongs}");
    assert!(h.c.stats().rate_limited >= 99);
}

#[test]
fn connection_bound_refuses_new_peers() {
    let mut h = Harness::new(CoordConfig {
        max_connections: 2,
        ..CoordConfig::default()
    });
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    let addr = SocketAddr::from(([198, 18, 0, 3], 1));
    h.c.handle_connected(h.now, ConnId(3), peer(3), addr);
    assert_eq!(error_of(&h.drain(), 3).1, ErrorKind::LimitReached);
    assert_eq!(h.closes(), vec![(3, CloseReason::ServerFull)]);
    assert_eq!(h.c.connections(), 2);
    // Reconnecting a known peer still works: it replaces its old connection.
    h.c.handle_connected(h.now, ConnId(4), peer(2), addr);
    assert_eq!(h.closes(), vec![(2, CloseReason::Superseded)]);
    assert_eq!(h.c.conn_of(&peer(2)), Some(ConnId(4)));
}

#[test]
fn re_registration_replaces_and_new_connection_supersedes() {
    let mut h = two_peers();
    let upnp = SocketAddr::from(([198, 18, 5, 5], 6000));
    let dup = Candidate::new(CandidateKind::Host, upnp);
    let junk = Candidate::new(CandidateKind::Host, sa("0.0.0.0:1"));
    h.msg(
        2,
        ClientMsg::Register {
            candidates: vec![Candidate::new(CandidateKind::Upnp, upnp), dup, junk],
        },
    );
    h.drain();
    assert_eq!(h.c.registered(), 2);
    let id = h.request(1);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let (a, _) = gos(h.drain());
    assert_eq!(a.peer_candidates.len(), 2, "{:?}", a.peer_candidates);
    assert_eq!(
        a.peer_candidates[0],
        Candidate::new(CandidateKind::Upnp, upnp)
    );

    // Peer 2 reconnects (e.g. after a NAT rebinding): a pending request to it fails.
    let id = h.request(2);
    let addr = SocketAddr::from(([198, 18, 0, 2], 9999));
    h.c.handle_connected(h.now, ConnId(20), peer(2), addr);
    assert_eq!(h.closes(), vec![(2, CloseReason::Superseded)]);
    let out = h.drain();
    assert_eq!(error_of(&out, 1), (Some(2), ErrorKind::TargetGone));
    assert_eq!(h.c.registered(), 1, "new connection must register again");
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert!(h.drain().is_empty(), "old connection is forgotten");
    // The late disconnect of the old connection does not touch the new one.
    h.c.handle_disconnected(ConnId(2));
    assert_eq!(h.c.conn_of(&peer(2)), Some(ConnId(20)));
}

#[test]
fn disconnect_mid_request() {
    let mut h = two_peers();
    // Requester leaves: the target's prompt is withdrawn.
    let id = h.request(1);
    h.c.handle_disconnected(ConnId(1));
    assert_eq!(
        h.drain(),
        vec![(2, ServerMsg::Cancelled { request_id: id })]
    );
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert_eq!(error_of(&h.drain(), 2).1, ErrorKind::UnknownRequest);
    // Target leaves: the requester learns it.
    h.join(1, 1, ms(10));
    h.request(2);
    h.c.handle_disconnected(ConnId(2));
    assert_eq!(error_of(&h.drain(), 1), (Some(2), ErrorKind::TargetGone));
    assert_eq!(h.c.pending_requests(), 0);
    assert_eq!(h.c.registered(), 1);
    // No timer is left for the gone request or connection's pings except conn 1's.
    h.c.handle_disconnected(ConnId(1));
    assert_eq!(h.c.poll_timeout(), None);
    assert_eq!((h.c.connections(), h.c.registered()), (0, 0));
}
