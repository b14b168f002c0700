//! NAT lab tests of relayed paths: `peer` nodes across real NAT routers in network
//! namespaces, with our `proxy` (TURN) and a `punch-server` offering it. **These tests need
//! root** (see `natlab_punch.rs`); each builds its own lab.
//!
//! Flow of each test:
//! 1. Build a lab with routers A and B of the wanted types; start `proxy` on the server
//!    host (198.18.0.1:3479, relay IP 198.18.0.1) and `punch-server` with `--turn-uri`
//!    and `--turn-secret`, so every node allocates a relayed address and registers it.
//! 2. Start `peer listen` behind B and wait for its `relayed` line.
//! 3. Dial from behind A and check what a player would: every pair of the five NAT types
//!    connects and echoes, the pairs no hole punching opens (symmetric x symmetric,
//!    symmetric x port-restricted) through the relay; a relay-only dialer is seen by the listener at the proxy's address only; a
//!    punchable pair whose direct path is blocked at first starts on the relay and moves
//!    to the direct path after the block is lifted; a pair on the direct path falls back
//!    to the relay when the direct path is blocked mid-transfer, and the transfer
//!    completes.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{
    next_json, pair_lab as lab, punchable, run_dial, start_listener, start_listener_with,
    start_relay_servers, Listener, Servers,
};
use natlab::{Host, Lab, LabProcess, NatType, Router};
use serde_json::Value;

const ECHO_BYTES: usize = 256 * 1024;
const MATRIX_BYTES: usize = 32 << 20;

fn start_servers(lab: &Lab) -> Result<Servers> {
    start_relay_servers(lab, false)
}

/// The next line of `process` with `event` == `name` (other lines are skipped).
fn wait_event(process: &mut LabProcess, name: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(process, left, name)?;
        anyhow::ensure!(v["event"] != "error", "error while waiting for {name}: {v}");
        if v["event"] == name {
            return Ok(v);
        }
    }
}

/// `peer listen` behind B, with its relayed address registered.
fn listener(lab: &Lab, servers: &Servers) -> Result<Listener> {
    let mut l = start_listener(lab, Host::LanB1, &servers.punch, false)?;
    wait_event(&mut l.process, "relayed", Duration::from_secs(15))?;
    Ok(l)
}

/// Runs `peer dial` behind A to the listener, echoing `bytes`, with `extra` flags; its
/// JSON lines.
fn dial(
    lab: &Lab,
    servers: &Servers,
    l: &Listener,
    bytes: usize,
    extra: &[&str],
) -> Result<Vec<Value>> {
    let punch = servers.punch.punch_addr();
    let bytes = bytes.to_string();
    let mut args = vec!["dial", "--punch", &punch, "--no-upnp", "--bytes", &bytes];
    args.extend_from_slice(extra);
    args.push(&l.peer);
    run_dial(lab, &args, Duration::from_secs(90))
}

fn event<'a>(lines: &'a [Value], name: &str) -> Result<&'a Value> {
    lines
        .iter()
        .find(|l| l["event"] == name)
        .with_context(|| format!("no {name} in {lines:?}"))
}

/// Every pair of the five NAT types connects and echoes with a relay offered: the pairs
/// no punching opens (symmetric x symmetric, symmetric x port-restricted) through the
/// relay, the others on whichever path was ready first. Prints each pair's connect time.
#[test]
fn every_pair_connects_and_echoes_with_a_relay_offered() -> Result<()> {
    let test = "every_pair_connects_and_echoes_with_a_relay_offered";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let mut table = Vec::new();
    for (i, a) in NatType::ALL.iter().enumerate() {
        for (j, b) in NatType::ALL.iter().enumerate().skip(i) {
            let label = format!("rm{i}{j}");
            let lab = lab(test, &label, *a, *b)?;
            let servers = start_servers(&lab)?;
            let mut l = listener(&lab, &servers)?;
            let pair = format!("{} x {}", a.name(), b.name());
            // Long enough a transfer to see a punchable pair move to its direct path.
            let lines = dial(&lab, &servers, &l, MATRIX_BYTES, &[])?;
            let connected = event(&lines, "connected")?;
            assert_eq!(event(&lines, "echo_ok")?["bytes"], MATRIX_BYTES, "{pair}");
            let last_path = lines
                .iter()
                .rfind(|v| v["event"] == "path_changed" || v["event"] == "connected")
                .map(|v| v["path"].clone());
            if punchable(*a, *b) {
                assert_eq!(last_path, Some("direct".into()), "{pair}: {lines:?}");
            } else {
                assert_eq!(connected["path"], "relay", "{pair}: {connected}");
                assert_eq!(last_path, Some("relay".into()), "{pair}: {lines:?}");
            }
            let accepted = wait_event(&mut l.process, "connected", Duration::from_secs(5))?;
            assert_eq!(accepted["peer"].as_str().map(str::len), Some(52), "{pair}");
            let then = lines
                .iter()
                .rfind(|v| v["event"] == "path_changed")
                .and_then(|v| v["path"].as_str())
                .unwrap_or("-");
            table.push(format!(
                "{pair:<34} {:>6} {:>9} ms   {then}",
                connected["path"].as_str().unwrap_or("?"),
                connected["ms"]
            ));
        }
    }
    eprintln!("pair (dialer x listener)           path    connect      moved to (during the echo)");
    for row in table {
        eprintln!("{row}");
    }
    Ok(())
}

