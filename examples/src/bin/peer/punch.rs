//! `listen` and `dial` (and the node flags `doctor --punch` shares, module `doctor`): the
//! peer side of the punch server.
//!
//! - `listen`: start a [`DirectNode`], print `registered` (and `upnp` once a mapping is
//!   registered), then for every accepted connection print `connected` (with `path`:
//!   `direct` or `relay`, and the peer's `remote` address on it; `path_changed` when the
//!   connection moves, e.g. from the relay to a punched pair) and echo each
//!   bidirectional stream and each datagram until the peer closes (`closed`).
//!   If the punch server goes away, print `control_lost`, and `registered` again once the
//!   node has reconnected.
//! - `dial`: start a node, connect to the peer id, print `connected` with `ms` from the call
//!   to the established connection (and `path_changed` as for `listen`), send `--bytes` on one stream, check the echo, print
//!   `echo_ok` with the goodput and exit 0; any failure prints `error` with a stable
//!   `kind` (`no_direct_path`, `refused`, `timeout`, `unknown_target`, ...) and exits 1.
//!   A stalled echo or failed handshake is retried with a fresh connect (`retry` lines,
//!   `--attempts`).
//!
//! Both (and `doctor --punch`) print `connecting {punch, timeout_ms}` first; a punch
//! server that has not answered within `--connect-timeout-ms` (10 s) gives
//! `error {kind: "unreachable"}` and exit status 1. `listen` prints `error` with kind
//! `closed` and exits 1 if its endpoint closes; SIGINT or SIGTERM stop it gracefully
//! (`stopping`, the node shut down: peer connections closed with a close code, UPnP
//! mapping removed; then `stopped`, exit 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::coord::PunchAddr;
use mesh::direct::{
    ActivePath, DialError, DirectConfig, DirectConnection, DirectNode, HowFinder, IncomingPolicy,
    PathType,
};
use mesh::identity::{Identity, PeerId};
use mesh::socket::ConnectError;
use mesh::upnp::UpnpConfig;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::out::{emit, error_line, ms};
use crate::signals::{bounded_cleanup, interrupted, Stop};

/// Default of `--upnp-search-ms` (also used by `doctor --punch`).
pub const DEFAULT_UPNP_SEARCH_MS: u64 = 2_000;
/// Default of `--budget-ms` (also used by `doctor --punch`).
pub const DEFAULT_BUDGET_MS: u64 = 4_000;
/// Default of `--connect-timeout-ms` (`DirectConfig::connect_timeout`).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Why a node did not start: a stable `kind` and a detail, for an `error` line (or the
/// `register_error` of `doctor`).
pub type StartFailure = (&'static str, String);

/// Flags shared by `listen`, `dial` and `doctor --punch`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The punch server, `ID@HOST:PORT` (the id is printed by punch-server on start).
    #[arg(long, env = "PEER_PUNCH")]
    pub punch: String,
    /// Accept a bare `HOST:PORT` punch server and any server key (development only).
    #[arg(long, env = "PEER_INSECURE")]
    pub insecure: bool,
    /// This peer's key file (PKCS#8 PEM, created if missing); without it a fresh key is
    /// generated for this run.
    #[arg(long, env = "PEER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Local address of the one UDP socket. The default `[::]:0` is one dual-stack socket
    /// (IPv4 and IPv6; IPv4 only on a host without IPv6).
    #[arg(long, env = "PEER_BIND", default_value = "[::]:0")]
    pub bind: SocketAddr,
    /// Do not map a port with UPnP.
    #[arg(long)]
    pub no_upnp: bool,
    /// Do not allocate on the TURN relays the punch server offers (by default the node
    /// holds one allocation per relay, refreshed, and frees it on exit).
    #[arg(long, env = "PEER_NO_RELAY", conflicts_with = "relay_only")]
    pub no_relay: bool,
    /// Never offer or reveal this node's own address: connections run through a TURN
    /// relay the punch server offers, and peers see only the relay's address (no host,
    /// reflexive or UPnP candidate, no probing; the punch server hides the address it
    /// sees).
    #[arg(long, env = "PEER_RELAY_ONLY")]
    pub relay_only: bool,
    /// Do not offer predicted candidates (port prediction for NATs that allocate ports in
    /// sequence).
    #[arg(long, env = "PEER_NO_PREDICT")]
    pub no_predict: bool,
    /// Do not run birthday probing (many sockets and random-port probes between a
    /// random-port NAT and an endpoint-independent one).
    #[arg(long, env = "PEER_NO_BIRTHDAY")]
    pub no_birthday: bool,
    /// SSDP search timeout of the UPnP gateway discovery, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_UPNP_SEARCH_MS)]
    pub upnp_search_ms: u64,
    /// Probing budget in milliseconds: without a direct path by then, `no_direct_path`.
    #[arg(long, default_value_t = DEFAULT_BUDGET_MS)]
    pub budget_ms: u64,
    /// Longest wait for the punch server to answer (name resolved, QUIC handshake done),
    /// in milliseconds; then `error {kind: "unreachable"}`.
    #[arg(long, env = "PEER_CONNECT_TIMEOUT_MS", default_value_t = DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
}

