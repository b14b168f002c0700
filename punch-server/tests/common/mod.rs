//! Helpers shared by the integration tests that run the real `punch-server` binary
//! (`coord_quic.rs`, `loopback.rs`; each declares `mod common;`).
//!
//! 1. [`ServerProc::start`] spawns the binary, with its key file in a fresh temporary
//!    directory unless the test names its own, and reads the first stdout line
//!    (`{"event":"listening","id":...,"addr":...}`) within [`WAIT`]. The process is killed
//!    by its pid on drop; [`ServerProc::sigterm`] and [`ServerProc::wait_for_exit`] test
//!    a graceful shutdown instead.
//! 2. [`binding_request`], [`exchange`], [`response_to`] and [`xor_mapped`] speak STUN
//!    (RFC 8489 / RFC 5780 CHANGE-REQUEST) to it; [`http_get`] fetches from its metrics
//!    listener. Traffic goes to 127.0.0.0/8 only, and every wait has a timeout.

// Every test binary compiles its own copy of this module and uses only part of it (the
// STUN-only tests never dial QUIC, the QUIC tests never send CHANGE-REQUEST); without this
// the unused part would be dead code in that binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh::identity::PeerId;
use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::{MessageDecoderBuilder, StunMessage};

/// Longest wait for any one thing: the listening line, a graceful exit, a QUIC event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `punch-server` process, killed (by its pid) on drop.
pub struct ServerProc {
    pub child: Child,
    /// The first stdout line.
    pub line: serde_json::Value,
    /// Holds the key file unless the test named its own.
    _key_dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    /// Starts the binary with `args` and the extra environment `env`. Unless either names
    /// a key file (`--key-file`, `PUNCH_KEY_FILE`), the key goes to a fresh temporary
    /// directory, never to the default file in the working directory.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> ServerProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_punch-server"));
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
        // From here on the child is killed on drop, also if the line is missing or wrong.
        let mut server = ServerProc {
            child,
            line: serde_json::Value::Null,
            _key_dir: key_dir,
        };
        let line = rx.recv_timeout(WAIT).expect("listening line in time");
        server.line = serde_json::from_str(&line).expect("first line is JSON");
        assert_eq!(server.line["event"], "listening", "{}", server.line);
        // Both are always reported: check them once here.
        server.id();
        server.addr();
        server
    }

    /// The server id (`id` in the listening line); it must parse as a peer id.
    pub fn id(&self) -> PeerId {
        self.line["id"]
            .as_str()
            .expect("id in the listening line")
            .parse()
            .expect("id is a peer id")
    }

    /// The primary STUN and QUIC address (`addr` in the listening line).
    pub fn addr(&self) -> SocketAddr {
        self.addr_of("addr")
    }

    /// The address under `key` in the listening line; it must be there with a real port.
    pub fn addr_of(&self, key: &str) -> SocketAddr {
        let a: SocketAddr = self.line[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in the listening line: {}", self.line))
            .parse()
            .expect("address");
        assert_ne!(a.port(), 0, "real bound port reported for {key}");
        a
    }

    /// Sends SIGTERM (by pid).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (blocking, at most [`WAIT`]) for the process to exit; its exit status.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET path` over HTTP/1.1 from `addr`: the whole response, head and body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
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

/// A STUN Binding request with transaction id `txid`; with `change` = `Some((ip, port))`
/// it carries CHANGE-REQUEST (RFC 5780 §7.2) with those flags.
pub fn binding_request(txid: [u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
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

/// Decodes a STUN message.
pub fn decode(bytes: &[u8]) -> StunMessage {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .expect("response decodes");
    msg
}

/// Decodes `bytes` as the response to the request `req` (same transaction id).
pub fn response_to(bytes: &[u8], req: &[u8]) -> StunMessage {
    let msg = decode(bytes);
    assert_eq!(msg.transaction_id().as_bytes()[..], req[8..20]);
    msg
}

/// Sends `req` to `to` and returns (response, where it came from); retries a few times.
pub fn exchange(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> (StunMessage, SocketAddr) {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    for _ in 0..6 {
        sock.send_to(req, to).expect("send");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return (response_to(&buf[..n], req), from);
        }
    }
    panic!("no response from {to}");
}

/// The XOR-MAPPED-ADDRESS of a response.
pub fn xor_mapped(m: &StunMessage) -> SocketAddr {
    *m.get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("typed")
        .socket_address()
}
