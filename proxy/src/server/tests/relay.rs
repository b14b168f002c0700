//! Relaying: ChannelData and indications both ways, expiry in simulated time, the
//! bandwidth limit, and hostile data-path datagrams.

use std::time::Duration;

use super::*;
use crate::server::{CHANNEL_COOLDOWN, CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use crate::wire::ChannelData;

fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    ChannelData::encode(number, payload).expect("encode")
}

#[test]
fn channel_data_relays_both_ways() {
    let mut h = Harness::new();
    let (_, port) = h.bound_channel();
    let out = h.input(client_addr(), &channel_data(0x4000, b"ping"));
    assert_eq!(
        out,
        Out::Forward {
            port,
            peer: peer_addr(),
            payload: b"ping".to_vec()
        }
    );
    // Padded to a multiple of 4 (RFC 8656 section 12.5) is accepted too.
    let mut padded = channel_data(0x4000, b"abcde");
    padded.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        h.input(client_addr(), &padded),
        Out::Forward {
            port,
            peer: peer_addr(),
            payload: b"abcde".to_vec()
        }
    );
    let back = h.peer(port, peer_addr(), b"pong");
    assert_eq!(
        back,
        PeerInput::Forward {
            client: client_addr(),
            header: [0x40, 0x00, 0, 4]
        }
    );
    let s = h.server.stats();
    assert_eq!((s.to_peer.packets, s.to_peer.bytes), (2, 9));
    assert_eq!((s.to_client.packets, s.to_client.bytes), (1, 4));
}

#[test]
fn send_and_data_indications() {
    let mut h = Harness::new();
    let (auth, port) = h.allocate(client_addr(), "alice");
    // No permission yet: dropped silently.
    let send = client::send_indication(peer_addr(), b"hello");
    assert_eq!(
        h.input(client_addr(), &send),
        Out::Dropped(DropReason::NoPermission)
    );
    h.permit(&auth, &[peer_addr()]);
    assert_eq!(h.input(client_addr(), &send), Out::Handled);
    assert!(h.out.contains(&Command::SendFromRelay {
        port,
        to: peer_addr(),
        bytes: b"hello".to_vec()
    }));
    assert!(
        h.sent_to(client_addr()).is_empty(),
        "indications are not answered"
    );
    // The peer answers from another port of the permitted IP: a Data indication.
    let from = addr("198.51.100.7:9999");
    assert_eq!(h.peer(port, from, b"world"), PeerInput::Handled);
    let sent = h.sent_to(client_addr());
    assert_eq!(sent.len(), 1);
    assert_eq!(
        client::parse_data_indication(&sent[0]),
        Some((from, b"world".to_vec()))
    );
    // Another IP has no permission.
    assert_eq!(
        h.peer(port, addr("198.51.100.99:1"), b"x"),
        PeerInput::Dropped(DropReason::NoPermission)
    );
}

#[test]
fn permissions_expire_after_300_seconds_unless_refreshed() {
    let mut h = Harness::new();
    let (auth, port) = h.allocate(client_addr(), "alice");
    h.permit(&auth, &[peer_addr()]);
    h.advance(PERMISSION_LIFETIME - Duration::from_secs(1));
    assert_eq!(h.peer(port, peer_addr(), b"x"), PeerInput::Handled);
    h.permit(&auth, &[peer_addr()]);
    h.signed(client_addr(), &auth, stun_rs::methods::REFRESH, Vec::new());
    h.advance(PERMISSION_LIFETIME - Duration::from_secs(1));
    assert_eq!(
        h.peer(port, peer_addr(), b"x"),
        PeerInput::Handled,
        "refreshed"
    );
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.peer(port, peer_addr(), b"x"),
        PeerInput::Dropped(DropReason::NoPermission)
    );
    let send = client::send_indication(peer_addr(), b"late");
    assert_eq!(
        h.input(client_addr(), &send),
        Out::Dropped(DropReason::NoPermission)
    );
    assert_eq!(h.server.live_counts(h.now).1, 0, "swept");
}