impl NodeArgs {
    pub fn config(&self) -> Result<DirectConfig, StartFailure> {
        let punch: PunchAddr = self
            .punch
            .parse()
            .map_err(|e: mesh::coord::ParsePunchAddrError| ("address", e.to_string()))?;
        let mut config = DirectConfig::new(punch);
        config.insecure = self.insecure;
        config.bind = self.bind;
        config.upnp = (!self.no_upnp).then(|| UpnpConfig {
            search_timeout: Duration::from_millis(self.upnp_search_ms.max(1)),
            ..UpnpConfig::default()
        });
        if self.no_relay {
            config.relays = None;
        }
        config.relay_only = self.relay_only;
        config.predict = !self.no_predict;
        if self.no_birthday {
            config.birthday = None;
        }
        config.probe.budget = Duration::from_millis(self.budget_ms.max(1));
        config.connect_timeout = Duration::from_millis(self.connect_timeout_ms.max(1));
        Ok(config)
    }

    fn identity(&self) -> Result<Arc<Identity>, StartFailure> {
        let identity = match &self.key_file {
            Some(path) => Identity::load_or_generate(path),
            None => Identity::generate(),
        };
        identity
            .map(Arc::new)
            .map_err(|e| ("identity", e.to_string()))
    }

    /// Starts the node and registers it with the punch server.
    pub async fn start(&self, incoming: IncomingPolicy) -> Result<DirectNode, StartFailure> {
        let mut config = self.config()?;
        config.incoming = incoming;
        let identity = self.identity()?;
        DirectNode::start(identity, config)
            .await
            .map_err(|e| (e.kind(), e.to_string()))
    }

    /// Prints `connecting`, then starts the node: the error line (`unreachable` if the
    /// server did not answer within `--connect-timeout-ms`) or `interrupted` on a signal
    /// come back as the exit code.
    async fn start_reported(
        &self,
        incoming: IncomingPolicy,
        stop: &Stop,
    ) -> Result<DirectNode, ExitCode> {
        emit(&self.connecting_line());
        match stop.until(self.start(incoming)).await {
            Ok(Ok(node)) => Ok(node),
            Ok(Err((kind, detail))) => Err(error_line(kind, &detail)),
            Err(signal) => Err(interrupted(signal)),
        }
    }

    /// `{"event":"connecting","punch":..,"timeout_ms":..}`: printed before the punch
    /// server is dialed, so a silent server is never a silent wait.
    pub fn connecting_line(&self) -> Value {
        json!({
            "event": "connecting",
            "punch": self.punch,
            "timeout_ms": self.connect_timeout_ms.max(1),
        })
    }
}

fn registered_line(node: &DirectNode) -> Value {
    let reg = node.registration().borrow().clone();
    json!({
        "event": "registered",
        "peer": node.peer_id().to_string(),
        "observed": reg.observed_addr.to_string(),
        "candidates": reg.candidates.iter().map(|c| format!("{:?}:{}", c.kind, c.addr)).collect::<Vec<_>>(),
        "local": node.endpoint().local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "punch_rtt_ms": ms(node.server_rtt()),
    })
}

