//! The process setup the server binaries share: logs and the shutdown signal.
//!
//! Steps of a server's `main`:
//! 1. [`init_tracing`] with its `--log` filter (else `RUST_LOG`, else `info`) and
//!    `--log-format` ([`LogFormat`]); logs go to stderr, since stdout carries the
//!    machine-readable events (the first being the `listening` line).
//! 2. [`shutdown_signal`] installs the SIGINT/SIGTERM handlers *before* the listening line
//!    is printed, so a signal sent right after it is never lost, and returns a future that
//!    resolves to the signal's name.

use std::future::Future;
use std::io;

use tracing_subscriber::EnvFilter;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber: `filter` (`RUST_LOG` syntax) or `RUST_LOG` or
/// `info`, in `format`, to stderr.
pub fn init_tracing(filter: Option<&str>, format: LogFormat) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future resolving to the
/// name of the first signal received.
pub fn shutdown_signal() -> io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}