#[test]
fn channels_expire_after_600_seconds_and_cool_down() {
    let mut h = Harness::new();
    let (auth, _) = h.bound_channel();
    // Keep the allocation and the permission alive, not the channel.
    for _ in 0..2 {
        h.advance(Duration::from_secs(299));
        h.permit(&auth, &[peer_addr()]);
        h.signed(client_addr(), &auth, stun_rs::methods::REFRESH, Vec::new());
    }
    assert!(matches!(
        h.input(client_addr(), &channel_data(0x4000, b"x")),
        Out::Forward { .. }
    ));
    h.advance(CHANNEL_LIFETIME - Duration::from_secs(598));
    assert_eq!(
        h.input(client_addr(), &channel_data(0x4000, b"x")),
        Out::Dropped(DropReason::UnboundChannel)
    );
    assert_eq!(h.server.live_counts(h.now).2, 0);
    // During the cooldown the number cannot go to another peer, but may be re-bound to
    // the same one.
    let other = addr("198.51.100.8:9000");
    let r = h.bind(&auth, 0x4000, other);
    assert_eq!(r.error, Some(400));
    let r = h.bind(&auth, 0x4000, peer_addr());
    assert!(r.is_success());
    assert!(matches!(
        h.input(client_addr(), &channel_data(0x4000, b"x")),
        Out::Forward { .. }
    ));
    let _ = CHANNEL_COOLDOWN;
}

#[test]
fn hostile_channel_data_is_dropped_unanswered() {
    let mut h = Harness::new();
    let (_, port) = h.bound_channel();
    let good = channel_data(0x4000, b"payload");
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (good[..3].to_vec(), DropReason::Malformed),
        (good[..good.len() - 1].to_vec(), DropReason::Malformed),
        ([good.clone(), vec![0; 4]].concat(), DropReason::Malformed),
        (vec![0x40, 0x00, 0xFF, 0xFF, 1, 2, 3], DropReason::Malformed),
        (channel_data(0x4001, b"x"), DropReason::UnboundChannel),
        (channel_data(0x4FFF, b"x"), DropReason::UnboundChannel),
        (vec![0x50, 0x00, 0, 0], DropReason::Malformed),
        (vec![0xFF; 40], DropReason::Malformed),
        (Vec::new(), DropReason::Malformed),
    ];
    for (bytes, reason) in &cases {
        assert_eq!(
            h.input(client_addr(), bytes),
            Out::Dropped(*reason),
            "{bytes:02x?}"
        );
    }
    // From a client without an allocation.
    assert_eq!(
        h.input(addr("192.0.2.77:1"), &good),
        Out::Dropped(DropReason::NoAllocation)
    );
    // To a freed relay port.
    assert_eq!(
        h.peer(port + 1, peer_addr(), b"x"),
        PeerInput::Dropped(DropReason::NoAllocation)
    );
    assert!(
        h.out
            .iter()
            .all(|c| !matches!(c, Command::SendToClient { .. })),
        "nothing answered"
    );
    assert_eq!(h.server.stats().dropped_of(DropReason::Malformed), 7);
}

#[test]
fn bandwidth_limit_drops_over_the_rate() {
    let mut config = test_config();
    config.limits.bandwidth_per_allocation = 1000;
    let mut h = Harness::with(config);
    let (_, port) = h.bound_channel();
    let chunk = channel_data(0x4000, &[0u8; 400]);
    assert!(matches!(
        h.input(client_addr(), &chunk),
        Out::Forward { .. }
    ));
    assert!(matches!(
        h.input(client_addr(), &chunk),
        Out::Forward { .. }
    ));
    assert_eq!(
        h.input(client_addr(), &chunk),
        Out::Dropped(DropReason::Bandwidth)
    );
    assert_eq!(
        h.peer(port, peer_addr(), &[0u8; 400]),
        PeerInput::Dropped(DropReason::Bandwidth),
        "both directions share it"
    );
    h.advance(Duration::from_millis(500));
    assert!(matches!(
        h.peer(port, peer_addr(), &[0u8; 400]),
        PeerInput::Forward { .. }
    ));
    assert_eq!(h.server.stats().dropped_of(DropReason::Bandwidth), 2);
}

