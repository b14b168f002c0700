//! Loopback integration tests that run the real `punch-server` binary.
//!
//! Each test starts the binary with port 0 and a key file in a fresh temporary directory,
//! reads its first stdout line (`{"event":"listening","id":...,"addr":...}`) for the server
//! id and the bound ports, talks STUN (or HTTP) to it on 127.0.0.0/8 only, and kills it by
//! pid when done. The `turnutils_stunclient` test needs
//! the Debian package `coturn` and fails with a clear message without it.

mod common;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binding_request, decode, exchange, http_get, xor_mapped, ServerProc};
use stun_rs::attributes::discovery::{OtherAddress, ResponseOrigin};
use stun_rs::{MessageClass, StunMessage};

/// A Binding request with a fresh transaction id, optionally with CHANGE-REQUEST
/// (`Some((change ip, change port))`).
fn request(change: Option<(bool, bool)>) -> Vec<u8> {
    binding_request(rand_txid(), change)
}

fn rand_txid() -> [u8; 12] {
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut t = [7u8; 12];
    t[..8].copy_from_slice(&nanos.to_be_bytes());
    t
}

fn origin(m: &StunMessage) -> SocketAddr {
    *m.get::<ResponseOrigin>()
        .expect("RESPONSE-ORIGIN")
        .as_response_origin()
        .expect("typed")
        .socket_address()
}

#[test]
fn binding_request_reports_own_address() {
    // The listen address comes from the env var here, to cover PUNCH_LISTEN.
    let server = ServerProc::start(&[], &[("PUNCH_LISTEN", "127.0.0.1:0")]);
    let addr = server.addr();
    server.id();
    assert!(server.line.get("alt_addr").is_none());
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (msg, from) = exchange(&sock, addr, &request(None));
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(from, addr);
    assert_eq!(xor_mapped(&msg), sock.local_addr().expect("local"));
    assert!(msg.get::<OtherAddress>().is_none());
    // CHANGE-REQUEST without --alt-addr: 420 (RFC 5780 §6.1).
    let (msg, _) = exchange(&sock, addr, &request(Some((true, true))));
    assert_eq!(msg.class(), MessageClass::ErrorResponse);
}

#[test]
fn server_id_is_stable_across_restarts_with_the_same_key_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("server.key");
    let key = key.to_str().expect("utf-8 path");
    let first = ServerProc::start(&["--listen", "127.0.0.1:0"], &[("PUNCH_KEY_FILE", key)]);
    let id = first.id();
    drop(first);
    let second = ServerProc::start(&["--listen", "127.0.0.1:0", "--key-file", key], &[]);
    assert_eq!(second.id(), id, "same key file, same id");
    // A fresh key file gives another id.
    let other = ServerProc::start(&["--listen", "127.0.0.1:0"], &[]);
    assert_ne!(other.id(), id);
}

#[test]
fn pipelined_requests_each_get_their_response() {
    // Back-to-back requests from one socket are answered in one GSO send; the client must
    // still see one ordinary datagram per response.
    let server = ServerProc::start(&["--listen", "127.0.0.1:0"], &[]);
    let addr = server.addr();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut want = std::collections::HashSet::new();
    for i in 0..20u8 {
        let mut req = request(None);
        req[19] = i;
        want.insert(req[8..20].to_vec());
        sock.send_to(&req, addr).expect("send");
    }
    let mut buf = [0u8; 1500];
    while !want.is_empty() {
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("a response for every request");
        let msg = decode(&buf[..n]);
        assert_eq!(xor_mapped(&msg), sock.local_addr().expect("local"));
        assert!(want.remove(&msg.transaction_id().as_bytes()[..]));
    }
}

