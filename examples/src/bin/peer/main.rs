//! `peer`: a scriptable peer CLI that prints JSON lines on stdout.
//!
//! Subcommands:
//! - `doctor`: RFC 5780 NAT behaviour discovery against a STUN server with an alternate
//!   address (our punch-server or any RFC 5780 server such as coturn). Steps: bind a UDP
//!   socket (`--bind`, default `0.0.0.0:0`), run `mesh::nat::discover` with RFC 8489
//!   retransmissions scaled to `--timeout-ms` per transaction, print one
//!   `{"event":"nat",...}` line, or `{"event":"error",...}` and exit with status 1.
//! - `upnp`: map a UDP socket's port on the UPnP gateway (`mesh::upnp::PortMapper`) and
//!   prove it with real traffic. Steps: bind `--bind`; start the mapper and wait at most
//!   `--wait-ms` for it to settle; print `{"event":"upnp","state":"mapped","external":..,
//!   "local":..}` (or `{"event":"error","kind":"upnp_unavailable",..}` and exit 1); wait
//!   at most `--recv-ms` for one datagram and print `{"event":"received","from":..,
//!   "bytes":..}` (or `{"event":"timeout",..}`, exit 1); remove the mapping (shutdown) and
//!   print `{"event":"upnp","state":"removed",..}`; if `--after-ms` is set, keep the socket
//!   open that long and print `{"event":"quiet","ms":..}` when nothing more arrived, or
//!   `{"event":"received",..}` for a datagram that came in anyway (exit 1).
//!   `--hold-ms` keeps the mapping that long after the first datagram before removing it.
//! - `send-udp`: send one datagram of `--bytes` bytes to `--to` from `--bind` and print
//!   `{"event":"sent","to":..,"local":..,"bytes":..}`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh::nat::{discover, NatBehaviour, NatConfig};
use mesh::upnp::{PortMapper, UpnpConfig, UpnpState};
use serde::Serialize;

/// Scriptable peer CLI (JSON lines on stdout).
#[derive(Debug, Parser)]
#[command(name = "peer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Discover this host's NAT behaviour (RFC 5780) and print it as one JSON line.
    Doctor {
        /// STUN server with RFC 5780 support (HOST:PORT, e.g. the punch server).
        #[arg(long, env = "PEER_STUN")]
        stun: String,
        /// Local address to bind the UDP socket to.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Timeout of one STUN transaction in milliseconds (RFC 8489 default: 39500);
        /// the retransmission timeout is this divided by 79 (Rc = 7, Rm = 16).
        #[arg(long, default_value_t = 39_500)]
        timeout_ms: u64,
    },
    /// Map a UDP port with UPnP, receive one datagram through the mapping, remove it.
    Upnp {
        /// Local address of the UDP socket to map.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// How long to wait for the mapping (gateway search included), in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
        /// How long to wait for the first datagram, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        recv_ms: u64,
        /// Keep the mapping this long after the first datagram, in milliseconds.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// After removing the mapping, listen this long for datagrams that should no
        /// longer arrive, in milliseconds (0: exit at once).
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
        /// SSDP search timeout in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        search_timeout_ms: u64,
        /// Lease to ask for, in seconds (0: permanent).
        #[arg(long, default_value_t = 600)]
        lease_secs: u64,
    },
    /// Send one UDP datagram and print what was sent.
    SendUdp {
        /// Destination address.
        #[arg(long)]
        to: SocketAddr,
        /// Local address to send from.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Datagram size in bytes.
        #[arg(long, default_value_t = 32)]
        bytes: usize,
    },
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
    Error {
        kind: &'a str,
        detail: &'a str,
    },
}

fn print(line: &Line<'_>) {
    match serde_json::to_string(line) {
        Ok(text) => println!("{text}"),
        Err(e) => println!("{{\"event\":\"error\",\"kind\":\"json\",\"detail\":\"{e}\"}}"),
    }
}

fn error_line(kind: &str, detail: &str) -> ExitCode {
    print(&Line::Error { kind, detail });
    ExitCode::FAILURE
}

fn nat_line(b: &NatBehaviour) -> Line<'static> {
    Line::Nat {
        mapping: b.mapping.as_str(),
        filtering: b.filtering.as_str(),
        nat_type: b.nat_type().as_str(),
        reflexive: b.reflexive.to_string(),
        local: b.local.to_string(),
        other_address: b.other_address.to_string(),
        rtt_ms: b
            .rtt
            .map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
    }
}

