//! `master-server`: the session listing service.
//!
//! Prints `{"event":"listening","addr":"IP:PORT"}` as its first stdout line once it
//! accepts connections, then serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use master_server::config::ConnLimits;
use master_server::{App, Config};
use server_ops::process::{init_tracing, shutdown_signal, LogFormat};

/// Game session listing service with timeouts and heartbeats.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "MASTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `sqlite:PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:master.db")]
    database: String,
    /// Requests per second per client IP (burst twice that); 0 turns limiting off.
    #[arg(long, env = "MASTER_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Smallest session timeout accepted, in seconds.
    #[arg(long, env = "MASTER_MIN_TIMEOUT_SECS", default_value_t = 5)]
    min_timeout_secs: u32,
    /// Largest session timeout accepted, in seconds.
    #[arg(long, env = "MASTER_MAX_TIMEOUT_SECS", default_value_t = 3600)]
    max_timeout_secs: u32,
    /// Take the client IP from the last X-Forwarded-For entry (behind a trusted proxy).
    #[arg(long, env = "MASTER_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
    /// Most sessions held at once.
    #[arg(long, env = "MASTER_MAX_SESSIONS", default_value_t = 1_000_000)]
    max_sessions: usize,
    /// Most live sessions one client IP may hold (the forwarded address with
    /// --trust-forwarded-for); creates beyond get 429. 0 turns the cap off.
    #[arg(long, env = "MASTER_MAX_SESSIONS_PER_IP", default_value_t = 64)]
    max_sessions_per_ip: usize,
    /// Milliseconds a client has to send a request's headers (from the connection's
    /// opening or the request's first byte); slower connections are closed.
    #[arg(long, env = "MASTER_HEADER_READ_TIMEOUT_MS", default_value_t = 5000)]
    header_read_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body after its headers; slower
    /// requests get 408 and the connection is closed.
    #[arg(long, env = "MASTER_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    body_read_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may stay idle between requests.
    #[arg(long, env = "MASTER_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// Most connections open at once from one TCP peer address (behind a proxy: the
    /// proxy's); more are closed at accept. 0 turns the cap off.
    #[arg(long, env = "MASTER_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Most connections open at once; lowered to the descriptor limit minus 128.
    #[arg(long, env = "MASTER_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Write buffered heartbeats every N ms; 0 commits each heartbeat before answering.
    #[arg(long, env = "MASTER_HEARTBEAT_FLUSH_MS", default_value_t = 50)]
    heartbeat_flush_ms: u64,
    /// Log as JSON lines instead of text (filter with RUST_LOG).
    #[arg(long, env = "MASTER_LOG_JSON")]
    log_json: bool,
}

impl Cli {
    fn config(&self) -> Config {
        Config {
            database_url: self.database.clone(),
            rate_limit_per_sec: self.rate_limit,
            min_timeout_secs: self.min_timeout_secs,
            max_timeout_secs: self.max_timeout_secs,
            // 60 s, within the accepted range.
            default_timeout_secs: 60u32.min(self.max_timeout_secs).max(self.min_timeout_secs),
            trust_forwarded_for: self.trust_forwarded_for,
            max_sessions: self.max_sessions,
            max_sessions_per_ip: self.max_sessions_per_ip,
            conn: ConnLimits {
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                max_per_ip: self.max_connections_per_ip,
                max_total: self.max_connections,
            },
            heartbeat_flush: Duration::from_millis(self.heartbeat_flush_ms),
            ..Config::default()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = if cli.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    init_tracing(None, format);
    let signal = shutdown_signal().context("installing the SIGINT/SIGTERM handlers")?;

    #[cfg(unix)]
    match master_server::serve::raise_fd_limit() {
        Ok((soft, hard)) => tracing::info!(?soft, ?hard, "descriptor limit (soft raised to hard)"),
        Err(err) => tracing::warn!(%err, "cannot raise the descriptor limit"),
    }
    let app = App::start(cli.config())
        .await
        .context("starting the master server")?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addr": addr.to_string()})
    );
    tracing::info!(%addr, "listening");
    let shutdown = async {
        let signal = signal.await;
        tracing::info!(signal, "shutting down");
    };
    app.serve(listener, shutdown).await.context("serving")?;
    Ok(())
}
