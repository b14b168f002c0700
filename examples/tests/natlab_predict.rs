//! NAT lab tests of port prediction: `peer` nodes across real NAT routers in network
//! namespaces, with our punch server in RFC 5780 mode (an alternate address) and no relay.
//! **These tests need root** (see `natlab_punch.rs`); each builds its own lab.
//!
//! Flow of each test:
//! 1. Build a lab with a port-restricted router A (the dialer's) and a symmetric router B
//!    (the listener's): one that hands out public ports in sequence (nftables `snat ...
//!    numgen inc`) or one that picks them at random (`masquerade fully-random`).
//! 2. Start `punch-server` with its alternate address and `peer listen` behind B; the
//!    listener observes its mappings for two fresh flows and prints `predicted` with the
//!    window it registered.
//! 3. Dial from behind A: the sequential pair connects directly on a predicted candidate
//!    and echoes; the random one registers no prediction and, with birthday probing off,
//!    the dial ends with `no_direct_path` (nothing was tried beyond the usual candidates).
//! 4. The sequential NAT on the dialer's side instead: the dial waits for its first
//!    observation and connects directly too.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{
    dial, dial_with, next_json, pair_lab as lab, start_listener_with, start_punch_server,
};
use natlab::{Host, NatType};
use serde_json::Value;

const ECHO_BYTES: usize = 256 * 1024;

/// The listener's `predicted` line within `timeout`, if it prints one.
fn predicted(process: &mut natlab::LabProcess, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(process, left, "predicted").ok()?;
        if v["event"] == "predicted" {
            return Some(v);
        }
    }
}

fn ports(line: &Value) -> Vec<u16> {
    line["candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str()?.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .collect()
        })
        .unwrap_or_default()
}

/// A symmetric NAT that allocates ports in sequence: the listener offers the next ports,
/// and a port-restricted dialer reaches it directly on one of them.
#[test]
fn a_sequential_symmetric_nat_goes_direct_by_prediction() -> Result<()> {
    let test = "a_sequential_symmetric_nat_goes_direct_by_prediction";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(
        test,
        "pseq",
        NatType::PortRestricted,
        NatType::SymmetricSequential,
    )?;
    let server = start_punch_server(&lab, true)?;
    let mut l = start_listener_with(&lab, Host::LanB1, &server, false, &["--no-relay"])?;
    let line = predicted(&mut l.process, Duration::from_secs(10))
        .with_context(|| format!("no predicted line; stderr {}", l.process.stderr()))?;
    let window = ports(&line);
    eprintln!("predicted: {line}");
    anyhow::ensure!(window.len() == 8, "a window of 8 ports: {line}");
    anyhow::ensure!(
        window.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ports: {window:?}"
    );
    let d = dial(&lab, Host::LanA1, &server, &l.peer, ECHO_BYTES)?;
    let connected = d
        .event("connected")
        .with_context(|| format!("no connected: {:?}; stderr {}", d.lines, d.stderr))?;
    anyhow::ensure!(connected["path"] == "direct", "{connected}");
    let remote: std::net::SocketAddr = connected["remote"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .context("remote")?;
    eprintln!("connected directly to {remote} in {} ms", connected["ms"]);
    anyhow::ensure!(
        window.contains(&remote.port()),
        "the direct path is on a predicted port: {remote} not in {window:?}"
    );
    anyhow::ensure!(connected["how"] == "predicted", "{connected}");
    let echo = d.event("echo_ok").context("no echo_ok")?;
    anyhow::ensure!(echo["bytes"] == ECHO_BYTES, "{echo}");
    Ok(())
}

/// A symmetric NAT that allocates ports at random: no prediction is offered, and without
/// birthday probing (`--no-birthday` on both ends) the pair stays without a direct path
/// (it would use a relay if one were offered; `natlab_birthday` covers birthday probing).
#[test]
fn a_random_symmetric_nat_gets_no_prediction() -> Result<()> {
    let test = "a_random_symmetric_nat_gets_no_prediction";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(test, "prnd", NatType::PortRestricted, NatType::Symmetric)?;
    let server = start_punch_server(&lab, true)?;
    let mut l = start_listener_with(
        &lab,
        Host::LanB1,
        &server,
        false,
        &["--no-relay", "--no-birthday"],
    )?;
    // The observation takes a few round trips on sub-millisecond links.
    let line = predicted(&mut l.process, Duration::from_secs(3));
    anyhow::ensure!(line.is_none(), "nothing predicted: {line:?}");
    let d = dial_with(
        &lab,
        Host::LanA1,
        &server,
        &l.peer,
        ECHO_BYTES,
        &["--no-birthday"],
    )?;
    let error = d.event("error").context("an error line")?;
    anyhow::ensure!(error["kind"] == "no_direct_path", "{error}");
    Ok(())
}

/// The same NAT on the dialer's side: a dial right after the start waits for the first
/// observation, so the listener's `Go` carries the dialer's predicted ports.
#[test]
fn a_sequential_symmetric_dialer_goes_direct_by_prediction() -> Result<()> {
    let test = "a_sequential_symmetric_dialer_goes_direct_by_prediction";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = lab(
        test,
        "pseqd",
        NatType::SymmetricSequential,
        NatType::PortRestricted,
    )?;
    let server = start_punch_server(&lab, true)?;
    let l = start_listener_with(&lab, Host::LanB1, &server, false, &["--no-relay"])?;
    let d = dial(&lab, Host::LanA1, &server, &l.peer, ECHO_BYTES)?;
    let connected = d
        .event("connected")
        .with_context(|| format!("no connected: {:?}; stderr {}", d.lines, d.stderr))?;
    anyhow::ensure!(connected["path"] == "direct", "{connected}");
    eprintln!(
        "sequential dialer: connected directly in {} ms",
        connected["ms"]
    );
    // The dialer's own predicted port carried the pair: the dialer says so too.
    anyhow::ensure!(connected["how"] == "predicted", "{connected}");
    let echo = d.event("echo_ok").context("no echo_ok")?;
    anyhow::ensure!(echo["bytes"] == ECHO_BYTES, "{echo}");
    Ok(())
}
