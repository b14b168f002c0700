//! NAT lab tests of direct connectivity: `peer listen` and `peer dial` through our
//! punch server, across real NAT routers in network namespaces. **These tests need root**
//! and the packages iproute2, nftables, conntrack and miniupnpd-nftables; they fail with a
//! clear message when the lab cannot be built (set `NATLAB_SKIP=1` to skip them
//! explicitly). Each test builds its own lab, so they run safely in parallel.
//!
//! Flow of each test:
//! 1. Build a lab with routers A and B of the wanted types (and WAN loss if asked).
//! 2. Start `punch-server` on the server host (198.18.0.1:3478, key in the lab dir).
//! 3. Start `peer listen --punch ID@198.18.0.1:3478` on one LAN host and wait for its
//!    `registered` line (its peer id).
//! 4. Run `peer dial ... <PEER_ID> --bytes N` on another LAN host: expect `connected`
//!    (path direct) and `echo_ok` with N bytes, or `error` with kind `no_direct_path` for
//!    the pairs no hole punching can open (symmetric x port-restricted, symmetric x
//!    symmetric).
//!
//! The matrix covers every unordered pair of the five NAT types (dialer behind A, listener
//! behind B); then two peers behind one NAT (no hairpinning needed: LAN candidates); UPnP
//! on a symmetric router rescuing a symmetric x symmetric pair; and 20% loss on both WANs,
//! where every punchable pair connects in 10 of 10 runs.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{dial, next_json, punchable, start_listener, start_punch_server, Dial};
use natlab::{Host, Lab, NatType, Router, UpnpStun};
use serde_json::Value;

const ECHO_BYTES: usize = 256 * 1024;
const LOSSY_ECHO_BYTES: usize = 1000;

/// What a pair must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Direct,
    NoDirectPath,
}

/// The expected outcome of a pair of NAT types (the issue's table).
fn expected(a: NatType, b: NatType) -> Expect {
    if punchable(a, b) {
        Expect::Direct
    } else {
        Expect::NoDirectPath
    }
}

/// Checks a dial that must connect directly and echo.
fn check_direct(d: &Dial, bytes: usize) -> Result<Value> {
    let connected = d
        .event("connected")
        .with_context(|| format!("no connected event: {:?}; stderr {}", d.lines, d.stderr))?;
    anyhow::ensure!(connected["path"] == "direct", "path {connected}");
    let echo = d
        .event("echo_ok")
        .with_context(|| format!("no echo_ok: {:?}; stderr {}", d.lines, d.stderr))?;
    anyhow::ensure!(echo["bytes"] == bytes, "echo {echo}");
    anyhow::ensure!(d.success, "dial exited non-zero: {:?}", d.lines);
    let retries = d.lines.iter().filter(|l| l["event"] == "retry").count();
    if retries > 0 {
        eprintln!("dial needed {retries} retries: {:?}", d.lines);
    }
    Ok(connected.clone())
}

/// Checks a dial that must end with `no_direct_path`.
fn check_no_direct_path(d: &Dial) -> Result<()> {
    let err = d
        .event("error")
        .with_context(|| format!("no error event: {:?}; stderr {}", d.lines, d.stderr))?;
    anyhow::ensure!(err["kind"] == "no_direct_path", "wrong error {err}");
    anyhow::ensure!(d.event("connected").is_none(), "connected anyway");
    anyhow::ensure!(!d.success, "dial exited 0 without a path");
    Ok(())
}

fn build_lab(test: &str, a: NatType, b: NatType, loss: u8) -> Result<Lab> {
    Lab::builder()
        .label(test)
        .router_a(a)
        .router_b(b)
        .loss_a(loss)
        .loss_b(loss)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))
}

/// One pair of the matrix: dialer on A1 behind `a`, listener on B1 behind `b`.
fn pair(test: &str, a: NatType, b: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, a, b, 0)?;
    let server = start_punch_server(&lab, false)?;
    let listener = start_listener(&lab, Host::LanB1, &server, false)?;
    let d = dial(&lab, Host::LanA1, &server, &listener.peer, ECHO_BYTES)?;
    match expected(a, b) {
        Expect::Direct => {
            check_direct(&d, ECHO_BYTES).with_context(|| format!("{a} x {b} must connect"))?;
        }
        Expect::NoDirectPath => {
            check_no_direct_path(&d).with_context(|| format!("{a} x {b} has no direct path"))?;
        }
    }
    Ok(())
}

