//! [`ControlClient`] in simulated time: the hello, requests across sessions and parks,
//! deadlines, incoming requests under each policy, and the server's errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::coord::{encode, CandidateKind, ParkKey};
use crate::punch::Credentials;

const SECOND: Duration = Duration::from_secs(1);

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn settings(incoming: IncomingPolicy) -> ClientSettings {
    ClientSettings {
        incoming,
        allow: Arc::new(Allowlist::default()),
        request_timeout: 10 * SECOND,
        max_pending: 2,
        park: true,
        hide_address: false,
        reconnect_min: SECOND,
        reconnect_max: 8 * SECOND,
    }
}

fn client(incoming: IncomingPolicy) -> ControlClient {
    let host = Candidate::new(CandidateKind::Host, addr("10.0.0.2:4000"));
    ControlClient::new(settings(incoming), vec![host])
}

fn feed(c: &mut ControlClient, now: Instant, msgs: &[ServerMsg]) -> Result<(), ControlError> {
    let mut bytes = Vec::new();
    for m in msgs {
        encode(m, &mut bytes).expect("encodes");
    }
    c.handle_input(now, &bytes)
}

fn sent(c: &mut ControlClient) -> Vec<ClientMsg> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn events(c: &mut ControlClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn registered() -> ServerMsg {
    ServerMsg::Registered {
        observed_addr: addr("198.18.0.7:5000"),
        rtt: None,
    }
}

fn go(request_id: u64, from: PeerId, role: Role) -> ServerMsg {
    ServerMsg::Go(Go {
        request_id,
        peer: from,
        peer_candidates: vec![],
        credentials: Credentials {
            local_ufrag: "abcd1234".into(),
            local_pwd: "p".repeat(24),
            remote_ufrag: "wxyz9876".into(),
            remote_pwd: "q".repeat(24),
        },
        start_in: Duration::from_millis(20),
        role,
        peer_mapping: None,
    })
}

/// A client with a registered session; the hello and `SessionUp` taken.
fn up(incoming: IncomingPolicy, now: Instant) -> ControlClient {
    let mut c = client(incoming);
    c.start_session();
    feed(&mut c, now, &[registered()]).expect("registered");
    sent(&mut c);
    events(&mut c);
    c
}

#[test]
fn the_hello_registers_and_announces_policy_and_parking() {
    let mut c = client(IncomingPolicy::AcceptAll);
    c.start_session();
    let hello = sent(&mut c);
    assert!(matches!(hello[0], ClientMsg::Register { ref candidates } if candidates.len() == 1));
    assert_eq!(hello[1], ClientMsg::Policy { accept_all: true });
    assert_eq!(hello[2], ClientMsg::Capabilities { park: true });
    assert_eq!(hello.len(), 3);
    // Relay-only: the address is hidden before anything else is sent.
    let mut s = settings(IncomingPolicy::RefuseAll);
    s.hide_address = true;
    s.park = false;
    let mut c = ControlClient::new(s, vec![]);
    c.start_session();
    let hello = sent(&mut c);
    assert_eq!(hello[0], ClientMsg::HideAddress);
    assert!(matches!(hello[1], ClientMsg::Register { .. }));
    assert_eq!(hello.len(), 2);
}

#[test]
fn a_request_made_while_registering_is_sent_after_registered_and_answered_by_its_go() {
    let t0 = Instant::now();
    let mut c = client(IncomingPolicy::AcceptAll);
    c.start_session();
    sent(&mut c);
    let id = c.connect(t0, peer(2)).expect("queued");
    assert!(sent(&mut c).is_empty(), "nothing before Registered");
    assert_eq!(c.session_observed(), None);
    feed(&mut c, t0, &[ServerMsg::Ping { ts: 7 }, registered()]).expect("ok");
    assert_eq!(c.session_observed(), Some(addr("198.18.0.7:5000")));
    let out = sent(&mut c);
    assert_eq!(out[0], ClientMsg::Pong { ts: 7 });
    assert_eq!(
        out[1],
        ClientMsg::Connect {
            request_id: id.0,
            target: peer(2)
        }
    );
    let t1 = t0 + SECOND;
    feed(&mut c, t1, &[go(id.0, peer(2), Role::Controlling)]).expect("ok");
    let evs = events(&mut c);
    assert!(matches!(evs[0], ClientEvent::SessionUp { .. }));
    match &evs[1] {
        ClientEvent::Answered {
            request,
            result: Ok(go),
            received,
        } => {
            assert_eq!((*request, go.peer, *received), (id, peer(2), t1));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.poll_timeout(), None, "no request left");
}

#[test]
fn a_go_naming_another_peer_or_an_error_fails_the_request() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    let a = c.connect(t0, peer(2)).expect("a");
    let b = c.connect(t0, peer(3)).expect("b");
    // Bounded: a third waits for nothing.
    assert!(matches!(c.connect(t0, peer(4)), Err(DialError::Busy(2))));
    let refused = ServerMsg::Error {
        request_id: Some(b.0),
        kind: ErrorKind::Refused,
        detail: "no".into(),
    };
    feed(&mut c, t0, &[go(a.0, peer(9), Role::Controlling), refused]).expect("ok");
    let evs = events(&mut c);
    assert!(matches!(
        evs[0],
        ClientEvent::Answered {
            result: Err(DialError::Server {
                kind: ErrorKind::InvalidRequest,
                ..
            }),
            ..
        }
    ));
    assert!(matches!(
        evs[1],
        ClientEvent::Answered { result: Err(DialError::Refused(p)), .. } if p == peer(3)
    ));
    // A version mismatch not tied to a request ends the session.
    let mismatch = ServerMsg::Error {
        request_id: None,
        kind: ErrorKind::VersionMismatch,
        detail: String::new(),
    };
    assert!(feed(&mut c, t0, &[mismatch]).is_err());
}

#[test]
fn requests_time_out_at_their_deadline() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    let id = c.connect(t0, peer(2)).expect("queued");
    assert_eq!(c.poll_timeout(), Some(t0 + 10 * SECOND));
    c.handle_timeout(t0 + 9 * SECOND);
    assert!(events(&mut c).is_empty());
    c.handle_timeout(t0 + 10 * SECOND);
    assert!(matches!(
        events(&mut c)[..],
        [ClientEvent::Answered { request, result: Err(DialError::Timeout { .. }), .. }] if request == id
    ));
    // The late Go is for no request.
    feed(
        &mut c,
        t0 + 11 * SECOND,
        &[go(id.0, peer(2), Role::Controlling)],
    )
    .expect("ok");
    assert!(events(&mut c).is_empty());
}

