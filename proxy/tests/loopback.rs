//! The real `proxy` binary on loopback: relaying, credentials, limits, policy, metrics,
//! hostile datagrams and SIGTERM. Each test uses its own relay port range.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{http_get, receive, EchoPeer, ProxyProc};
use proxy::client::{self, ClientError};
use proxy::wire::ChannelData;

#[test]
fn relays_indications_and_channel_data_to_an_echo_peer() {
    let p = ProxyProc::start(&["--ports", "21000-21099", "--allow-loopback-peers"]);
    let peer = EchoPeer::start();
    let mut s = p.allocate("alice");
    assert_eq!(s.relayed.ip().to_string(), "127.0.0.1");
    assert!((21000..=21099).contains(&s.relayed.port()));
    assert_eq!(s.lifetime, 600);
    // Send indication out, Data indication back.
    s.create_permission(&[peer.addr]).expect("permission");
    s.socket()
        .send_to(&client::send_indication(peer.addr, b"via send"), s.server())
        .expect("send");
    let got = receive(s.socket(), 1, Duration::from_secs(3));
    let data = got.first().and_then(|d| client::parse_data_indication(d));
    assert_eq!(data, Some((peer.addr, b"via send".to_vec())));
    // ChannelData both ways, no loss at a moderate rate.
    s.channel_bind(0x4000, peer.addr).expect("channel bind");
    for i in 0..200u32 {
        let msg = ChannelData::encode(0x4000, &i.to_be_bytes()).expect("encode");
        s.socket().send_to(&msg, s.server()).expect("send");
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = receive(s.socket(), 200, Duration::from_secs(5));
    assert_eq!(got.len(), 200, "no loss");
    for d in &got {
        let cd = ChannelData::parse(d).expect("ChannelData from the relay");
        assert_eq!(cd.number, 0x4000);
        assert_eq!(cd.payload.len(), 4);
    }
    p.metric(
        "proxy_relayed_packets_total{direction=\"peer_to_client\"}",
        |v| v >= 201.0,
    );
    p.metric("proxy_channels_live", |v| v == 1.0);
    assert_eq!(s.refresh(0).expect("free"), 0);
    p.metric("proxy_allocations_live", |v| v == 0.0);
}

#[test]
fn wrong_secret_or_expired_username_cannot_allocate() {
    let p = ProxyProc::start(&["--ports", "21100-21199"]);
    match p.allocate_as("mallory", "guessed-secret") {
        Err(ClientError::Refused(401)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let creds =
        proxy::credentials::Credentials::rest(common::SECRET, "late", common::unix_now() - 10);
    match client::Session::allocate(sock, p.addr(), &creds, Duration::from_secs(3)) {
        Err(ClientError::Refused(401)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    p.metric("proxy_auth_failures_total{reason=\"bad_integrity\"}", |v| {
        v == 1.0
    });
    p.metric(
        "proxy_auth_failures_total{reason=\"expired_username\"}",
        |v| v == 1.0,
    );
    p.metric("proxy_allocations_created_total", |v| v == 0.0);
}

#[test]
fn allocation_limits_refuse_with_486_and_508() {
    let p = ProxyProc::start(&[
        "--ports",
        "21200-21299",
        "--max-allocations",
        "3",
        "--max-allocations-per-user",
        "1",
    ]);
    let _a = p.allocate("alice");
    match p.allocate_as("alice", common::SECRET) {
        Err(ClientError::Refused(486)) => {}
        other => panic!("per-user limit: expected 486, got {other:?}"),
    }
    let _b = p.allocate("bob");
    let _c = p.allocate("carol");
    match p.allocate_as("dave", common::SECRET) {
        Err(ClientError::Refused(508)) => {}
        other => panic!("total limit: expected 508, got {other:?}"),
    }
    p.metric("proxy_quota_refusals_total{quota=\"per_user\"}", |v| {
        v == 1.0
    });
    p.metric("proxy_quota_refusals_total{quota=\"allocations\"}", |v| {
        v == 1.0
    });
}

#[test]
fn per_ip_limit_and_port_range_exhaustion() {
    let p = ProxyProc::start(&["--ports", "21300-21301", "--max-allocations-per-ip", "3"]);
    let _a = p.allocate("a");
    let _b = p.allocate("b");
    match p.allocate_as("c", common::SECRET) {
        Err(ClientError::Refused(508)) => {}
        other => panic!("two ports only: expected 508, got {other:?}"),
    }
    let p = ProxyProc::start(&["--ports", "21310-21319", "--max-allocations-per-ip", "1"]);
    let _a = p.allocate("a");
    match p.allocate_as("b", common::SECRET) {
        Err(ClientError::Refused(486)) => {}
        other => panic!("per-IP limit: expected 486, got {other:?}"),
    }
}

#[test]
fn peer_policy_refuses_loopback_and_private_peers_by_default() {
    let p = ProxyProc::start(&["--ports", "21400-21499"]);
    let mut s = p.allocate("alice");
    for peer in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "192.168.1.1:9",
        "169.254.1.1:9",
        "224.0.0.1:9",
    ] {
        match s.create_permission(&[peer.parse().expect("addr")]) {
            Err(ClientError::Refused(403)) => {}
            other => panic!("{peer}: expected 403, got {other:?}"),
        }
    }
    match s.channel_bind(0x4000, "127.0.0.1:9".parse().expect("addr")) {
        Err(ClientError::Refused(403)) => {}
        other => panic!("expected 403, got {other:?}"),
    }
    p.metric("proxy_policy_refusals_total", |v| v == 6.0);
}

#[test]
fn bandwidth_limit_drops_the_excess() {
    let p = ProxyProc::start(&[
        "--ports",
        "21500-21599",
        "--allow-loopback-peers",
        "--bandwidth-per-allocation",
        "10000",
    ]);
    // A peer that only counts (no echo, which would draw from the same bucket).
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    let mut s = p.allocate("alice");
    s.channel_bind(0x4000, peer.local_addr().expect("addr"))
        .expect("channel bind");
    // 100 KB at once against a bucket of 10 KB, refilled at 10 KB/s.
    let msg = ChannelData::encode(0x4000, &[7u8; 1000]).expect("encode");
    for _ in 0..100 {
        s.socket().send_to(&msg, s.server()).expect("send");
    }
    let got = receive(&peer, 100, Duration::from_secs(1));
    assert!((5..40).contains(&got.len()), "{} of 100 relayed", got.len());
    p.metric("proxy_dropped_total{reason=\"bandwidth\"}", |v| v >= 60.0);
}

#[test]
fn malformed_datagrams_are_dropped_unanswered_and_counted() {
    let p = ProxyProc::start(&["--ports", "21600-21699"]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let junk: [&[u8]; 5] = [
        b"",
        b"\x00\x01\x00",
        &[0xFF; 64],
        b"\x40\x00\xFF\xFF",
        &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12],
    ];
    for j in junk {
        sock.send_to(j, p.addr()).expect("send");
    }
    assert!(
        receive(&sock, 1, Duration::from_millis(500)).is_empty(),
        "never answered"
    );
    p.metric("proxy_dropped_total{reason=\"malformed\"}", |v| v == 5.0);
    // A Binding request still works.
    let txn = client::new_txn();
    let r = client::transact(
        &sock,
        p.addr(),
        &client::binding_request(txn),
        txn,
        None,
        Duration::from_secs(3),
    )
    .expect("binding");
    assert_eq!(r.mapped, sock.local_addr().ok());
}

#[test]
fn healthz_and_metrics_are_served() {
    let p = ProxyProc::start(&["--ports", "21700-21799"]);
    assert_eq!(http_get(p.metrics_addr(), "/healthz"), "ok\n");
    let body = http_get(p.metrics_addr(), "/metrics");
    for name in [
        "proxy_allocations_live",
        "proxy_allocations_created_total",
        "proxy_permissions_live",
        "proxy_channels_live",
        "proxy_relayed_packets_total{direction=\"client_to_peer\"}",
        "proxy_relayed_bytes_total{direction=\"peer_to_client\"}",
        "proxy_auth_failures_total{reason=\"stale_nonce\"}",
        "proxy_quota_refusals_total{quota=\"per_ip\"}",
        "proxy_policy_refusals_total",
        "proxy_dropped_total{reason=\"malformed\"}",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    let _s = p.allocate("alice");
    p.metric("proxy_allocations_live", |v| v == 1.0);
    p.metric("proxy_auth_challenges_total", |v| v == 1.0);
}

#[test]
fn sigterm_stops_gracefully_and_frees_the_relay_ports() {
    let mut p = ProxyProc::start(&["--ports", "21800-21899"]);
    let s = p.allocate("alice");
    p.sigterm();
    let status = p.wait_for_exit();
    assert!(status.success(), "exit status {status:?}");
    // The relay port is closed: it can be bound again.
    UdpSocket::bind(s.relayed).expect("relay port released");
}

#[test]
fn wildcard_listen_address_answers_from_the_address_asked() {
    let p = ProxyProc::start_on(
        "0.0.0.0:0",
        &["--ports", "21900-21999", "--allow-loopback-peers"],
    );
    let peer = EchoPeer::start();
    // The session only accepts answers from the exact address it sent to.
    let mut s = p.allocate("alice");
    s.channel_bind(0x4001, peer.addr).expect("channel bind");
    let msg = ChannelData::encode(0x4001, b"hello").expect("encode");
    s.socket().send_to(&msg, s.server()).expect("send");
    let mut buf = [0u8; 64];
    s.socket()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let (n, from) = s.socket().recv_from(&mut buf).expect("echo");
    assert_eq!(from, s.server());
    assert_eq!(
        ChannelData::parse(&buf[..n]).map(|c| c.payload),
        Some(&b"hello"[..])
    );
}

/// Given the IPv6 wildcard, the proxy serves clients of both families on one socket, and
/// answers each from the address it asked (IPv4 clients see plain IPv4, not a mapped
/// address).
#[test]
fn an_ipv6_wildcard_listen_address_serves_both_families() {
    let p = ProxyProc::start_on(
        "[::]:0",
        &["--ports", "22000-22099", "--allow-loopback-peers"],
    );
    let port = p.addr().port();
    let creds =
        proxy::credentials::Credentials::rest(common::SECRET, "dual", common::unix_now() + 3600);
    for (bind, server) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
        let sock = UdpSocket::bind(bind).expect("bind client");
        let server = SocketAddr::new(server.parse().expect("ip"), port);
        let s = proxy::client::Session::allocate(sock, server, &creds, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("allocate over {server}: {e}"));
        assert_eq!(s.relayed.ip().to_string(), "127.0.0.1", "over {server}");
        assert_eq!(s.server(), server);
        s.close().expect("free");
    }
}
