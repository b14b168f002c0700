//! Loopback test of the relay offer with the real binaries: a `proxy` (TURN relay) and a
//! `punch-server` started with `--turn-uri` and `--turn-secret`, and `peer doctor`, which
//! registers, receives the relay credentials and allocates (then frees) on each relay.
//!
//! Flow: start the proxy (`--allow-loopback-peers`, `--auth-secret`) and read its
//! listening line; start a punch server pointing at it; run `peer doctor` and check the
//! `relays` of its line. With the punch server holding another secret than the proxy, the
//! credentials are refused with 401; a relay that never answers is reported as such after
//! `--relay-timeout-ms`. A `peer listen` node allocates on the offered relay from its own
//! socket and keeps it (`relayed` line, the proxy's live-allocation gauge), and releases
//! it when stopped with SIGTERM. Every wait has a timeout; processes are killed on
//! drop. Traffic stays on 127.0.0.1.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use common::loopback::{start_punch, str_of, Proc};
use common::relay::{start_proxy_line, SECRET};
use serde_json::Value;

const TTL_SECS: u64 = 600;

/// A proxy and a punch server offering it with `punch_secret` (killed on drop).
struct Relayed {
    _proxy: Proc,
    _punch: Proc,
    proxy_addr: String,
    proxy_metrics: String,
    punch_addr: String,
    _dir: tempfile::TempDir,
}

impl Relayed {
    fn start(punch_secret: &str) -> Result<Self> {
        Self::start_with(punch_secret, None)
    }

    /// [`Relayed::start`], the punch server offering `relay` instead of the proxy if given.
    fn start_with(punch_secret: &str, relay: Option<&str>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (proxy, line) = start_proxy_line(&["--metrics-listen", "127.0.0.1:0"])?;
        let proxy_addr = str_of(&line, "addr")?;
        let proxy_metrics = str_of(&line, "metrics_addr")?;
        let uri = format!("turn:{}", relay.unwrap_or(&proxy_addr));
        let ttl = TTL_SECS.to_string();
        let turn = [
            "--turn-uri",
            &uri,
            "--turn-secret",
            punch_secret,
            "--turn-ttl-secs",
            &ttl,
        ];
        let (punch, punch_addr) = start_punch(dir.path(), &turn, Stdio::inherit())?;
        Ok(Self {
            _proxy: proxy,
            _punch: punch,
            proxy_addr,
            proxy_metrics,
            punch_addr,
            _dir: dir,
        })
    }

    /// Starts `peer listen` on the punch server (loopback, no UPnP) with `extra` flags.
    fn listen(&self, extra: &[&str]) -> Result<Proc> {
        let mut args = vec![
            "listen",
            "--punch",
            &self.punch_addr,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Proc::peer("listener", &args)
    }

    /// Runs `peer doctor` against the punch server; returns its `doctor` line.
    fn doctor(&self) -> Result<Value> {
        self.doctor_within("5000")
    }

    /// [`Relayed::doctor`] with `--relay-timeout-ms MS`.
    fn doctor_within(&self, relay_timeout_ms: &str) -> Result<Value> {
        let mut peer = Proc::peer(
            "doctor",
            &[
                "doctor",
                "--punch",
                &self.punch_addr,
                "--no-upnp",
                "--bind",
                "127.0.0.1:0",
                "--timeout-ms",
                "500",
                "--relay-timeout-ms",
                relay_timeout_ms,
            ],
        )?;
        let line = peer.wait("doctor line", Duration::from_secs(30), |v| {
            v["event"] == "doctor"
        })?;
        peer.wait_exit_ok(Instant::now() + Duration::from_secs(15))?;
        Ok(line)
    }
}

/// The proxy's `proxy_allocations_live` gauge.
fn live_allocations(metrics: &str) -> Result<f64> {
    metric(metrics, "proxy_allocations_live")
}

/// One unlabelled metric of the proxy's `/metrics`.
fn metric(metrics: &str, name: &str) -> Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let line = response
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
        .with_context(|| format!("no {name} in {response}"))?;
    let value = line.rsplit(' ').next().context("no value")?;
    Ok(value.parse()?)
}

