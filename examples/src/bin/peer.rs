//! `peer`: a scriptable peer CLI that prints JSON lines on stdout.
//!
//! Subcommands:
//! - `doctor`: RFC 5780 NAT behaviour discovery against a STUN server with an alternate
//!   address (our punch-server or any RFC 5780 server such as coturn). Steps: bind a UDP
//!   socket (`--bind`, default `0.0.0.0:0`), run `mesh::nat::discover` with RFC 8489
//!   retransmissions scaled to `--timeout-ms` per transaction, print one
//!   `{"event":"nat",...}` line, or `{"event":"error",...}` and exit with status 1.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh::nat::{discover, NatBehaviour, NatConfig};
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
    }
}
