//! NAT lab tests of UPnP port mapping (`mesh::upnp::PortMapper` through `peer upnp`)
//! against miniupnpd on a lab router. **These tests need root** and the packages iproute2,
//! nftables, conntrack and miniupnpd-nftables; they fail with a clear message when the lab
//! cannot be built or miniupnpd is missing (set `NATLAB_SKIP=1` to skip them explicitly).
//! Each test builds its own lab with a unique namespace prefix, so they run safely in
//! parallel threads.
//!
//! Flow of the mapping test:
//! 1. Build a lab with router A symmetric (unsolicited WAN packets are dropped, and the
//!    router's own mappings are useless to a peer that did not send first).
//! 2. Start our `punch-server` on the server host (198.18.0.1:3478, alternate
//!    198.18.0.2:3479; build it with `cargo build -p punch-server` into the same target
//!    directory), then miniupnpd on router A, which uses it for its STUN check.
//! 3. Run `peer upnp --bind 0.0.0.0:40000` on LAN host A1: it maps its port and prints the
//!    external address (198.18.0.10:PORT, a reserved address the mapper must accept).
//! 4. The server host sends an unsolicited datagram to that address with `peer send-udp`;
//!    A1 receives it (only the mapping lets it through), then removes the mapping.
//! 5. A second datagram (from a new source port, so no conntrack entry of the first flow
//!    helps it) is no longer delivered: A1 reports `quiet`.
//!
//! Flow of the signal tests (`peer listen` with UPnP behind symmetric router A, a dialer
//! behind symmetric router B, which only the mapping lets through):
//! 1. The listener prints its mapping; miniupnpd's NAT table holds the DNAT rule to it; a
//!    dial from B1 connects through it.
//! 2. SIGINT (then, with a fresh listener, SIGTERM): the listener prints `stopping` and
//!    `stopped` and exits 0 within a few seconds, and the DNAT rule is gone from the
//!    router.
//! 3. With miniupnpd frozen (SIGSTOP, so the removal hangs until its 3 s request timeout), a
//!    second SIGTERM right after `stopping` ends the listener at once with status 143.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{
    dial, next_json, require_miniupnpd, start_listener, start_punch_server, Listener, PunchServer,
    ALT_PORT, PRIMARY_PORT,
};
use natlab::{Host, Lab, LabProcess, NatType, Router, UpnpDaemon, UpnpStun};
use serde_json::Value;

const LOCAL_PORT: u16 = 40000;

fn send_udp(lab: &Lab, to: &str, bytes: usize) -> Result<Value> {
    let out = lab.run(
        Host::Server,
        env!("CARGO_BIN_EXE_peer"),
        &["send-udp", "--to", to, "--bytes", &bytes.to_string()],
        Duration::from_secs(10),
    )?;
    anyhow::ensure!(out.success(), "send-udp failed: {out:?}");
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("send-udp output {out:?}"))
}

#[test]
fn upnp_mapping_admits_unsolicited_datagrams_until_removed() -> Result<()> {
    let test = "upnp_mapping_admits_unsolicited_datagrams_until_removed";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    require_miniupnpd()?;
    let lab = Lab::builder()
        .label("upnp")
        .router_a(NatType::Symmetric)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))?;
    let _server = start_punch_server(&lab, true)?;
    let stun = UpnpStun {
        server: format!("{}:{PRIMARY_PORT}", lab.server_ip(0)).parse()?,
        alt_port: ALT_PORT,
    };
    let upnp = lab
        .start_upnp(Router::A, stun)
        .context("miniupnpd on router A")?;

    let bind = format!("0.0.0.0:{LOCAL_PORT}");
    let mut a1 = lab.spawn(
        Host::LanA1,
        env!("CARGO_BIN_EXE_peer"),
        &[
            "upnp",
            "--bind",
            &bind,
            "--wait-ms",
            "15000",
            "--recv-ms",
            "10000",
            "--after-ms",
            "3000",
        ],
    )?;
    let mapped = next_json(&mut a1, Duration::from_secs(20), "the mapping")?;
    anyhow::ensure!(
        mapped["event"] == "upnp" && mapped["state"] == "mapped",
        "no mapping: {mapped}; peer stderr: {}; miniupnpd log: {}",
        a1.stderr(),
        upnp.log()
    );
    let external = mapped["external"].as_str().unwrap_or_default().to_string();
    let wan = lab.wan_ip(Router::A);
    anyhow::ensure!(
        external.starts_with(&format!("{wan}:")),
        "external address {external} is not on router A's WAN {wan}"
    );
    anyhow::ensure!(
        mapped["local"] == format!("0.0.0.0:{LOCAL_PORT}"),
        "local {mapped}"
    );
    let rules = upnp.nat_rules()?;
    let internal = format!("{}:{LOCAL_PORT}", lab.ip(Host::LanA1));
    anyhow::ensure!(
        rules.contains("dnat") && rules.contains(&internal),
        "miniupnpd has no DNAT rule to {internal}: {rules}"
    );

    // Unsolicited: A1 never sent anything to the server.
    let sent = send_udp(&lab, &external, 100)?;
    let received = next_json(&mut a1, Duration::from_secs(15), "the first datagram")?;
    anyhow::ensure!(
        received["event"] == "received" && received["bytes"] == 100,
        "first datagram not received through the mapping: {received}; sent {sent}; \
         peer stderr: {}",
        a1.stderr()
    );
    let from = received["from"].as_str().unwrap_or_default();
    anyhow::ensure!(
        from.starts_with(&format!("{}:", lab.server_ip(0))),
        "datagram from {from}, expected the server"
    );

    let removed = next_json(&mut a1, Duration::from_secs(15), "the removal")?;
    anyhow::ensure!(
        removed["event"] == "upnp" && removed["state"] == "removed",
        "mapping not removed: {removed}; peer stderr: {}",
        a1.stderr()
    );
    let rules = upnp.nat_rules()?;
    anyhow::ensure!(
        !rules.contains(&internal),
        "DNAT rule still present after removal: {rules}"
    );

    // A new flow (a new source port) to the same external address is dropped now.
    send_udp(&lab, &external, 100)?;
    let after = next_json(&mut a1, Duration::from_secs(10), "the quiet period")?;
    anyhow::ensure!(
        after["event"] == "quiet",
        "a datagram arrived after the mapping was removed: {after}"
    );
    upnp.stop()?;
    Ok(())
}