/// Polls the live-allocation gauge until it is `want` (at most 5 s).
fn wait_live_allocations(metrics: &str, want: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = live_allocations(metrics)?;
        if live == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "proxy_allocations_live is {live}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_allocates_on_the_offered_relay_and_releases_it_when_stopped() -> Result<()> {
    let servers = Relayed::start(SECRET)?;
    let mut peer = servers.listen(&[])?;
    let line = peer.wait("relayed line", Duration::from_secs(15), |v| {
        v["event"] == "relayed"
    })?;
    let relays = line["relays"].as_array().context("relays")?;
    anyhow::ensure!(relays.len() == 1, "{line}");
    let relay = relays.first().context("relay")?;
    assert_eq!(
        relay["relay"],
        format!("turn:{}", servers.proxy_addr),
        "{line}"
    );
    let relayed = relay["relayed"].as_str().context("relayed")?;
    assert!(relayed.starts_with("127.0.0.1:"), "{line}");
    wait_live_allocations(&servers.proxy_metrics, 1.0)?;
    // SIGTERM: the node frees its allocation before it exits.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &peer.child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    peer.wait_exit(Instant::now() + Duration::from_secs(10))?;
    // Freed, not expired: the lifetime is 600 s, and the gauge falls within seconds.
    wait_live_allocations(&servers.proxy_metrics, 0.0)
        .context("the allocation outlived the node")?;
    Ok(())
}

#[test]
fn no_relay_keeps_a_node_off_the_offered_relay() -> Result<()> {
    let servers = Relayed::start(SECRET)?;
    let mut peer = servers.listen(&["--no-relay"])?;
    peer.wait("registered", Duration::from_secs(15), |v| {
        v["event"] == "registered"
    })?;
    // An allocation shows within milliseconds; give it a second.
    peer.drain(Duration::from_secs(1));
    anyhow::ensure!(
        !peer.seen.iter().any(|v| v["event"] == "relayed"),
        "allocated despite --no-relay: {:?}",
        peer.seen
    );
    anyhow::ensure!(live_allocations(&servers.proxy_metrics)? == 0.0);
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The one relay of a doctor line.
fn only_relay(d: &Value) -> Result<&Value> {
    let relays = d["relays"].as_array().context("no relays array")?;
    anyhow::ensure!(relays.len() == 1, "one relay expected: {d}");
    relays.first().context("no relay")
}

#[test]
fn credentials_from_the_punch_server_allocate_on_the_proxy() -> Result<()> {
    let servers = Relayed::start(SECRET)?;
    let before = unix_now();
    let d = servers.doctor()?;
    let r = only_relay(&d)?;
    assert_eq!(r["uri"], format!("turn:{}", servers.proxy_addr), "{d}");
    assert_eq!(r["allocate"], "ok", "{d}");
    let relayed = r["relayed"].as_str().context("relayed")?;
    assert!(relayed.starts_with("127.0.0.1:"), "{d}");
    assert_eq!(r["freed"], true, "{d}");
    assert!(r["ms"].as_f64().is_some(), "{d}");
    // Username `EXPIRY:PEER_ID`, the expiry the configured lifetime from now.
    let peer = d["peer"].as_str().context("peer")?;
    let expiry = r["expires_unix"].as_u64().context("expires_unix")?;
    assert_eq!(r["username"], format!("{expiry}:{peer}"), "{d}");
    let after = unix_now();
    assert!(
        (before + TTL_SECS..=after + TTL_SECS).contains(&expiry),
        "{expiry} not {TTL_SECS} s after {before}..{after}"
    );
    Ok(())
}

#[test]
fn credentials_from_another_secret_are_refused_with_401() -> Result<()> {
    let servers = Relayed::start("not-the-proxy-secret")?;
    let d = servers.doctor()?;
    let r = only_relay(&d)?;
    assert_eq!(r["allocate"], "error", "{d}");
    assert_eq!(r["code"], 401, "{d}");
    assert!(
        r["reason"].as_str().unwrap_or_default().contains("401"),
        "{d}"
    );
    Ok(())
}

#[test]
fn a_relay_that_never_answers_is_reported_within_the_timeout() -> Result<()> {
    // A UDP socket that reads nothing: the allocation gets no answer.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let silent_addr = silent.local_addr()?.to_string();
    let servers = Relayed::start_with(SECRET, Some(&silent_addr))?;
    let d = servers.doctor_within("1000")?;
    let r = only_relay(&d)?;
    assert_eq!(r["uri"], format!("turn:{silent_addr}"), "{d}");
    assert_eq!(r["allocate"], "error", "{d}");
    assert!(r.get("code").is_none(), "{d}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no answer"),
        "{d}"
    );
    Ok(())
}

