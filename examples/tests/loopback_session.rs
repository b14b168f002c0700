//! Loopback test of sessions with the real binaries on 127.0.0.1: `master-server` on
//! SQLite in a temp dir, `punch-server`, and eight `peer` processes (`host`, `join`).
//!
//! Flow:
//! 1. Start both servers and read their listening lines; `peer host` prints `listed`.
//! 2. Seven `peer join` (the first without `--session`: the first listing with space) each
//!    print `joined`; the last one's members are all eight, and every earlier member prints
//!    `member_joined` for every later one. `peer list` shows the session; joining an
//!    unknown session id prints `error` (`not_found`) and exits 1.
//! 3. A line on one peer's stdin arrives as `message` at the seven others.
//! 4. The host is killed (SIGKILL, by its pid): the seven others print `host_changed` to the
//!    second peer to join and `member_left` for the host; the master server's row shows 7
//!    players and the new host in `connect.peer`.
//! 5. A new `peer join --session ID` joins through the new host; all seven see it.
//! 6. Closing each stdin makes each process leave and exit 0.
//!
//! Every wait has a timeout; processes are killed on drop.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::loopback::{get, get_session, str_of, Proc, Servers};
use serde_json::Value;

/// Longest wait for one expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the members to agree on a new host after the old one died
/// (3 s detection + the election).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The game of the test's sessions.
const GAME: &str = "loopback-session";

