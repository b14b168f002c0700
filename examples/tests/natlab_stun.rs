//! NAT lab tests of `peer doctor` and our punch-server's STUN, against real NAT routers
//! in network namespaces. **These tests need root** and the packages iproute2, nftables,
//! conntrack and coturn; they fail with a clear message when the lab cannot be built
//! (set `NATLAB_SKIP=1` to skip them explicitly). Each test builds its own lab with a
//! unique namespace prefix, so they run safely in parallel threads.
//!
//! Flow of each test:
//! 1. Build a lab with router A of the wanted type (`natlab::Lab`).
//! 2. Start a STUN server on the lab server host, on 198.18.0.1 and 198.18.0.2: our
//!    `punch-server` (found next to the `peer` binary; build it with
//!    `cargo build -p punch-server` into the same target directory) or coturn's
//!    `turnserver`.
//! 3. Run a client on LAN host A1: `peer doctor` or coturn's `turnutils_stunclient`.
//! 4. Check the classification / reflexive address; the lab is torn down on drop.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{all_four, start_punch_server, wait_udp_listeners, ALT_PORT, PRIMARY_PORT};
use natlab::{Host, Lab, LabProcess, NatType, Router};
use serde_json::Value;

fn build_lab(test: &str, nat: NatType) -> Result<Lab> {
    Lab::builder()
        .label(test)
        .router_a(nat)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))
}

/// Fails clearly when a coturn tool is missing.
fn require_coturn(tool: &str) -> Result<()> {
    if natlab::which(tool).is_none() {
        bail!("`{tool}` not found: the coturn interop tests need the Debian package coturn");
    }
    Ok(())
}

fn start_coturn(lab: &Lab) -> Result<LabProcess> {
    require_coturn("turnserver")?;
    let db = lab.dir().join("turndb");
    let args = [
        "-n".to_string(),
        "--no-cli".into(),
        "--no-tls".into(),
        "--no-dtls".into(),
        "--stun-only".into(),
        "--log-file=stdout".into(),
        format!("--db={}", db.display()),
        format!("--listening-ip={}", lab.server_ip(0)),
        format!("--listening-ip={}", lab.server_ip(1)),
        format!("--listening-port={PRIMARY_PORT}"),
        format!("--alt-listening-port={ALT_PORT}"),
        format!("--pidfile={}", lab.dir().join("turnserver.pid").display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = lab.spawn(Host::Server, "turnserver", &args)?;
    wait_udp_listeners(lab, &all_four(lab), &mut server)?;
    Ok(server)
}

fn doctor(lab: &Lab, host: Host, timeout_ms: u32) -> Result<Value> {
    let stun = format!("{}:{PRIMARY_PORT}", lab.server_ip(0));
    let out = lab.run(
        host,
        env!("CARGO_BIN_EXE_peer"),
        &[
            "doctor",
            "--stun",
            &stun,
            "--timeout-ms",
            &timeout_ms.to_string(),
        ],
        Duration::from_secs(60),
    )?;
    let line = out.stdout.lines().last().unwrap_or_default().to_string();
    eprintln!("peer doctor on {host:?}: {line}");
    let v: Value = serde_json::from_str(&line)
        .with_context(|| format!("doctor stdout {:?}, stderr {:?}", out.stdout, out.stderr))?;
    anyhow::ensure!(
        out.success() && v["event"] == "nat",
        "doctor failed: {line} {}",
        out.stderr
    );
    Ok(v)
}

fn check_doctor(lab: &Lab, nat: NatType) -> Result<()> {
    let v = doctor(lab, Host::LanA1, 1500)?;
    anyhow::ensure!(
        v["nat_type"] == nat.name(),
        "router built as {nat}, doctor says {v}"
    );
    let reflexive = v["reflexive"].as_str().unwrap_or_default();
    let expected_ip = match nat {
        NatType::None => lab.ip(Host::LanA1),
        _ => lab.wan_ip(Router::A),
    };
    anyhow::ensure!(
        reflexive.starts_with(&format!("{expected_ip}:")),
        "reflexive {reflexive}"
    );
    Ok(())
}

fn doctor_against_punch_server(test: &str, nat: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, nat)?;
    let _server = start_punch_server(&lab, true)?;
    check_doctor(&lab, nat)
}

fn doctor_against_coturn(test: &str, nat: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, nat)?;
    let _server = start_coturn(&lab)?;
    check_doctor(&lab, nat)
}

