//! `punch-server`: STUN server (RFC 8489, RFC 5780) and punchthrough coordinator.
//!
//! Steps: parse flags/env into a [`ServerConfig`], set up tracing, check the config, load
//! (or create) the server's key file, bind, print one JSON line
//! `{"event":"listening","id":...,"addr":...}` on stdout, serve until SIGINT/SIGTERM, shut
//! down. Peers address the server as `ID@HOST:PORT` and verify its key.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mesh::identity::Identity;
use punch_server::config::{ServerConfig, StunConfig, DEFAULT_KEY_FILE};
use punch_server::driver::Server;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// STUN server (RFC 8489 Binding, RFC 5780 behaviour discovery) of the punch server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// UDP address for STUN (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "PUNCH_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Alternate IP:PORT for RFC 5780: serve on all four IP/port combinations.
    #[arg(long, env = "PUNCH_ALT_ADDR")]
    alt_addr: Option<SocketAddr>,
    /// TCP address for the HTTP `/metrics` and `/healthz` endpoint (off if unset).
    #[arg(long, env = "PUNCH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// STUN requests per second allowed per source IP (IPv6: per /64); 0 = no limit.
    #[arg(long, env = "PUNCH_RATE_LIMIT", default_value_t = StunConfig::default().rate_limit_per_sec)]
    rate_limit: u32,
    /// Burst of the per-source rate limit (default: twice the rate, at least 1).
    #[arg(long, env = "PUNCH_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Send every response with its own `sendmsg` (no GSO coalescing of runs of
    /// responses to one destination).
    #[arg(long, env = "PUNCH_NO_GSO")]
    no_gso: bool,
    /// The server's Ed25519 key (PKCS#8 PEM), created with mode 0600 if missing. Its
    /// public key is the server id that peers verify (`ID@HOST:PORT`).
    #[arg(long, env = "PUNCH_KEY_FILE", default_value = DEFAULT_KEY_FILE)]
    key_file: PathBuf,
    /// Log filter (`RUST_LOG` syntax, e.g. `info` or `punch_server=debug`); overrides
    /// `RUST_LOG`.
    #[arg(long, env = "PUNCH_LOG")]
    log: Option<String>,
    /// Log format.
    #[arg(long, env = "PUNCH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

impl Cli {
    fn into_config(self) -> ServerConfig {
        let stun = StunConfig {
            rate_limit_per_sec: self.rate_limit,
            rate_limit_burst: self
                .rate_burst
                .unwrap_or(self.rate_limit.saturating_mul(2))
                .max(1),
            rate_limit_seed: rand_seed(),
            ..StunConfig::default()
        };
        ServerConfig {
            listen: self.listen,
            alt_addr: self.alt_addr,
            metrics_listen: self.metrics_listen,
            gso: !self.no_gso,
            stun,
        }
    }
}

/// A per-process seed for the rate-limit hash, from the std hasher's random keys.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

fn init_tracing(cli: &Cli) {
    let filter = match &cli.log {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Logs go to stderr: stdout carries the machine-readable events.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGINT/SIGTERM handlers (before the listening line, so that a signal sent
/// right after it is never lost) and returns a future resolving to the signal's name.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli);
    let key_file = cli.key_file.clone();
    let config = cli.into_config();
    // Check the flags before touching the key file, so a bad command line creates nothing.
    config.validate()?;
    let identity = Identity::load_or_generate(&key_file)
        .with_context(|| format!("loading the server key from {}", key_file.display()))?;
    let signal = shutdown_signal()?;
    let server = Server::start(config.clone())
        .await
        .context("starting the STUN server")?;
    let mut event = serde_json::json!({
        "event": "listening",
        "id": identity.peer_id().to_string(),
        "addr": server.local_addr().to_string(),
    });
    if let Some(alt) = server.alt_addr() {
        event["alt_addr"] = alt.to_string().into();
    }
    if let Some(m) = server.metrics_addr() {
        event["metrics_addr"] = m.to_string().into();
    }
    // The first stdout line, for tests and supervisors; flushed by println!'s line buffer.
    println!("{event}");
    tracing::info!(
        id = %identity.peer_id(),
        addr = %server.local_addr(),
        alt = ?server.alt_addr(),
        metrics = ?server.metrics_addr(),
        rate_limit = config.stun.rate_limit_per_sec,
        "listening"
    );
    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let totals = server.stats().total();
    server.shutdown().await;
    tracing::info!(
        received = totals.received,
        answered = totals.success_responses + totals.error_responses,
        dropped = totals.dropped_total(),
        "stopped"
    );
    Ok(())
}
