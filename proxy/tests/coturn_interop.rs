//! coturn's own test client against our proxy on loopback: `turnutils_uclient -W SECRET`
//! relays through the proxy to `turnutils_peer` in channel mode and with Send
//! indications (`-s`), with no loss at a moderate rate; a wrong secret cannot allocate.
//!
//! coturn 4.6.1 (Debian 12's `coturn` package, installed by `.ci/run`) is required; the
//! tests fail with a clear message if its tools are missing. `turnutils_uclient` picks
//! channel numbers from RFC 5766's 0x4000-0x7FFF, so the proxy runs with
//! `--rfc5766-channels`; it talks to the peer over loopback, hence
//! `--allow-loopback-peers`.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ProxyProc;

/// Messages per client and clients per run: 2 x 150 messages at uclient's default
/// 20 ms interval take about 3 s.
const MESSAGES: u32 = 150;
const CLIENTS: u32 = 2;
/// Longest a uclient run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} not found: install coturn (Debian package `coturn`), as .ci/run does"
    );
    name.to_owned()
}

/// `turnutils_peer` on a free loopback port, killed (by pid) on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start() -> Peer {
        // Pick a free port; the tiny race with other tests is retried by the caller.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        std::thread::sleep(Duration::from_millis(200));
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `turnutils_uclient` against the proxy with `secret` and `extra` flags; returns its
/// exit success and output. Killed after [`RUN_LIMIT`].
fn uclient(p: &ProxyProc, peer: &Peer, secret: &str, extra: &[&str]) -> (bool, String) {
    let (messages, clients) = (MESSAGES.to_string(), CLIENTS.to_string());
    let port = p.addr().port().to_string();
    let peer_port = peer.port.to_string();
    let mut args = vec![
        "-p",
        &port,
        "-W",
        secret,
        "-u",
        "interop",
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-n",
        &messages,
        "-m",
        &clients,
        "-l",
        "400",
        "-c",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("uclient.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new(tool("turnutils_uclient"))
        .args(&args)
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn turnutils_uclient");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    (status.is_some_and(|s| s.success()), text)
}

/// The number after `key` on the last line that has it.
fn last_number(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    })
}

fn assert_no_loss(ok: bool, out: &str) {
    assert!(ok, "turnutils_uclient failed:\n{out}");
    let total = u64::from(MESSAGES * CLIENTS);
    assert_eq!(last_number(out, "tot_send_msgs="), Some(total), "{out}");
    assert_eq!(last_number(out, "tot_recv_msgs="), Some(total), "{out}");
    assert_eq!(last_number(out, "Total lost packets"), Some(0), "{out}");
}

fn start_proxy(ports: &str) -> ProxyProc {
    ProxyProc::start(&[
        "--ports",
        ports,
        "--allow-loopback-peers",
        "--rfc5766-channels",
    ])
}

#[test]
fn uclient_relays_through_channels_without_loss() {
    let p = start_proxy("22000-22099");
    let peer = Peer::start();
    let (ok, out) = uclient(&p, &peer, common::SECRET, &[]);
    assert_no_loss(ok, &out);
    p.metric("proxy_channels_bound_total", |v| v >= f64::from(CLIENTS));
    p.metric(
        "proxy_relayed_packets_total{direction=\"peer_to_client\"}",
        |v| v >= f64::from(MESSAGES * CLIENTS),
    );
}

#[test]
fn uclient_relays_with_send_indications_without_loss() {
    let p = start_proxy("22100-22199");
    let peer = Peer::start();
    let (ok, out) = uclient(&p, &peer, common::SECRET, &["-s"]);
    assert_no_loss(ok, &out);
    p.metric("proxy_channels_bound_total", |v| v == 0.0);
    p.metric("proxy_permissions_created_total", |v| v >= 1.0);
}

#[test]
fn uclient_with_a_wrong_secret_cannot_allocate() {
    let p = start_proxy("22200-22299");
    let peer = Peer::start();
    let (ok, out) = uclient(&p, &peer, "not-the-secret", &[]);
    assert!(!ok, "uclient must fail:\n{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    p.metric("proxy_auth_failures_total{reason=\"bad_integrity\"}", |v| {
        v >= 1.0
    });
    p.metric("proxy_allocations_created_total", |v| v == 0.0);
}
