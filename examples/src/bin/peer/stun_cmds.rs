//! `doctor --stun`, `upnp` and `send-udp`: NAT behaviour discovery against any RFC 5780
//! STUN server, a UPnP mapping proved with real traffic, and one raw datagram.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use mesh::nat::{discover, NatBehaviour, NatConfig};
use mesh::upnp::{PortMapper, UpnpConfig, UpnpState};
use serde::Serialize;

use crate::out::{emit, error_line, ms};
use crate::signals::{interrupted, Stop};

/// The first address of `host_port` in the family of `bind`.
pub fn resolve(host_port: &str, bind: SocketAddr) -> Result<SocketAddr, String> {
    match host_port
        .to_socket_addrs()
        .map(|mut a| a.find(|a| a.is_ipv4() == bind.is_ipv4()))
    {
        Ok(Some(server)) => Ok(server),
        Ok(None) => Err(format!("{host_port}: no address of the bind family")),
        Err(e) => Err(format!("{host_port}: {e}")),
    }
}

/// One JSON line on stdout (fields in declaration order, `event` first).
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Line<'a> {
    Nat {
        mapping: &'static str,
        filtering: &'static str,
        nat_type: &'static str,
        reflexive: String,
        local: String,
        other_address: String,
        rtt_ms: Option<f64>,
    },
    Upnp {
        state: &'a str,
        external: Option<String>,
        local: String,
        lease_secs: Option<u64>,
    },
    Received {
        from: String,
        bytes: usize,
    },
    Timeout {
        waited_ms: u64,
    },
    Quiet {
        ms: u64,
    },
    Sent {
        to: String,
        local: String,
        bytes: usize,
    },
}

fn nat_line(b: &NatBehaviour) -> Line<'static> {
    Line::Nat {
        mapping: b.mapping.as_str(),
        filtering: b.filtering.as_str(),
        nat_type: b.nat_type().as_str(),
        reflexive: b.reflexive.to_string(),
        local: b.local.to_string(),
        other_address: b.other_address.to_string(),
        rtt_ms: b.rtt.map(ms),
    }
}

/// `peer doctor --stun`: RFC 5780 behaviour discovery, one `nat` line.
pub async fn doctor(stun: &str, bind: SocketAddr, timeout_ms: u64) -> ExitCode {
    let server = match resolve(stun, bind) {
        Ok(server) => server,
        Err(detail) => return error_line("resolve", &detail),
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(e) => return error_line("io", &format!("bind {bind}: {e}")),
    };
    let config = NatConfig::with_transaction_timeout(Duration::from_millis(timeout_ms.max(1)));
    match discover(&socket, server, config).await {
        Ok(behaviour) => {
            emit(&nat_line(&behaviour));
            ExitCode::SUCCESS
        }
        Err(e) => error_line(e.kind(), &e.to_string()),
    }
}

