//! Loopback tests of the real binaries: `punch-server` on 127.0.0.1 and `peer listen` /
//! `peer dial` / `peer doctor --punch` reaching each other through it (no NAT, so every
//! pair connects; the NAT cases are in `natlab_punch.rs`).
//!
//! Flow: start the server with a key file in a temp dir and read its listening line (id,
//! address); start a listener and read its `registered` line; run dials and check their
//! JSON lines and exit codes. Every wait has a timeout; processes are killed on drop.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{event, json_lines, punch_server_bin};
use serde_json::Value;

/// The `peer` binary under test.
fn peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_peer"))
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn next_json(&mut self, timeout: Duration) -> Result<Value> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .context("no JSON line in time")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Server {
    proc: Proc,
    dir: tempfile::TempDir,
    id: String,
    addr: String,
}

impl Server {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (proc, id, addr) = Self::spawn(&dir, "127.0.0.1:0")?;
        Ok(Self {
            proc,
            dir,
            id,
            addr,
        })
    }

    /// Starts the binary with the key file in `dir`; returns it, its id and address.
    fn spawn(dir: &tempfile::TempDir, listen: &str) -> Result<(Proc, String, String)> {
        let key = dir.path().join("punch.key");
        let mut proc = Proc::spawn(
            &punch_server_bin()?,
            &["--listen", listen, "--key-file", &key.to_string_lossy()],
        )?;
        let v = proc.next_json(Duration::from_secs(15))?;
        anyhow::ensure!(v["event"] == "listening", "first line {v}");
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let addr = v["addr"].as_str().unwrap_or_default().to_string();
        Ok((proc, id, addr))
    }

    /// Stops the server with SIGTERM (it closes every connection) and waits for it.
    fn stop(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.proc.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.proc.child.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the server again on the same address with the same key.
    fn restart(&mut self) -> Result<()> {
        let (proc, id, addr) = Self::spawn(&self.dir, &self.addr)?;
        anyhow::ensure!(id == self.id && addr == self.addr, "{id}@{addr}");
        self.proc = proc;
        Ok(())
    }

    fn punch(&self) -> String {
        format!("{}@{}", self.id, self.addr)
    }
}

fn listen(punch: &str, extra: &[&str]) -> Result<(Proc, String)> {
    listen_bound(punch, Some("127.0.0.1:0"), extra)
}

/// `peer listen` bound at `bind` (`None`: the default socket).
fn listen_bound(punch: &str, bind: Option<&str>, extra: &[&str]) -> Result<(Proc, String)> {
    let mut args = vec!["listen", "--punch", punch, "--no-upnp"];
    if let Some(bind) = bind {
        args.extend(["--bind", bind]);
    }
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&peer_bin(), &args)?;
    let connecting = proc.next_json(Duration::from_secs(5))?;
    anyhow::ensure!(
        connecting["event"] == "connecting" && connecting["punch"] == punch,
        "listener's first line: {connecting}"
    );
    let reg = proc.next_json(Duration::from_secs(15))?;
    anyhow::ensure!(reg["event"] == "registered", "listener: {reg}");
    let peer = reg["peer"].as_str().unwrap_or_default().to_string();
    Ok((proc, peer))
}

/// Runs `peer` to completion (bounded) and returns its JSON lines and success.
fn run_peer(args: &[&str]) -> Result<(Vec<Value>, bool)> {
    let (lines, status, _) = run_peer_with(args, &[])?;
    Ok((lines, status.success()))
}

