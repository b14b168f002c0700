//! NAT lab tests of birthday probing: `peer` nodes across real NAT routers in network
//! namespaces, one behind a symmetric NAT that picks random ports (`masquerade
//! fully-random`), the other behind a port-restricted one (endpoint-independent mapping),
//! with our `proxy` and a `punch-server` in RFC 5780 mode offering it. **These tests need
//! root** (see `natlab_punch.rs`); each builds its own lab.
//!
//! Flow of each test:
//! 1. Build the lab; start the proxy and the punch server (alternate address on, so both
//!    nodes observe how their NAT maps and tell the server); start `peer listen` behind B
//!    and wait for its `relayed` line.
//! 2. Dial from behind A [`RUNS`] times (a fresh node each time), each dial holding the
//!    connection idle until it runs direct (at most [`WAIT_DIRECT`]) before its echo.
//!    Hole punching alone never opens this pair, so each connection starts on the relay;
//!    birthday probing runs meanwhile and, when a probe lands, the connection moves to
//!    the pair: `path_changed` to `direct` with `how: birthday`.
//! 3. Every echo completes (on the relay when the round found nothing), and most runs go
//!    direct; the rate, the time to the direct path and the checks spent are printed.
//! 4. The same pair without any relay (no proxy, `peer listen --no-relay`): each dial
//!    waits for the birthday round when its regular probing fails, and most connect
//!    direct on the round's pair; the others end `no_direct_path`.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{
    dial_until_direct, dial_with, next_json, pair_lab as lab, start_listener, start_listener_with,
    start_punch_server, start_relay_servers, Listener, Servers, UntilDirect,
};
use natlab::{Host, Lab, NatType};

/// Dials per direction (20 in all).
const RUNS: usize = 10;
/// Longest idle wait for the direct path before the echo.
const WAIT_DIRECT: Duration = Duration::from_secs(8);
const ECHO_BYTES: usize = 256 * 1024;

/// `peer listen` behind B with its relayed address registered.
fn listener(lab: &Lab, servers: &Servers) -> Result<Listener> {
    let mut l = start_listener(lab, Host::LanB1, &servers.punch, false)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = next_json(&mut l.process, left, "relayed")?;
        if v["event"] == "relayed" {
            return Ok(l);
        }
    }
}

/// Runs one dial behind A and checks what a player would: connected on the relay,
/// echoed, and a direct path (if any) found by birthday probing.
fn dial_once(lab: &Lab, servers: &Servers, l: &Listener) -> Result<UntilDirect> {
    let run = dial_until_direct(lab, &servers.punch, &l.peer, ECHO_BYTES, WAIT_DIRECT)?;
    anyhow::ensure!(
        run.connected["path"] == "relay",
        "starts on the relay: {}",
        run.connected
    );
    // Hole punching alone never opens this pair: a direct path comes from the birthday
    // round, either its own validated pair or (rarely) a regular check that came through
    // a port one of its probes opened, which the connection's probing round validated.
    if let Some(d) = &run.direct {
        anyhow::ensure!(
            d["how"] == "birthday" || d["how"] == "punch",
            "a direct path here comes from the birthday round: {d}"
        );
    }
    Ok(run)
}

/// [`RUNS`] dials from behind a port-restricted (`a`) or symmetric NAT to a listener
/// behind the other; returns the runs.
fn runs(test: &str, label: &str, a: NatType, b: NatType) -> Result<Vec<UntilDirect>> {
    let lab = lab(test, label, a, b)?;
    let servers = start_relay_servers(&lab, true)?;
    let l = listener(&lab, &servers)?;
    let mut out = Vec::new();
    for _ in 0..RUNS {
        match dial_once(&lab, &servers, &l) {
            Ok(run) => out.push(run),
            Err(e) => anyhow::bail!("{e:#}\nlistener stderr: {}", l.process.stderr()),
        }
    }
    Ok(out)
}

