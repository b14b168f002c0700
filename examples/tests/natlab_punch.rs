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
use common::{next_json, start_punch_server, PunchServer};
use natlab::{Host, Lab, LabProcess, NatType, Router, UpnpStun};
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
    use NatType::{PortRestricted, Symmetric};
    match (a, b) {
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric) => {
            Expect::NoDirectPath
        }
        _ => Expect::Direct,
    }
}

struct Listener {
    process: LabProcess,
    peer: String,
}

fn start_listener(lab: &Lab, host: Host, server: &PunchServer, upnp: bool) -> Result<Listener> {
    let punch = server.punch_addr();
    let mut args = vec!["listen", "--punch", punch.as_str()];
    if !upnp {
        args.push("--no-upnp");
    }
    let mut process = lab.spawn(host, env!("CARGO_BIN_EXE_peer"), &args)?;
    let reg = next_json(&mut process, Duration::from_secs(20), "registered")?;
    anyhow::ensure!(
        reg["event"] == "registered",
        "listener did not register: {reg}; stderr: {}",
        process.stderr()
    );
    let peer = reg["peer"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(peer.len() == 52, "peer id {peer:?}");
    Ok(Listener { process, peer })
}

/// The JSON lines and success of one `peer dial`.
struct Dial {
    lines: Vec<Value>,
    success: bool,
    stderr: String,
}

impl Dial {
    fn event(&self, name: &str) -> Option<&Value> {
        self.lines.iter().find(|l| l["event"] == name)
    }
}

fn dial(lab: &Lab, host: Host, server: &PunchServer, peer: &str, bytes: usize) -> Result<Dial> {
    let punch = server.punch_addr();
    let bytes = bytes.to_string();
    let out = lab.run(
        host,
        env!("CARGO_BIN_EXE_peer"),
        &[
            "dial",
            "--punch",
            &punch,
            "--no-upnp",
            peer,
            "--bytes",
            &bytes,
        ],
        Duration::from_secs(90),
    )?;
    let lines = common::json_lines(&out.stdout);
    for l in &lines {
        eprintln!("dial on {host:?}: {l}");
    }
    Ok(Dial {
        lines,
        success: out.success(),
        stderr: out.stderr,
    })
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
    drop(listener.process);
    Ok(())
}

/// A punchable pair with 20% loss on both WANs: 10 dials, 10 connections.
fn lossy_pair(test: &str, a: NatType, b: NatType) -> Result<()> {
    if natlab::skip_requested(test) {
        return Ok(());
    }
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
    ($($name:ident, $lossy:ident => $a:ident x $b:ident;)*) => {$(
        #[test]
        fn $name() -> Result<()> {
            pair(stringify!($name), NatType::$a, NatType::$b)
        }
        #[test]
        fn $lossy() -> Result<()> {
            if expected(NatType::$a, NatType::$b) == Expect::NoDirectPath {
                return Ok(());
            }
            lossy_pair(stringify!($lossy), NatType::$a, NatType::$b)
        }
    )*};
}

matrix! {
    none_x_none, lossy_none_x_none => None x None;
    none_x_full_cone, lossy_none_x_full_cone => None x FullCone;
    none_x_restricted, lossy_none_x_restricted => None x Restricted;
    none_x_port_restricted, lossy_none_x_port_restricted => None x PortRestricted;
    none_x_symmetric, lossy_none_x_symmetric => None x Symmetric;
    full_cone_x_full_cone, lossy_full_cone_x_full_cone => FullCone x FullCone;
    full_cone_x_restricted, lossy_full_cone_x_restricted => FullCone x Restricted;
    full_cone_x_port_restricted, lossy_full_cone_x_port_restricted => FullCone x PortRestricted;
    full_cone_x_symmetric, lossy_full_cone_x_symmetric => FullCone x Symmetric;
    restricted_x_restricted, lossy_restricted_x_restricted => Restricted x Restricted;
    restricted_x_port_restricted, lossy_restricted_x_port_restricted => Restricted x PortRestricted;
    restricted_x_symmetric, lossy_restricted_x_symmetric => Restricted x Symmetric;
    port_restricted_x_port_restricted, lossy_port_restricted_x_port_restricted => PortRestricted x PortRestricted;
    port_restricted_x_symmetric, lossy_port_restricted_x_symmetric => PortRestricted x Symmetric;
    symmetric_x_symmetric, lossy_symmetric_x_symmetric => Symmetric x Symmetric;
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
    Ok(())
}
