//! Loopback integration tests that run the real `punch-server` binary.
//!
//! Each test starts the binary with port 0 and a key file in a fresh temporary directory,
//! reads its first stdout line (`{"event":"listening","id":...,"addr":...}`) for the server
//! id and the bound ports, talks STUN (or HTTP) to it on 127.0.0.0/8 only, and kills it by
//! pid when done. The `turnutils_stunclient` test needs
//! the Debian package `coturn` and fails with a clear message without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh::identity::PeerId;
use stun_rs::attributes::discovery::{OtherAddress, ResponseOrigin};
use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::{MessageClass, MessageDecoderBuilder, StunMessage};

/// A running server, killed (by its pid) on drop.
struct Server {
    child: Child,
    line: serde_json::Value,
    /// Holds the key file unless the test named its own.
    _key_dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_punch-server"));
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Never create the default key file in the working directory.
        let own_key =
            args.contains(&"--key-file") || env.iter().any(|(k, _)| *k == "PUNCH_KEY_FILE");
        let key_dir = if own_key {
            None
        } else {
            let dir = tempfile::tempdir().expect("temp dir");
            cmd.env("PUNCH_KEY_FILE", dir.path().join("punch.key"));
            Some(dir)
        };
        let mut child = cmd.spawn().expect("spawn punch-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listening line within 10 s");
        let line: serde_json::Value = serde_json::from_str(&line).expect("first line is JSON");
        assert_eq!(line["event"], "listening", "{line}");
        Server {
            child,
            line,
            _key_dir: key_dir,
        }
    }

    /// The server id from the listening line; it must parse as a peer id.
    fn id(&self) -> PeerId {
        self.line["id"]
            .as_str()
            .expect("id in the listening line")
            .parse()
            .expect("id is a peer id")
    }

    fn addr(&self, key: &str) -> SocketAddr {
        let a: SocketAddr = self.line[key]
            .as_str()
            .expect(key)
            .parse()
            .expect("address");
        assert_ne!(a.port(), 0, "real bound port reported for {key}");
        a
    }
}

fn request(change: Option<(bool, bool)>) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&rand_txid());
    if let Some((ip, port)) = change {
        m[3] = 8;
        m.extend_from_slice(&[
            0x00,
            0x03,
            0x00,
            0x04,
            0,
            0,
            0,
            u8::from(ip) * 4 + u8::from(port) * 2,
        ]);
    }
    m
}

fn rand_txid() -> [u8; 12] {
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut t = [7u8; 12];
    t[..8].copy_from_slice(&nanos.to_be_bytes());
    t
}

/// Sends `req` to `to` and returns (response, where it came from); retries a few times.
fn exchange(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> (StunMessage, SocketAddr) {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    for _ in 0..6 {
        sock.send_to(req, to).expect("send");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let (msg, _) = MessageDecoderBuilder::default()
                .build()
                .decode(&buf[..n])
                .expect("response decodes");
            assert_eq!(msg.transaction_id().as_bytes()[..], req[8..20]);
            return (msg, from);
        }
    }
    panic!("no response from {to}");
}

fn xor_mapped(m: &StunMessage) -> SocketAddr {
    *m.get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("typed")
        .socket_address()
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
    let server = Server::start(&[], &[("PUNCH_LISTEN", "127.0.0.1:0")]);
    let addr = server.addr("addr");
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
    let first = Server::start(&["--listen", "127.0.0.1:0"], &[("PUNCH_KEY_FILE", key)]);
    let id = first.id();
    drop(first);
    let second = Server::start(&["--listen", "127.0.0.1:0", "--key-file", key], &[]);
    assert_eq!(second.id(), id, "same key file, same id");
    // A fresh key file gives another id.
    let other = Server::start(&["--listen", "127.0.0.1:0"], &[]);
    assert_ne!(other.id(), id);
}

#[test]
fn pipelined_requests_each_get_their_response() {
    // Back-to-back requests from one socket are answered in one GSO send; the client must
    // still see one ordinary datagram per response.
    let server = Server::start(&["--listen", "127.0.0.1:0"], &[]);
    let addr = server.addr("addr");
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
        let (msg, _) = MessageDecoderBuilder::default()
            .build()
            .decode(&buf[..n])
            .expect("response decodes");
        assert_eq!(xor_mapped(&msg), sock.local_addr().expect("local"));
        assert!(want.remove(&msg.transaction_id().as_bytes()[..]));
    }
}

#[test]
fn rfc5780_change_request_over_loopback() {
    let server = Server::start(
        &["--listen", "127.0.0.1:0", "--alt-addr", "127.0.0.2:0"],
        &[],
    );
    let (p, a) = (server.addr("addr"), server.addr("alt_addr"));
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

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

#[test]
fn metrics_endpoint_counts() {
    let server = Server::start(
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        &[("PUNCH_RATE_LIMIT", "0")],
    );
    let (addr, metrics) = (server.addr("addr"), server.addr("metrics_addr"));
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
    let mut server = Server::start(&["--listen", "127.0.0.1:0"], &[]);
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let server = Server::start(&["--listen", "127.0.0.1:0"], &[]);
    let port = server.addr("addr").port().to_string();
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
    let server = Server::start(&["--listen", "0.0.0.0:0"], &[]);
    let port = server.addr("addr").port();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let to = SocketAddr::from((ip, port));
        let (msg, from) = exchange(&sock, to, &request(None));
        assert_eq!(from, to);
        assert_eq!(xor_mapped(&msg), sock.local_addr().expect("local"));
    }
}