/// Waits at most `ms` for one datagram; prints `received` and returns true if one came.
async fn receive_one(socket: &tokio::net::UdpSocket, ms: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(Duration::from_millis(ms), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            emit(&Line::Received {
                from: from.to_string(),
                bytes: n,
            });
            Ok(true)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Flags of `peer upnp`.
#[derive(Debug, clap::Args)]
pub struct UpnpArgs {
    /// Local address of the UDP socket to map.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// How long to wait for the mapping (gateway search included), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
    /// How long to wait for the first datagram, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub recv_ms: u64,
    /// Keep the mapping this long after the first datagram, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// After removing the mapping, listen this long for datagrams that should no
    /// longer arrive, in milliseconds (0: exit at once).
    #[arg(long, default_value_t = 0)]
    pub after_ms: u64,
    /// SSDP search timeout in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub search_timeout_ms: u64,
    /// Lease to ask for, in seconds (0: permanent).
    #[arg(long, default_value_t = 600)]
    pub lease_secs: u64,
}

/// `peer upnp`: map, receive one datagram through the mapping, remove it. A signal
/// before the removal removes the mapping at once and exits 1 (`interrupted`).
pub async fn upnp(args: UpnpArgs, stop: &Stop) -> ExitCode {
    let socket = match tokio::net::UdpSocket::bind(args.bind).await {
        Ok(socket) => socket,
        Err(e) => return error_line("io", &format!("bind {}: {e}", args.bind)),
    };
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(e) => return error_line("io", &format!("local address: {e}")),
    };
    let config = UpnpConfig {
        search_timeout: Duration::from_millis(args.search_timeout_ms.max(1)),
        lease: Duration::from_secs(args.lease_secs),
        ..UpnpConfig::default()
    };
    let mapper = match PortMapper::start(local, config) {
        Ok(mapper) => mapper,
        Err(e) => return error_line("upnp", &e.to_string()),
    };
    let outcome = stop
        .until(map_and_receive(&socket, &mapper, &args, local))
        .await;
    // Bounded by the mapper's own shutdown timeout.
    let removed = mapper.shutdown().await;
    let external = match outcome {
        Ok(Ok(external)) => external,
        Ok(Err(code)) => return code,
        Err(signal) => return interrupted(signal),
    };
    if let Err(e) = removed {
        return error_line("upnp_remove", &e.to_string());
    }
    emit(&Line::Upnp {
        state: "removed",
        external: Some(external.to_string()),
        local: local.to_string(),
        lease_secs: None,
    });
    if args.after_ms > 0 {
        match stop.until(receive_one(&socket, args.after_ms)).await {
            Ok(Ok(false)) => emit(&Line::Quiet { ms: args.after_ms }),
            Ok(Ok(true)) => return ExitCode::FAILURE,
            Ok(Err(e)) => return error_line("io", &format!("receive: {e}")),
            Err(signal) => return interrupted(signal),
        }
    }
    ExitCode::SUCCESS
}

/// The part of `peer upnp` while the mapping lives: wait for it (`mapped` line), receive
/// one datagram, hold. Returns the external address, or the exit code of a failure whose
/// line was printed.
async fn map_and_receive(
    socket: &tokio::net::UdpSocket,
    mapper: &PortMapper,
    args: &UpnpArgs,
    local: SocketAddr,
) -> Result<SocketAddr, ExitCode> {
    let state = mapper
        .wait_settled(Duration::from_millis(args.wait_ms))
        .await;
    let (external, lease_until) = match &state {
        UpnpState::Mapped {
            external,
            lease_until,
        } => (*external, *lease_until),
        UpnpState::Unavailable { reason } => return Err(error_line("upnp_unavailable", reason)),
        UpnpState::Searching => {
            return Err(error_line(
                "upnp_unavailable",
                &format!("no mapping within {} ms", args.wait_ms),
            ))
        }
    };
    emit(&Line::Upnp {
        state: "mapped",
        external: Some(external.to_string()),
        local: local.to_string(),
        lease_secs: lease_until.map(|t| {
            t.saturating_duration_since(std::time::Instant::now())
                .as_secs()
        }),
    });
    let received = receive_one(socket, args.recv_ms).await;
    if args.hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
    }
    match received {
        Ok(true) => Ok(external),
        Ok(false) => {
            emit(&Line::Timeout {
                waited_ms: args.recv_ms,
            });
            Err(ExitCode::FAILURE)
        }
        Err(e) => Err(error_line("io", &format!("receive: {e}"))),
    }
}

/// `peer send-udp`: one datagram.
pub async fn send_udp(to: SocketAddr, bind: SocketAddr, bytes: usize) -> ExitCode {
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(e) => return error_line("io", &format!("bind {bind}: {e}")),
    };
    let payload = vec![0x5a_u8; bytes];
    match socket.send_to(&payload, to).await {
        Ok(n) => {
            let local = socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            emit(&Line::Sent {
                to: to.to_string(),
                local,
                bytes: n,
            });
            ExitCode::SUCCESS
        }
        Err(e) => error_line("io", &format!("send to {to}: {e}")),
    }
}
