//! Unit tests of the sans-IO core: RFC 5769 vectors, hand-built and malformed messages.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{ErrorCode, UnknownAttributes, XorMappedAddress};
use stun_rs::{MessageClass, MessageDecoderBuilder, StunMessage};

use super::*;
use crate::wire::append_fingerprint;
use mesh::stun::MAGIC_COOKIE;

const TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 sample request (an ICE check with PRIORITY, USERNAME, MESSAGE-INTEGRITY,
/// FINGERPRINT).
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 sample IPv4 response.
const RFC5769_RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn client() -> SocketAddr {
    addr("192.0.2.1:32853")
}

/// A message of type `msg_type` with the given attributes (values padded here).
fn message(msg_type: u16, attrs: &[(u16, &[u8])], fingerprint: bool) -> Vec<u8> {
    let mut m = msg_type.to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&TXID);
    for (t, v) in attrs {
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&u16::try_from(v.len()).expect("short").to_be_bytes());
        m.extend_from_slice(v);
        m.resize((m.len() + 3) & !3, 0);
    }
    let len = u16::try_from(m.len() - 20).expect("short").to_be_bytes();
    m[2..4].copy_from_slice(&len);
    if fingerprint {
        append_fingerprint(&mut m);
    }
    m
}

fn binding(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    message(0x0001, attrs, false)
}

fn change_request(ip: bool, port: bool) -> [u8; 4] {
    [0, 0, 0, u8::from(ip) * 4 + u8::from(port) * 2]
}

fn plain_server() -> StunServer {
    StunServer::new(
        StunConfig::default(),
        Endpoints::new(addr("198.51.100.1:3478"), None),
    )
}

fn alt_server() -> StunServer {
    StunServer::new(
        StunConfig::default(),
        Endpoints::new(addr("198.51.100.1:3478"), Some(addr("198.51.100.2:3479"))),
    )
}

fn decode(bytes: &[u8]) -> StunMessage {
    let (msg, n) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .expect("response decodes");
    assert_eq!(n, bytes.len());
    msg
}

/// Runs one datagram and returns (socket, destination, decoded response) or the drop.
fn run(
    s: &mut StunServer,
    local: SocketId,
    from: SocketAddr,
    d: &[u8],
) -> Result<(SocketId, SocketAddr, Vec<u8>), DropReason> {
    match s.handle_input(Instant::now(), local, from, d) {
        Outcome::Transmit(t) => Ok((t.local, t.destination, t.contents.to_vec())),
        Outcome::Dropped(r) => Err(r),
        Outcome::NotStun | Outcome::Keepalive => Err(DropReason::EncodeFailed),
    }
}

fn answer(s: &mut StunServer, local: SocketId, d: &[u8]) -> (SocketId, SocketAddr, StunMessage) {
    let (sock, to, bytes) = run(s, local, client(), d).expect("answered");
    assert!(
        wire::precheck(&bytes, 1500).is_ok(),
        "response is well formed"
    );
    (sock, to, decode(&bytes))
}

fn xor_mapped(m: &StunMessage) -> SocketAddr {
    *m.get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("typed")
        .socket_address()
}

fn unknown_listed(m: &StunMessage) -> Vec<u16> {
    assert_eq!(m.class(), MessageClass::ErrorResponse);
    let code = m
        .get::<ErrorCode>()
        .expect("ERROR-CODE")
        .as_error_code()
        .expect("typed");
    assert_eq!(code.error_code().error_code(), 420);
    m.get::<UnknownAttributes>()
        .expect("UNKNOWN-ATTRIBUTES")
        .as_unknown_attributes()
        .expect("typed")
        .attributes()
        .to_vec()
}