#[test]
fn own_ports_are_never_reached_even_with_loopback_allowed() {
    let mut config = test_config();
    config.relay_ip = "127.0.0.1".parse().expect("ip");
    config.listen = addr("127.0.0.1:3478");
    config.policy.allow_loopback_peers = true;
    let mut h = Harness::with(config);
    let (auth, port) = h.allocate(client_addr(), "alice");
    let own_listen = addr("127.0.0.1:3478");
    let own_relay = addr(&format!("127.0.0.1:{port}"));
    let elsewhere = addr("127.0.0.1:7");
    h.permit(&auth, &[elsewhere]);
    for to in [own_listen, own_relay] {
        let out = h.input(client_addr(), &client::send_indication(to, b"loop"));
        assert_eq!(out, Out::Dropped(DropReason::OwnAddress), "{to}");
    }
    assert_eq!(
        h.input(client_addr(), &client::send_indication(elsewhere, b"ok")),
        Out::Handled
    );
}

#[test]
fn relay_to_relay_is_handed_over_inside_the_proxy() {
    let mut h = Harness::new();
    let relay_ip = "203.0.113.1";
    let (alice, bob) = (client_addr(), addr("192.0.2.20:41000"));
    let (a_auth, a_port) = h.allocate(alice, "alice");
    let (b_auth, b_port) = h.allocate(bob, "bob");
    let (a_relayed, b_relayed) = (
        addr(&format!("{relay_ip}:{a_port}")),
        addr(&format!("{relay_ip}:{b_port}")),
    );
    // Each binds a channel to the other's relayed address: the relay IP is a valid peer.
    let r = h.bind(&a_auth, 0x4000, b_relayed);
    assert!(r.is_success(), "alice's bind: {:?}", r.error);
    let r = h.signed(
        bob,
        &b_auth,
        stun_rs::methods::CHANNEL_BIND,
        channel_bind_attrs(0x4001, a_relayed),
    );
    assert!(r.is_success(), "bob's bind: {:?}", r.error);
    h.sent_to(bob);
    // Alice's ChannelData reaches Bob on his channel to her relayed address, padded.
    assert_eq!(
        h.input(alice, &channel_data(0x4000, b"hello")),
        Out::Handled
    );
    let got = h.sent_to(bob);
    assert_eq!(got, vec![channel_data_padded(0x4001, b"hello")]);
    // A Send indication is handed over the same way.
    let send = client::send_indication(b_relayed, b"via indication");
    assert_eq!(h.input(alice, &send), Out::Handled);
    assert_eq!(
        h.sent_to(bob),
        vec![channel_data_padded(0x4001, b"via indication")]
    );
    assert_eq!(h.server.stats().relay_to_relay, 2);
    // Nothing reaches a relay port nobody holds, nor the listening port.
    let r = h.permit(&a_auth, &[addr(&format!("{relay_ip}:50099"))]);
    assert!(r.is_success());
    for to in [
        addr(&format!("{relay_ip}:50099")),
        addr(&format!("{relay_ip}:3478")),
    ] {
        let out = h.input(alice, &client::send_indication(to, b"x"));
        assert_eq!(out, Out::Dropped(DropReason::OwnAddress), "{to}");
    }
}

fn channel_data_padded(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = channel_data(number, payload);
    b.resize(b.len().next_multiple_of(4), 0);
    b
}

#[test]
fn data_for_a_pending_or_freed_allocation_is_dropped() {
    let mut h = Harness::new();
    let (auth, port) = h.bound_channel();
    h.signed(
        client_addr(),
        &auth,
        stun_rs::methods::REFRESH,
        vec![stun_rs::attributes::turn::LifeTime::new(0).into()],
    );
    assert_eq!(
        h.input(client_addr(), &channel_data(0x4000, b"x")),
        Out::Dropped(DropReason::NoAllocation)
    );
    assert_eq!(
        h.peer(port, peer_addr(), b"x"),
        PeerInput::Dropped(DropReason::NoAllocation)
    );
}