fn connected_line(c: &DirectConnection) -> Value {
    let path = *c.path.borrow();
    let mut line = json!({
        "event": "connected",
        "peer": c.peer.peer_id.to_string(),
        "path": path.kind.as_str(),
        "remote": path.remote.to_string(),
        "ms": c.elapsed.map(ms),
    });
    if let Some(how) = c.how.how(&path) {
        line["how"] = how.as_str().into();
    }
    if let Some(via) = path.via {
        line["via"] = via.to_string().into();
    }
    line
}

/// Prints `path_changed` each time the connection moves to another path (the task is
/// aborted when the connection is done), with `after_ms` since the task started (when the
/// connection was up); a direct path says `how` it was found.
async fn report_path_changes(peer: PeerId, mut path: watch::Receiver<ActivePath>, how: HowFinder) {
    let since = Instant::now();
    while path.changed().await.is_ok() {
        let p = *path.borrow_and_update();
        let mut line = json!({
            "event": "path_changed",
            "peer": peer.to_string(),
            "path": p.kind.as_str(),
            "remote": p.remote.to_string(),
            "after_ms": ms(since.elapsed()),
        });
        if let Some(how) = how.how(&p) {
            line["how"] = how.as_str().into();
        }
        if let Some(via) = p.via {
            line["via"] = via.to_string().into();
        }
        emit(&line);
    }
}

/// `peer listen`: accept and echo until stopped by a signal.
pub async fn listen(
    args: NodeArgs,
    max_connections: usize,
    policy: IncomingPolicy,
    stop: &Stop,
) -> ExitCode {
    let node = match args.start_reported(policy, stop).await {
        Ok(node) => node,
        Err(code) => return code,
    };
    emit(&registered_line(&node));
    let node = Arc::new(node);
    let reporters = [
        tokio::spawn(report_upnp(node.clone())),
        tokio::spawn(report_control(node.clone())),
        tokio::spawn(report_relayed(node.clone())),
        tokio::spawn(report_predicted(node.clone())),
    ];
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let signal = loop {
        let accepted = match stop.until(node.accept()).await {
            Ok(Some(accepted)) => accepted,
            Ok(None) => break None,
            Err(signal) => break Some(signal),
        };
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                emit(&json!({"event": "accept_failed", "detail": e.to_string()}));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conn.peer
                .connection
                .close(1u32.into(), b"too many connections");
            continue;
        };
        emit(&connected_line(&conn));
        tokio::spawn(async move {
            let paths = tokio::spawn(report_path_changes(
                conn.peer.peer_id,
                conn.path.clone(),
                conn.how.clone(),
            ));
            let reason = echo(conn.peer.connection.clone()).await;
            paths.abort();
            emit(
                &json!({"event": "closed", "peer": conn.peer.peer_id.to_string(), "reason": reason}),
            );
            drop(permit);
        });
    };
    for reporter in &reporters {
        reporter.abort();
    }
    for reporter in reporters {
        let _ = reporter.await;
    }
    let Some(signal) = signal else {
        // Only a closed endpoint ends `accept`: a listener is meant to run until stopped.
        return error_line(
            "closed",
            "the endpoint closed: no more incoming connections",
        );
    };
    // The reporters are gone, so the node has one owner again: shut it down (connections
    // closed with a close code, UPnP mapping removed).
    if let Ok(node) = Arc::try_unwrap(node) {
        bounded_cleanup(node.shutdown()).await;
    }
    emit(&json!({"event": "stopped", "signal": signal.name()}));
    ExitCode::SUCCESS
}

/// Prints `control_lost` when the control connection to the punch server goes down and
/// `registered` again once the node has reconnected and registered anew.
async fn report_control(node: Arc<DirectNode>) {
    let mut status = node.control_status();
    while status.changed().await.is_ok() {
        let lost = status.borrow_and_update().clone();
        match lost {
            Some(detail) => emit(&json!({"event": "control_lost", "detail": detail})),
            None => emit(&registered_line(&node)),
        }
    }
}