#[test]
fn rfc5780_change_request_over_loopback() {
    let server = ServerProc::start(
        &["--listen", "127.0.0.1:0", "--alt-addr", "127.0.0.2:0"],
        &[],
    );
    let (p, a) = (server.addr(), server.addr_of("alt_addr"));
    assert_eq!(a.ip().to_string(), "127.0.0.2");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = sock.local_addr().expect("local");

    let (msg, from) = exchange(&sock, p, &request(None));
    assert_eq!((from, origin(&msg), xor_mapped(&msg)), (p, p, me));
    let other = msg.get::<OtherAddress>().expect("OTHER-ADDRESS");
    assert_eq!(
        *other.as_other_address().expect("typed").socket_address(),
        a
    );

    let cases = [
        ((true, true), a),
        ((true, false), SocketAddr::new(a.ip(), p.port())),
        ((false, true), SocketAddr::new(p.ip(), a.port())),
        ((false, false), p),
    ];
    for (change, expect) in cases {
        let (msg, from) = exchange(&sock, p, &request(Some(change)));
        assert_eq!(from, expect, "change {change:?}: response source");
        assert_eq!(origin(&msg), expect, "change {change:?}: RESPONSE-ORIGIN");
        assert_eq!(xor_mapped(&msg), me);
    }
    // Requests to the alternate address: OTHER-ADDRESS is the primary one.
    let (msg, from) = exchange(&sock, a, &request(None));
    assert_eq!(from, a);
    let other = msg.get::<OtherAddress>().expect("OTHER-ADDRESS");
    assert_eq!(
        *other.as_other_address().expect("typed").socket_address(),
        p
    );
}

#[test]
fn metrics_endpoint_counts() {
    let server = ServerProc::start(
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        &[("PUNCH_RATE_LIMIT", "0")],
    );
    let (addr, metrics) = (server.addr(), server.addr_of("metrics_addr"));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    exchange(&sock, addr, &request(None));
    // A QUIC-looking datagram goes to the (counting) non-STUN hook, not answered.
    sock.send_to(&[0xc3, 0, 0, 0, 1, 0, 0], addr).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_get(metrics, "/metrics");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        // Workers publish their counters after each batch: poll until both show up.
        if text.contains("punch_stun_responses_total{kind=\"success\"} 1\n")
            && text.contains("punch_stun_not_stun_total 1\n")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "non-STUN datagram never counted: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http_get(metrics, "/healthz").ends_with("ok\n"));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut server = ServerProc::start(&["--listen", "127.0.0.1:0"], &[]);
    server.sigterm();
    let status = server.wait_for_exit();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn invalid_alt_config_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_punch-server"))
        .args(["--listen", "0.0.0.0:0", "--alt-addr", "127.0.0.2:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("concrete IP"));
}

#[test]
fn turnutils_stunclient_gets_reflexive_address() {
    let found = Command::new("sh")
        .args(["-c", "command -v turnutils_stunclient"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "turnutils_stunclient not found: install the Debian package `coturn` \
         (with a policy-rc.d that exits 101 so no daemon starts)"
    );
    let server = ServerProc::start(&["--listen", "127.0.0.1:0"], &[]);
    let port = server.addr().port().to_string();
    let mut child = Command::new("turnutils_stunclient")
        .args(["-p", &port, "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn turnutils_stunclient");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("turnutils_stunclient hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let reflexive: SocketAddr = out
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no reflexive address in: {out}"))
        .trim()
        .parse()
        .expect("reflexive address");
    assert_eq!(reflexive.ip().to_string(), "127.0.0.1", "{out}");
    assert_ne!(reflexive.port(), 0);
}

#[test]
fn wildcard_listen_answers_from_the_address_asked() {
    // Bound to 0.0.0.0, the response must leave from the IP the request was sent to.
    let server = ServerProc::start(&["--listen", "0.0.0.0:0"], &[]);
    let port = server.addr().port();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let to = SocketAddr::from((ip, port));
        let (msg, from) = exchange(&sock, to, &request(None));
        assert_eq!(from, to);
        assert_eq!(xor_mapped(&msg), sock.local_addr().expect("local"));
    }
}
