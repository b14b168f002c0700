//! A process running inside a lab namespace (plumbing; the protocols are the program's).
//!
//! Flow:
//! 1. [`crate::Lab::spawn`] starts `ip netns exec NS PROGRAM ARGS` (which execs PROGRAM, so
//!    the child pid is the program's pid) with piped stdout and stderr.
//! 2. Reader threads forward stdout lines to a channel ([`LabProcess::read_line`] waits
//!    with a deadline) and collect stderr ([`LabProcess::stderr`]).
//! 3. Dropping the handle kills the process by its pid and reaps it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::LabError;

/// A child process in a lab namespace; killed when dropped.
#[derive(Debug)]
pub struct LabProcess {
    name: String,
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl LabProcess {
    pub(crate) fn new(name: String, mut child: Child) -> Self {
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        LabProcess {
            name,
            child,
            lines,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next stdout line, waiting at most `timeout`; `Ok(None)` once stdout is closed.
    pub fn read_line(&mut self, timeout: Duration) -> Result<Option<String>, LabError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(LabError::Timeout {
                command: format!(
                    "{}: next stdout line (stderr so far: {})",
                    self.name,
                    self.stderr()
                ),
                timeout,
            }),
        }
    }

    /// Reads stdout lines until one contains `needle`, within `timeout` overall.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_line(left)? {
                Some(line) if line.contains(needle) => return Ok(line),
                Some(_) => {}
                None => {
                    return Err(LabError::Command {
                        command: self.name.clone(),
                        code: self.child.try_wait().ok().flatten().and_then(|s| s.code()),
                        stderr: format!("exited before printing {needle:?}: {}", self.stderr()),
                    })
                }
            }
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits at most `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (by its pid) and reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