/// A punchable pair with 20% loss on both WANs: 10 dials, 10 connections.
fn lossy_pair(test: &str, a: NatType, b: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
    anyhow::ensure!(punchable(a, b), "{a} x {b} is not punchable: no lossy test");
    let lab = build_lab(test, a, b, 20)?;
    let server = start_punch_server(&lab, false)?;
    let mut listener = start_listener(&lab, Host::LanB1, &server, false)?;
    for run in 1..=10 {
        // One packet of echo: proves the connection carries data both ways. (Bulk transfer
        // at 36 % loss per direction is a congestion-control test, not a punching one.)
        let d = dial(&lab, Host::LanA1, &server, &listener.peer, LOSSY_ECHO_BYTES)?;
        if let Err(e) = check_direct(&d, LOSSY_ECHO_BYTES) {
            let mut events = Vec::new();
            while let Ok(Some(line)) = listener.process.read_line(Duration::from_millis(200)) {
                events.push(line);
            }
            return Err(e.context(format!(
                "{a} x {b} with 20% loss, run {run} of 10; listener events: {events:?}; \
                 listener stderr: {}; server stderr: {}",
                listener.process.stderr(),
                server.process.stderr()
            )));
        }
    }
    Ok(())
}

macro_rules! matrix {
    ($($name:ident => $a:ident x $b:ident;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            pair(stringify!($name), NatType::$a, NatType::$b)
        }
    )*};
}

matrix! {
    none_x_none => None x None;
    none_x_full_cone => None x FullCone;
    none_x_restricted => None x Restricted;
    none_x_port_restricted => None x PortRestricted;
    none_x_symmetric => None x Symmetric;
    full_cone_x_full_cone => FullCone x FullCone;
    full_cone_x_restricted => FullCone x Restricted;
    full_cone_x_port_restricted => FullCone x PortRestricted;
    full_cone_x_symmetric => FullCone x Symmetric;
    restricted_x_restricted => Restricted x Restricted;
    restricted_x_port_restricted => Restricted x PortRestricted;
    restricted_x_symmetric => Restricted x Symmetric;
    port_restricted_x_port_restricted => PortRestricted x PortRestricted;
    port_restricted_x_symmetric => PortRestricted x Symmetric;
    symmetric_x_symmetric => Symmetric x Symmetric;
}

/// One lossy test per punchable pair (the pairs without a direct path have none), and
/// `LOSSY_PAIRS`, the list they cover.
macro_rules! lossy {
    ($($name:ident => $a:ident x $b:ident;)*) => {
        $(
            #[test]
            fn $name() -> Result<()> {
                lossy_pair(stringify!($name), NatType::$a, NatType::$b)
            }
        )*
        const LOSSY_PAIRS: &[(NatType, NatType)] = &[$((NatType::$a, NatType::$b)),*];
    };
}

lossy! {
    lossy_none_x_none => None x None;
    lossy_none_x_full_cone => None x FullCone;
    lossy_none_x_restricted => None x Restricted;
    lossy_none_x_port_restricted => None x PortRestricted;
    lossy_none_x_symmetric => None x Symmetric;
    lossy_full_cone_x_full_cone => FullCone x FullCone;
    lossy_full_cone_x_restricted => FullCone x Restricted;
    lossy_full_cone_x_port_restricted => FullCone x PortRestricted;
    lossy_full_cone_x_symmetric => FullCone x Symmetric;
    lossy_restricted_x_restricted => Restricted x Restricted;
    lossy_restricted_x_port_restricted => Restricted x PortRestricted;
    lossy_restricted_x_symmetric => Restricted x Symmetric;
    lossy_port_restricted_x_port_restricted => PortRestricted x PortRestricted;
}

/// The lossy tests cover exactly the punchable pairs of the matrix, each once.
#[test]
fn lossy_tests_cover_every_punchable_pair() {
    let mut punchable_pairs = Vec::new();
    for (i, a) in NatType::ALL.iter().enumerate() {
        for b in NatType::ALL.iter().skip(i) {
            if punchable(*a, *b) {
                punchable_pairs.push((*a, *b));
            }
        }
    }
    assert_eq!(LOSSY_PAIRS, punchable_pairs.as_slice());
}