#[test]
fn a_lost_session_fails_requests_and_refuses_new_ones_until_the_next() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    c.connect(t0, peer(2)).expect("sent");
    let lost = ControlError::Lost("gone".into());
    assert_eq!(c.session_lost(t0, &lost), None);
    assert!(matches!(
        events(&mut c)[..],
        [ClientEvent::Answered {
            result: Err(DialError::Control(_)),
            ..
        }]
    ));
    assert!(matches!(c.connect(t0, peer(2)), Err(DialError::Control(_))));
    // New candidates are kept for the next session's Register.
    c.register(vec![]);
    assert!(sent(&mut c).is_empty());
    c.start_session();
    assert!(
        matches!(sent(&mut c)[0], ClientMsg::Register { ref candidates } if candidates.is_empty())
    );
}

#[test]
fn after_a_park_requests_wait_for_the_next_session() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    let park = ServerMsg::Park {
        key: ParkKey([5; 32]),
        keepalive: 25 * SECOND,
    };
    feed(&mut c, t0, &[park]).expect("ok");
    let lost = ControlError::Lost("parked".into());
    let parked = c.session_lost(t0, &lost).expect("parked");
    assert_eq!(parked.1, 25 * SECOND);
    // The node connects while parked: kept, sent on the next session.
    let id = c.connect(t0, peer(2)).expect("queued while parked");
    assert!(sent(&mut c).is_empty());
    c.start_session();
    sent(&mut c);
    // A failed attempt keeps it.
    c.registration_failed(t0);
    assert!(c.has_pending());
    c.start_session();
    sent(&mut c);
    feed(&mut c, t0 + SECOND, &[registered()]).expect("ok");
    assert!(sent(&mut c).contains(&ClientMsg::Connect {
        request_id: id.0,
        target: peer(2)
    }));
}

