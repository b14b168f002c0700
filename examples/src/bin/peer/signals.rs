//! SIGINT and SIGTERM as a graceful stop for every subcommand.
//!
//! Steps:
//! 1. [`install`] (inside the runtime, before the subcommand starts) takes over both
//!    signals and spawns a watcher task.
//! 2. The first signal: the watcher prints `{"event":"stopping","signal":"SIGINT"}` and
//!    wakes every [`Stop::wait`]. The subcommand cleans up as its own exit would (UPnP
//!    mapping removed, QUIC connections closed with a close code, the session left) and
//!    exits: 0 for `listen`, `host` and `join` (they run until stopped), 1 with
//!    `error {kind: "interrupted"}` for the others (their result never came).
//! 3. A second signal, while the cleanup runs: the watcher exits the process at once with
//!    status 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
//!
//! Every cleanup is bounded ([`CLEANUP_LIMIT`]), so a stop never hangs.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{signal, Signal as UnixSignal, SignalKind};
use tokio::sync::watch;

use crate::out::emit;

/// Longest graceful cleanup after the first signal (the node's shutdown is bounded by
/// about 2 s plus the UPnP removal's own timeout); past it the command exits anyway.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(12);

/// The signal that asked for the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The conventional exit status of a process ended by this signal.
    fn exit_status(self) -> i32 {
        match self {
            Signal::Interrupt => 128 + 2,
            Signal::Terminate => 128 + 15,
        }
    }
}

/// Resolves when the first signal arrived (cheap to clone; every clone sees it).
#[derive(Debug, Clone)]
pub struct Stop {
    first: watch::Receiver<Option<Signal>>,
}

impl Stop {
    /// Waits for the first SIGINT or SIGTERM.
    pub async fn wait(&self) -> Signal {
        let mut first = self.first.clone();
        loop {
            if let Some(signal) = *first.borrow_and_update() {
                return signal;
            }
            if first.changed().await.is_err() {
                // The watcher is gone: no signal will ever be reported.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `work` unless a signal comes first (`work` is then dropped).
    pub async fn until<T>(&self, work: impl Future<Output = T>) -> Result<T, Signal> {
        tokio::select! {
            done = work => Ok(done),
            signal = self.wait() => Err(signal),
        }
    }

    /// Runs `work` unless a signal comes first; then prints `error {kind: "interrupted"}`
    /// and fails (for commands with nothing to clean up beyond dropping `work`).
    pub async fn or_interrupted(&self, work: impl Future<Output = ExitCode>) -> ExitCode {
        self.until(work).await.unwrap_or_else(interrupted)
    }
}

/// Prints `{"event":"error","kind":"interrupted","signal":..}` and returns failure.
pub fn interrupted(signal: Signal) -> ExitCode {
    emit(&json!({
        "event": "error",
        "kind": "interrupted",
        "detail": format!("stopped by {} before the result", signal.name()),
        "signal": signal.name(),
    }));
    ExitCode::FAILURE
}

/// Runs a graceful cleanup, bounded by [`CLEANUP_LIMIT`].
pub async fn bounded_cleanup(cleanup: impl Future<Output = ()>) {
    if tokio::time::timeout(CLEANUP_LIMIT, cleanup).await.is_err() {
        tracing::warn!(limit = ?CLEANUP_LIMIT, "cleanup did not finish in time");
    }
}

/// Takes over SIGINT and SIGTERM (see the module docs). Must run inside the runtime.
pub fn install() -> std::io::Result<Stop> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, first) = watch::channel(None);
    tokio::spawn(async move {
        let signal = next_signal(&mut interrupt, &mut terminate).await;
        emit(&json!({"event": "stopping", "signal": signal.name()}));
        tx.send_replace(Some(signal));
        let again = next_signal(&mut interrupt, &mut terminate).await;
        emit(&json!({"event": "killed", "signal": again.name()}));
        std::process::exit(again.exit_status());
    });
    Ok(Stop { first })
}

/// The next of the two signals.
async fn next_signal(interrupt: &mut UnixSignal, terminate: &mut UnixSignal) -> Signal {
    tokio::select! {
        _ = interrupt.recv() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    }
}