/// A node on the test's punch server (loopback, no UPnP).
async fn relay_node(punch: &str) -> Result<mesh::direct::DirectNode> {
    let identity = std::sync::Arc::new(mesh::identity::Identity::generate()?);
    let mut config = mesh::direct::DirectConfig::new(punch.parse()?);
    config.bind = "127.0.0.1:0".parse()?;
    config.upnp = None;
    Ok(mesh::direct::DirectNode::start(identity, config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_talk_over_a_channel_on_the_offered_relay() -> Result<()> {
    const STEP: Duration = Duration::from_secs(10);
    let servers = Relayed::start(SECRET)?;
    let a = relay_node(&servers.punch_addr).await?;
    let b = relay_node(&servers.punch_addr).await?;
    let mut relayed = a.relayed();
    tokio::time::timeout(STEP, relayed.wait_for(|r| !r.is_empty())).await??;
    let a_relayed = relayed.borrow().first().context("relayed")?.relayed;
    // A binds a channel to B's address on its relay; B only ever sees A's relayed address.
    let b_addr = b.endpoint().local_addr()?;
    let path = a.relay_path(b_addr).await?;
    let mesh::socket::Path::Relay { server, channel } = path else {
        anyhow::bail!("not a relayed path: {path:?}");
    };
    assert_eq!(server.to_string(), servers.proxy_addr);
    assert_eq!(channel, 0x4000);
    assert_eq!(a.relay_path(b_addr).await?, path, "one channel per peer");
    let (dialed, accepted) = tokio::join!(
        tokio::time::timeout(STEP, a.endpoint().connect_via(b.peer_id(), path, None)),
        tokio::time::timeout(STEP, b.accept()),
    );
    let dialed = dialed??;
    let accepted = accepted?.context("B's endpoint closed")??;
    assert_eq!(accepted.peer.peer_id, a.peer_id());
    assert_eq!(
        accepted.remote, a_relayed,
        "B sees A at its relayed address"
    );
    // A stream each way over the relay.
    let (mut send, mut recv) = dialed.connection.open_bi().await?;
    send.write_all(b"over the relay").await?;
    send.finish()?;
    let (mut b_send, mut b_recv) =
        tokio::time::timeout(STEP, accepted.peer.connection.accept_bi()).await??;
    let got = b_recv.read_to_end(1024).await?;
    assert_eq!(got, b"over the relay");
    b_send.write_all(b"and back").await?;
    b_send.finish()?;
    assert_eq!(recv.read_to_end(1024).await?, b"and back");
    let stats = a.endpoint().stats();
    assert!(stats.relayed_rx > 0 && stats.relayed_tx > 0, "{stats:?}");
    a.shutdown().await;
    b.shutdown().await;
    // Both allocations (A's and B's own) freed at shutdown.
    let metrics = servers.proxy_metrics.clone();
    tokio::task::spawn_blocking(move || wait_live_allocations(&metrics, 0.0)).await??;
    Ok(())
}

/// A relay-only dialer reaches a listener through the proxy: both see only relayed
/// addresses (relay-to-relay, each end on its own allocation), the echo completes, and
/// the proxy handed the traffic between its two allocations.
#[test]
fn a_relay_only_dialer_connects_through_the_proxy_and_neither_end_sees_the_other() -> Result<()> {
    let servers = Relayed::start(SECRET)?;
    let mut listener = servers.listen(&[])?;
    let registered = listener.wait("registered", Duration::from_secs(15), |v| {
        v["event"] == "registered"
    })?;
    let listener_id = str_of(&registered, "peer")?;
    let listener_local = str_of(&registered, "local")?;
    let listener_relayed = listener.wait("relayed line", Duration::from_secs(15), |v| {
        v["event"] == "relayed"
    })?;
    let listener_relayed = listener_relayed["relays"][0]["relayed"]
        .as_str()
        .context("listener's relayed address")?
        .to_string();
    // A known port for the dialer, so the test can tell whether its address leaked.
    let dialer_local = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut dialer = Proc::peer(
        "dialer",
        &[
            "dial",
            "--punch",
            &servers.punch_addr,
            "--no-upnp",
            "--bind",
            &dialer_local,
            "--relay-only",
            "--bytes",
            "200000",
            &listener_id,
        ],
    )?;
    // Relay-only registers no address of its own, and the server adds none.
    let dialed = dialer.wait("connected", Duration::from_secs(20), |v| {
        v["event"] == "connected" || v["event"] == "error"
    })?;
    assert_eq!(dialed["event"], "connected", "{dialed}");
    assert_eq!(dialed["path"], "relay", "{dialed}");
    assert_eq!(dialed["remote"], listener_relayed.as_str(), "{dialed}");
    dialer.wait("echo_ok", Duration::from_secs(20), |v| {
        v["event"] == "echo_ok"
    })?;
    dialer.wait_exit_ok(Instant::now() + Duration::from_secs(10))?;
    let accepted = listener.wait("connected", Duration::from_secs(5), |v| {
        v["event"] == "connected"
    })?;
    assert_eq!(accepted["path"], "relay", "{accepted}");
    let seen = str_of(&accepted, "remote")?;
    assert_ne!(
        seen, dialer_local,
        "the listener saw the dialer's own address"
    );
    assert!(
        seen.starts_with("127.0.0.1:") && seen != listener_local,
        "{accepted}"
    );
    // The proxy publishes its counters once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&servers.proxy_metrics, "proxy_relay_to_relay_packets_total")? == 0.0 {
        anyhow::ensure!(Instant::now() < deadline, "no relay-to-relay traffic");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Relay-only without a relay offered fails clearly instead of leaking the address.
#[test]
fn relay_only_without_a_relay_fails_with_no_relayed_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_punch, punch_addr) = start_punch(dir.path(), &[], Stdio::inherit())?;
    let mut listener = Proc::peer(
        "listener",
        &[
            "listen",
            "--punch",
            &punch_addr,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
        ],
    )?;
    let registered = listener.wait("registered", Duration::from_secs(15), |v| {
        v["event"] == "registered"
    })?;
    let listener_id = str_of(&registered, "peer")?;
    let mut dialer = Proc::peer(
        "dialer",
        &[
            "dial",
            "--punch",
            &punch_addr,
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
            "--relay-only",
            &listener_id,
        ],
    )?;
    let code = dialer.wait_exit(Instant::now() + Duration::from_secs(30))?;
    dialer.drain(Duration::from_millis(500));
    assert_eq!(code, Some(1), "{:?}", dialer.seen);
    let error = dialer
        .seen
        .iter()
        .find(|v| v["event"] == "error")
        .context("no error line")?;
    assert_eq!(error["kind"], "no_relayed_path", "{error}");
    Ok(())
}
