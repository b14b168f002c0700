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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{master_server_bin, punch_server_bin};
use serde_json::Value;

/// Longest wait for one expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the members to agree on a new host after the old one died
/// (3 s detection + the election).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The game of the test's sessions.
const GAME: &str = "loopback-session";

/// A child process: stdin piped, stdout JSON lines kept in order; killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every JSON line read so far.
    seen: Vec<Value>,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
        })
    }

    fn peer(name: &str, args: &[&str]) -> Result<Self> {
        Self::spawn(name, Path::new(env!("CARGO_BIN_EXE_peer")), args)
    }

    /// The first line (seen before or arriving within `timeout`) that `pred` accepts.
    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!(
                    "{}: no {what} within {timeout:?}; saw {:?}",
                    self.name,
                    self.seen
                ),
            };
            eprintln!("{}: {line}", self.name);
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            self.seen.push(v.clone());
            ensure!(
                v["event"] != "error" && v["event"] != "ended",
                "{}: unexpected {v} while waiting for {what}",
                self.name
            );
            if pred(&v) {
                return Ok(v);
            }
        }
    }

    /// The first line with `event` == `name` whose `key` is `value`.
    fn wait_event(
        &mut self,
        name: &str,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let what = format!("{name} with {key}={value}");
        self.wait(&what, timeout, |v| v["event"] == name && v[key] == value)
    }

    fn send_line(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits until the process exits (after its stdin was closed) and checks status 0.
    fn wait_exit_ok(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "{} exited with {status}", self.name);
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not exit after EOF",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first JSON line of a server process, which must be `listening`.
fn listening(proc: &mut Proc) -> Result<Value> {
    proc.wait("listening", LINE_TIMEOUT, |v| v["event"] == "listening")
}

fn str_of(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no string {key} in {v}"))
}

/// `GET /v1/sessions/{id}` on the master server, over a plain HTTP/1.1 connection: the
/// status line and the body.
fn get(master: &str, id: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(master)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /v1/sessions/{id} HTTP/1.1\r\nHost: {master}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// The session row `id` (which must exist).
fn get_session(master: &str, id: &str) -> Result<Value> {
    let (status, body) = get(master, id)?;
    ensure!(
        status.starts_with("HTTP/1.1 200"),
        "GET /v1/sessions/{id}: {status}"
    );
    serde_json::from_str(&body).with_context(|| format!("body {body:?}"))
}

/// Both servers on loopback (the master server on SQLite in `dir`): the processes, the
/// master server's URL and the punch server's `ID@HOST:PORT`.
fn start_servers(dir: &Path) -> Result<(Proc, String, Proc, String)> {
    let db = format!("sqlite:{}", dir.join("master.db").display());
    let mut master = Proc::spawn(
        "master",
        &master_server_bin()?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--rate-limit",
            "0",
        ],
    )?;
    let master_addr = str_of(&listening(&mut master)?, "addr")?;
    let key = dir.join("punch.key");
    let mut punch = Proc::spawn(
        "punch",
        &punch_server_bin()?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            &key.to_string_lossy(),
        ],
    )?;
    let line = listening(&mut punch)?;
    let punch_addr = format!("{}@{}", str_of(&line, "id")?, str_of(&line, "addr")?);
    Ok((master, format!("http://{master_addr}"), punch, punch_addr))
}

#[test]
fn eight_peers_full_mesh_host_migration_and_rejoin() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let (_master, master_url, _punch, punch_addr) = start_servers(dir.path())?;
    let master_addr = master_url.trim_start_matches("http://").to_string();
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
        p.stdin = None;
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
    let dir = tempfile::tempdir()?;
    let (_master, master_url, _punch, punch_addr) = start_servers(dir.path())?;
    let master_addr = master_url.trim_start_matches("http://").to_string();
    let args = [
        "host",
        "--punch",
        &punch_addr,
        "--name",
        "signal",
        "--no-upnp",
        "--bind",
        "127.0.0.1:0",
        "--master",
        &master_url,
        "--game",
        GAME,
    ];
    // stdin stays open: the leave comes from the signal, not from EOF.
    let mut host = Proc::peer("host", &args)?;
    let listed = host.wait("listed", LINE_TIMEOUT, |v| v["event"] == "listed")?;
    let session = str_of(&listed, "session")?;
    get_session(&master_addr, &session)?;
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
    let (status, _) = get(&master_addr, &session)?;
    ensure!(
        status.starts_with("HTTP/1.1 404"),
        "session still listed after the host left: {status}"
    );
    Ok(())
}