/// A relay-only dialer: the listener sees the proxy's address, never the dialer's.
#[test]
fn a_relay_only_dialer_is_seen_at_the_proxy_only() -> Result<()> {
    let test = "a_relay_only_dialer_is_seen_at_the_proxy_only";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(test, "ronly", NatType::FullCone, NatType::FullCone)?;
    let servers = start_servers(&lab)?;
    let mut l = listener(&lab, &servers)?;
    let lines = dial(&lab, &servers, &l, ECHO_BYTES, &["--relay-only"])?;
    assert_eq!(event(&lines, "connected")?["path"], "relay");
    assert_eq!(event(&lines, "echo_ok")?["bytes"], ECHO_BYTES);
    let accepted = wait_event(&mut l.process, "connected", Duration::from_secs(5))?;
    let seen: std::net::SocketAddr = accepted["remote"].as_str().context("remote")?.parse()?;
    assert_eq!(
        seen.ip(),
        lab.server_ip(0),
        "the proxy's relay IP: {accepted}"
    );
    assert_ne!(seen.ip(), lab.wan_ip(Router::A), "the dialer's NAT address");
    Ok(())
}

/// `peer dial` with a transfer long enough to watch paths change, as a process.
fn long_dial(lab: &Lab, servers: &Servers, l: &Listener, bytes: usize) -> Result<LabProcess> {
    idle_dial(lab, servers, l, bytes, Duration::ZERO)
}

/// `peer dial` that keeps the connection idle for `idle` before its echo, as a process.
fn idle_dial(
    lab: &Lab,
    servers: &Servers,
    l: &Listener,
    bytes: usize,
    idle: Duration,
) -> Result<LabProcess> {
    let punch = servers.punch.punch_addr();
    let bytes = bytes.to_string();
    let idle = idle.as_millis().to_string();
    let args = [
        "dial",
        "--idle-ms",
        &idle,
        "--punch",
        &punch,
        "--no-upnp",
        "--bytes",
        &bytes,
        "--echo-timeout-ms",
        "60000",
        "--attempts",
        "1",
        &l.peer,
    ];
    Ok(lab.spawn(Host::LanA1, env!("CARGO_BIN_EXE_peer"), &args)?)
}

/// Upgrade: the direct path is blocked at first, so the connection starts on the relay;
/// once the block is lifted, `path_changed` to `direct` follows within seconds while a
/// transfer runs, and the transfer arrives complete (the echo checks every byte).
#[test]
fn a_blocked_pair_starts_on_the_relay_and_moves_to_direct_when_unblocked() -> Result<()> {
    let test = "a_blocked_pair_starts_on_the_relay_and_moves_to_direct_when_unblocked";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(
        test,
        "rup",
        NatType::PortRestricted,
        NatType::PortRestricted,
    )?;
    let servers = start_servers(&lab)?;
    let l = listener(&lab, &servers)?;
    lab.block_peer(Router::A, lab.wan_ip(Router::B))?;
    let mut d = long_dial(&lab, &servers, &l, 64 << 20)?;
    let connected = wait_event(&mut d, "connected", Duration::from_secs(30))?;
    assert_eq!(connected["path"], "relay", "{connected}");
    std::thread::sleep(Duration::from_millis(500));
    lab.unblock_peer(Router::A, lab.wan_ip(Router::B))?;
    let lifted = Instant::now();
    let changed = wait_event(&mut d, "path_changed", Duration::from_secs(20))?;
    let took = lifted.elapsed();
    assert_eq!(changed["path"], "direct", "{changed}");
    eprintln!("upgrade: direct {took:?} after the block was lifted");
    assert!(took < Duration::from_secs(8), "upgrade took {took:?}");
    let echo = wait_event(&mut d, "echo_ok", Duration::from_secs(60))?;
    assert_eq!(echo["bytes"], 64 << 20);
    Ok(())
}