#[test]
fn binding_request_gets_xor_mapped_address() {
    let mut s = plain_server();
    let (sock, to, m) = answer(&mut s, SocketId::PRIMARY, &binding(&[]));
    assert_eq!((sock, to), (SocketId::PRIMARY, client()));
    assert_eq!(m.class(), MessageClass::SuccessResponse);
    assert_eq!(m.transaction_id().as_bytes(), &TXID);
    assert_eq!(xor_mapped(&m), client());
    assert!(
        m.get::<OtherAddressAttr>().is_none(),
        "no OTHER-ADDRESS without --alt-addr"
    );
    assert_eq!(m.attributes().len(), 1);
    assert_eq!(s.counters().success_responses, 1);
}

type OtherAddressAttr = stun_rs::attributes::discovery::OtherAddress;
type ResponseOriginAttr = stun_rs::attributes::discovery::ResponseOrigin;
type MappedAddressAttr = stun_rs::attributes::stun::MappedAddress;

#[test]
fn ipv6_and_v4_mapped_sources() {
    let mut s = plain_server();
    let v6 = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into(), 5000);
    let (_, to, bytes) = run(&mut s, SocketId::PRIMARY, v6, &binding(&[])).expect("answered");
    assert_eq!(to, v6);
    assert_eq!(xor_mapped(&decode(&bytes)), v6);
    let mapped = addr("[::ffff:192.0.2.1]:32853");
    let (_, to, bytes) = run(&mut s, SocketId::PRIMARY, mapped, &binding(&[])).expect("answered");
    assert_eq!(to, client(), "v4-mapped reported as IPv4");
    assert_eq!(xor_mapped(&decode(&bytes)), client());
}

#[test]
fn fingerprint_is_mirrored() {
    let mut s = plain_server();
    let req = message(0x0001, &[], true);
    let (_, _, bytes) = run(&mut s, SocketId::PRIMARY, client(), &req).expect("answered");
    assert!(wire::precheck(&bytes, 1500).expect("valid").has_fingerprint);
    let (_, _, bytes) = run(&mut s, SocketId::PRIMARY, client(), &binding(&[])).expect("answered");
    assert!(!wire::precheck(&bytes, 1500).expect("valid").has_fingerprint);
}

#[test]
fn rfc5769_request_gets_420_for_priority() {
    // The vector is an ICE check: PRIORITY (0x0024) is comprehension-required and this
    // server is no ICE agent, so RFC 8489 §6.3.1 asks for a 420 listing it. Its FINGERPRINT
    // validates (checking our CRC-32 against the RFC).
    assert!(
        wire::precheck(&RFC5769_REQUEST, 548)
            .expect("valid")
            .has_fingerprint
    );
    let mut s = plain_server();
    let (_, _, m) = answer(&mut s, SocketId::PRIMARY, &RFC5769_REQUEST);
    assert_eq!(m.transaction_id().as_bytes(), &TXID);
    assert_eq!(unknown_listed(&m), vec![0x0024]);
    assert_eq!(s.counters().error_responses, 1);
}