/// Prints `upnp` once a mapped candidate is registered (and again if it changes).
async fn report_upnp(node: Arc<DirectNode>) {
    let mut reg = node.registration();
    let mut reported = None;
    loop {
        let upnp = reg
            .borrow_and_update()
            .candidates
            .iter()
            .find(|c| c.kind == mesh::coord::CandidateKind::Upnp)
            .map(|c| c.addr);
        if upnp.is_some() && upnp != reported {
            emit(
                &json!({"event": "upnp", "state": "mapped", "external": upnp.map(|a| a.to_string())}),
            );
            reported = upnp;
        }
        if reg.changed().await.is_err() {
            return;
        }
    }
}

/// Prints a `predicted` line each time the registered predicted candidates change (port
/// prediction: reflexive candidates this node registers itself; the one the punch server
/// observes is never registered).
async fn report_predicted(node: Arc<DirectNode>) {
    let mut reg = node.registration();
    let mut reported: Vec<String> = Vec::new();
    loop {
        let now: Vec<String> = reg
            .borrow_and_update()
            .candidates
            .iter()
            .filter(|c| c.kind == mesh::coord::CandidateKind::ServerReflexive)
            .map(|c| c.addr.to_string())
            .collect();
        if now != reported {
            emit(&json!({"event": "predicted", "candidates": now}));
            reported = now;
        }
        if reg.changed().await.is_err() {
            return;
        }
    }
}

/// Prints a `relayed` line each time the node's relayed addresses change (an allocation
/// on an offered relay succeeded, was lost, or came back).
async fn report_relayed(node: Arc<DirectNode>) {
    let mut relayed = node.relayed();
    loop {
        if relayed.changed().await.is_err() {
            return;
        }
        let now: Vec<_> = relayed
            .borrow_and_update()
            .iter()
            .map(|r| json!({"relay": r.relay.to_string(), "relayed": r.relayed.to_string()}))
            .collect();
        emit(&json!({"event": "relayed", "relays": now}));
    }
}

/// Echoes every bidirectional stream and datagram of `conn` until it closes.
async fn echo(conn: quinn::Connection) -> String {
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((mut send, mut recv)) => {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(Some(n)) = recv.read(&mut buf).await {
                            if send.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
                                return;
                            }
                        }
                        let _ = send.finish();
                    });
                }
                Err(e) => return format!("{e:?}"),
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(d) => { let _ = conn.send_datagram(d); }
                Err(e) => return format!("{e:?}"),
            },
        }
    }
}

/// `peer dial`: connect, echo `bytes` bytes, exit.
///
/// A connection whose echo fails or stalls past `echo_timeout` (or whose handshake fails)
/// is dropped and the whole connect is tried again, up to `attempts` times in all; each
/// retry prints a `retry` line. Final answers (refused, unknown target, no direct path,
/// wrong key) are not retried. A signal stops the attempts; the node is shut down either
/// way.
pub async fn dial(
    args: NodeArgs,
    target: &str,
    echo: Echo,
    attempts: u32,
    stop: &Stop,
) -> ExitCode {
    let target: PeerId = match target.parse() {
        Ok(t) => t,
        Err(e) => return error_line("address", &format!("peer id {target:?}: {e}")),
    };
    let node = match args.start_reported(IncomingPolicy::RefuseAll, stop).await {
        Ok(node) => node,
        Err(code) => return code,
    };
    let dialing = dial_attempts(&node, target, echo, attempts.max(1));
    let code = stop.until(dialing).await.unwrap_or_else(interrupted);
    bounded_cleanup(node.shutdown()).await;
    code
}

/// The echo of `peer dial`.
#[derive(Debug, Clone, Copy)]
pub struct Echo {
    /// Bytes sent on one stream and expected back.
    pub bytes: usize,
    /// Longest time for the echo of one attempt.
    pub timeout: Duration,
    /// How long the connection stays idle before the echo.
    pub idle: Duration,
    /// Ends the idle time early once the connection runs on a direct path.
    pub until_direct: bool,
}

