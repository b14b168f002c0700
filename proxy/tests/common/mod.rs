//! Helpers for the integration tests that run the real `proxy` binary on loopback.
//!
//! 1. [`ProxyProc::start`] spawns the binary with a test secret, `--listen
//!    127.0.0.1:0`, `--relay-ip 127.0.0.1` and the given flags, and reads the first
//!    stdout line within [`WAIT`]. It is killed by its pid on drop; [`ProxyProc::sigterm`]
//!    and [`ProxyProc::wait_for_exit`] test the graceful shutdown.
//! 2. [`EchoPeer`] is a UDP echo peer on loopback (a thread with a bounded lifetime).
//!    The relay benchmark includes this module too, for the proxy and the echo peer.
//! 3. [`http_get`] and [`ProxyProc::metric`] read `/metrics` and `/healthz`.
//!
//! Traffic goes to 127.0.0.0/8 only, and every wait has a timeout.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proxy::client::Session;
use proxy::credentials::Credentials;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};

/// Longest wait for any one thing.
pub const WAIT: Duration = Duration::from_secs(10);
/// The secret the tests start the proxy with.
pub const SECRET: &str = "integration-secret";

/// A running `proxy`, killed on drop.
pub struct ProxyProc {
    pub child: Child,
    /// The first stdout line.
    pub line: serde_json::Value,
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProc {
    /// Starts the proxy with the test secret, on loopback, with `--metrics-listen` and
    /// `args` (e.g. `--ports`, limits).
    pub fn start(args: &[&str]) -> ProxyProc {
        Self::start_on("127.0.0.1:0", args)
    }

    /// [`ProxyProc::start`] with another `--listen` address.
    pub fn start_on(listen: &str, args: &[&str]) -> ProxyProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
        cmd.args([
            "--listen",
            listen,
            "--relay-ip",
            "127.0.0.1",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("PROXY_AUTH_SECRET", SECRET)
        .env("PROXY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut p = ProxyProc {
            child,
            line: serde_json::Value::Null,
        };
        let line = rx.recv_timeout(WAIT).expect("listening line in time");
        p.line = serde_json::from_str(&line).expect("first line is JSON");
        assert_eq!(p.line["event"], "listening", "{}", p.line);
        assert_eq!(p.line["relay_ip"], "127.0.0.1");
        p
    }

    /// The TURN address (a wildcard listening address is reached on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        let a: SocketAddr = self.line["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("address");
        if a.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        } else {
            a
        }
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.line["metrics_addr"]
            .as_str()
            .expect("metrics_addr")
            .parse()
            .expect("address")
    }

    /// Allocates as `user` with the test secret (or `secret`).
    pub fn allocate_as(
        &self,
        user: &str,
        secret: &str,
    ) -> Result<Session, proxy::client::ClientError> {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        let creds = Credentials::rest(secret, user, unix_now() + 3600);
        Session::allocate(sock, self.addr(), &creds, Duration::from_secs(3))
    }

    /// Allocates as `user` with the test secret.
    pub fn allocate(&self, user: &str) -> Session {
        self.allocate_as(user, SECRET).expect("allocation")
    }

    /// The value of the metric line starting with `name` (full name with labels), once it
    /// satisfies `ok` (counters are published once a second), within [`WAIT`].
    pub fn metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = http_get(self.metrics_addr(), "/metrics");
            let value = body
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never satisfied the check; last {value:?} in\n{body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM (by pid).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// UNIX seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A UDP echo peer on loopback (batched receive with quinn-udp, GRO runs echoed as GSO
/// sends), stopped on drop and after ten minutes at most. The relay benchmark uses it too.
pub struct EchoPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start() -> EchoPeer {
        const SLOT: usize = 65_536;
        let std_sock = UdpSocket::bind("127.0.0.1:0").expect("bind echo peer");
        let addr = std_sock.local_addr().expect("addr");
        let state = UdpSocketState::new((&std_sock).into()).expect("quinn-udp state");
        let _ = state.set_recv_buffer_size((&std_sock).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&std_sock).into(), 4 << 20);
        let mut sock = mio::net::UdpSocket::from_std(std_sock);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut poll = mio::Poll::new().expect("poll");
            poll.registry()
                .register(&mut sock, mio::Token(0), mio::Interest::READABLE)
                .expect("register");
            let mut events = mio::Events::with_capacity(8);
            let mut bufs = vec![0u8; BATCH_SIZE * SLOT];
            let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
                loop {
                    let mut iov: Vec<IoSliceMut<'_>> =
                        bufs.chunks_mut(SLOT).map(IoSliceMut::new).collect();
                    let Ok(n) = state.recv((&sock).into(), &mut iov, &mut meta) else {
                        break;
                    };
                    drop(iov);
                    for (i, m) in meta.iter().take(n).enumerate() {
                        let t = Transmit {
                            destination: m.addr,
                            ecn: None,
                            contents: &bufs[i * SLOT..i * SLOT + m.len],
                            segment_size: (m.len > m.stride).then_some(m.stride),
                            src_ip: None,
                        };
                        // A full send buffer is retried briefly, then the echo is lost.
                        for _ in 0..100 {
                            match state.try_send((&sock).into(), &t) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    std::thread::yield_now()
                                }
                                _ => break,
                            }
                        }
                    }
                }
            }
        });
        EchoPeer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Receives datagrams on `sock` until `n` arrived or `wait` passed; returns them.
pub fn receive(sock: &UdpSocket, n: usize, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => got.push(buf[..len].to_vec()),
            Err(_) => break,
        }
    }
    got
}

/// GET `path` from `addr` (HTTP/1.0); returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect metrics");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