#[test]
fn rfc5769_response_is_not_answered() {
    assert!(
        wire::precheck(&RFC5769_RESPONSE_V4, 548)
            .expect("valid")
            .has_fingerprint
    );
    let mut s = plain_server();
    assert_eq!(
        run(&mut s, SocketId::PRIMARY, client(), &RFC5769_RESPONSE_V4),
        Err(DropReason::NotRequest)
    );
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let ok = binding(&[]);
    let mut bad_cookie = ok.clone();
    bad_cookie[4] = 0;
    let mut length_mismatch = ok.clone();
    length_mismatch[3] = 4;
    let mut unaligned = ok.clone();
    unaligned[3] = 2;
    unaligned.extend_from_slice(&[0, 0]);
    let mut overrun = binding(&[(0x8022, b"abcd")]);
    overrun[23] = 40;
    let mut bad_fp = message(0x0001, &[], true);
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 0xff;
    let mut fp_not_last = message(0x0001, &[], true);
    fp_not_last.extend_from_slice(&[0x80, 0x22, 0, 0]);
    fp_not_last[3] += 4;
    let mut huge = vec![0u8; 65_507];
    huge[..20].copy_from_slice(&ok);
    huge[2..4].copy_from_slice(&((65_507u16 - 20) & !3).to_be_bytes());
    let mut long_but_valid_shape = binding(&[(0x8022, &[b'a'; 600])]);
    long_but_valid_shape.truncate(long_but_valid_shape.len());
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty", vec![], DropReason::Empty),
        ("one byte", vec![0], DropReason::NoMagicCookie),
        (
            "truncated header",
            ok[..19].to_vec(),
            DropReason::NoMagicCookie,
        ),
        ("wrong cookie", bad_cookie, DropReason::NoMagicCookie),
        ("length mismatch", length_mismatch, DropReason::Malformed),
        ("length not multiple of 4", unaligned, DropReason::Malformed),
        (
            "truncated body",
            ok[..20].iter().chain(&[0x80, 0x22]).copied().collect(),
            DropReason::Malformed,
        ),
        ("attribute overrun", overrun, DropReason::Malformed),
        ("wrong fingerprint", bad_fp, DropReason::BadFingerprint),
        (
            "fingerprint not last",
            fp_not_last,
            DropReason::BadFingerprint,
        ),
        ("huge", huge, DropReason::TooLong),
        ("longer than max", long_but_valid_shape, DropReason::TooLong),
        (
            "indication",
            message(0x0011, &[], false),
            DropReason::Indication,
        ),
        (
            "success response",
            message(0x0101, &[], false),
            DropReason::NotRequest,
        ),
        (
            "error response",
            message(0x0111, &[], false),
            DropReason::NotRequest,
        ),
        (
            "allocate request",
            message(0x0003, &[], false),
            DropReason::UnsupportedMethod,
        ),
        (
            "bad XOR address value",
            binding(&[(0x0020, &[0, 9, 0, 1])]),
            DropReason::Undecodable,
        ),
        (
            "username not UTF-8",
            binding(&[(0x0006, &[0xff, 0xfe])]),
            DropReason::Undecodable,
        ),
    ];
    let mut s = plain_server();
    for (name, bytes, reason) in &cases {
        assert_eq!(
            run(&mut s, SocketId::PRIMARY, client(), bytes),
            Err(*reason),
            "{name}"
        );
    }
    let c = s.counters();
    assert_eq!(c.received, cases.len() as u64);
    assert_eq!(c.dropped_total(), cases.len() as u64);
    assert_eq!(c.success_responses + c.error_responses, 0);
}

#[test]
fn unknown_comprehension_required_gets_420_optional_is_ignored() {
    let mut s = plain_server();
    let (_, _, m) = answer(
        &mut s,
        SocketId::PRIMARY,
        &binding(&[(0x7777, b"x"), (0xc001, b"y")]),
    );
    assert_eq!(unknown_listed(&m), vec![0x7777]);
    let (_, _, m) = answer(&mut s, SocketId::PRIMARY, &binding(&[(0xc001, b"y")]));
    assert_eq!(m.class(), MessageClass::SuccessResponse);
}

#[test]
fn duplicate_unknown_attributes_listed_once() {
    let mut s = plain_server();
    let (_, _, m) = answer(
        &mut s,
        SocketId::PRIMARY,
        &binding(&[(0x7777, b""), (0x7777, b"")]),
    );
    assert_eq!(unknown_listed(&m), vec![0x7777]);
}

#[test]
fn unknown_list_is_bounded() {
    let types: Vec<u16> = (0x7000..0x7000 + 20).collect();
    let attrs: Vec<(u16, &[u8])> = types.iter().map(|t| (*t, &b""[..])).collect();
    let mut s = plain_server();
    let (_, _, m) = answer(&mut s, SocketId::PRIMARY, &binding(&attrs));
    assert_eq!(unknown_listed(&m), types[..MAX_UNKNOWN_LISTED].to_vec());
}

