//! NAT-lab tests of sessions with the real binaries: `master-server` (SQLite in the lab's
//! temporary directory) and `punch-server` on the lab's server host, `peer host` and
//! `peer join` on LAN hosts behind three routers (needs root, see `natlab`).
//!
//! `full_mesh_across_three_nats` (A full cone, B restricted, C port-restricted):
//! 1. Build the lab, start both servers, read their `listening` lines.
//! 2. `peer host` on A1 prints `listed`.
//! 3. `peer join --session ID` on A2 (the host's NAT), B1 and C1, one at a time: each
//!    `joined` lists every member so far (the last one all 4), and every earlier member
//!    prints `member_joined` for it. Each join's latency (spawn to `joined`, wall time) is
//!    printed.
//! 4. A line on the last joiner's stdin arrives as `message` at the three others.
//! 5. EOF on every stdin: each peer leaves and exits 0.
//!
//! `join_fails_naming_the_unreachable_member` (A full cone, B symmetric, C
//! port-restricted):
//! 1. Host on A1, a member on B1 (full cone x symmetric: punchable).
//! 2. `peer join` on C1 reaches the host (full cone x port-restricted) but not the member
//!    on B1 (symmetric x port-restricted has no direct path): it prints
//!    `error {kind: "member_unreachable", detail}` naming that member and exits 1.
//! 3. The mesh without it stays intact: no `member_joined`, `member_left` or `ended` on
//!    the host or the member, a message still goes both ways, and the listing still counts
//!    2 players.
//!
//! Every wait has a timeout; every process is killed on drop, and the lab's namespaces go
//! with the lab.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::loopback::{str_of, Proc};
use common::{master_server_bin, punchable, start_punch_server, PunchServer};
use natlab::{Host, Lab, LabProcess, NatType, Router};
use serde_json::Value;

/// Longest wait for a `joined` (or a join's error): process start, listing, the node's
/// registration, the host dial and the member dials (each punch has a 4 s+ budget, the
/// join itself 10 s), with room for a busy 2-core machine.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for any other expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// The game of the tests' sessions.
const GAME: &str = "natlab-session";

/// Starts a `peer` process in the lab: stdin piped (EOF makes it leave), stdout JSON lines kept
/// in order, stderr inherited; killed on drop.
fn spawn_peer(lab: &Lab, host: Host, name: &str, args: &[&str]) -> Result<Proc> {
    let mut command = lab.command(host, env!("CARGO_BIN_EXE_peer"));
    command.args(args).stderr(Stdio::inherit());
    Proc::from_command(name, command).with_context(|| format!("{name} on {host:?}"))
}

/// The servers on the lab's server host.
struct Servers {
    _master: LabProcess,
    /// The TURN proxy, when the punch server offers one.
    _proxy: Option<LabProcess>,
    /// `http://IP:PORT` of the master server.
    master_url: String,
    punch: PunchServer,
}

/// Starts `master-server` (SQLite in the lab directory, no rate limit: every peer behind
/// one NAT has the same address) and `punch-server` on the server host.
fn start_servers(lab: &Lab) -> Result<Servers> {
    start_servers_with(lab, false)
}

