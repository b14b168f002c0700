//! CreatePermission and ChannelBind: success, refusals, limits and the peer policy.

use stun_rs::methods::{CHANNEL_BIND, CREATE_PERMMISSION};

use super::*;
use crate::config::PeerPolicy;
use crate::server::Quota;

#[test]
fn create_permission_installs_all_peers() {
    let mut h = Harness::new();
    let (auth, _) = h.allocate(client_addr(), "alice");
    let peers = [peer_addr(), addr("198.51.100.8:1")];
    let r = h.permit(&auth, &peers);
    assert!(r.is_success() && r.integrity_ok);
    assert_eq!(h.server.live_counts(h.now).1, 2);
    assert_eq!(h.server.stats().permissions_created, 2);
    // A refresh is not a new permission.
    h.permit(&auth, &peers[..1]);
    assert_eq!(h.server.stats().permissions_created, 2);
}

#[test]
fn create_permission_refusals() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = h.permit(&auth, &[peer_addr()]);
    assert_eq!(r.error, Some(437), "no allocation");
    let (auth, _) = h.allocate(client_addr(), "alice");
    let r = h.signed(client_addr(), &auth, CREATE_PERMMISSION, Vec::new());
    assert_eq!(r.error, Some(400), "no XOR-PEER-ADDRESS");
    let r = h.permit(&auth, &[addr("[2001:db8::1]:1")]);
    assert_eq!(r.error, Some(443), "IPv6 peer on an IPv4 relay");
    // One refused peer fails the whole request.
    let r = h.permit(&auth, &[peer_addr(), addr("10.0.0.1:1")]);
    assert_eq!(r.error, Some(403));
    assert_eq!(h.server.live_counts(h.now).1, 0, "all or nothing");
}

#[test]
fn policy_refuses_each_special_range_with_403() {
    let mut h = Harness::new();
    let (auth, port) = h.allocate(client_addr(), "alice");
    let refused = [
        "127.0.0.1:1",
        "0.0.0.0:1",
        "224.0.0.1:1",
        "255.255.255.255:1",
        "169.254.0.1:1",
        "10.1.1.1:1",
        "172.16.0.1:1",
        "192.168.0.1:1",
        "100.64.0.1:1",
        "240.0.0.1:1",
    ];
    for (i, peer) in refused.iter().enumerate() {
        let r = h.permit(&auth, &[addr(peer)]);
        assert_eq!(r.error, Some(403), "{peer}");
        let n = 0x4000 + i as u16;
        let r = h.bind(&auth, n, addr(peer));
        assert_eq!(r.error, Some(403), "channel to {peer}");
    }
    assert_eq!(h.server.stats().policy_refusals, 2 * refused.len() as u64);
    // And Send indications to them are not relayed (no permission can exist).
    let out = h.input(
        client_addr(),
        &client::send_indication(addr("10.1.1.1:1"), b"x"),
    );
    assert_eq!(out, Out::Dropped(DropReason::NoPermission));
    assert!(h
        .out
        .iter()
        .all(|c| !matches!(c, Command::SendFromRelay { port: p, .. } if *p == port)));
}

#[test]
fn policy_flags_open_private_and_loopback() {
    let mut config = test_config();
    config.policy = PeerPolicy {
        allow_private_peers: true,
        allow_loopback_peers: true,
    };
    let mut h = Harness::with(config);
    let (auth, _) = h.allocate(client_addr(), "alice");
    for peer in ["10.1.1.1:1", "127.0.0.1:1"] {
        let r = h.permit(&auth, &[addr(peer)]);
        assert!(r.is_success(), "{peer}");
    }
    let r = h.permit(&auth, &[addr("224.0.0.1:1")]);
    assert_eq!(r.error, Some(403), "multicast never");
}

#[test]
fn permission_table_is_bounded() {
    let mut config = test_config();
    config.limits.max_permissions_per_allocation = 2;
    let mut h = Harness::with(config);
    let (auth, _) = h.allocate(client_addr(), "alice");
    let three = [
        addr("198.51.100.1:1"),
        addr("198.51.100.2:1"),
        addr("198.51.100.3:1"),
    ];
    let r = h.permit(&auth, &three);
    assert_eq!(r.error, Some(508));
    let r = h.permit(&auth, &three[..2]);
    assert!(r.is_success());
    let r = h.permit(&auth, &three[2..]);
    assert_eq!(r.error, Some(508));
    assert_eq!(h.server.stats().quota_of(Quota::Permissions), 2);
}

#[test]
fn channel_bind_success_rebind_and_conflicts() {
    let mut h = Harness::new();
    let (auth, _) = h.bound_channel();
    assert_eq!(
        h.server.live_counts(h.now),
        (1, 1, 1),
        "the bind installed a permission"
    );
    let r = h.bind(&auth, 0x4000, peer_addr());
    assert!(r.is_success(), "re-bind refreshes");
    assert_eq!(h.server.stats().channels_bound, 1);
    let other = addr("198.51.100.8:9000");
    let r = h.bind(&auth, 0x4000, other);
    assert_eq!(r.error, Some(400), "number bound to another peer");
    let r = h.bind(&auth, 0x4001, peer_addr());
    assert_eq!(r.error, Some(400), "peer bound to another number");
    for bad in [0x0000, 0x3FFF, 0x5000, 0xFFFF] {
        let r = h.bind(&auth, bad, other);
        assert_eq!(r.error, Some(400), "channel number {bad:#x}");
    }
    let r = h.signed(client_addr(), &auth, CHANNEL_BIND, peer_attrs(&[other]));
    assert_eq!(r.error, Some(400), "no CHANNEL-NUMBER");
    let r = h.bind(&auth, 0x4FFF, other);
    assert!(r.is_success(), "the highest number is valid");
}

#[test]
fn channel_table_is_bounded() {
    let mut config = test_config();
    config.limits.max_channels_per_allocation = 1;
    let mut h = Harness::with(config);
    let (auth, _) = h.bound_channel();
    let r = h.bind(&auth, 0x4001, addr("198.51.100.8:1"));
    assert_eq!(r.error, Some(508));
    assert_eq!(h.server.stats().quota_of(Quota::Channels), 1);
}

#[test]
fn rfc5766_channel_numbers_only_with_the_option() {
    let mut h = Harness::new();
    let (auth, _) = h.allocate(client_addr(), "alice");
    let r = h.bind(&auth, 0x7000, peer_addr());
    assert_eq!(r.error, Some(400));
    let mut config = test_config();
    config.rfc5766_channels = true;
    let mut h = Harness::with(config);
    let (auth, port) = h.allocate(client_addr(), "alice");
    let r = h.bind(&auth, 0x7000, peer_addr());
    assert!(r.is_success());
    let data = crate::wire::ChannelData::encode(0x7000, b"x").expect("encode");
    assert_eq!(
        h.input(client_addr(), &data),
        Out::Forward {
            port,
            peer: peer_addr(),
            payload: b"x".to_vec()
        }
    );
    let r = h.bind(&auth, 0x8000, addr("198.51.100.8:1"));
    assert_eq!(r.error, Some(400), "0x8000 is never a channel");
}
