//! The relays under test, started as child processes on loopback, and what `/proc` says
//! about them.
//!
//! 1. [`Relay::ours`] starts the `proxy` binary (release build, no bandwidth limit,
//!    loopback peers allowed) through the integration tests' `ProxyProc`; [`Relay::coturn`] starts `turnserver --use-auth-secret`
//!    with its default threads and a database in a temporary directory. Both use the same
//!    secret and the REST API credentials, so one load client serves both.
//! 2. [`cpu_ticks`] reads a process's user + system time (all threads) from
//!    `/proc/PID/stat`, [`rss_kib`] its resident memory from `/proc/PID/status`.
//! 3. Each child is killed by its pid on drop.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::ProxyProc;
pub use crate::common::SECRET;

/// A relay process.
pub struct Relay {
    pub name: &'static str,
    pub addr: SocketAddr,
    pid: u32,
    _process: Process,
}

/// Keeps the process alive (and kills it on drop).
enum Process {
    Ours {
        _proc: ProxyProc,
    },
    Coturn {
        child: Child,
        _dir: tempfile::TempDir,
    },
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Process::Coturn { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Relay {
    /// Our proxy on 127.0.0.1 with relay ports `ports` (the tests' [`ProxyProc`]).
    pub fn ours(ports: &str) -> Relay {
        let p = ProxyProc::start(&[
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
        ]);
        Relay {
            name: "proxy",
            addr: p.addr(),
            pid: p.child.id(),
            _process: Process::Ours { _proc: p },
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
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: child.id(),
            _process: Process::Coturn { child, _dir: dir },
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
        self.pid
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