/// Symmetric (random ports) x port-restricted, both ways: most runs go direct by birthday
/// probing, every echo completes.
#[test]
fn symmetric_and_port_restricted_go_direct_by_birthday_probing() -> Result<()> {
    let test = "symmetric_and_port_restricted_go_direct_by_birthday_probing";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let mut all = runs(test, "bday", NatType::PortRestricted, NatType::Symmetric)?;
    let hard_listener = all.len();
    all.extend(runs(
        test,
        "bdayd",
        NatType::Symmetric,
        NatType::PortRestricted,
    )?);
    let mut times: Vec<f64> = all
        .iter()
        .filter_map(UntilDirect::direct_after_ms)
        .collect();
    times.sort_by(f64::total_cmp);
    let direct = times.len();
    let listener_direct = all[..hard_listener]
        .iter()
        .filter(|r| r.direct.is_some())
        .count();
    let checks: Vec<u64> = all.iter().map(UntilDirect::checks).collect();
    let labelled = all
        .iter()
        .filter(|r| r.direct.as_ref().is_some_and(|d| d["how"] == "birthday"))
        .count();
    eprintln!(
        "birthday: {direct}/{} runs direct ({listener_direct}/{hard_listener} with the \
         symmetric listener; {labelled} on the round's own pair); relay to direct p50 \
         {:.1} ms, p99 {:.1} ms, max {:.1} ms; dialer checks per run {checks:?}",
        all.len(),
        common::percentile(&times, 50.0),
        common::percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN),
    );
    anyhow::ensure!(
        direct * 2 > all.len(),
        "most runs go direct: {direct}/{}",
        all.len()
    );
    Ok(())
}

/// Without any relay (the punch server offers no proxy, the listener runs `--no-relay`)
/// birthday probing still opens the pair: a dial whose regular probing failed waits for
/// the round and runs QUIC on its pair (from an extra socket on the symmetric side).
/// Most of [`RUNS`] dials each way connect direct; the others end `no_direct_path`.
#[test]
fn without_a_relay_the_pair_still_goes_direct_by_birthday_probing() -> Result<()> {
    let test = "without_a_relay_the_pair_still_goes_direct_by_birthday_probing";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let (mut direct, mut total, mut by_round) = (0, 0, 0);
    let mut times = Vec::new();
    for (label, a, b) in [
        ("bdnr", NatType::PortRestricted, NatType::Symmetric),
        ("bdnrd", NatType::Symmetric, NatType::PortRestricted),
    ] {
        let lab = lab(test, label, a, b)?;
        let server = start_punch_server(&lab, true)?;
        let mut l = start_listener_with(&lab, Host::LanB1, &server, false, &["--no-relay"])?;
        // The listener learns how its NAT maps (a few round trips to both server
        // addresses) and tells the punch server before the first dial.
        let _ = next_json(&mut l.process, Duration::from_secs(2), "predicted");
        for _ in 0..RUNS {
            let d = dial_with(&lab, Host::LanA1, &server, &l.peer, ECHO_BYTES, &[])?;
            total += 1;
            let Some(c) = d.event("connected") else {
                let error = d.event("error").cloned().unwrap_or_default();
                anyhow::ensure!(
                    error["kind"] == "no_direct_path",
                    "a dial that finds no pair says so: {error}\n{}",
                    d.stderr
                );
                continue;
            };
            anyhow::ensure!(c["path"] == "direct", "no relay, so direct: {c}");
            anyhow::ensure!(
                c["how"] == "birthday" || c["how"] == "punch",
                "found by the birthday round: {c}"
            );
            let echo = d.event("echo_ok").context("an echo_ok line")?;
            anyhow::ensure!(echo["bytes"] == ECHO_BYTES, "{echo}");
            direct += 1;
            if c["how"] == "birthday" {
                by_round += 1;
            }
            if let Some(ms) = c["ms"].as_f64() {
                times.push(ms);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "birthday without a relay: {direct}/{total} dials direct ({by_round} on the round's \
         own pair); time to connected p50 {:.1} ms, p99 {:.1} ms",
        common::percentile(&times, 50.0),
        common::percentile(&times, 99.0),
    );
    anyhow::ensure!(direct * 2 > total, "most dials go direct: {direct}/{total}");
    Ok(())
}