macro_rules! per_type {
    ($($name:ident, $coturn:ident => $nat:expr;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            doctor_against_punch_server(stringify!($name), $nat)
        }
        #[test]
        fn $coturn() -> Result<()> {
            doctor_against_coturn(stringify!($coturn), $nat)
        }
    )*};
}

per_type! {
    punch_none, coturn_none => NatType::None;
    punch_full_cone, coturn_full_cone => NatType::FullCone;
    punch_restricted, coturn_restricted => NatType::Restricted;
    punch_port_restricted, coturn_port_restricted => NatType::PortRestricted;
    punch_symmetric, coturn_symmetric => NatType::Symmetric;
}

#[test]
fn coturn_stunclient_gets_reflexive_address_from_punch_server() -> Result<()> {
    let test = "coturn_stunclient_gets_reflexive_address_from_punch_server";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    require_coturn("turnutils_stunclient")?;
    let lab = build_lab("stunclient", NatType::PortRestricted)?;
    let _server = start_punch_server(&lab, true)?;
    // turnutils_stunclient prints the reflexive address, then waits (without a timeout)
    // for its RFC 5780 CHANGE-REQUEST answers, against coturn as well: read its output as
    // a stream with a deadline and kill it afterwards (LabProcess drop).
    let mut client = lab.spawn(
        Host::LanA1,
        "turnutils_stunclient",
        &[
            "-p",
            &PRIMARY_PORT.to_string(),
            &lab.server_ip(0).to_string(),
        ],
    )?;
    let line = client
        .wait_for_line("UDP reflexive addr", Duration::from_secs(15))
        .context("turnutils_stunclient printed no reflexive address")?;
    let expected = format!("UDP reflexive addr: {}:", lab.wan_ip(Router::A));
    anyhow::ensure!(
        line.contains(&expected),
        "expected {expected:?}, got {line:?}"
    );
    let port = line.rsplit(':').next().unwrap_or_default().trim();
    anyhow::ensure!(
        port.parse::<u16>().is_ok_and(|p| p != 0),
        "bad port in {line:?}"
    );
    Ok(())
}

#[test]
fn punch_port_restricted_with_20_percent_loss_on_both_directions() -> Result<()> {
    let test = "punch_port_restricted_with_20_percent_loss_on_both_directions";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = Lab::builder()
        .label("loss")
        .router_a(NatType::PortRestricted)
        .loss_a(20)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))?;
    let _server = start_punch_server(&lab, true)?;
    // Rc = 7 requests per transaction: a wrongly missed answer needs 7 losses in a row
    // (about 0.1 % per transaction at 36 % round-trip loss).
    let v = doctor(&lab, Host::LanA1, 3000)?;
    anyhow::ensure!(v["nat_type"] == "port_restricted", "doctor says {v}");
    Ok(())
}

#[test]
fn two_hosts_behind_one_nat_get_distinct_reflexive_addresses() -> Result<()> {
    let test = "two_hosts_behind_one_nat_get_distinct_reflexive_addresses";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab("samenat", NatType::FullCone)?;
    let _server = start_punch_server(&lab, true)?;
    // Both bind the same local port, so the NAT must give the second one another port.
    let run = |host| -> Result<Value> {
        let stun = format!("{}:{PRIMARY_PORT}", lab.server_ip(0));
        let out = lab.run(
            host,
            env!("CARGO_BIN_EXE_peer"),
            &[
                "doctor",
                "--stun",
                &stun,
                "--bind",
                "0.0.0.0:40000",
                "--timeout-ms",
                "1500",
            ],
            Duration::from_secs(60),
        )?;
        let line = out.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("doctor output {out:?}"))
    };
    let a1 = run(Host::LanA1)?;
    let a2 = run(Host::LanA2)?;
    anyhow::ensure!(
        a1["nat_type"] == "full_cone" && a2["nat_type"] == "full_cone",
        "{a1} {a2}"
    );
    anyhow::ensure!(
        a1["reflexive"] != a2["reflexive"],
        "same mapping for two hosts: {a1} {a2}"
    );
    anyhow::ensure!(a1["local"] == "10.1.0.11:40000" && a2["local"] == "10.1.0.12:40000");
    Ok(())
}