async fn doctor(stun: &str, bind: SocketAddr, timeout_ms: u64) -> ExitCode {
    let server = match stun
        .to_socket_addrs()
        .map(|mut a| a.find(|a| a.is_ipv4() == bind.is_ipv4()))
    {
        Ok(Some(server)) => server,
        Ok(None) => {
            return error_line("resolve", &format!("{stun}: no address of the bind family"))
        }
        Err(e) => return error_line("resolve", &format!("{stun}: {e}")),
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(e) => return error_line("io", &format!("bind {bind}: {e}")),
    };
    let config = NatConfig::with_transaction_timeout(Duration::from_millis(timeout_ms.max(1)));
    match discover(&socket, server, config).await {
        Ok(behaviour) => {
            print(&nat_line(&behaviour));
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
            print(&Line::Received {
                from: from.to_string(),
                bytes: n,
            });
            Ok(true)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

struct UpnpArgs {
    bind: SocketAddr,
    wait_ms: u64,
    recv_ms: u64,
    hold_ms: u64,
    after_ms: u64,
    search_timeout_ms: u64,
    lease_secs: u64,
}

async fn upnp(args: UpnpArgs) -> ExitCode {
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
    let state = mapper
        .wait_settled(Duration::from_millis(args.wait_ms))
        .await;
    let (external, lease_until) = match &state {
        UpnpState::Mapped {
            external,
            lease_until,
        } => (*external, *lease_until),
        UpnpState::Unavailable { reason } => {
            let _ = mapper.shutdown().await;
            return error_line("upnp_unavailable", reason);
        }
        UpnpState::Searching => {
            let _ = mapper.shutdown().await;
            return error_line(
                "upnp_unavailable",
                &format!("no mapping within {} ms", args.wait_ms),
            );
        }
    };
    print(&Line::Upnp {
        state: "mapped",
        external: Some(external.to_string()),
        local: local.to_string(),
        lease_secs: lease_until.map(|t| {
            t.saturating_duration_since(std::time::Instant::now())
                .as_secs()
        }),
    });
    let received = receive_one(&socket, args.recv_ms).await;
    if args.hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
    }
    let removed = mapper.shutdown().await;
    match received {
        Ok(true) => {}
        Ok(false) => {
            print(&Line::Timeout {
                waited_ms: args.recv_ms,
            });
            return ExitCode::FAILURE;
        }
        Err(e) => return error_line("io", &format!("receive: {e}")),
    }
    if let Err(e) = removed {
        return error_line("upnp_remove", &e.to_string());
    }
    print(&Line::Upnp {
        state: "removed",
        external: Some(external.to_string()),
        local: local.to_string(),
        lease_secs: None,
    });
    if args.after_ms > 0 {
        match receive_one(&socket, args.after_ms).await {
            Ok(false) => print(&Line::Quiet { ms: args.after_ms }),
            Ok(true) => return ExitCode::FAILURE,
            Err(e) => return error_line("io", &format!("receive: {e}")),
        }
    }
    ExitCode::SUCCESS
}

async fn send_udp(to: SocketAddr, bind: SocketAddr, bytes: usize) -> ExitCode {
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
            print(&Line::Sent {
                to: to.to_string(),
                local,
                bytes: n,
            });
            ExitCode::SUCCESS
        }
        Err(e) => error_line("io", &format!("send to {to}: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return error_line("io", &format!("tokio runtime: {e}")),
    };
    match cli.command {
        Command::Doctor {
            stun,
            bind,
            timeout_ms,
        } => runtime.block_on(doctor(&stun, bind, timeout_ms)),
        Command::Upnp {
            bind,
            wait_ms,
            recv_ms,
            hold_ms,
            after_ms,
            search_timeout_ms,
            lease_secs,
        } => runtime.block_on(upnp(UpnpArgs {
            bind,
            wait_ms,
            recv_ms,
            hold_ms,
            after_ms,
            search_timeout_ms,
            lease_secs,
        })),
        Command::SendUdp { to, bind, bytes } => runtime.block_on(send_udp(to, bind, bytes)),
    }
}
