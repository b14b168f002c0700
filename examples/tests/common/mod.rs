//! Shared helpers of the NAT lab tests: the punch server on the lab's server host, JSON
//! lines of `peer`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use natlab::{Host, Lab, LabProcess};
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
    let bin = punch_server_bin()?;
    let listen = format!("{}:{PRIMARY_PORT}", lab.server_ip(0));
    let alt_addr = format!("{}:{ALT_PORT}", lab.server_ip(1));
    let key = lab.dir().join("punch.key");
    let key = key.to_string_lossy();
    let mut args = vec!["--listen", &listen, "--key-file", &key];
    if alt {
        args.extend(["--alt-addr", &alt_addr]);
    }
    let mut process = lab.spawn(Host::Server, &bin.to_string_lossy(), &args)?;
    let line = process.wait_for_line("listening", Duration::from_secs(15))?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("first line {line:?}"))?;
    anyhow::ensure!(v["event"] == "listening", "unexpected first line {line}");
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let mut wanted = vec![listen.clone()];
    if alt {
        for i in 0..2 {
            for p in [PRIMARY_PORT, ALT_PORT] {
                wanted.push(format!("{}:{p}", lab.server_ip(i)));
            }
        }
    }
    wait_udp_listeners(lab, &wanted, &mut process)?;
    Ok(PunchServer {
        process,
        id,
        addr: listen,
    })
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
