//! Parking on loopback with the real binaries: a `peer listen` whose control connection
//! the punch server parks (after 1 s idle, keep-alives every second) stays registered on
//! keep-alives alone, and a `peer dial` still reaches it: the server wakes it, it dials
//! back, the held request is delivered and the echo runs.
//!
//! Flow: start `punch-server` with `--park-after-secs 1 --park-keepalive-secs 1` and
//! `/metrics`; start a listener; wait (bounded) for `punch_coord_peers_parked 1`; let
//! several keep-alive intervals pass and check they were accepted and nothing expired;
//! dial it with an echo; check the server's wake and unpark counters; then compare the
//! dial time with a dial to a listener that is connected (a server with parking off),
//! and print both (figures, not asserted: a busy machine varies). A second test kills
//! and restarts the server while the listener is parked: the listener registers again
//! (the new server refuses its keep-alives), is parked again and can be dialed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::loopback::{listening, str_of, Proc};
use common::punch_server_bin;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The punch server with short parking times and `/metrics`.
struct ParkServer {
    proc: Proc,
    punch: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl ParkServer {
    /// `park_after`: the `--park-after-secs` value (`0`: never park).
    fn start(park_after: &str) -> Result<Self> {
        Self::start_in(tempfile::tempdir()?, "127.0.0.1:0", park_after)
    }

    /// The server with its key in `dir`, listening on `listen`.
    fn start_in(dir: tempfile::TempDir, listen: &str, park_after: &str) -> Result<Self> {
        let key = dir.path().join("punch.key");
        let mut proc = Proc::spawn(
            "punch",
            &punch_server_bin()?,
            &[
                "--listen",
                listen,
                "--metrics-listen",
                "127.0.0.1:0",
                "--key-file",
                &key.to_string_lossy(),
                "--park-after-secs",
                park_after,
                "--park-keepalive-secs",
                "1",
            ],
        )?;
        let line = listening(&mut proc)?;
        Ok(Self {
            punch: format!("{}@{}", str_of(&line, "id")?, str_of(&line, "addr")?),
            metrics: str_of(&line, "metrics_addr")?,
            proc,
            _dir: dir,
        })
    }

    /// Kills the server (no goodbye to anyone) and starts it again on the same address
    /// with the same key.
    fn restart(self) -> Result<Self> {
        let Self {
            mut proc,
            punch,
            _dir: dir,
            ..
        } = self;
        proc.child.kill()?;
        proc.child.wait()?;
        let addr = punch
            .split_once('@')
            .context("punch address")?
            .1
            .to_string();
        let again = Self::start_in(dir, &addr, "1")?;
        ensure!(again.punch == punch, "{} after restart", again.punch);
        Ok(again)
    }

    /// The value of the metric `name` on `/metrics`.
    fn metric(&self, name: &str) -> Result<u64> {
        let mut s = TcpStream::connect(&self.metrics)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut page = String::new();
        s.read_to_string(&mut page)?;
        let line = page
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .with_context(|| format!("{name} on /metrics"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    }

    /// Waits (bounded) until `name` is at least `min`.
    fn wait_metric(&self, name: &str, min: u64) -> Result<u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name)?;
            if v >= min {
                return Ok(v);
            }
            ensure!(Instant::now() < deadline, "{name} = {v}, wanted {min}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn listen(server: &ParkServer, name: &str) -> Result<(Proc, String)> {
    let mut proc = Proc::peer(
        name,
        &[
            "listen",
            "--punch",
            &server.punch,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
        ],
    )?;
    let reg = proc.wait("registered", WAIT, |v| v["event"] == "registered")?;
    Ok((proc, str_of(&reg, "peer")?))
}

/// Dials `peer` with an echo of `bytes`; the `connected` line.
fn dial(server: &ParkServer, peer: &str, bytes: usize) -> Result<Value> {
    let bytes = bytes.to_string();
    let mut proc = Proc::peer(
        "dial",
        &[
            "dial",
            "--punch",
            &server.punch,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
            "--bytes",
            &bytes,
            peer,
        ],
    )?;
    let connected = proc.wait("connected", WAIT, |v| v["event"] == "connected")?;
    proc.wait("echo_ok", WAIT, |v| v["event"] == "echo_ok")?;
    proc.wait_exit_ok(Instant::now() + WAIT)?;
    Ok(connected)
}

#[test]
fn a_parked_listener_keeps_its_registration_and_is_woken_by_a_dial() -> Result<()> {
    let server = ParkServer::start("1")?;
    let (mut listener, peer) = listen(&server, "listen")?;
    server.wait_metric("punch_coord_peers_parked", 1)?;
    assert_eq!(server.metric("punch_coord_peers_connected")?, 0);
    assert_eq!(server.metric("punch_coord_peers_registered")?, 1);
    // Three intervals would drop it: five pass on keep-alives alone.
    std::thread::sleep(Duration::from_secs(5));
    assert!(server.metric("punch_coord_keepalives_total")? >= 3);
    assert_eq!(server.metric("punch_coord_park_expired_total")?, 0);
    assert_eq!(server.metric("punch_coord_peers_parked")?, 1);
    assert_eq!(server.metric("punch_coord_keepalives_refused_total")?, 0);

    let retries = server.metric("punch_coord_retries_sent_total")?;
    let connected = dial(&server, &peer, 64 * 1024)?;
    assert_eq!(connected["peer"], peer.as_str());
    // The woken listener comes back with the address-validation token (NEW_TOKEN) of its
    // first connection: no Retry round trip; only the new dialer is asked for one.
    let retries_after = server.metric("punch_coord_retries_sent_total")?;
    assert_eq!(
        retries_after,
        retries + 1,
        "only the dialer is asked for a Retry"
    );
    assert_eq!(connected["path"], "direct");
    let parked_ms = connected["ms"].as_f64().context("ms")?;
    assert!(server.metric("punch_coord_wakes_sent_total")? >= 1);
    assert!(server.metric("punch_coord_unparked_total")? >= 1);
    listener.wait("connected", WAIT, |v| v["event"] == "connected")?;
    // It goes back to sleep once idle again.
    server.wait_metric("punch_coord_parked_total", 2)?;

    // The same dial to a listener that stays connected (a server that never parks).
    let unparking = ParkServer::start("0")?;
    let (_connected, connected_peer) = listen(&unparking, "connected")?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(unparking.metric("punch_coord_peers_parked")?, 0);
    let connected = dial(&unparking, &connected_peer, 64 * 1024)?;
    let connected_ms = connected["ms"].as_f64().context("ms")?;
    eprintln!(
        "dial to a parked listener: {parked_ms:.1} ms; to a connected one: {connected_ms:.1} ms \
         (added by the wake-up: {:.1} ms)",
        parked_ms - connected_ms
    );
    drop(server.proc);
    Ok(())
}

#[test]
fn a_parked_listener_registers_again_after_the_server_restarts() -> Result<()> {
    let server = ParkServer::start("1")?;
    let (mut listener, peer) = listen(&server, "listen")?;
    server.wait_metric("punch_coord_peers_parked", 1)?;
    // The new server does not know the listener: its next keep-alive gets a 401 (or, if
    // the restart took longer than its retransmissions, no answer), and it dials and
    // registers again.
    let server = server.restart()?;
    next_registered(&mut listener)?;
    eprintln!(
        "keep-alives refused by the new server: {}",
        server.metric("punch_coord_keepalives_refused_total")?
    );
    server.wait_metric("punch_coord_peers_parked", 1)?;
    let connected = dial(&server, &peer, 1024)?;
    assert_eq!(connected["peer"], peer.as_str());
    Ok(())
}

/// Waits (bounded) for the next `registered` line of `listener` (not one seen before).
fn next_registered(listener: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = listener
            .next(left)
            .context("no new registered line in time")?;
        if line["event"] == "registered" {
            return Ok(());
        }
    }
}

#[test]
fn a_parked_listener_that_stops_is_forgotten_at_once() -> Result<()> {
    let server = ParkServer::start("1")?;
    let (listener, peer) = listen(&server, "listen")?;
    server.wait_metric("punch_coord_peers_parked", 1)?;
    // SIGTERM: the listener's graceful exit sends the server a signed leave.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &listener.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    server.wait_metric("punch_coord_park_left_total", 1)?;
    assert_eq!(server.metric("punch_coord_peers_registered")?, 0);
    // A dial fails at once as for any unknown peer, instead of waiting for a wake-up.
    let mut dialer = Proc::peer(
        "dial",
        &[
            "dial",
            "--punch",
            &server.punch,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
            &peer,
        ],
    )?;
    let deadline = Instant::now() + WAIT;
    let error = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = dialer.next(left).context("no error line in time")?;
        if line["event"] == "error" {
            break line;
        }
    };
    assert_eq!(error["kind"], "unknown_target", "{error}");
    drop(listener);
    Ok(())
}
