//! Relay offers on a simulated clock: credentials after the first `Registered`, the
//! renewal at half their lifetime, timers gone with the connection, and no offer without
//! relays or wall clock; a relay-only peer's hidden address. The harness is `tests`'.

use std::time::Duration;

use mesh::coord::{encode, Candidate, CandidateKind, ClientMsg, ServerMsg};
use mesh::turn::credentials::rest_password;

use super::tests::{gos, ms, peer, sa, two_peers, Harness};
use super::*;

const SECRET: &str = "s3cret";
const T0: u64 = 1_700_000_000;
const TTL: Duration = Duration::from_secs(3600);

fn relay_config() -> CoordConfig {
    let uris = ["turn:127.0.0.1:3478", "turn:[::1]:3479"]
        .map(|u| u.parse().unwrap())
        .to_vec();
    CoordConfig {
        relays: RelayConfig::from_parts(uris, Some(SECRET.into()), TTL).unwrap(),
        ..CoordConfig::default()
    }
}

fn harness(wall_clock: bool) -> Harness {
    let mut h = Harness::new(relay_config());
    if wall_clock {
        h.c.set_wall_clock(h.now, Duration::from_secs(T0));
    }
    h
}

/// Connects peer `n` on `conn` and registers it; returns what the server sent after the
/// ping.
fn register(h: &mut Harness, conn: u64, n: u8) -> Vec<ServerMsg> {
    let addr = SocketAddr::from(([198, 18, 0, n], 4000));
    h.c.handle_connected(h.now, ConnId(conn), peer(n), addr);
    let register = ClientMsg::Register {
        candidates: vec![Candidate::new(CandidateKind::Host, addr)],
    };
    h.msg(conn, register);
    h.drain()
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| !matches!(m, ServerMsg::Ping { .. }))
        .collect()
}

fn relays_of(msgs: &[ServerMsg]) -> Vec<&mesh::coord::RelayCredential> {
    msgs.iter()
        .flat_map(|m| match m {
            ServerMsg::Relays { relays } => relays.iter().collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn the_first_registration_gets_credentials_for_every_relay() {
    let mut h = harness(true);
    let out = register(&mut h, 1, 1);
    assert!(matches!(out[0], ServerMsg::Registered { .. }), "{out:?}");
    let relays = relays_of(&out);
    assert_eq!(out.len(), 2, "Registered then Relays: {out:?}");
    let expiry = T0 + TTL.as_secs();
    let uris: Vec<String> = relays.iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(uris, ["turn:127.0.0.1:3478", "turn:[::1]:3479"]);
    for r in relays {
        assert_eq!(r.username, format!("{expiry}:{}", peer(1)));
        assert_eq!(r.password, rest_password(SECRET, &r.username));
        assert_eq!(r.expires_unix, expiry);
    }
    // A re-registration (new UPnP candidate) gets only `Registered`.
    h.now += ms(500);
    let again = ClientMsg::Register { candidates: vec![] };
    h.msg(1, again);
    let out: Vec<_> = h.drain().into_iter().map(|(_, m)| m).collect();
    assert!(
        matches!(out.as_slice(), [ServerMsg::Registered { .. }]),
        "{out:?}"
    );
    assert_eq!(h.c.stats().relay_offers, 1);
    // The frames are type 0x88 after 0x81: what an older peer skips (see mesh::coord).
    let mut frame = Vec::new();
    encode(&relay_msg(&mut harness(true)), &mut frame).unwrap();
    assert_eq!(frame[3], 0x88);
}

fn relay_msg(h: &mut Harness) -> ServerMsg {
    register(h, 9, 9).pop().unwrap()
}

#[test]
fn credentials_are_renewed_at_half_their_lifetime() {
    let mut h = harness(true);
    register(&mut h, 1, 1);
    let mut renewals = Vec::new();
    // Simulate three lifetimes in 10 s steps (pings are due every 15 s meanwhile).
    let step = Duration::from_secs(10);
    let mut elapsed = Duration::ZERO;
    while elapsed < TTL * 3 {
        h.advance(step);
        elapsed += step;
        for (_, m) in h.drain() {
            if let ServerMsg::Relays { relays } = m {
                renewals.push((elapsed, relays[0].expires_unix));
            }
        }
    }
    let half = TTL / 2;
    let expected: Vec<_> = (1..=6u32)
        .map(|k| (half * k, T0 + (half * k + TTL).as_secs()))
        .collect();
    assert_eq!(renewals, expected);
    // Credentials held are never closer than ttl/2 to their expiry.
    assert_eq!(h.c.stats().relay_offers, 7);
    // The renewal timer goes with the connection.
    h.c.handle_disconnected(ConnId(1));
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn nothing_is_offered_without_relays_or_wall_clock() {
    let mut h = harness(false);
    let out = register(&mut h, 1, 1);
    assert!(
        matches!(out.as_slice(), [ServerMsg::Registered { .. }]),
        "{out:?}"
    );
    let mut h = Harness::new(CoordConfig::default());
    h.c.set_wall_clock(h.now, Duration::from_secs(T0));
    let out = register(&mut h, 1, 1);
    assert!(
        matches!(out.as_slice(), [ServerMsg::Registered { .. }]),
        "{out:?}"
    );
    h.advance(TTL);
    assert!(relays_of(&h.drain().into_iter().map(|(_, m)| m).collect::<Vec<_>>()).is_empty());
}

#[test]
fn relay_settings_are_checked() {
    let uri = || {
        vec!["turn:127.0.0.1:3478"
            .parse::<mesh::turn::TurnUri>()
            .unwrap()]
    };
    assert_eq!(RelayConfig::from_parts(vec![], None, TTL), Ok(None));
    for (uris, secret, ttl, needle) in [
        (uri(), None, TTL, "--turn-secret"),
        (uri(), Some(""), TTL, "--turn-secret"),
        (vec![], Some("s"), TTL, "--turn-uri"),
        (uri(), Some("s"), Duration::from_secs(59), "--turn-ttl-secs"),
        (uri(), Some("s"), MAX_TURN_TTL + ms(1000), "--turn-ttl-secs"),
        (vec![uri()[0].clone(); 9], Some("s"), TTL, "--turn-uri"),
    ] {
        let err = RelayConfig::from_parts(uris, secret.map(String::from), ttl)
            .expect_err(needle)
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    let ok = relay_config();
    assert!(ok.validate().is_ok());
    assert!(
        !format!("{ok:?}").contains(SECRET),
        "the secret is never printed"
    );
}

#[test]
fn a_peer_that_hides_its_address_is_introduced_by_its_registered_candidates_only() {
    let mut h = two_peers();
    // Peer 2 turns relay-only: it hides its address and registers its relayed one alone.
    h.msg(2, ClientMsg::HideAddress);
    let relayed = sa("198.18.0.9:50002");
    h.msg(
        2,
        ClientMsg::Register {
            candidates: vec![Candidate::new(CandidateKind::Relay, relayed)],
        },
    );
    h.drain();
    let id = h.request(7);
    h.msg(2, ClientMsg::Accept { request_id: id });
    let (a, b) = gos(h.drain());
    assert_eq!(
        a.peer_candidates,
        vec![Candidate::new(CandidateKind::Relay, relayed)],
        "no reflexive address of the hidden peer"
    );
    // The other side is unaffected.
    assert!(b
        .peer_candidates
        .iter()
        .any(|c| c.kind == CandidateKind::ServerReflexive));
}
