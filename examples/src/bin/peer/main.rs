//! `peer`: a scriptable peer CLI that prints JSON lines on stdout.
//!
//! Subcommands:
//! - `listen` / `dial` (module `punch`): reach peers through the punch server (`--punch
//!   ID@HOST:PORT`): `connecting`, `registered`, `connected`, `echo_ok`, `closed`, `error`
//!   lines (`error {kind: "unreachable"}` when the server has not answered within
//!   `--connect-timeout-ms`, 10 s).
//! - `doctor --punch` (module `doctor`): `connecting`, then behaviour, registration, RTT,
//!   UPnP and the TURN relays the punch server offers (each allocated and freed) in one line (behaviour and `register_error`, exit status 1, when registration
//!   fails; `error {kind: "unreachable"}` when the server does not answer).
//! - `doctor --stun`: RFC 5780 NAT behaviour discovery against a STUN server with an alternate
//!   address (our punch-server or any RFC 5780 server such as coturn). Steps: bind a UDP
//!   socket (`--bind`, default `0.0.0.0:0`), run `mesh::nat::discover` (test I's RFC 8489
//!   transaction scaled to `--timeout-ms`, the later tests timed from its RTT), print one
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
//! - `host` / `join` / `list` (module `session_cmds`): host, join and list sessions through
//!   the master server (`--master`) and talk to every member: `listed`, `joined`,
//!   `member_joined`, `member_left`, `host_changed`, `message`, `ended` lines; stdin lines
//!   are broadcast, EOF leaves.
//! - `send-udp`: send one datagram of `--bytes` bytes to `--to` from `--bind` and print
//!   `{"event":"sent","to":..,"local":..,"bytes":..}`.
//!
//! Every subcommand stops gracefully on SIGINT or SIGTERM (module `signals`): `stopping`,
//! the cleanup its own exit would do, then `stopped` (listen) or `left` (host, join) with
//! exit status 0, or `error {kind: "interrupted"}` and 1 for the one-shot commands; a
//! second signal exits at once (130 / 143).

mod doctor;
mod out;
mod punch;
mod session_cmds;
mod signals;
mod stun_cmds;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use out::error_line;
use signals::Stop;
use stun_cmds::UpnpArgs;

/// Scriptable peer CLI (JSON lines on stdout).
#[derive(Debug, Parser)]
#[command(name = "peer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register with the punch server, accept connections and echo what they send.
    Listen {
        #[command(flatten)]
        node: punch::NodeArgs,
        /// Most connections served at once.
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
        /// Refuse every incoming request (to test the dialer's `refused`).
        #[arg(long)]
        refuse: bool,
    },
    /// Connect to a peer through the punch server and check an echo of `--bytes` bytes.
    Dial {
        #[command(flatten)]
        node: punch::NodeArgs,
        /// The peer id to connect to (as printed by its `registered` line).
        peer: String,
        /// Bytes to send on one stream and expect back.
        #[arg(long, default_value_t = 1024)]
        bytes: usize,
        /// Longest time for the echo of one attempt, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        echo_timeout_ms: u64,
        /// Connects tried in all when an echo stalls or a handshake fails.
        #[arg(long, default_value_t = 3)]
        attempts: u32,
        /// Keep the connection idle this long (milliseconds) before the echo; path
        /// changes are still reported.
        #[arg(long, env = "PEER_IDLE_MS", default_value_t = 0)]
        idle_ms: u64,
        /// End `--idle-ms` early once the connection runs on a direct path.
        #[arg(long, env = "PEER_UNTIL_DIRECT")]
        until_direct: bool,
    },
    /// Print this host's NAT behaviour (RFC 5780), and with `--punch` the registration,
    /// the RTT to the punch server and the UPnP result, as one JSON line.
    Doctor {
        /// Punch server `ID@HOST:PORT`: also register over QUIC and try UPnP.
        #[arg(long, env = "PEER_PUNCH", required_unless_present = "stun")]
        punch: Option<String>,
        /// STUN server with RFC 5780 support (HOST:PORT) for behaviour discovery only.
        #[arg(long, env = "PEER_STUN")]
        stun: Option<String>,
        /// With `--punch`: the RFC 5780 STUN server to use instead of the punch server's
        /// own port.
        #[arg(long)]
        alt: Option<String>,
        /// Accept a bare `HOST:PORT` punch server and any server key (development only).
        #[arg(long, env = "PEER_INSECURE")]
        insecure: bool,
        /// Local address to bind the UDP socket to.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Timeout of the first STUN transaction (test I) in milliseconds (RFC 8489
        /// default: 39500; its retransmission timeout is this divided by 79, Rc = 7,
        /// Rm = 16). The later tests use a retransmission timeout of twice the RTT test I
        /// measured (100 ms to 3 s).
        #[arg(long, env = "PEER_STUN_TIMEOUT_MS", default_value_t = 39_500)]
        timeout_ms: u64,
        /// With `--punch`: longest wait for the punch server to answer (name resolved,
        /// QUIC handshake done), in milliseconds; then `error {kind: "unreachable"}`.
        #[arg(long, env = "PEER_CONNECT_TIMEOUT_MS", default_value_t = punch::DEFAULT_CONNECT_TIMEOUT_MS)]
        connect_timeout_ms: u64,
        /// With `--punch`: do not try UPnP.
        #[arg(long)]
        no_upnp: bool,
        /// With `--punch`: how long to wait for the UPnP result, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        upnp_wait_ms: u64,
        /// With `--punch`: longest check (allocate, then free) of each TURN relay the punch
        /// server offers, in milliseconds.
        #[arg(long, env = "PEER_RELAY_TIMEOUT_MS", default_value_t = 3_000)]
        relay_timeout_ms: u64,
    },
    /// Map a UDP port with UPnP, receive one datagram through the mapping, remove it.
    Upnp(UpnpArgs),
    /// Host a session: post the listing, accept joiners, broadcast stdin lines.
    Host {
        #[command(flatten)]
        session: session_cmds::SessionArgs,
        /// The punch server, `ID@HOST:PORT` (the id is printed by punch-server on start).
        #[arg(long, env = "PEER_PUNCH")]
        punch: String,
        /// Display name of the listing.
        #[arg(long, env = "PEER_NAME")]
        name: String,
        /// Most members, the host included.
        #[arg(long, env = "PEER_MAX_PLAYERS", default_value_t = 8)]
        max_players: u32,
        /// Seconds the listing lives without a heartbeat.
        #[arg(long, env = "PEER_LISTING_TIMEOUT_SECS", default_value_t = 30)]
        listing_timeout_secs: u32,
    },
    /// Join a session (by id, or the first listed one with space), broadcast stdin lines.
    Join {
        #[command(flatten)]
        session: session_cmds::SessionArgs,
        /// The listing id to join; without it, the first listed session with space.
        #[arg(long = "session", env = "PEER_SESSION")]
        id: Option<String>,
        /// Reach the members through this punch server (`ID@HOST:PORT`) instead of the
        /// one the listing names.
        #[arg(long, env = "PEER_PUNCH")]
        punch: Option<String>,
    },
    /// Print the live sessions of a game, one `session` line each.
    List {
        /// The master server's base URL, e.g. `http://127.0.0.1:8080`.
        #[arg(long, env = "PEER_MASTER")]
        master: String,
        /// The game whose sessions to list.
        #[arg(long, env = "PEER_GAME")]
        game: String,
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

/// Logs go to stderr (`RUST_LOG`, default `warn`): stdout carries only the JSON events.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return error_line("io", &format!("tokio runtime: {e}")),
    };
    runtime.block_on(async move {
        match signals::install() {
            Ok(stop) => run(cli.command, stop).await,
            Err(e) => error_line("io", &format!("signal handlers: {e}")),
        }
    })
}