/// Runs `peer` with extra environment variables to completion (bounded); returns its JSON
/// lines, exit status and run time.
fn run_peer_with(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Vec<Value>, ExitStatus, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(peer_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let deadline = started + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("peer {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    let lines = json_lines(&out);
    eprintln!("peer {args:?} ({took:?}): {lines:?}");
    Ok((lines, status, took))
}

fn dial(punch: &str, peer: &str, extra: &[&str]) -> Result<(Vec<Value>, bool)> {
    dial_bound(punch, Some("127.0.0.1:0"), peer, extra)
}

/// `peer dial` bound at `bind` (`None`: the default socket).
fn dial_bound(
    punch: &str,
    bind: Option<&str>,
    peer: &str,
    extra: &[&str],
) -> Result<(Vec<Value>, bool)> {
    let mut args = vec!["dial", "--punch", punch, "--no-upnp"];
    if let Some(bind) = bind {
        args.extend(["--bind", bind]);
    }
    args.push(peer);
    args.extend_from_slice(extra);
    run_peer(&args)
}

/// With its default socket (dual-stack `[::]:0`), `peer` works against a punch server named
/// by an IPv4 and by an IPv6 address, and the direct path is of the server's family (on
/// loopback both peers are on this machine, so no other address is offered).
#[test]
fn default_socket_works_with_punch_servers_of_both_families() -> Result<()> {
    for (listen_at, prefix) in [("127.0.0.1:0", "127.0.0.1:"), ("[::1]:0", "[::1]:")] {
        let dir = tempfile::tempdir()?;
        let (_server, id, addr) = Server::spawn(&dir, listen_at)?;
        let punch = format!("{id}@{addr}");
        let (mut listener, peer) = listen_bound(&punch, None, &[])?;
        let (lines, ok) = dial_bound(&punch, None, &peer, &["--bytes", "65536"])?;
        let connected = event(&lines, "connected").context("no connected line")?;
        assert_eq!(connected["path"], "direct", "{listen_at}: {connected}");
        let remote = connected["remote"].as_str().unwrap_or_default();
        assert!(remote.starts_with(prefix), "{listen_at}: remote {remote}");
        assert_eq!(event(&lines, "echo_ok").context("no echo")?["bytes"], 65536);
        assert!(ok, "{listen_at}: dial exited non-zero: {lines:?}");
        let seen = listener.next_json(Duration::from_secs(5))?;
        assert_eq!(seen["event"], "connected", "{listen_at}: {seen}");
    }
    Ok(())
}

/// A punch server given the IPv6 wildcard listens on both families: a listener registered
/// over IPv4 and a dialer registered over IPv6 meet through it and connect.
#[test]
fn a_punch_server_on_the_ipv6_wildcard_serves_both_families() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, id, addr) = Server::spawn(&dir, "[::]:0")?;
    let port = addr.rsplit(':').next().unwrap_or_default();
    let over_v4 = format!("{id}@127.0.0.1:{port}");
    let over_v6 = format!("{id}@[::1]:{port}");
    let (mut listener, peer) = listen_bound(&over_v4, None, &[])?;
    let (lines, ok) = dial_bound(&over_v6, None, &peer, &["--bytes", "65536"])?;
    let connected = event(&lines, "connected").context("no connected line")?;
    assert_eq!(connected["path"], "direct", "{connected}");
    assert_eq!(event(&lines, "echo_ok").context("no echo")?["bytes"], 65536);
    assert!(ok, "dial exited non-zero: {lines:?}");
    let seen = listener.next_json(Duration::from_secs(5))?;
    assert_eq!(seen["event"], "connected", "{seen}");
    Ok(())
}

