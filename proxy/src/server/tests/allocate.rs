//! Allocate, Refresh, expiry and the allocation limits.

use std::time::Duration;

use stun_rs::attributes::turn::{
    AdditionalAddressFamily, DontFragment, EvenPort, RequestedAddressFamily, RequestedTrasport,
    ReservationToken,
};
use stun_rs::methods::{ALLOCATE, REFRESH};
use stun_rs::AddressFamily;

use super::*;
use crate::server::Quota;

fn alloc_with(h: &mut Harness, auth: &ClientAuth, extra: Vec<StunAttribute>) -> Response {
    let mut attrs = client::allocate_attrs(None);
    attrs.extend(extra);
    h.signed(client_addr(), auth, ALLOCATE, attrs)
}

#[test]
fn allocate_answers_relayed_mapped_and_lifetime() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = alloc_with(&mut h, &auth, vec![DontFragment::default().into()]);
    assert!(r.is_success(), "DONT-FRAGMENT is accepted");
    let relayed = r.relayed.expect("relayed");
    assert_eq!(relayed.ip(), h.server.config().relay_ip);
    assert!((50000..=50099).contains(&relayed.port()));
    assert_eq!(r.mapped, Some(client_addr()));
    assert_eq!(r.lifetime, Some(600));
    assert!(h.bound.contains(&relayed.port()));
    assert_eq!(h.server.live_counts(h.now).0, 1);
}

#[test]
fn retransmitted_allocate_is_answered_again_and_another_gets_437() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let txn = client::new_txn();
    let bytes = client::encode_request(ALLOCATE, txn, client::allocate_attrs(None), Some(&auth));
    let first = h.request(client_addr(), &bytes, Some(&auth.key));
    let again = h.request(client_addr(), &bytes, Some(&auth.key));
    assert!(first.is_success() && again.is_success());
    assert_eq!(first.relayed, again.relayed);
    assert_eq!(h.bound.len(), 1, "one allocation");
    let r = alloc_with(&mut h, &auth, Vec::new());
    assert_eq!(r.error, Some(437));
    assert!(r.integrity_ok);
}

#[test]
fn transport_other_than_udp_gets_442_and_none_gets_400() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let tcp = stun_rs::attributes::turn::RequestedTrasport::new(tcp_protocol());
    let r = h.signed(client_addr(), &auth, ALLOCATE, vec![tcp.into()]);
    assert_eq!(r.error, Some(442));
    let r = h.signed(client_addr(), &auth, ALLOCATE, Vec::new());
    assert_eq!(r.error, Some(400));
    assert!(h.bound.is_empty());
}

/// Protocol 6 (TCP), read back from a patched message since stun-rs only names UDP (the
/// decoder checks no FINGERPRINT without a context).
fn tcp_protocol() -> stun_rs::protocols::ProtocolNumber {
    let mut bytes = client::encode_request(
        ALLOCATE,
        client::new_txn(),
        client::allocate_attrs(None),
        None,
    );
    bytes[24] = 6;
    let (msg, _) = stun_rs::MessageDecoder::default()
        .decode(&bytes)
        .expect("decode");
    msg.get::<RequestedTrasport>()
        .and_then(|a| a.as_requested_trasport().ok())
        .map(|t| t.protocol())
        .expect("protocol")
}

#[test]
fn lifetime_is_clamped_and_refresh_moves_expiry() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = h.signed(
        client_addr(),
        &auth,
        ALLOCATE,
        client::allocate_attrs(Some(86_400)),
    );
    assert_eq!(r.lifetime, Some(600), "clamped to --max-lifetime-secs");
    let r = h.signed(
        client_addr(),
        &auth,
        REFRESH,
        vec![stun_rs::attributes::turn::LifeTime::new(60).into()],
    );
    assert_eq!(r.lifetime, Some(600), "below the default gets the default");
    h.advance(Duration::from_secs(599));
    let r = h.signed(client_addr(), &auth, REFRESH, Vec::new());
    assert!(r.is_success());
    h.advance(Duration::from_secs(599));
    assert_eq!(h.bound.len(), 1, "the refresh kept it");
    h.advance(Duration::from_secs(2));
    assert!(h.bound.is_empty(), "expired and freed");
    assert_eq!(h.server.stats().allocations_expired, 1);
    let r = h.signed(client_addr(), &auth, REFRESH, Vec::new());
    assert_eq!(r.error, Some(437), "no allocation any more");
}