#[test]
fn upnp_mapping_is_renewed_past_its_lease() -> Result<()> {
    let test = "upnp_mapping_is_renewed_past_its_lease";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    require_miniupnpd()?;
    let lab = Lab::builder()
        .label("upnprenew")
        .router_a(NatType::PortRestricted)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))?;
    let _server = start_punch_server(&lab, true)?;
    let stun = UpnpStun {
        server: format!("{}:{PRIMARY_PORT}", lab.server_ip(0)).parse()?,
        alt_port: ALT_PORT,
    };
    let upnp = lab
        .start_upnp(Router::A, stun)
        .context("miniupnpd on router A")?;
    // A 4 s lease, renewed every 2 s by the mapper.
    let mut a1 = lab.spawn(
        Host::LanA1,
        env!("CARGO_BIN_EXE_peer"),
        &[
            "upnp",
            "--bind",
            "0.0.0.0:40002",
            "--lease-secs",
            "4",
            "--wait-ms",
            "15000",
            "--recv-ms",
            "20000",
        ],
    )?;
    let mapped = next_json(&mut a1, Duration::from_secs(20), "the mapping")?;
    anyhow::ensure!(
        mapped["state"] == "mapped",
        "no mapping: {mapped}; peer stderr: {}; miniupnpd log: {}",
        a1.stderr(),
        upnp.log()
    );
    let external = mapped["external"].as_str().unwrap_or_default().to_string();
    std::thread::sleep(Duration::from_secs(7));
    let requests = upnp.log().matches("#AddPortMapping").count();
    anyhow::ensure!(
        requests >= 3,
        "expected the first request and at least two renewals within 7 s, miniupnpd saw \
         {requests}: {}",
        upnp.log()
    );
    let internal = format!("{}:40002", lab.ip(Host::LanA1));
    let rules = upnp.nat_rules()?;
    anyhow::ensure!(
        rules.contains(&internal),
        "mapping gone after its first lease: {rules}"
    );
    send_udp(&lab, &external, 64)?;
    let received = next_json(&mut a1, Duration::from_secs(15), "the datagram")?;
    anyhow::ensure!(
        received["event"] == "received" && received["bytes"] == 64,
        "datagram not received after renewals: {received}"
    );
    Ok(())
}

#[test]
fn upnp_without_gateway_reports_unavailable() -> Result<()> {
    let test = "upnp_without_gateway_reports_unavailable";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = Lab::builder()
        .label("noupnp")
        .router_a(NatType::PortRestricted)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))?;
    // No miniupnpd: the SSDP search (multicast inside LAN A only) finds nothing; three
    // searches of 300 ms with 1 s and 2 s pauses, then "unavailable".
    let started = Instant::now();
    let out = lab.run(
        Host::LanA1,
        env!("CARGO_BIN_EXE_peer"),
        &[
            "upnp",
            "--bind",
            "0.0.0.0:40000",
            "--search-timeout-ms",
            "300",
            "--wait-ms",
            "15000",
        ],
        Duration::from_secs(30),
    )?;
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).with_context(|| format!("peer output {out:?}"))?;
    anyhow::ensure!(
        !out.success(),
        "peer upnp succeeded without a gateway: {out:?}"
    );
    anyhow::ensure!(
        v["event"] == "error" && v["kind"] == "upnp_unavailable",
        "unexpected {v}"
    );
    anyhow::ensure!(
        started.elapsed() < Duration::from_secs(12),
        "gave up only after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Symmetric routers A and B, the punch server, miniupnpd on router A.
fn upnp_pair_lab(label: &str) -> Result<Lab> {
    Lab::builder()
        .label(label)
        .router_a(NatType::Symmetric)
        .router_b(NatType::Symmetric)
        .build()
        .with_context(|| format!("test {label} needs the NAT lab (root)"))
}

fn start_miniupnpd<'lab>(lab: &'lab Lab) -> Result<UpnpDaemon<'lab>> {
    let stun = UpnpStun {
        server: format!("{}:{PRIMARY_PORT}", lab.server_ip(0)).parse()?,
        alt_port: ALT_PORT,
    };
    lab.start_upnp(Router::A, stun)
        .context("miniupnpd on router A")
}