/// The connect-and-echo attempts of `peer dial`.
async fn dial_attempts(node: &DirectNode, target: PeerId, echo: Echo, attempts: u32) -> ExitCode {
    let Echo {
        bytes,
        timeout: echo_timeout,
        idle,
        until_direct,
    } = echo;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (kind, detail) = match node.connect(target).await {
            Ok(conn) => {
                emit(&connected_line(&conn));
                let paths = tokio::spawn(report_path_changes(
                    target,
                    conn.path.clone(),
                    conn.how.clone(),
                ));
                let mut path = conn.path.clone();
                if until_direct {
                    let direct = path.wait_for(|p| p.kind == PathType::Direct);
                    let _ = tokio::time::timeout(idle, direct).await;
                } else {
                    tokio::time::sleep(idle).await;
                }
                let result = tokio::time::timeout(echo_timeout, echo_check(&conn, bytes)).await;
                paths.abort();
                conn.peer.connection.close(0u32.into(), b"done");
                match result {
                    Ok(Ok(secs)) => {
                        let mbit_s = (bytes as f64 * 8.0 / 1e6) / secs.max(1e-9);
                        emit(
                            &json!({"event": "echo_ok", "bytes": bytes, "mbit_s": (mbit_s * 100.0).round() / 100.0, "attempt": attempt}),
                        );
                        report_birthday(node);
                        return ExitCode::SUCCESS;
                    }
                    Ok(Err(detail)) => ("echo_failed", detail),
                    Err(_) => (
                        "timeout",
                        format!("echo not complete within {echo_timeout:?}"),
                    ),
                }
            }
            // The peer presented another key: a final answer, like the errors below.
            Err(e @ DialError::Handshake(ConnectError::Identity(_))) => {
                return error_line(e.kind(), &e.to_string())
            }
            Err(e @ (DialError::Handshake(_) | DialError::Timeout { .. })) => {
                (e.kind(), e.to_string())
            }
            Err(e) => return error_line(e.kind(), &e.to_string()),
        };
        if attempt >= attempts {
            return error_line(kind, &detail);
        }
        emit(&json!({"event": "retry", "attempt": attempt, "kind": kind, "detail": detail}));
    }
}

/// Prints a `birthday` line with the node's birthday rounds, if it ran any: rounds,
/// validated, failed, checks sent and the latest pair's time from its round's start.
fn report_birthday(node: &DirectNode) {
    let b = node.birthday_stats();
    if b.rounds == 0 {
        return;
    }
    emit(&json!({
        "event": "birthday",
        "rounds": b.rounds,
        "validated": b.validated,
        "failed": b.failed,
        "checks": b.checks,
        "last_after_ms": ms(b.last_after),
    }));
}

/// Sends `bytes` bytes on a new stream and checks the echo; returns the seconds it took.
async fn echo_check(conn: &DirectConnection, bytes: usize) -> Result<f64, String> {
    let started = Instant::now();
    let (mut send, mut recv) = conn
        .peer
        .connection
        .open_bi()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let pattern = |i: usize| (i % 251) as u8;
    let writer = async move {
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut sent = 0;
        while sent < bytes {
            let n = (bytes - sent).min(64 * 1024);
            chunk.clear();
            chunk.extend((sent..sent + n).map(pattern));
            send.write_all(&chunk).await.map_err(|e| format!("{e:?}"))?;
            sent += n;
        }
        send.finish().map_err(|e| format!("{e:?}"))
    };
    let reader = async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(n) = recv.read(&mut buf).await.map_err(|e| format!("{e:?}"))? {
            for (k, b) in buf.iter().take(n).enumerate() {
                if *b != pattern(got + k) {
                    return Err(format!("echo differs at byte {}", got + k));
                }
            }
            got += n;
        }
        if got != bytes {
            return Err(format!("echo has {got} bytes, sent {bytes}"));
        }
        Ok(())
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r?;
    Ok(started.elapsed().as_secs_f64())
}