#[test]
fn refresh_zero_deletes() {
    let mut h = Harness::new();
    let (auth, port) = h.allocate(client_addr(), "alice");
    let r = h.signed(
        client_addr(),
        &auth,
        REFRESH,
        vec![stun_rs::attributes::turn::LifeTime::new(0).into()],
    );
    assert_eq!(r.lifetime, Some(0));
    assert!(h.out.contains(&Command::FreeRelayPort {
        port,
        client: client_addr()
    }));
    assert!(h.bound.is_empty());
    assert_eq!(h.server.stats().allocations_deleted, 1);
    // The client may allocate again.
    let (_, _) = h.allocate(client_addr(), "alice");
}

#[test]
fn even_port_and_reservations() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = alloc_with(&mut h, &auth, vec![EvenPort::new(true).into()]);
    let port = r.relayed.expect("relayed").port();
    assert_eq!(port % 2, 0);
    let token = r.reservation_token.expect("RESERVATION-TOKEN");
    // Another client claims the reserved odd port with the token.
    let other = addr("192.0.2.11:40000");
    let auth2 = h.challenge(other, "bob");
    let mut attrs = client::allocate_attrs(None);
    let token8: [u8; 8] = token.as_slice().try_into().expect("8 bytes");
    attrs.push(ReservationToken::from(token8).into());
    let r = h.signed(other, &auth2, ALLOCATE, attrs.clone());
    assert_eq!(r.relayed.map(|a| a.port()), Some(port + 1));
    // A token works once; unknown tokens get 508.
    let third = addr("192.0.2.12:40000");
    let auth3 = h.challenge(third, "carol");
    let r = h.signed(third, &auth3, ALLOCATE, attrs);
    assert_eq!(r.error, Some(508));
    // A token next to EVEN-PORT is a bad request.
    let mut both = client::allocate_attrs(None);
    both.push(ReservationToken::from(token8).into());
    both.push(EvenPort::new(false).into());
    let r = h.signed(third, &auth3, ALLOCATE, both);
    assert_eq!(r.error, Some(400));
    // EVEN-PORT without R: an even port, no token.
    let r = h.signed(
        third,
        &auth3,
        ALLOCATE,
        vec![
            RequestedTrasport::new(stun_rs::protocols::UDP).into(),
            EvenPort::new(false).into(),
        ],
    );
    assert_eq!(r.relayed.map(|a| a.port() % 2), Some(0));
    assert!(r.reservation_token.is_none());
}

#[test]
fn unclaimed_reservations_expire_and_free_the_port() {
    let mut h = Harness::with(ServerConfig {
        ports: PortRange {
            lo: 50000,
            hi: 50001,
        },
        ..test_config()
    });
    let auth = h.challenge(client_addr(), "alice");
    let r = alloc_with(&mut h, &auth, vec![EvenPort::new(true).into()]);
    assert_eq!(r.relayed.map(|a| a.port()), Some(50000));
    let other = addr("192.0.2.11:40000");
    let auth2 = h.challenge(other, "bob");
    let r = h.signed(other, &auth2, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(508), "50001 is reserved");
    h.advance(crate::server::RESERVATION_LIFETIME + Duration::from_secs(1));
    let r = h.signed(other, &auth2, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.relayed.map(|a| a.port()), Some(50001));
}

#[test]
fn address_families() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = alloc_with(
        &mut h,
        &auth,
        vec![RequestedAddressFamily::new(AddressFamily::IPv6).into()],
    );
    assert_eq!(r.error, Some(440), "the relay IP is IPv4");
    let r = alloc_with(
        &mut h,
        &auth,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv4).into()],
    );
    assert_eq!(r.error, Some(400));
    let r = alloc_with(
        &mut h,
        &auth,
        vec![
            RequestedAddressFamily::new(AddressFamily::IPv4).into(),
            AdditionalAddressFamily::new(AddressFamily::IPv6).into(),
        ],
    );
    assert_eq!(r.error, Some(400));
    let r = alloc_with(
        &mut h,
        &auth,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    assert!(
        r.is_success(),
        "IPv4 allocated, IPv6 refused in ADDRESS-ERROR-CODE"
    );
}