/// [`start_servers`], with `proxy` on the server's second address (198.18.0.2, so a
/// router rule can cut a peer off the proxy and nothing else) offered by the punch
/// server.
fn start_servers_with(lab: &Lab, proxy: bool) -> Result<Servers> {
    let db = format!("sqlite:{}", lab.dir().join("master.db").display());
    let listen = format!("{}:0", lab.server_ip(0));
    let bin = master_server_bin()?;
    let mut master = lab.spawn(
        Host::Server,
        &bin.to_string_lossy(),
        &["--listen", &listen, "--database", &db, "--rate-limit", "0"],
    )?;
    let line = master
        .wait_for_line("\"listening\"", LINE_TIMEOUT)
        .with_context(|| format!("master-server stderr: {}", master.stderr()))?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("line {line:?}"))?;
    let master_url = format!("http://{}", str_of(&v, "addr")?);
    let (proxy, punch) = if proxy {
        let proxy_addr = format!("{}:{}", lab.server_ip(1), common::LAB_PROXY_PORT);
        let relay_ip = lab.server_ip(1).to_string();
        let args = [
            "--listen",
            proxy_addr.as_str(),
            "--relay-ip",
            relay_ip.as_str(),
            "--auth-secret",
            common::LAB_TURN_SECRET,
        ];
        let mut p = lab.spawn(Host::Server, &common::proxy_bin()?.to_string_lossy(), &args)?;
        p.wait_for_line("listening", LINE_TIMEOUT)?;
        common::wait_udp_listeners(lab, std::slice::from_ref(&proxy_addr), &mut p)?;
        let uri = format!("turn:{proxy_addr}");
        let turn = [
            "--turn-uri",
            uri.as_str(),
            "--turn-secret",
            common::LAB_TURN_SECRET,
        ];
        (Some(p), common::start_punch_server_with(lab, false, &turn)?)
    } else {
        (None, start_punch_server(lab, false)?)
    };
    Ok(Servers {
        _master: master,
        _proxy: proxy,
        master_url,
        punch,
    })
}

/// Builds a lab with the three routers' types (label kept short for namespace names).
fn build_lab(label: &str, a: NatType, b: NatType, c: NatType) -> Result<Lab> {
    Lab::builder()
        .label(label)
        .router_a(a)
        .router_b(b)
        .router_c(c)
        .build()
        .context("building the lab")
}

impl Servers {
    /// `peer host` on `host`; waits for `listed` and returns the peer, its id and the
    /// session id.
    fn host(&self, lab: &Lab, host: Host, name: &str) -> Result<(Proc, String, String)> {
        let punch = self.punch.punch_addr();
        let args = [
            "host",
            "--punch",
            &punch,
            "--name",
            "natlab",
            "--no-upnp",
            "--master",
            &self.master_url,
            "--game",
            GAME,
        ];
        let mut p = spawn_peer(lab, host, name, &args)?;
        let listed = p.wait("listed", JOIN_TIMEOUT, |v| v["event"] == "listed")?;
        let id = str_of(&listed, "peer")?;
        ensure!(listed["host"] == id.as_str(), "{listed}");
        Ok((p, id, str_of(&listed, "session")?))
    }

    /// `peer join --session ID` on `host` (without waiting for anything).
    fn join(&self, lab: &Lab, host: Host, name: &str, session: &str) -> Result<Proc> {
        self.join_with(lab, host, name, session, &[])
    }

    /// [`Servers::join`] with `extra` flags.
    fn join_with(
        &self,
        lab: &Lab,
        host: Host,
        name: &str,
        session: &str,
        extra: &[&str],
    ) -> Result<Proc> {
        let mut args = vec![
            "join",
            "--session",
            session,
            "--no-upnp",
            "--master",
            &self.master_url,
            "--game",
            GAME,
        ];
        args.extend_from_slice(extra);
        spawn_peer(lab, host, name, &args)
    }
}

fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().collect();
    v.sort_unstable();
    v
}

fn members_of(joined: &Value) -> Result<Vec<String>> {
    let members = joined["members"].as_array().context("members")?;
    Ok(sorted(
        members.iter().filter_map(Value::as_str).map(str::to_string),
    ))
}