#[test]
fn incoming_requests_follow_the_policy() {
    let t0 = Instant::now();
    let incoming = |id| ServerMsg::Incoming {
        request_id: id,
        from: peer(4),
    };
    let mut all = up(IncomingPolicy::AcceptAll, t0);
    feed(&mut all, t0, &[incoming(1)]).expect("ok");
    assert_eq!(sent(&mut all), [ClientMsg::Accept { request_id: 1 }]);
    let mut none = up(IncomingPolicy::RefuseAll, t0);
    feed(&mut none, t0, &[incoming(1)]).expect("ok");
    assert_eq!(sent(&mut none), [ClientMsg::Refuse { request_id: 1 }]);

    // Allowlist: held, accepted once allowed; another held request is refused at the
    // end of its hold.
    let mut list = up(IncomingPolicy::Allowlist, t0);
    feed(&mut list, t0, &[incoming(1), incoming(2)]).expect("ok");
    assert!(sent(&mut list).is_empty());
    assert_eq!(list.poll_timeout(), Some(t0 + HOLD));
    feed(&mut list, t0, &[ServerMsg::Cancelled { request_id: 2 }]).expect("ok");
    list.settings().allow.allow(peer(4));
    list.allow_changed(t0);
    assert_eq!(sent(&mut list), [ClientMsg::Accept { request_id: 1 }]);
    list.settings().allow.disallow(&peer(4));
    feed(&mut list, t0, &[incoming(3)]).expect("ok");
    list.handle_timeout(t0 + HOLD);
    assert_eq!(sent(&mut list), [ClientMsg::Refuse { request_id: 3 }]);
    // Opening the list is mirrored to the server's policy, once.
    list.settings().allow.set_open(true);
    list.allow_changed(t0);
    list.allow_changed(t0);
    assert_eq!(sent(&mut list), [ClientMsg::Policy { accept_all: true }]);
}

#[test]
fn a_controlled_go_is_an_accepted_request_and_relays_are_reported() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    let relays = ServerMsg::Relays { relays: vec![] };
    let again = ServerMsg::Registered {
        observed_addr: addr("198.18.0.7:5001"),
        rtt: None,
    };
    feed(
        &mut c,
        t0,
        &[go(77, peer(5), Role::Controlled), relays, again],
    )
    .expect("ok");
    let evs = events(&mut c);
    assert!(
        matches!(&evs[0], ClientEvent::Accepted { go, received } if go.request_id == 77 && *received == t0)
    );
    assert!(matches!(&evs[1], ClientEvent::Relays(r) if r.is_empty()));
    assert!(
        matches!(&evs[2], ClientEvent::Registered { observed_addr } if observed_addr.port() == 5001)
    );
}

#[test]
fn an_error_before_registered_ends_the_session_with_the_reason() {
    let mut s = settings(IncomingPolicy::AcceptAll);
    s.hide_address = true;
    let mut c = ControlClient::new(s, vec![]);
    c.start_session();
    let unknown = ServerMsg::Error {
        request_id: None,
        kind: ErrorKind::Malformed,
        detail: "unknown message type 0x09".into(),
    };
    let err = feed(&mut c, Instant::now(), &[unknown]).expect_err("fatal");
    assert!(err.to_string().contains("relay-only"), "{err}");
}

