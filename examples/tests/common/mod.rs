//! Shared helpers of the tests and the lab bench: the punch server on the lab's server
//! host, `peer listen` and `peer dial` in the lab, which NAT pairs can be punched, JSON
//! lines of `peer`. Each test binary uses only some of them (hence `dead_code`).
#![allow(dead_code)]

pub mod loopback;
pub mod relay;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use natlab::{Host, Lab, LabProcess, NatType};
use serde_json::Value;

/// The punch server's primary port on the lab server (198.18.0.1).
pub const PRIMARY_PORT: u16 = 3478;
/// Its alternate port (RFC 5780) on the second server address (198.18.0.2).
pub const ALT_PORT: u16 = 3479;

/// The `punch-server` binary next to `peer` (same target directory).
pub fn punch_server_bin() -> Result<PathBuf> {
    let peer = PathBuf::from(env!("CARGO_BIN_EXE_peer"));
    let bin = peer.with_file_name("punch-server");
    if !bin.is_file() {
        bail!(
            "punch-server binary not found at {}: build it into the same target directory \
             first (`cargo build -p punch-server`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `proxy` (TURN relay) binary next to `peer` (same target directory).
pub fn proxy_bin() -> Result<PathBuf> {
    let peer = PathBuf::from(env!("CARGO_BIN_EXE_peer"));
    let bin = peer.with_file_name("proxy");
    if !bin.is_file() {
        bail!(
            "proxy binary not found at {}: build it into the same target directory first \
             (`cargo build -p proxy`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `master-server` binary next to `peer` (same target directory).
pub fn master_server_bin() -> Result<PathBuf> {
    let peer = PathBuf::from(env!("CARGO_BIN_EXE_peer"));
    let bin = peer.with_file_name("master-server");
    if !bin.is_file() {
        bail!(
            "master-server binary not found at {}: build it into the same target directory \
             first (`cargo build -p master-server`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A punch server running on the lab's server host.
pub struct PunchServer {
    /// The process (killed on drop).
    pub process: LabProcess,
    /// Its id, from the listening line.
    pub id: String,
    /// Its primary address.
    pub addr: String,
}

impl PunchServer {
    /// `ID@HOST:PORT`, as peers name it.
    pub fn punch_addr(&self) -> String {
        format!("{}@{}", self.id, self.addr)
    }
}

/// Starts our punch server on the lab server (with the RFC 5780 alternate address if
/// `alt`), its key in the lab directory, and waits until every socket listens.
pub fn start_punch_server(lab: &Lab, alt: bool) -> Result<PunchServer> {
    start_punch_server_with(lab, alt, &[])
}

/// [`start_punch_server`] with `extra` flags (e.g. `--turn-uri`).
pub fn start_punch_server_with(lab: &Lab, alt: bool, extra: &[&str]) -> Result<PunchServer> {
    let bin = punch_server_bin()?;
    let listen = format!("{}:{PRIMARY_PORT}", lab.server_ip(0));
    let alt_addr = format!("{}:{ALT_PORT}", lab.server_ip(1));
    let key = lab.dir().join("punch.key");
    let key = key.to_string_lossy();
    let mut args = vec!["--listen", &listen, "--key-file", &key];
    if alt {
        args.extend(["--alt-addr", &alt_addr]);
    }
    args.extend_from_slice(extra);
    let mut process = lab.spawn(Host::Server, &bin.to_string_lossy(), &args)?;
    let line = process.wait_for_line("listening", Duration::from_secs(15))?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("first line {line:?}"))?;
    anyhow::ensure!(v["event"] == "listening", "unexpected first line {line}");
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let wanted = if alt {
        all_four(lab)
    } else {
        vec![listen.clone()]
    };
    wait_udp_listeners(lab, &wanted, &mut process)?;
    Ok(PunchServer {
        process,
        id,
        addr: listen,
    })
}

/// The shared secret of the lab's proxy and punch server.
pub const LAB_TURN_SECRET: &str = "natlab-relay-secret";
/// The lab proxy's port on the server's first address (next to the punch server's
/// primary and alternate ports).
pub const LAB_PROXY_PORT: u16 = 3480;

/// The lab's proxy (TURN) and a punch server offering it.
pub struct Servers {
    /// The proxy (killed on drop).
    pub proxy: LabProcess,
    /// The punch server.
    pub punch: PunchServer,
}

/// Starts `proxy` on the lab server and a punch server offering it (with its RFC 5780
/// alternate address if `alt`).
pub fn start_relay_servers(lab: &Lab, alt: bool) -> Result<Servers> {
    let proxy_addr = format!("{}:{LAB_PROXY_PORT}", lab.server_ip(0));
    let relay_ip = lab.server_ip(0).to_string();
    let bin = proxy_bin()?;
    let args = [
        "--listen",
        &proxy_addr,
        "--relay-ip",
        &relay_ip,
        "--auth-secret",
        LAB_TURN_SECRET,
        // The default 1 MB/s per allocation would make the long transfers take minutes.
        "--bandwidth-per-allocation",
        "500000000",
    ];
    let mut proxy = lab.spawn(Host::Server, &bin.to_string_lossy(), &args)?;
    let line = proxy.wait_for_line("listening", Duration::from_secs(15))?;
    anyhow::ensure!(line.contains(&proxy_addr), "proxy: {line}");
    wait_udp_listeners(lab, std::slice::from_ref(&proxy_addr), &mut proxy)?;
    let uri = format!("turn:{proxy_addr}");
    let turn = ["--turn-uri", &uri, "--turn-secret", LAB_TURN_SECRET];
    let punch = start_punch_server_with(lab, alt, &turn)?;
    Ok(Servers { proxy, punch })
}

/// The four RFC 5780 server addresses: both server IPs, each on the primary and the
/// alternate port.
pub fn all_four(lab: &Lab) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..2 {
        for p in [PRIMARY_PORT, ALT_PORT] {
            v.push(format!("{}:{p}", lab.server_ip(i)));
        }
    }
    v
}

/// Waits until `ss` in the server namespace shows UDP listeners on every address.
pub fn wait_udp_listeners(lab: &Lab, addrs: &[String], server: &mut LabProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = lab.run(Host::Server, "ss", &["-Hlun"], Duration::from_secs(5))?;
        if addrs.iter().all(|a| out.stdout.contains(a.as_str())) {
            return Ok(());
        }
        if !server.is_running() || Instant::now() > deadline {
            bail!(
                "server not listening on {addrs:?}: ss: {}; stderr: {}",
                out.stdout,
                server.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next JSON event line of a `peer` process, within `timeout`.
pub fn next_json(process: &mut LabProcess, timeout: Duration, what: &str) -> Result<Value> {
    let line = process
        .wait_for_line("\"event\"", timeout)
        .with_context(|| format!("waiting for {what}"))?;
    eprintln!("peer: {line}");
    serde_json::from_str(&line).with_context(|| format!("{what}: not JSON: {line}"))
}

/// Every JSON event line of a finished command's stdout.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The first line of `lines` with `event` == `name`.
pub fn event<'a>(lines: &'a [Value], name: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["event"] == name)
}

/// A lab with routers A and B of types `a` and `b`, labelled `label`; the error names
/// `test` (which needs root).
pub fn pair_lab(test: &str, label: &str, a: NatType, b: NatType) -> Result<Lab> {
    Lab::builder()
        .label(label)
        .router_a(a)
        .router_b(b)
        .build()
        .with_context(|| format!("test {test} needs the NAT lab (root)"))
}

/// Whether hole punching can open a direct path between peers behind NATs of types `a`
/// and `b`: every pair except symmetric x port-restricted and symmetric x symmetric.
pub fn punchable(a: NatType, b: NatType) -> bool {
    use NatType::{PortRestricted, Symmetric};
    !matches!(
        (a, b),
        (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
    )
}

/// A `peer listen` running in the lab, registered with the punch server.
pub struct Listener {
    /// The process (killed on drop).
    pub process: LabProcess,
    /// Its peer id, from the `registered` line.
    pub peer: String,
}

/// Starts `peer listen` on `host` (with UPnP if `upnp`) and waits for its `connecting`
/// and `registered` lines.
pub fn start_listener(lab: &Lab, host: Host, server: &PunchServer, upnp: bool) -> Result<Listener> {
    start_listener_with(lab, host, server, upnp, &[])
}

/// [`start_listener`] with `extra` flags for `peer listen`.
pub fn start_listener_with(
    lab: &Lab,
    host: Host,
    server: &PunchServer,
    upnp: bool,
    extra: &[&str],
) -> Result<Listener> {
    let punch = server.punch_addr();
    let mut args = vec![
        "listen",
        "--punch",
        punch.as_str(),
        "--connect-timeout-ms",
        "30000",
    ];
    if !upnp {
        args.push("--no-upnp");
    }
    args.extend_from_slice(extra);
    let mut process = lab.spawn(host, env!("CARGO_BIN_EXE_peer"), &args)?;
    let connecting = next_json(&mut process, Duration::from_secs(10), "connecting")?;
    anyhow::ensure!(
        connecting["event"] == "connecting" && connecting["punch"] == punch.as_str(),
        "listener's first line: {connecting}"
    );
    let reg = next_json(&mut process, Duration::from_secs(35), "registered")?;
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
pub struct Dial {
    /// Every JSON line it printed.
    pub lines: Vec<Value>,
    /// Whether it exited 0.
    pub success: bool,
    /// Its stderr.
    pub stderr: String,
}

impl Dial {
    /// Its first line with `event` == `name`.
    pub fn event(&self, name: &str) -> Option<&Value> {
        event(&self.lines, name)
    }
}

/// Runs `peer dial` (without UPnP, 30 s to reach the punch server) on `host` to `peer`,
/// echoing `bytes` bytes.
pub fn dial(lab: &Lab, host: Host, server: &PunchServer, peer: &str, bytes: usize) -> Result<Dial> {
    dial_with(lab, host, server, peer, bytes, &[])
}

/// [`dial`] with `extra` flags (e.g. `--no-birthday`).
pub fn dial_with(
    lab: &Lab,
    host: Host,
    server: &PunchServer,
    peer: &str,
    bytes: usize,
    extra: &[&str],
) -> Result<Dial> {
    let punch = server.punch_addr();
    let bytes = bytes.to_string();
    let mut args = vec![
        "dial",
        "--punch",
        &punch,
        "--no-upnp",
        // With 20% loss both ways the QUIC handshake to the punch server can need
        // more retransmissions than the 10 s default allows (PTO doubles each time);
        // the tests are about punching, not about that bound.
        "--connect-timeout-ms",
        "30000",
        "--bytes",
        &bytes,
    ];
    args.extend_from_slice(extra);
    args.push(peer);
    let out = lab.run(
        host,
        env!("CARGO_BIN_EXE_peer"),
        &args,
        Duration::from_secs(90),
    )?;
    let lines = json_lines(&out.stdout);
    for l in &lines {
        eprintln!("dial on {host:?}: {l}");
    }
    Ok(Dial {
        lines,
        success: out.success(),
        stderr: out.stderr,
    })
}

/// Fails clearly when miniupnpd is missing.
pub fn require_miniupnpd() -> Result<()> {
    if natlab::which("miniupnpd").is_none() {
        bail!(
            "`miniupnpd` not found: the UPnP lab tests need the Debian package \
             miniupnpd-nftables (install it with a policy-rc.d that exits 101 so no \
             daemon starts)"
        );
    }
    Ok(())
}

/// Runs `peer` with `args` (a `dial`) on LAN A1 within `timeout`, prints its JSON lines
/// and returns them; fails unless it exited 0.
pub fn run_dial(lab: &Lab, args: &[&str], timeout: Duration) -> Result<Vec<Value>> {
    let out = lab.run(Host::LanA1, env!("CARGO_BIN_EXE_peer"), args, timeout)?;
    let lines = json_lines(&out.stdout);
    for line in &lines {
        eprintln!("dial: {line}");
    }
    anyhow::ensure!(
        out.success(),
        "dial failed: {lines:?}; stderr {}",
        out.stderr
    );
    Ok(lines)
}

/// One `peer dial` that waits (idle) for a direct path before its echo: its lines.
pub struct UntilDirect {
    /// Every JSON line.
    pub lines: Vec<Value>,
    /// The `connected` line.
    pub connected: Value,
    /// The first `path_changed` to `direct`, if the connection got one.
    pub direct: Option<Value>,
    /// The `birthday` line (the dialer's rounds), if it ran any.
    pub birthday: Option<Value>,
}

impl UntilDirect {
    /// `after_ms` of the move to the direct path (from the established connection).
    pub fn direct_after_ms(&self) -> Option<f64> {
        self.direct.as_ref().and_then(|d| d["after_ms"].as_f64())
    }

    /// Checks the dialer sent in its birthday rounds (0 without any).
    pub fn checks(&self) -> u64 {
        self.birthday
            .as_ref()
            .and_then(|b| b["checks"].as_u64())
            .unwrap_or(0)
    }
}

/// Runs `peer dial` behind A to `peer` (no UPnP, one attempt), holding the connection idle
/// until it runs direct (at most `wait`), then echoing `bytes`; fails unless the echo
/// completed.
pub fn dial_until_direct(
    lab: &Lab,
    server: &PunchServer,
    peer: &str,
    bytes: usize,
    wait: Duration,
) -> Result<UntilDirect> {
    let punch = server.punch_addr();
    let bytes_arg = bytes.to_string();
    let idle = wait.as_millis().to_string();
    let args = [
        "dial",
        "--punch",
        &punch,
        "--no-upnp",
        "--bytes",
        &bytes_arg,
        "--idle-ms",
        &idle,
        "--until-direct",
        "--attempts",
        "1",
        peer,
    ];
    let lines = run_dial(lab, &args, Duration::from_secs(60))?;
    let find = |name: &str| lines.iter().find(|l| l["event"] == name).cloned();
    let connected = find("connected").with_context(|| format!("no connected: {lines:?}"))?;
    let echo = find("echo_ok").with_context(|| format!("no echo_ok: {lines:?}"))?;
    anyhow::ensure!(echo["bytes"] == bytes, "{echo}");
    let direct = lines
        .iter()
        .find(|l| l["event"] == "path_changed" && l["path"] == "direct")
        .cloned();
    let birthday = find("birthday");
    Ok(UntilDirect {
        lines,
        connected,
        direct,
        birthday,
    })
}

/// The `p`-th percentile (0-100) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A lab bench's `--runs N` (default `default`, clamped to 1-1000).
pub fn runs_arg(default: usize) -> Result<usize> {
    let mut runs = default;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            runs = args.next().context("--runs N")?.parse()?;
        }
    }
    Ok(runs.clamp(1, 1000))
}