#[test]
fn bad_sources_get_nothing() {
    let mut s = plain_server();
    for from in [
        "192.0.2.1:0",
        "0.0.0.0:1000",
        "224.0.0.1:1000",
        "255.255.255.255:1000",
        "[::]:1000",
        "[ff02::1]:1000",
    ] {
        assert_eq!(
            run(&mut s, SocketId::PRIMARY, addr(from), &binding(&[])),
            Err(DropReason::BadSource),
            "{from}"
        );
    }
}

#[test]
fn not_stun_goes_to_the_hook() {
    let mut s = plain_server();
    let quic_initial = [0xc3u8, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(
        s.handle_input(Instant::now(), SocketId::PRIMARY, client(), &quic_initial),
        Outcome::NotStun
    );
    assert_eq!(s.counters().not_stun, 1);
    assert_eq!(s.counters().dropped_total(), 0);
}

#[test]
fn park_keepalives_go_to_the_coordinator_from_the_primary_socket_only() {
    use mesh::coord::park::{keepalive_request, ParkKey};
    let peer = mesh::identity::PeerId::from_bytes([3; 32]);
    let ka = keepalive_request(&peer, &ParkKey([1; 32]), TXID).unwrap();
    let mut s = plain_server();
    assert_eq!(
        s.handle_input(Instant::now(), SocketId::PRIMARY, client(), &ka),
        Outcome::Keepalive
    );
    assert_eq!(s.counters().keepalives, 1);
    let mut d = alt_server();
    assert!(matches!(
        d.handle_input(Instant::now(), SocketId::ALL[3], client(), &ka),
        Outcome::Dropped(_)
    ));
    // An ordinary request with another USERNAME is answered as before.
    assert!(run(&mut s, SocketId::PRIMARY, client(), &RFC5769_REQUEST).is_ok());
}

#[test]
fn unknown_socket_is_dropped() {
    let mut s = plain_server();
    assert_eq!(
        run(&mut s, SocketId::ALL[3], client(), &binding(&[])),
        Err(DropReason::UnknownSocket)
    );
}

#[test]
fn change_request_without_alternate_gets_420() {
    let mut s = plain_server();
    for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
        let cr = change_request(ip, port);
        let (sock, _, m) = answer(&mut s, SocketId::PRIMARY, &binding(&[(0x0003, &cr)]));
        assert_eq!(sock, SocketId::PRIMARY);
        assert_eq!(unknown_listed(&m), vec![0x0003]);
    }
    // RESPONSE-PORT and PADDING are RFC 5780 too.
    let (_, _, m) = answer(
        &mut s,
        SocketId::PRIMARY,
        &binding(&[(0x0027, &[0x12, 0x34, 0, 0])]),
    );
    assert_eq!(unknown_listed(&m), vec![0x0027]);
    let (_, _, m) = answer(&mut s, SocketId::PRIMARY, &binding(&[(0x0026, &[0; 8])]));
    assert_eq!(unknown_listed(&m), vec![0x0026]);
}

#[test]
fn rfc5780_attributes_and_change_request() {
    let mut s = alt_server();
    let e = *s.endpoints();
    for local in SocketId::ALL {
        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let cr = change_request(ip, port);
            let (sock, to, m) = answer(&mut s, local, &binding(&[(0x0003, &cr)]));
            let expect_from = local.switched(ip, port);
            assert_eq!(sock, expect_from, "local {local:?} change {ip} {port}");
            assert_eq!(to, client());
            assert_eq!(xor_mapped(&m), client());
            let mapped = m.get::<MappedAddressAttr>().expect("MAPPED-ADDRESS");
            assert_eq!(
                *mapped.as_mapped_address().expect("typed").socket_address(),
                client()
            );
            let origin = m.get::<ResponseOriginAttr>().expect("RESPONSE-ORIGIN");
            assert_eq!(
                Some(*origin.as_response_origin().expect("typed").socket_address()),
                e.addr(expect_from)
            );
            let other = m.get::<OtherAddressAttr>().expect("OTHER-ADDRESS");
            assert_eq!(
                Some(*other.as_other_address().expect("typed").socket_address()),
                e.addr(local.switched(true, true))
            );
        }
    }
    assert_eq!(s.counters().changed_source, 12);
}

