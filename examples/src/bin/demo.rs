//! `demo`: the whole session story on one machine, from one command
//! (`cargo run --release -p examples --bin demo`).
//!
//! Steps (printed as a timeline with elapsed times):
//! 1. Start the master server (SQLite in a temp dir) and the punch server in this process,
//!    on 127.0.0.1 ephemeral ports.
//! 2. Start peer 1 as a separate process (this executable re-run as the hidden `demo peer`
//!    subcommand, speaking JSON lines on stdin/stdout); it hosts and lists a session.
//! 3. Peers 2..N join one after the other (each join's latency is printed).
//! 4. Every peer broadcasts a reliable hello; each must arrive at all others.
//! 5. The listing on the master server shows players = N.
//! 6. The host's process is SIGKILLed; every survivor must report the same new host.
//! 7. The listing is still live with players = N-1 and `connect.peer` = the new host.
//! 8. The survivors leave gracefully (their stdin is closed), the servers stop, exit 0.
//!
//! Any step that does not happen within `--step-timeout-secs` ends the demo with a message
//! and exit code 1. Everything binds and sends on 127.0.0.1 only.

mod demo {
    pub mod peer;
    pub mod proto;
    pub mod run;
    pub mod servers;
}

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use demo::peer::PeerArgs;
use tracing_subscriber::EnvFilter;

/// Most peers: the session's capacity.
const MAX_PEERS: u64 = 8;

/// Hosts, joins, messages and migrates a mesh session on this machine, with real peer
/// processes and in-process master and punch servers.
#[derive(Debug, Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Internal: run one peer (the demo starts itself this way).
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Number of peers (2 to 8): peer 1 hosts, the others join.
    #[arg(long, env = "DEMO_PEERS", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(2..=MAX_PEERS))]
    peers: u64,
    /// Game name of the session listing.
    #[arg(long, env = "DEMO_GAME", default_value = "mesh-demo")]
    game: String,
    /// Print only the main steps (no per-message or per-member details).
    #[arg(long, env = "DEMO_QUIET")]
    quiet: bool,
    /// Longest any one step may take, in seconds.
    #[arg(long, env = "DEMO_STEP_TIMEOUT_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    step_timeout_secs: u64,
}

/// Subcommands (without one, the demo runs).
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start only the master and punch servers on 127.0.0.1 and print the `game` flags
    /// that use them; serve until Ctrl-C, end of stdin or `--for-secs`.
    Servers {
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 3600)]
        for_secs: u64,
    },
    /// Run one peer, driven over stdin/stdout JSON lines.
    #[command(hide = true)]
    Peer(PeerArgs),
}

/// `demo servers`: the two servers alone, for trying the `game` example by hand.
async fn servers_only(limit: Duration) -> anyhow::Result<()> {
    let servers = demo::servers::Servers::start().await?;
    println!(
        "servers up; run in other terminals:\n  game --master {} --punch {} --bind 127.0.0.1:0 --no-upnp host\n  game --master {} --punch {} --bind 127.0.0.1:0 --no-upnp join",
        servers.master_url, servers.punch, servers.master_url, servers.punch
    );
    // End of stdin also stops (so a supervisor can stop it by closing the pipe).
    let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = eof => {}
        _ = tokio::time::sleep(limit) => {}
    }
    servers.shutdown().await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; the default shows only errors so the timeline stays readable.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (result, role) = match cli.command {
        Some(Cmd::Peer(args)) => (runtime.block_on(demo::peer::run(args)), "demo peer"),
        Some(Cmd::Servers { for_secs }) => (
            runtime.block_on(servers_only(Duration::from_secs(for_secs))),
            "demo servers",
        ),
        None => {
            let opts = demo::run::Options {
                // In range by the value parser.
                peers: usize::try_from(cli.peers).unwrap_or(2),
                game: cli.game,
                quiet: cli.quiet,
                step_timeout: Duration::from_secs(cli.step_timeout_secs),
            };
            (runtime.block_on(demo::run::run(opts)), "demo")
        }
    };
    // Stops what is left (e.g. tasks of the servers after a failure), bounded.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role} FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
