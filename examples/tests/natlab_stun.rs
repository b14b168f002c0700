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
//! 3. Run a client on LAN host A1: `peer doctor` with its default options (`--punch`
//!    against our server, `--stun` against coturn) or coturn's `turnutils_stunclient`.
//! 4. Check the classification / reflexive address and that `peer doctor` took less than
//!    5 s (about 0.5 s behind the NATs whose filtering tests end in silence); the lab is
//!    torn down on drop.

mod common;

use std::time::{Duration, Instant};

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

/// Longest `peer doctor` run with its default options in the lab (sub-millisecond links):
/// about 0.5 s behind restricted, port-restricted and symmetric NATs (silence is decided
/// 5 RTOs of 100 ms after test I), far less behind none and full cone. Generous for a busy
/// 2-core machine.
const DOCTOR_BOUND: Duration = Duration::from_secs(5);

/// Runs `peer doctor ARGS` (default options otherwise) on `host`; returns its last JSON
/// line (which must be `event`) and how long the run took.
fn doctor(lab: &Lab, host: Host, args: &[&str], event: &str) -> Result<(Value, Duration)> {
    let mut full = vec!["doctor"];
    full.extend_from_slice(args);
    let started = Instant::now();
    let out = lab.run(
        host,
        env!("CARGO_BIN_EXE_peer"),
        &full,
        Duration::from_secs(60),
    )?;
    let took = started.elapsed();
    let line = out.stdout.lines().last().unwrap_or_default().to_string();
    eprintln!("peer {full:?} on {host:?} ({took:?}): {line}");
    let v: Value = serde_json::from_str(&line)
        .with_context(|| format!("doctor stdout {:?}, stderr {:?}", out.stdout, out.stderr))?;
    anyhow::ensure!(
        out.success() && v["event"] == event,
        "doctor failed: {line} {}",
        out.stderr
    );
    Ok((v, took))
}

/// `peer doctor --stun` against the lab server's primary address.
fn doctor_stun(lab: &Lab, host: Host, extra: &[&str]) -> Result<(Value, Duration)> {
    let stun = format!("{}:{PRIMARY_PORT}", lab.server_ip(0));
    let mut args = vec!["--stun", stun.as_str()];
    args.extend_from_slice(extra);
    doctor(lab, host, &args, "nat")
}

/// Checks the classification and the reflexive address, and the run time.
fn check_doctor(lab: &Lab, nat: NatType, v: &Value, took: Duration) -> Result<()> {
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
    eprintln!(
        "FIGURE peer doctor behind {nat}: {:.3} s",
        took.as_secs_f64()
    );
    anyhow::ensure!(
        took < DOCTOR_BOUND,
        "peer doctor behind {nat} took {took:?} (bound {DOCTOR_BOUND:?})"
    );
    Ok(())
}

/// `peer doctor --punch` (discovery against the punch server's STUN port, registration,
/// no UPnP) with its default options.
fn doctor_against_punch_server(test: &str, nat: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, nat)?;
    let server = start_punch_server(&lab, true)?;
    let punch = server.punch_addr();
    let (v, took) = doctor(
        &lab,
        Host::LanA1,
        &["--punch", &punch, "--no-upnp"],
        "doctor",
    )?;
    // Discovery runs on the node's own socket, toward the address it registers with: test
    // I sees exactly the mapping the registration got (IP and port, whatever the NAT).
    anyhow::ensure!(
        v["registered_as"].is_string() && v["registered_as"] == v["reflexive"],
        "registration and test I disagree: {v}"
    );
    check_doctor(&lab, nat, &v, took)
}

/// `peer doctor --stun` against coturn with its default options.
fn doctor_against_coturn(test: &str, nat: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, nat)?;
    let _server = start_coturn(&lab)?;
    let (v, took) = doctor_stun(&lab, Host::LanA1, &[])?;
    check_doctor(&lab, nat, &v, took)
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
    // Default options. Test I and the mapping tests send up to Rc = 7 requests: a missed
    // answer needs 7 losses in a row (about 0.1 % per transaction at 36 % round-trip
    // loss); the filtering tests expect silence here. A lost test I answer makes the later
    // RTO the whole time test I took (500 ms or more), hence the wider bound.
    let (v, took) = doctor_stun(&lab, Host::LanA1, &[])?;
    anyhow::ensure!(v["nat_type"] == "port_restricted", "doctor says {v}");
    eprintln!(
        "FIGURE peer doctor with 20 % loss each way: {:.3} s",
        took.as_secs_f64()
    );
    anyhow::ensure!(took < Duration::from_secs(20), "took {took:?}");
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
        let (v, took) = doctor_stun(&lab, host, &["--bind", "0.0.0.0:40000"])?;
        anyhow::ensure!(took < DOCTOR_BOUND, "took {took:?}");
        Ok(v)
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