#[test]
fn eight_peers_full_mesh_host_migration_and_rejoin() -> Result<()> {
    let started = Instant::now();
    let servers = Servers::start(Stdio::inherit)?;
    let (master_addr, master_url, punch_addr) = (
        servers.master_addr.clone(),
        servers.master_url.clone(),
        servers.punch_addr.clone(),
    );
    let node = [
        "--no-upnp",
        "--bind",
        "127.0.0.1:0",
        "--master",
        &master_url,
        "--game",
        GAME,
    ];

    // 1. The host.
    let mut args = vec!["host", "--punch", &punch_addr, "--name", "loopback"];
    args.extend(node);
    let mut host = Proc::peer("peer0", &args)?;
    let listed = host.wait("listed", LINE_TIMEOUT, |v| v["event"] == "listed")?;
    let session = str_of(&listed, "session")?;
    let mut ids = vec![str_of(&listed, "peer")?];
    ensure!(listed["host"] == ids[0], "host line {listed}");
    let mut peers = vec![host];

    // 2. Seven joiners, one at a time; the first finds the session by listing.
    for i in 1..8 {
        let mut args = vec!["join"];
        args.extend(node);
        if i > 1 {
            args.extend(["--session", &session]);
        }
        if i == 2 {
            // The same punch server, named explicitly: exercises the override.
            args.extend(["--punch", &punch_addr]);
        }
        let mut p = Proc::peer(&format!("peer{i}"), &args)?;
        let joined = p.wait("joined", LINE_TIMEOUT, |v| v["event"] == "joined")?;
        ensure!(joined["session"] == session.as_str(), "{joined}");
        ensure!(joined["host"] == ids[0].as_str(), "{joined}");
        let members = joined["members"].as_array().context("members")?;
        ensure!(members.len() == i + 1, "peer{i} joined with {members:?}");
        ids.push(str_of(&joined, "peer")?);
        peers.push(p);
    }
    let last = peers[7].wait("joined", LINE_TIMEOUT, |v| v["event"] == "joined")?;
    let mut members: Vec<&str> = last["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    members.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    ensure!(
        members == want,
        "last joiner's members {members:?}, want {want:?}"
    );
    for (j, p) in peers.iter_mut().enumerate() {
        for later in &ids[j + 1..] {
            p.wait_event("member_joined", "peer", later, LINE_TIMEOUT)?;
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["list", "--master", &master_url, "--game", GAME])
        .output()?;
    ensure!(out.status.success(), "peer list failed");
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(rows.len() == 1, "peer list: {rows:?}");
    ensure!(
        rows[0]["id"] == session.as_str() && rows[0]["host"] == ids[0].as_str(),
        "{rows:?}"
    );
    // A join of an unknown session fails with the join error's kind and status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["join", "--session", "00000000-0000-0000-0000-000000000000"])
        .args(node)
        .stdin(Stdio::null())
        .output()?;
    let line: Value = serde_json::from_slice(&out.stdout).context("join error line")?;
    ensure!(
        !out.status.success() && line["event"] == "error" && line["kind"] == "not_found",
        "join of an unknown session: {line}"
    );
    eprintln!("full mesh of 8 after {:?}", started.elapsed());

    // 3. One message to all.
    peers[3].send_line("hello from peer3")?;
    for (j, p) in peers.iter_mut().enumerate().filter(|(j, _)| *j != 3) {
        let m = p.wait_event("message", "text", "hello from peer3", LINE_TIMEOUT)?;
        ensure!(
            m["from"] == ids[3].as_str() && m["reliable"] == true,
            "peer{j}: {m}"
        );
    }

    // 4. Kill the host; the second peer to join takes over.
    let mut dead = peers.remove(0);
    dead.child.kill()?;
    dead.child.wait()?;
    let killed_at = Instant::now();
    let new_host = ids[1].clone();
    let migrated_by = killed_at + MIGRATION_TIMEOUT;
    for p in &mut peers {
        let left = migrated_by.saturating_duration_since(Instant::now());
        let changed = p.wait("host_changed", left, |v| v["event"] == "host_changed")?;
        ensure!(
            changed["host"] == new_host.as_str(),
            "{}: {changed}",
            p.name
        );
        ensure!(changed["old"] == ids[0].as_str(), "{}: {changed}", p.name);
        let left = migrated_by.saturating_duration_since(Instant::now());
        p.wait_event("member_left", "peer", &ids[0], left)?;
    }
    peers[0].wait("listing", LINE_TIMEOUT, |v| v["event"] == "listing")?;
    eprintln!("migrated {:?} after the kill", killed_at.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = get_session(&master_addr, &session)?;
        if row["players"] == 7 && row["connect"]["peer"] == new_host.as_str() {
            break;
        }
        ensure!(Instant::now() < deadline, "listing not taken over: {row}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 5. A new joiner finds the new host through the listing.
    let mut args = vec!["join", "--session", &session];
    args.extend(node);
    let mut late = Proc::peer("peer8", &args)?;
    let joined = late.wait("joined", LINE_TIMEOUT, |v| v["event"] == "joined")?;
    ensure!(joined["host"] == new_host.as_str(), "{joined}");
    ensure!(
        joined["members"].as_array().map(Vec::len) == Some(8),
        "{joined}"
    );
    let late_id = str_of(&joined, "peer")?;
    for p in &mut peers {
        p.wait_event("member_joined", "peer", &late_id, LINE_TIMEOUT)?;
    }
    peers.push(late);

    // 6. EOF on every stdin: each leaves and exits 0.
    for p in &mut peers {
        p.close_stdin();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for p in &mut peers {
        p.wait_exit_ok(deadline)?;
    }
    eprintln!("test done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn sigterm_makes_host_leave_and_exit_0() -> Result<()> {
    let servers = Servers::start(Stdio::inherit)?;
    let args = [
        "host",
        "--punch",
        &servers.punch_addr,
        "--name",
        "signal",
        "--no-upnp",
        "--bind",
        "127.0.0.1:0",
        "--master",
        &servers.master_url,
        "--game",
        GAME,
    ];
    // stdin stays open: the leave comes from the signal, not from EOF.
    let mut host = Proc::peer("host", &args)?;
    let listed = host.wait("listed", LINE_TIMEOUT, |v| v["event"] == "listed")?;
    let session = str_of(&listed, "session")?;
    get_session(&servers.master_addr, &session)?;
    let status = Command::new("kill")
        .args(["-TERM", &host.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let sent = Instant::now();
    let left = host.wait("left", LINE_TIMEOUT, |v| v["event"] == "left")?;
    ensure!(left["signal"] == "SIGTERM", "{left}");
    ensure!(
        host.seen.iter().any(|v| v["event"] == "stopping"),
        "no stopping line: {:?}",
        host.seen
    );
    // Generous bound for a busy machine; `Session::leave` waits at most a few seconds.
    host.wait_exit_ok(sent + Duration::from_secs(8))?;
    eprintln!("host exited {:?} after SIGTERM", sent.elapsed());
    // Left as `Session::leave` does: the last member delisted the session.
    let (status, _) = get(&servers.master_addr, &session)?;
    ensure!(
        status.starts_with("HTTP/1.1 404"),
        "session still listed after the host left: {status}"
    );
    Ok(())
}