#[test]
fn full_mesh_across_three_nats() -> Result<()> {
    if natlab::skip_requested("full_mesh_across_three_nats") {
        return Ok(());
    }
    let started = Instant::now();
    let (a, b, c) = (
        NatType::FullCone,
        NatType::Restricted,
        NatType::PortRestricted,
    );
    for (x, y) in [(a, b), (a, c), (b, c)] {
        ensure!(punchable(x, y), "{x} x {y} must be punchable for this test");
    }
    let lab = build_lab("sess_mesh", a, b, c)?;
    let servers = start_servers(&lab)?;

    // 2. The host.
    let (host, host_id, session) = servers.host(&lab, Host::LanA1, "host@a1")?;
    eprintln!("host listed after {:?}", host.started.elapsed());
    let mut peers = vec![host];
    let mut ids = vec![host_id.clone()];

    // 3. Three joiners, one at a time.
    let mut latencies = Vec::new();
    for (host, name) in [
        (Host::LanA2, "join@a2"),
        (Host::LanB1, "join@b1"),
        (Host::LanC1, "join@c1"),
    ] {
        let mut p = servers.join(&lab, host, name, &session)?;
        let joined = p.wait("joined", JOIN_TIMEOUT, |v| v["event"] == "joined")?;
        let latency = p.started.elapsed();
        let ms = joined["ms"].as_u64();
        eprintln!(
            "JOIN LATENCY {name}: {latency:?} wall (spawn to `joined`){}",
            ms.map(|ms| format!(", {ms} ms reported"))
                .unwrap_or_default()
        );
        latencies.push((name, latency));
        ensure!(joined["session"] == session.as_str(), "{joined}");
        ensure!(joined["host"] == host_id.as_str(), "{joined}");
        let id = str_of(&joined, "peer")?;
        ids.push(id.clone());
        let members = members_of(&joined)?;
        ensure!(
            members == sorted(ids.clone()),
            "{name} joined with members {members:?}, want {ids:?}"
        );
        for earlier in &mut peers {
            earlier.wait_event("member_joined", "peer", &id, LINE_TIMEOUT)?;
        }
        peers.push(p);
    }
    ensure!(peers.len() == 4, "4 peers");
    eprintln!(
        "full mesh of 4 across three NATs after {:?}: {latencies:?}",
        started.elapsed()
    );

    // 4. A message from the last joiner reaches everyone.
    peers[3].send_line("hello from c1")?;
    for p in &mut peers[..3] {
        let m = p.wait_event("message", "text", "hello from c1", LINE_TIMEOUT)?;
        ensure!(m["from"] == ids[3].as_str(), "{}: {m}", p.name);
    }

    // 5. EOF on every stdin: each leaves and exits 0.
    for p in &mut peers {
        p.close_stdin();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in &mut peers {
        let code = p.wait_exit(deadline)?;
        ensure!(code == Some(0), "{} exited with {code:?}", p.name);
    }
    eprintln!("test done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn join_fails_naming_the_unreachable_member() -> Result<()> {
    if natlab::skip_requested("join_fails_naming_the_unreachable_member") {
        return Ok(());
    }
    let started = Instant::now();
    let (a, b, c) = (
        NatType::FullCone,
        NatType::Symmetric,
        NatType::PortRestricted,
    );
    ensure!(punchable(a, b) && punchable(a, c), "the host reaches both");
    ensure!(!punchable(b, c), "{b} x {c} must have no direct path");
    let lab = build_lab("sess_fail", a, b, c)?;
    ensure!(lab.nat(Router::B) == b && lab.nat(Router::C) == c);
    let servers = start_servers(&lab)?;

    // 1. Host on A1, a member on B1.
    let (mut host, host_id, session) = servers.host(&lab, Host::LanA1, "host@a1")?;
    let mut member = servers.join(&lab, Host::LanB1, "join@b1", &session)?;
    let joined = member.wait("joined", JOIN_TIMEOUT, |v| v["event"] == "joined")?;
    eprintln!(
        "JOIN LATENCY join@b1: {:?} wall (spawn to `joined`)",
        member.started.elapsed()
    );
    let member_id = str_of(&joined, "peer")?;
    ensure!(
        members_of(&joined)? == sorted([host_id.clone(), member_id.clone()]),
        "{joined}"
    );
    host.wait_event("member_joined", "peer", &member_id, LINE_TIMEOUT)?;

    // 2. The joiner on C1 cannot reach the member on B1 (and is told not to ask the host
    //    to route between them).
    let mut joiner = servers.join_with(&lab, Host::LanC1, "join@c1", &session, &["--no-route"])?;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let code = joiner.wait_exit(deadline)?;
    let failed_after = joiner.started.elapsed();
    // The reader thread may still hold the last lines: read until stdout closes.
    joiner.drain(Duration::from_secs(2));
    eprintln!("JOIN LATENCY join@c1 (failing): {failed_after:?} wall (spawn to exit)");
    ensure!(
        code == Some(1),
        "join@c1 exited with {code:?}: {:?}",
        joiner.seen
    );
    let error = joiner
        .seen
        .iter()
        .find(|v| v["event"] == "error")
        .with_context(|| format!("join@c1 printed no error: {:?}", joiner.seen))?
        .clone();
    ensure!(
        !joiner.seen.iter().any(|v| v["event"] == "joined"),
        "join@c1 joined: {:?}",
        joiner.seen
    );
    ensure!(
        error["kind"] == "member_unreachable",
        "join@c1 failed with {error}, want member_unreachable"
    );
    let detail = str_of(&error, "detail")?;
    let short: String = member_id.chars().take(8).collect();
    ensure!(
        detail.contains(&member_id) || detail.contains(&short),
        "the error does not name the member on B1 ({member_id}): {detail}"
    );
    ensure!(
        !detail.contains(&host_id),
        "the error names the host instead: {detail}"
    );

    // 3. The mesh without it is intact.
    host.drain(Duration::from_secs(2));
    member.drain(Duration::from_millis(200));
    for p in [&host, &member] {
        let bad: Vec<&Value> = p
            .seen
            .iter()
            .filter(|v| {
                let event = v["event"].as_str().unwrap_or_default();
                let earlier = event == "member_joined" && v["peer"] == member_id.as_str();
                !earlier
                    && [
                        "member_joined",
                        "member_left",
                        "ended",
                        "error",
                        "host_changed",
                    ]
                    .contains(&event)
            })
            .collect();
        ensure!(bad.is_empty(), "{}: after the failed join: {bad:?}", p.name);
    }
    host.send_line("still here")?;
    member.wait_event("message", "text", "still here", LINE_TIMEOUT)?;
    member.send_line("me too")?;
    host.wait_event("message", "text", "me too", LINE_TIMEOUT)?;
    let out = lab.run(
        Host::Server,
        env!("CARGO_BIN_EXE_peer"),
        &["list", "--master", &servers.master_url, "--game", GAME],
        LINE_TIMEOUT,
    )?;
    ensure!(out.success(), "peer list: {}", out.stderr);
    let rows = common::json_lines(&out.stdout);
    ensure!(
        rows.len() == 1 && rows[0]["id"] == session.as_str() && rows[0]["players"] == 2,
        "listing after the failed join: {rows:?}"
    );

    for p in [&mut host, &mut member] {
        p.close_stdin();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in [&mut host, &mut member] {
        let code = p.wait_exit(deadline)?;
        ensure!(code == Some(0), "{} exited with {code:?}", p.name);
    }
    eprintln!("test done in {:?}", started.elapsed());
    Ok(())
}

/// A 4-peer session where one pair reaches each other neither directly nor through the
/// proxy (router C drops everything to B's NAT and to the proxy's address): the last
/// joiner gets in through a router member, messages flow both ways through it; when the
/// router leaves, the pair moves to a route through the remaining member; once the rules
/// are lifted the pair's path core moves the link to a direct path.
#[test]
fn a_pair_cut_from_each_other_talks_through_a_router_member() -> Result<()> {
    let test = "a_pair_cut_from_each_other_talks_through_a_router_member";
    if natlab::skip_requested(test) {
        return Ok(());
    }
    let started = Instant::now();
    let (a, b, c) = (
        NatType::FullCone,
        NatType::Restricted,
        NatType::PortRestricted,
    );
    ensure!(
        punchable(b, c),
        "{b} x {c}: punchable once the rules are lifted"
    );
    let lab = build_lab("sess_route", a, b, c)?;
    let servers = start_servers_with(&lab, true)?;

    // Host on A1, members on A2 and B1.
    let (host, host_id, session) = servers.host(&lab, Host::LanA1, "host@a1")?;
    let mut peers = vec![host];
    let mut ids = vec![host_id.clone()];
    for (h, name) in [(Host::LanA2, "join@a2"), (Host::LanB1, "join@b1")] {
        let mut p = servers.join(&lab, h, name, &session)?;
        let joined = p.wait("joined", JOIN_TIMEOUT, |v| v["event"] == "joined")?;
        let id = str_of(&joined, "peer")?;
        for earlier in &mut peers {
            earlier.wait_event("member_joined", "peer", &id, LINE_TIMEOUT)?;
        }
        ids.push(id);
        peers.push(p);
    }
    let b1 = ids[2].clone();

    // C1 is cut from B1: no direct path, no proxy.
    let (b_wan, proxy_ip) = (lab.wan_ip(Router::B), lab.server_ip(1));
    lab.block_peer(Router::C, b_wan)?;
    lab.block_peer(Router::C, proxy_ip)?;
    let mut c1 = servers.join(&lab, Host::LanC1, "join@c1", &session)?;
    let joined = c1.wait("joined", JOIN_TIMEOUT, |v| v["event"] == "joined")?;
    let join_took = c1.started.elapsed();
    let c1_id = str_of(&joined, "peer")?;
    ids.push(c1_id.clone());
    ensure!(members_of(&joined)? == sorted(ids.clone()), "{joined}");
    for p in &mut peers {
        p.wait_event("member_joined", "peer", &c1_id, LINE_TIMEOUT)?;
    }
    let routed = c1.wait("path to b1 through a router", LINE_TIMEOUT, |v| {
        v["event"] == "path" && v["peer"] == b1.as_str() && v["path"] == "router"
    })?;
    let via = str_of(&routed, "via")?;
    ensure!(
        via == ids[0] || via == ids[1],
        "the router is a member that reaches both: {routed}"
    );
    eprintln!("ROUTED JOIN join@c1: {join_took:?} wall, b1 through {via}");

    // Messages both ways through the router.
    c1.send_line("through the router")?;
    let m = peers[2].wait_event("message", "text", "through the router", LINE_TIMEOUT)?;
    ensure!(m["from"] == c1_id.as_str(), "{m}");
    peers[2].send_line("and back")?;
    c1.wait_event("message", "text", "and back", LINE_TIMEOUT)?;

    // The router leaves: the pair moves to a route through the other member of A.
    let router_index = if via == ids[0] { 0 } else { 1 };
    let other = ids[1 - router_index].clone();
    peers[router_index].close_stdin();
    let left = Instant::now();
    let rerouted = c1.wait("path to b1 through the other router", LINE_TIMEOUT, |v| {
        v["event"] == "path" && v["peer"] == b1.as_str() && v["via"] == other.as_str()
    })?;
    eprintln!(
        "REROUTED: {:?} after the router left: {rerouted}",
        left.elapsed()
    );
    c1.send_line("through the new router")?;
    peers[2].wait_event("message", "text", "through the new router", LINE_TIMEOUT)?;
    peers[2].send_line("still here")?;
    c1.wait_event("message", "text", "still here", LINE_TIMEOUT)?;
    let gone = peers.remove(router_index);
    // B1 is now second (the router was one of the two before it).
    let b1_at = 1;

    // The rules go: the link moves to a direct path.
    lab.unblock_peer(Router::C, b_wan)?;
    lab.unblock_peer(Router::C, proxy_ip)?;
    let lifted = Instant::now();
    c1.wait("path to b1 direct", Duration::from_secs(40), |v| {
        v["event"] == "path" && v["peer"] == b1.as_str() && v["path"] == "direct"
    })?;
    eprintln!(
        "ROUTE REPLACED: direct {:?} after the rules were lifted",
        lifted.elapsed()
    );
    c1.send_line("direct now")?;
    peers[b1_at].wait_event("message", "text", "direct now", LINE_TIMEOUT)?;

    peers.push(c1);
    for p in &mut peers {
        p.close_stdin();
    }
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in &mut peers {
        let code = p.wait_exit(deadline)?;
        ensure!(code == Some(0), "{} exited with {code:?}", p.name);
    }
    eprintln!("test done in {:?}", started.elapsed());
    Ok(())
}