#[test]
fn response_port_in_rfc5780_mode() {
    let mut s = alt_server();
    let (_, to, _) = answer(
        &mut s,
        SocketId::PRIMARY,
        &binding(&[(0x0027, &[0x12, 0x34, 0, 0])]),
    );
    assert_eq!(to, SocketAddr::new(client().ip(), 0x1234));
    assert_eq!(
        run(
            &mut s,
            SocketId::PRIMARY,
            client(),
            &binding(&[(0x0027, &[0, 0, 0, 0])])
        ),
        Err(DropReason::BadSource)
    );
}

#[test]
fn rate_limit_per_source() {
    let config = StunConfig {
        rate_limit_per_sec: 10,
        rate_limit_burst: 3,
        ..StunConfig::default()
    };
    let mut s = StunServer::new(config, Endpoints::new(addr("198.51.100.1:3478"), None));
    let t = Instant::now();
    let req = binding(&[]);
    let outcome = |s: &mut StunServer, t, from| {
        matches!(
            s.handle_input(t, SocketId::PRIMARY, from, &req),
            Outcome::Transmit(_)
        )
    };
    assert!((0..3).all(|_| outcome(&mut s, t, client())));
    assert!(!outcome(&mut s, t, client()));
    assert!(
        outcome(&mut s, t, addr("192.0.2.99:1")),
        "other sources unaffected"
    );
    assert!(
        outcome(&mut s, t + Duration::from_millis(100), client()),
        "refilled"
    );
    assert_eq!(s.counters().dropped_for(DropReason::RateLimited), 1);
}

#[test]
fn amplification_limit() {
    let strict = StunConfig {
        max_amplification: 1,
        ..StunConfig::default()
    };
    let mut s = StunServer::new(strict, Endpoints::new(addr("198.51.100.1:3478"), None));
    // 32-byte response to a 20-byte request is more than 1x.
    assert_eq!(
        run(&mut s, SocketId::PRIMARY, client(), &binding(&[])),
        Err(DropReason::Amplification)
    );
    // A padded-out request may get its answer.
    assert!(run(
        &mut s,
        SocketId::PRIMARY,
        client(),
        &binding(&[(0x8022, &[b'a'; 12])])
    )
    .is_ok());

    // IPv6 in RFC 5780 mode: a bare request would get 116 bytes (> 4 x 20), so the optional
    // attributes are shed and the 44-byte answer still goes out.
    let mut s = StunServer::new(
        StunConfig::default(),
        Endpoints::new(addr("[2001:db8::1]:3478"), Some(addr("[2001:db8::2]:3479"))),
    );
    let v6 = addr("[2001:db8::7]:5000");
    let (_, _, bytes) = run(&mut s, SocketId::PRIMARY, v6, &binding(&[])).expect("answered");
    assert_eq!(bytes.len(), 44);
    assert!(decode(&bytes).get::<OtherAddressAttr>().is_none());
    // With CHANGE-REQUEST and FINGERPRINT (36 bytes, limit 144) all 124 bytes fit.
    let req = message(0x0001, &[(0x0003, &change_request(false, false))], true);
    let (_, _, bytes) = run(&mut s, SocketId::PRIMARY, v6, &req).expect("answered");
    assert_eq!(bytes.len(), 124);
    assert!(decode(&bytes).get::<OtherAddressAttr>().is_some());
}

#[test]
fn responses_never_exceed_the_limit() {
    let mut s = alt_server();
    for req in [
        binding(&[]),
        RFC5769_REQUEST.to_vec(),
        binding(&[(0x7000, b"")]),
    ] {
        let (_, _, bytes) = run(&mut s, SocketId::PRIMARY, client(), &req).expect("answered");
        assert!(
            bytes.len() <= req.len() * 4,
            "{} vs {}",
            bytes.len(),
            req.len()
        );
    }
}