#[test]
fn allocation_limits() {
    let mut config = test_config();
    config.limits.max_allocations = 4;
    config.limits.max_allocations_per_user = 2;
    config.limits.max_allocations_per_ip = 2;
    let mut h = Harness::with(config);
    // Per user: alice from two IPs, then a third.
    h.allocate(addr("192.0.2.1:1"), "alice");
    h.allocate(addr("192.0.2.2:1"), "alice");
    let auth = h.challenge(addr("192.0.2.3:1"), "alice");
    let r = h.signed(
        addr("192.0.2.3:1"),
        &auth,
        ALLOCATE,
        client::allocate_attrs(None),
    );
    assert_eq!(r.error, Some(486));
    assert_eq!(h.server.stats().quota_of(Quota::PerUser), 1);
    // Per IP: two ports of 192.0.2.1 (one already used by alice).
    h.allocate(addr("192.0.2.1:2"), "bob");
    let auth = h.challenge(addr("192.0.2.1:3"), "carol");
    let r = h.signed(
        addr("192.0.2.1:3"),
        &auth,
        ALLOCATE,
        client::allocate_attrs(None),
    );
    assert_eq!(r.error, Some(486));
    assert_eq!(h.server.stats().quota_of(Quota::PerIp), 1);
    // In total: four allocations.
    h.allocate(addr("192.0.2.8:1"), "erin");
    let auth = h.challenge(addr("192.0.2.9:1"), "dave");
    let r = h.signed(
        addr("192.0.2.9:1"),
        &auth,
        ALLOCATE,
        client::allocate_attrs(None),
    );
    assert_eq!(r.error, Some(508));
    assert_eq!(h.server.stats().quota_of(Quota::Allocations), 1);
}

#[test]
fn port_exhaustion_gets_508() {
    let mut h = Harness::with(ServerConfig {
        ports: PortRange {
            lo: 50000,
            hi: 50001,
        },
        ..test_config()
    });
    h.allocate(addr("192.0.2.1:1"), "a");
    h.allocate(addr("192.0.2.2:1"), "b");
    let auth = h.challenge(addr("192.0.2.3:1"), "c");
    let r = h.signed(
        addr("192.0.2.3:1"),
        &auth,
        ALLOCATE,
        client::allocate_attrs(None),
    );
    assert_eq!(r.error, Some(508));
    assert_eq!(h.server.stats().quota_of(Quota::Ports), 1);
}

#[test]
fn unbindable_ports_are_skipped_then_508() {
    let mut h = Harness::with(ServerConfig {
        ports: PortRange {
            lo: 50000,
            hi: 50002,
        },
        ..test_config()
    });
    h.unbindable.extend([50000, 50001]);
    let (_, port) = h.allocate(client_addr(), "alice");
    assert_eq!(port, 50002, "the one bindable port");
    h.unbindable.insert(50002);
    h.advance(Duration::from_secs(700));
    assert!(h.bound.is_empty());
    let auth = h.challenge(client_addr(), "alice");
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(508));
    assert_eq!(h.server.live_counts(h.now).0, 0, "nothing left pending");
}

#[test]
fn ipv6_relay_serves_ipv6_requests_only() {
    let mut config = test_config();
    config.relay_ip = "2001:db8::1".parse().expect("ip");
    config.listen = addr("[2001:db8::1]:3478");
    let mut h = Harness::with(config);
    let from = addr("[2001:db8::10]:40000");
    let auth = h.challenge(from, "alice");
    let r = h.signed(from, &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(440), "IPv4 is the default family");
    let mut attrs = client::allocate_attrs(None);
    attrs.push(RequestedAddressFamily::new(AddressFamily::IPv6).into());
    let r = h.signed(from, &auth, ALLOCATE, attrs);
    let relayed = r.relayed.expect("relayed");
    assert_eq!(relayed.ip().to_string(), "2001:db8::1");
    let r = h.signed(
        from,
        &auth,
        stun_rs::methods::CREATE_PERMMISSION,
        peer_attrs(&[addr("198.51.100.7:1")]),
    );
    assert_eq!(r.error, Some(443), "IPv4 peer on an IPv6 relay");
    let peer = addr("[2001:db8::2]:9000");
    let r = h.signed(
        from,
        &auth,
        stun_rs::methods::CHANNEL_BIND,
        channel_bind_attrs(0x4000, peer),
    );
    assert!(r.is_success());
    let data = crate::wire::ChannelData::encode(0x4000, b"v6").expect("encode");
    assert_eq!(
        h.input(from, &data),
        Out::Forward {
            port: relayed.port(),
            peer,
            payload: b"v6".to_vec()
        }
    );
}