/// Downgrade: a transfer on the direct path survives the path being blocked: the
/// connection moves to the relay within seconds and the echo completes.
#[test]
fn a_direct_pair_falls_back_to_the_relay_when_blocked_mid_transfer() -> Result<()> {
    let test = "a_direct_pair_falls_back_to_the_relay_when_blocked_mid_transfer";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(
        test,
        "rdown",
        NatType::PortRestricted,
        NatType::PortRestricted,
    )?;
    let servers = start_servers(&lab)?;
    let l = listener(&lab, &servers)?;
    let mut d = long_dial(&lab, &servers, &l, 64 << 20)?;
    let connected = wait_event(&mut d, "connected", Duration::from_secs(30))?;
    if connected["path"] == "relay" {
        // The relay won the race: wait for the move to the punched pair.
        let changed = wait_event(&mut d, "path_changed", Duration::from_secs(10))?;
        assert_eq!(changed["path"], "direct", "{changed}");
    }
    std::thread::sleep(Duration::from_millis(300));
    lab.block_peer(Router::A, lab.wan_ip(Router::B))?;
    let blocked = Instant::now();
    let changed = wait_event(&mut d, "path_changed", Duration::from_secs(20))?;
    let took = blocked.elapsed();
    assert_eq!(changed["path"], "relay", "{changed}");
    eprintln!("downgrade: on the relay {took:?} after the block");
    assert!(took < Duration::from_secs(6), "downgrade took {took:?}");
    let mut l = l;
    let echo = wait_event(&mut d, "echo_ok", Duration::from_secs(60)).inspect_err(|_| {
        while let Ok(Some(line)) = l.process.read_line(Duration::from_millis(200)) {
            eprintln!("listener: {line}");
        }
        eprintln!("listener stderr: {}", l.process.stderr());
        eprintln!("dialer stderr: {}", d.stderr());
    })?;
    assert_eq!(echo["bytes"], 64 << 20);
    Ok(())
}

/// An idle connection (nothing sent by the game) whose direct path is blocked: consent
/// checks (RFC 7675) go unanswered and the connection moves to the relay within seconds,
/// not at the next QUIC keep-alive; the echo after the idle time completes on the relay.
#[test]
fn an_idle_direct_pair_falls_back_to_the_relay_when_blocked() -> Result<()> {
    let test = "an_idle_direct_pair_falls_back_to_the_relay_when_blocked";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(
        test,
        "ridle",
        NatType::PortRestricted,
        NatType::PortRestricted,
    )?;
    let servers = start_servers(&lab)?;
    let l = listener(&lab, &servers)?;
    let mut d = idle_dial(&lab, &servers, &l, 1 << 20, Duration::from_secs(12))?;
    let connected = wait_event(&mut d, "connected", Duration::from_secs(30))?;
    if connected["path"] == "relay" {
        let changed = wait_event(&mut d, "path_changed", Duration::from_secs(10))?;
        assert_eq!(changed["path"], "direct", "{changed}");
    }
    std::thread::sleep(Duration::from_secs(2));
    lab.block_peer(Router::A, lab.wan_ip(Router::B))?;
    let blocked = Instant::now();
    let changed = wait_event(&mut d, "path_changed", Duration::from_secs(9))?;
    let took = blocked.elapsed();
    assert_eq!(changed["path"], "relay", "{changed}");
    eprintln!("idle downgrade: on the relay {took:?} after the block");
    assert!(
        took < Duration::from_secs(6),
        "idle downgrade took {took:?}"
    );
    let echo = wait_event(&mut d, "echo_ok", Duration::from_secs(40))?;
    assert_eq!(echo["bytes"], 1 << 20);
    Ok(())
}

/// Only one end holds a relay and the other, without one, is behind a symmetric NAT:
/// the holder's channel, bound to the reflexive address the punch server saw, is moved to
/// the port that NAT maps toward the relay (learned from the relay's Data indications),
/// whichever end dials.
#[test]
fn a_symmetric_peer_without_a_relay_reaches_one_that_holds_one() -> Result<()> {
    let test = "a_symmetric_peer_without_a_relay_reaches_one_that_holds_one";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    const BYTES: usize = 1 << 20;
    // The symmetric end dials.
    {
        let lab = lab(test, "rsa", NatType::Symmetric, NatType::PortRestricted)?;
        let servers = start_servers(&lab)?;
        let l = listener(&lab, &servers)?;
        let lines = dial(&lab, &servers, &l, BYTES, &["--no-relay"])?;
        assert_eq!(event(&lines, "connected")?["path"], "relay", "{lines:?}");
        assert_eq!(event(&lines, "echo_ok")?["bytes"], BYTES);
        eprintln!(
            "symmetric dialer without a relay: connected in {} ms",
            event(&lines, "connected")?["ms"]
        );
    }
    // The symmetric end listens.
    {
        let lab = lab(test, "rsb", NatType::PortRestricted, NatType::Symmetric)?;
        let servers = start_servers(&lab)?;
        let l = start_listener_with(&lab, Host::LanB1, &servers.punch, false, &["--no-relay"])?;
        let lines = dial(&lab, &servers, &l, BYTES, &[])?;
        assert_eq!(event(&lines, "connected")?["path"], "relay", "{lines:?}");
        assert_eq!(event(&lines, "echo_ok")?["bytes"], BYTES);
        eprintln!(
            "symmetric listener without a relay: connected in {} ms",
            event(&lines, "connected")?["ms"]
        );
    }
    Ok(())
}