/// Reads `process`'s JSON lines until one has `event` == `name` (bounded).
fn wait_event(process: &mut LabProcess, name: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(process, left, name)?;
        if v["event"] == name {
            return Ok(v);
        }
    }
}

/// `peer listen` with UPnP on A1: waits for its mapping and checks the router's DNAT rule;
/// returns the listener and the rule's internal address (`10.1.0.11:PORT`).
fn mapped_listener(
    lab: &Lab,
    server: &PunchServer,
    upnp: &UpnpDaemon,
) -> Result<(Listener, String)> {
    let mut listener = start_listener(lab, Host::LanA1, server, true)?;
    let mapped = wait_event(&mut listener.process, "upnp", Duration::from_secs(20))
        .with_context(|| format!("miniupnpd log: {}", upnp.log()))?;
    anyhow::ensure!(mapped["state"] == "mapped", "{mapped}");
    let rules = upnp.nat_rules()?;
    let internal = format!("{}:", lab.ip(Host::LanA1));
    let rule = rules
        .lines()
        .find(|l| l.contains("dnat") && l.contains(&internal))
        .with_context(|| format!("no DNAT rule to {internal}: {rules}"))?;
    let port = rule
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .with_context(|| format!("no port in {rule:?}"))?;
    Ok((listener, format!("{internal}{port}")))
}

fn kill(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

#[test]
fn a_stopped_listener_removes_its_upnp_mapping() -> Result<()> {
    let test = "a_stopped_listener_removes_its_upnp_mapping";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    require_miniupnpd()?;
    let lab = upnp_pair_lab("upnpsig")?;
    let server = start_punch_server(&lab, true)?;
    let upnp = start_miniupnpd(&lab)?;
    for signal in ["INT", "TERM"] {
        let (mut listener, internal) = mapped_listener(&lab, &server, &upnp)?;
        // Symmetric x symmetric: only the mapping lets the dial in.
        let d = dial(&lab, Host::LanB1, &server, &listener.peer, 1000)?;
        anyhow::ensure!(
            d.success && d.event("echo_ok").is_some(),
            "dial through the mapping failed: {:?}",
            d.lines
        );
        kill(listener.process.pid(), signal)?;
        let sent = Instant::now();
        let status = listener
            .process
            .wait_exit(Duration::from_secs(15))
            .with_context(|| format!("no exit after SIG{signal}"))?;
        let took = sent.elapsed();
        eprintln!("peer listen exited {status} {took:?} after SIG{signal}");
        anyhow::ensure!(status.code() == Some(0), "SIG{signal}: {status}");
        // The node's shutdown waits up to 2 s for its connections, then removes the
        // mapping (one SOAP call); generous bound for a busy machine.
        anyhow::ensure!(took < Duration::from_secs(8), "exit after {took:?}");
        let stopping = wait_event(&mut listener.process, "stopping", Duration::from_secs(1))?;
        anyhow::ensure!(stopping["signal"] == format!("SIG{signal}"), "{stopping}");
        wait_event(&mut listener.process, "stopped", Duration::from_secs(1))?;
        let rules = upnp.nat_rules()?;
        anyhow::ensure!(
            !rules.contains(&internal),
            "the mapping to {internal} is still on the router after SIG{signal}: {rules}"
        );
    }
    Ok(())
}

#[test]
fn a_second_signal_ends_a_hanging_cleanup_at_once() -> Result<()> {
    let test = "a_second_signal_ends_a_hanging_cleanup_at_once";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    require_miniupnpd()?;
    let lab = upnp_pair_lab("upnpsig2")?;
    let server = start_punch_server(&lab, true)?;
    let upnp = start_miniupnpd(&lab)?;
    let (mut listener, _) = mapped_listener(&lab, &server, &upnp)?;
    // Frozen, miniupnpd accepts the removal's TCP connection but never answers.
    kill(upnp.pid(), "STOP")?;
    let result = (|| -> Result<Duration> {
        kill(listener.process.pid(), "TERM")?;
        wait_event(&mut listener.process, "stopping", Duration::from_secs(5))?;
        kill(listener.process.pid(), "TERM")?;
        let sent = Instant::now();
        let status = listener
            .process
            .wait_exit(Duration::from_secs(15))
            .context("no exit after the second SIGTERM")?;
        let took = sent.elapsed();
        anyhow::ensure!(status.code() == Some(143), "{status}");
        wait_event(&mut listener.process, "killed", Duration::from_secs(1))?;
        Ok(took)
    })();
    kill(upnp.pid(), "CONT")?;
    let took = result?;
    eprintln!("peer listen exited {took:?} after the second SIGTERM");
    // The graceful removal alone would wait for the 3 s SOAP timeout.
    anyhow::ensure!(took < Duration::from_secs(2), "exit after {took:?}");
    Ok(())
}