/// The matrix table itself covers all 15 unordered pairs, each once.
#[test]
fn matrix_expectations_match_the_issue() {
    let mut no_path = Vec::new();
    for (i, a) in NatType::ALL.iter().enumerate() {
        for b in NatType::ALL.iter().skip(i) {
            if expected(*a, *b) == Expect::NoDirectPath {
                no_path.push((a.name(), b.name()));
            }
        }
    }
    assert_eq!(
        no_path,
        vec![("port_restricted", "symmetric"), ("symmetric", "symmetric")]
    );
}

/// Two peers behind one port-restricted NAT connect over their LAN addresses: no
/// hairpinning needed (the lab routers do not hairpin).
#[test]
fn same_nat_connects_over_the_lan() -> Result<()> {
    let test = "same_nat_connects_over_the_lan";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = build_lab(test, NatType::PortRestricted, NatType::PortRestricted, 0)?;
    let server = start_punch_server(&lab, false)?;
    let listener = start_listener(&lab, Host::LanA2, &server, false)?;
    let d = dial(&lab, Host::LanA1, &server, &listener.peer, ECHO_BYTES)?;
    let connected = check_direct(&d, ECHO_BYTES)?;
    let remote = connected["remote"].as_str().unwrap_or_default();
    let lan = format!("{}:", lab.ip(Host::LanA2));
    anyhow::ensure!(
        remote.starts_with(&lan),
        "same-NAT peers should meet on the LAN ({lan}...), got {remote}"
    );
    Ok(())
}

/// Symmetric x symmetric fails over IPv4 (see the matrix); with IPv6 in the lab (global
/// addresses, no NAT, a stateful firewall on each router) the peers' default dual-stack
/// sockets offer their IPv6 addresses, which rank first, and the pair connects directly over
/// IPv6 while registered with the punch server over IPv4.
#[test]
fn ipv6_connects_directly_when_both_ipv4_nats_are_symmetric() -> Result<()> {
    let test = "ipv6_connects_directly_when_both_ipv4_nats_are_symmetric";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let lab = Lab::builder()
        .label("ipv6sym")
        .router_a(NatType::Symmetric)
        .router_b(NatType::Symmetric)
        .ipv6()
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))?;
    let server = start_punch_server(&lab, false)?;
    let listener = start_listener(&lab, Host::LanB1, &server, false)?;
    let d = dial(&lab, Host::LanA1, &server, &listener.peer, ECHO_BYTES)?;
    let connected = check_direct(&d, ECHO_BYTES)?;
    let b1 = lab.ip6(Host::LanB1).context("lab has IPv6")?;
    let remote: std::net::SocketAddr = connected["remote"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("remote of {connected}"))?;
    anyhow::ensure!(
        remote.ip() == std::net::IpAddr::V6(b1),
        "expected the direct path over IPv6 to {b1}, got {connected}"
    );
    Ok(())
}

/// Symmetric x symmetric fails by punching alone (see the matrix); with miniupnpd on
/// router A the listener registers its UPnP-mapped address and the same pair connects.
#[test]
fn upnp_mapping_rescues_symmetric_pair() -> Result<()> {
    let test = "upnp_mapping_rescues_symmetric_pair";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    common::require_miniupnpd()?;
    let lab = build_lab(test, NatType::Symmetric, NatType::Symmetric, 0)?;
    let server = start_punch_server(&lab, true)?;
    let stun = UpnpStun {
        server: server.addr.parse()?,
        alt_port: common::ALT_PORT,
    };
    let upnp = lab
        .start_upnp(Router::A, stun)
        .context("miniupnpd on router A")?;
    let mut listener = start_listener(&lab, Host::LanA1, &server, true)?;
    let mapped = next_json(
        &mut listener.process,
        Duration::from_secs(20),
        "upnp mapping",
    )
    .with_context(|| format!("miniupnpd log: {}", upnp.log()))?;
    anyhow::ensure!(
        mapped["event"] == "upnp" && mapped["state"] == "mapped",
        "listener did not register a UPnP candidate: {mapped}; miniupnpd log: {}",
        upnp.log()
    );
    let external = mapped["external"].as_str().unwrap_or_default().to_string();
    let d = dial(&lab, Host::LanB1, &server, &listener.peer, ECHO_BYTES)?;
    let connected =
        check_direct(&d, ECHO_BYTES).with_context(|| format!("miniupnpd log: {}", upnp.log()))?;
    anyhow::ensure!(
        connected["remote"] == external.as_str(),
        "expected the path through the UPnP mapping {external}, got {connected}"
    );
    anyhow::ensure!(connected["how"] == "upnp", "found by UPnP: {connected}");
    Ok(())
}
