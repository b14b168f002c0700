//! The relays under test, started as child processes on loopback, and what `/proc` says
//! about them.
//!
//! 1. [`Relay::ours`] starts the `proxy` binary (release build, no bandwidth limit,
//!    loopback peers allowed); [`Relay::coturn`] starts `turnserver --use-auth-secret`
//!    with its default threads and a database in a temporary directory. Both use the same
//!    secret and the REST API credentials, so one load client serves both.
//! 2. [`cpu_ticks`] reads a process's user + system time (all threads) from
//!    `/proc/PID/stat`, [`rss_kib`] its resident memory from `/proc/PID/status`.
//! 3. Each child is killed by its pid on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The shared secret of the bench.
pub const SECRET: &str = "bench-secret";

/// A relay process.
pub struct Relay {
    pub name: &'static str,
    pub child: Child,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Our proxy on 127.0.0.1 with relay ports `ports`.
    pub fn ours(ports: &str) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--relay-ip",
                "127.0.0.1",
                "--ports",
                ports,
                "--allow-loopback-peers",
                "--bandwidth-per-allocation",
                "0",
                "--max-allocations-per-user",
                "100000",
                "--max-allocations-per-ip",
                "100000",
                "--max-allocations",
                "100000",
            ])
            .env("PROXY_AUTH_SECRET", SECRET)
            .env("PROXY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        let addr = v["addr"].as_str().expect("addr").parse().expect("address");
        Relay {
            name: "proxy",
            child,
            addr,
            _dir: None,
        }
    }

    /// coturn's `turnserver` with its defaults, REST API secret, relay ports `lo..=hi`.
    pub fn coturn(lo: u16, hi: u16) -> Option<Relay> {
        let port = UdpSocket::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("turndb");
        let log = dir.path().join("turn.log");
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
                "--realm=bench",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
                "--no-stdout-log",
                &format!("--log-file={}", log.display()),
                &format!("--db={}", db.display()),
                &format!("--min-port={lo}"),
                &format!("--max-port={hi}"),
                "--total-quota=0",
                "--user-quota=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let relay = Relay {
            name: "coturn",
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: Some(dir),
        };
        // Wait until it answers a Binding request.
        let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let txn = proxy::client::new_txn();
            let req = proxy::client::binding_request(txn);
            if proxy::client::transact(
                &sock,
                relay.addr,
                &req,
                txn,
                None,
                Duration::from_millis(300),
            )
            .is_ok()
            {
                return Some(relay);
            }
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU ticks of `pid`, all threads.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5) are 11 and 12 here.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