#[test]
fn dial_connects_directly_and_echoes() -> Result<()> {
    let server = Server::start()?;
    let (mut listener, peer) = listen(&server.punch(), &[])?;
    let bytes = 4 * 1024 * 1024;
    let (lines, ok) = dial(&server.punch(), &peer, &["--bytes", &bytes.to_string()])?;
    let connected = event(&lines, "connected").context("no connected line")?;
    assert_eq!(connected["peer"], peer.as_str());
    assert_eq!(connected["path"], "direct");
    assert!(connected["remote"]
        .as_str()
        .unwrap_or_default()
        .starts_with("127.0.0.1:"));
    assert!(
        connected["ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{connected}"
    );
    let echo = event(&lines, "echo_ok").context("no echo_ok line")?;
    assert_eq!(echo["bytes"], bytes);
    assert!(echo["mbit_s"].as_f64().is_some_and(|m| m > 0.0));
    assert!(ok, "dial exited non-zero");
    // The listener saw the same connection.
    let seen = listener.next_json(Duration::from_secs(5))?;
    assert_eq!(seen["event"], "connected", "{seen}");
    assert_eq!(seen["path"], "direct");
    Ok(())
}

#[test]
fn dial_errors_are_typed() -> Result<()> {
    let server = Server::start()?;
    // Unknown target: a well-formed id nobody registered.
    let nobody = mesh::identity::Identity::generate()?.peer_id().to_string();
    let (lines, ok) = dial(&server.punch(), &nobody, &[])?;
    assert!(!ok);
    assert_eq!(
        event(&lines, "error").context("no error")?["kind"],
        "unknown_target"
    );
    // Refused.
    let (_refuser, peer) = listen(&server.punch(), &["--refuse"])?;
    let (lines, ok) = dial(&server.punch(), &peer, &[])?;
    assert!(!ok);
    assert_eq!(
        event(&lines, "error").context("no error")?["kind"],
        "refused"
    );
    // A server that is not the one named: its key does not match.
    let other = mesh::identity::Identity::generate()?.peer_id();
    let wrong = format!("{other}@{}", server.addr);
    let (lines, ok) = dial(&wrong, &peer, &[])?;
    assert!(!ok);
    assert_eq!(
        event(&lines, "error").context("no error")?["kind"],
        "identity_mismatch"
    );
    // A bare HOST:PORT needs --insecure.
    let (lines, ok) = dial(&server.addr, &peer, &[])?;
    assert!(!ok);
    assert_eq!(
        event(&lines, "error").context("no error")?["kind"],
        "address"
    );
    Ok(())
}

#[test]
fn insecure_mode_reaches_a_bare_address() -> Result<()> {
    let server = Server::start()?;
    let (_listener, peer) = listen(&server.addr, &["--insecure"])?;
    let (lines, ok) = dial(&server.addr, &peer, &["--insecure"])?;
    assert!(ok, "{lines:?}");
    assert!(event(&lines, "echo_ok").is_some());
    Ok(())
}

#[test]
fn doctor_reports_registration_and_rtt() -> Result<()> {
    let server = Server::start()?;
    let (lines, ok) = run_peer(&[
        "doctor",
        "--punch",
        &server.punch(),
        "--no-upnp",
        "--bind",
        "127.0.0.1:0",
        "--timeout-ms",
        "500",
    ])?;
    assert!(ok, "{lines:?}");
    let d = event(&lines, "doctor").context("no doctor line")?;
    assert!(d["registered_as"]
        .as_str()
        .unwrap_or_default()
        .starts_with("127.0.0.1:"));
    assert!(d["punch_rtt_ms"].as_f64().is_some());
    assert_eq!(d["upnp"]["state"], "off");
    // No alternate address on this server (no OTHER-ADDRESS): the behaviour test stops
    // after the first binding and says why; no behaviour is reported.
    assert_eq!(d["nat_error"]["kind"], "no_other_address", "{d}");
    assert!(
        d.get("mapping").is_none() && d.get("nat_type").is_none(),
        "{d}"
    );
    assert!(d.get("register_error").is_none(), "{d}");
    Ok(())
}

#[test]
fn doctor_keeps_its_nat_findings_when_registration_fails() -> Result<()> {
    let server = Server::start()?;
    // A server that is not the one named: registration fails on its key, after the
    // behaviour test ran against its STUN port.
    let other = mesh::identity::Identity::generate()?.peer_id();
    let wrong = format!("{other}@{}", server.addr);
    let (lines, ok) = run_peer(&[
        "doctor",
        "--punch",
        &wrong,
        "--no-upnp",
        "--bind",
        "127.0.0.1:0",
        "--timeout-ms",
        "500",
    ])?;
    assert!(!ok, "doctor exited 0 without registering: {lines:?}");
    assert!(event(&lines, "error").is_none(), "{lines:?}");
    let d = event(&lines, "doctor").context("no doctor line")?;
    assert_eq!(d["punch"], wrong.as_str());
    assert_eq!(d["register_error"]["kind"], "identity_mismatch", "{d}");
    assert!(
        !d["register_error"]["detail"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{d}"
    );
    assert_eq!(d["nat_error"]["kind"], "no_other_address", "{d}");
    assert!(
        d.get("registered_as").is_none() && d.get("punch_rtt_ms").is_none(),
        "{d}"
    );
    Ok(())
}

/// Reads `proc`'s lines until one has `event` == `name` (bounded).
fn wait_event(proc: &mut Proc, name: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = proc
            .next_json(left)
            .with_context(|| format!("waiting for {name}"))?;
        if v["event"] == name {
            return Ok(v);
        }
    }
}

#[test]
fn listener_reregisters_after_the_punch_server_restarts() -> Result<()> {
    let mut server = Server::start()?;
    let (mut listener, peer) = listen(&server.punch(), &[])?;
    server.stop()?;
    // The server closed with its shutdown code: the listener says so at once...
    let lost = wait_event(&mut listener, "control_lost", Duration::from_secs(5))?;
    assert!(
        lost["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{lost}"
    );
    // ...and dials the server again by itself once it is back (with backoff).
    std::thread::sleep(Duration::from_secs(1));
    server.restart()?;
    // Registered anew, it is reachable again.
    let again = wait_event(&mut listener, "registered", Duration::from_secs(40))?;
    assert_eq!(again["peer"], peer.as_str());
    let (lines, ok) = dial(&server.punch(), &peer, &[])?;
    assert!(ok, "{lines:?}");
    assert!(event(&lines, "echo_ok").is_some());
    Ok(())
}

#[test]
fn a_superseded_listener_stays_offline() -> Result<()> {
    let server = Server::start()?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("peer.key");
    let key = key.to_string_lossy();
    let (mut first, peer) = listen(&server.punch(), &["--key-file", &key])?;
    // A second node with the same key takes the registration over.
    let (_second, same) = listen(&server.punch(), &["--key-file", &key])?;
    assert_eq!(same, peer);
    let lost = wait_event(&mut first, "control_lost", Duration::from_secs(5))?;
    assert!(
        lost["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("superseded"),
        "{lost}"
    );
    // The first does not fight back (no ping-pong of registrations): it prints nothing
    // more, and dials reach the second.
    assert!(first.next_json(Duration::from_secs(3)).is_err());
    // ...and it is still running: superseded, not crashed.
    assert!(
        first.child.try_wait()?.is_none(),
        "the superseded listener exited"
    );
    let (lines, ok) = dial(&server.punch(), &peer, &[])?;
    assert!(ok, "{lines:?}");
    Ok(())
}

/// Sends `signal` (`INT`, `TERM`) to `proc` by its pid.
fn send_signal(proc: &Proc, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &proc.child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} failed");
    Ok(())
}

/// Waits at most `limit` for `proc` to exit; returns its status and how long it took.
fn wait_exit(proc: &mut Proc, limit: Duration) -> Result<(ExitStatus, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(status) = proc.child.try_wait()? {
            return Ok((status, started.elapsed()));
        }
        anyhow::ensure!(started.elapsed() < limit, "no exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_and_sigterm_stop_listen_gracefully() -> Result<()> {
    let server = Server::start()?;
    for signal in ["INT", "TERM"] {
        let (mut listener, peer) = listen(&server.punch(), &[])?;
        send_signal(&listener, signal)?;
        let (status, took) = wait_exit(&mut listener, Duration::from_secs(10))?;
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
        // Generous bound for a busy machine; it takes a few milliseconds.
        assert!(
            took < Duration::from_secs(5),
            "SIG{signal}: exit after {took:?}"
        );
        let stopping = listener.next_json(Duration::from_secs(1))?;
        assert_eq!(stopping["event"], "stopping", "{stopping}");
        assert_eq!(stopping["signal"], format!("SIG{signal}"));
        let stopped = listener.next_json(Duration::from_secs(1))?;
        assert_eq!(stopped["event"], "stopped", "{stopped}");
        // The control connection was closed with a close code, not abandoned: the punch
        // server dropped the registration at once.
        let (lines, ok) = dial(&server.punch(), &peer, &[])?;
        assert!(!ok, "{lines:?}");
        assert_eq!(
            event(&lines, "error").context("no error")?["kind"],
            "unknown_target"
        );
    }
    Ok(())
}

/// One `peer` run against a punch server that never answers.
struct UnreachableRun<'a> {
    args: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    /// The `timeout_ms` the `connecting` line must show.
    timeout_ms: u64,
    /// Bound on the run time (generous for a busy machine).
    bound: Duration,
}

impl UnreachableRun<'_> {
    /// Runs it and checks: `connecting`, then `error {kind: "unreachable"}`, exit 1, in time.
    fn check(&self) -> Result<()> {
        let mut args = self.args.clone();
        args.extend(["--no-upnp", "--bind", "127.0.0.1:0"]);
        let (lines, status, took) = run_peer_with(&args, &self.env)?;
        anyhow::ensure!(lines.len() == 2, "{args:?}: {lines:?}");
        let (connecting, error) = (&lines[0], &lines[1]);
        anyhow::ensure!(
            connecting["event"] == "connecting"
                && connecting["punch"] == args[2]
                && connecting["timeout_ms"] == self.timeout_ms,
            "{args:?}: first line {connecting}"
        );
        anyhow::ensure!(
            error["event"] == "error" && error["kind"] == "unreachable",
            "{args:?}: {error}"
        );
        anyhow::ensure!(status.code() == Some(1), "{args:?}: {status}");
        anyhow::ensure!(took < self.bound, "{args:?}: took {took:?}");
        Ok(())
    }
}

#[test]
fn an_unreachable_punch_server_is_reported_within_the_connect_timeout() -> Result<()> {
    // A closed port (bound, then released) and a silent one (bound here, never read).
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let server_id = mesh::identity::Identity::generate()?.peer_id();
    let closed = format!("{server_id}@{closed}");
    let silent = format!("{server_id}@{}", silent.local_addr()?);
    let target = mesh::identity::Identity::generate()?.peer_id().to_string();
    let default = |args| UnreachableRun {
        args,
        env: vec![],
        timeout_ms: 10_000,
        bound: Duration::from_secs(13),
    };
    let short = |args, env| UnreachableRun {
        args,
        env,
        timeout_ms: 2_000,
        bound: Duration::from_secs(5),
    };
    let runs = [
        // The default: 10 s.
        default(vec!["listen", "--punch", &closed]),
        default(vec!["doctor", "--punch", &silent]),
        // Configured by flag or environment.
        short(
            vec!["listen", "--punch", &silent, "--connect-timeout-ms", "2000"],
            vec![],
        ),
        short(
            vec!["dial", "--punch", &silent, &target],
            vec![("PEER_CONNECT_TIMEOUT_MS", "2000")],
        ),
        short(
            vec!["doctor", "--punch", &closed, "--connect-timeout-ms", "2000"],
            vec![],
        ),
    ];
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = runs.iter().map(|r| scope.spawn(|| r.check())).collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("run panicked"))??;
        }
        Ok(())
    })
}