#[test]
fn reconnects_back_off_and_start_over_once_registered() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    assert_eq!(c.next_dial(), None, "registered: no dial");
    let lost = ControlError::Lost("gone".into());
    assert_eq!(c.session_lost(t0, &lost), None);
    let first = c.next_dial().expect("a dial") - t0;
    assert!(
        first >= SECOND * 3 / 4 && first <= SECOND * 5 / 4,
        "{first:?}"
    );
    // Each failed attempt doubles the wait (jitter ±25 %), up to the maximum.
    let mut waits = Vec::new();
    for _ in 0..6 {
        c.start_session();
        c.registration_failed(t0);
        waits.push(c.next_dial().expect("a dial") - t0);
    }
    assert!(waits[0] >= SECOND * 3 / 2, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= 10 * SECOND), "{waits:?}");
    assert!(waits[5] >= 6 * SECOND, "{waits:?}");
    // A registered session starts over.
    c.start_session();
    feed(&mut c, t0, &[registered()]).expect("ok");
    assert_eq!(c.next_dial(), None);
    c.session_lost(t0, &lost);
    let again = c.next_dial().expect("a dial") - t0;
    assert!(again <= SECOND * 5 / 4, "{again:?}");
    // After a park the node dials as soon as it is needed.
    let park = ServerMsg::Park {
        key: ParkKey([1; 32]),
        keepalive: SECOND,
    };
    c.start_session();
    feed(&mut c, t0, &[registered(), park]).expect("ok");
    assert!(c.session_lost(t0, &lost).is_some());
    assert_eq!(c.next_dial(), Some(t0));
}

#[test]
fn a_huge_backoff_still_gives_a_dial_time() {
    let t0 = Instant::now();
    let mut s = settings(IncomingPolicy::AcceptAll);
    s.reconnect_min = Duration::MAX;
    s.reconnect_max = Duration::MAX;
    let mut c = ControlClient::new(s, vec![]);
    c.start_session();
    c.registration_failed(t0);
    c.start_session();
    c.registration_failed(t0);
    assert!(c.next_dial().is_some_and(|t| t > t0));
}

#[test]
fn the_nat_mapping_is_told_and_a_peer_mapping_reaches_its_go() {
    let t0 = Instant::now();
    let mut c = up(IncomingPolicy::AcceptAll, t0);
    c.set_mapping(NatMapping::Random);
    assert_eq!(
        sent(&mut c),
        vec![ClientMsg::NatMapping {
            mapping: NatMapping::Random
        }]
    );
    c.set_mapping(NatMapping::Random);
    assert!(sent(&mut c).is_empty(), "told once");
    // The next session's hello repeats it after Register.
    c.start_session();
    let hello = sent(&mut c);
    assert!(matches!(hello[0], ClientMsg::Register { .. }));
    assert_eq!(
        hello[1],
        ClientMsg::NatMapping {
            mapping: NatMapping::Random
        }
    );
    feed(&mut c, t0, &[registered()]).expect("registered");
    events(&mut c);
    // A peer's mapping is put into the Go of its request only.
    let easy = NatMapping::EndpointIndependent;
    let hint = |request_id| ServerMsg::PeerMapping {
        request_id,
        mapping: easy,
    };
    let id = c.connect(t0, peer(2)).expect("sent");
    feed(
        &mut c,
        t0,
        &[
            hint(99),
            go(99, peer(4), Role::Controlled),
            go(98, peer(6), Role::Controlled),
            hint(id.0),
            go(id.0, peer(2), Role::Controlling),
        ],
    )
    .expect("ok");
    let evs = events(&mut c);
    assert!(matches!(&evs[0], ClientEvent::Accepted { go, .. } if go.peer_mapping == Some(easy)));
    assert!(matches!(&evs[1], ClientEvent::Accepted { go, .. } if go.peer_mapping.is_none()));
    assert!(
        matches!(&evs[2], ClientEvent::Answered { result: Ok(go), .. } if go.peer_mapping == Some(easy))
    );
    // Hints for Gos that never come are bounded.
    for i in 0..100 {
        feed(&mut c, t0, &[hint(1000 + i)]).expect("ok");
    }
    assert!(c.peer_mappings.len() <= MAX_PEER_MAPPINGS);
}