/// Runs one subcommand; the first SIGINT or SIGTERM stops it gracefully (see `signals`).
async fn run(command: Command, stop: Stop) -> ExitCode {
    match command {
        Command::Listen {
            node,
            max_connections,
            refuse,
        } => {
            let policy = if refuse {
                mesh::direct::IncomingPolicy::RefuseAll
            } else {
                mesh::direct::IncomingPolicy::AcceptAll
            };
            punch::listen(node, max_connections, policy, &stop).await
        }
        Command::Dial {
            node,
            peer,
            bytes,
            echo_timeout_ms,
            attempts,
            idle_ms,
            until_direct,
        } => {
            let echo = punch::Echo {
                bytes,
                timeout: Duration::from_millis(echo_timeout_ms),
                idle: Duration::from_millis(idle_ms),
                until_direct,
            };
            punch::dial(node, &peer, echo, attempts, &stop).await
        }
        Command::Doctor {
            punch: Some(punch),
            stun,
            alt,
            insecure,
            bind,
            timeout_ms,
            connect_timeout_ms,
            no_upnp,
            upnp_wait_ms,
            relay_timeout_ms,
        } => {
            let node = punch::NodeArgs {
                punch,
                insecure,
                key_file: None,
                bind,
                no_upnp,
                // The doctor reports the node's own allocations (then frees them).
                no_relay: false,
                relay_only: false,
                // The doctor runs its own NAT discovery.
                no_predict: true,
                no_birthday: true,
                upnp_search_ms: punch::DEFAULT_UPNP_SEARCH_MS,
                budget_ms: punch::DEFAULT_BUDGET_MS,
                connect_timeout_ms,
            };
            let waits = doctor::Waits {
                stun_ms: timeout_ms,
                upnp: Duration::from_millis(upnp_wait_ms),
                relay: Duration::from_millis(relay_timeout_ms.max(1)),
            };
            doctor::doctor(node, alt.or(stun), waits, &stop).await
        }
        Command::Doctor {
            stun: Some(stun),
            bind,
            timeout_ms,
            ..
        } => {
            stop.or_interrupted(stun_cmds::doctor(&stun, bind, timeout_ms))
                .await
        }
        Command::Doctor { .. } => error_line("usage", "doctor needs --punch or --stun"),
        Command::Upnp(args) => stun_cmds::upnp(args, &stop).await,
        Command::Host {
            session,
            punch,
            name,
            max_players,
            listing_timeout_secs,
        } => {
            let timeout = listing_timeout_secs;
            session_cmds::host(session, &punch, name, max_players, timeout, &stop).await
        }
        Command::Join { session, id, punch } => session_cmds::join(session, id, punch, &stop).await,
        Command::List { master, game } => {
            stop.or_interrupted(session_cmds::list(&master, &game))
                .await
        }
        Command::SendUdp { to, bind, bytes } => {
            stop.or_interrupted(stun_cmds::send_udp(to, bind, bytes))
                .await
        }
    }
}
