//! Bounded command execution and the lab's preflight checks (no protocol, no RFC: the
//! plumbing under the RFC 4787 lab).
//!
//! Flow:
//! 1. [`preflight`] checks that the process runs as root (effective uid 0, read from
//!    `/proc/self/status`, no `unsafe`) and that `ip`, `nft`, `sysctl` and `conntrack` are
//!    on the `PATH`.
//! 2. [`run`] starts one command with piped stdin/stdout/stderr, feeds stdin, reads the
//!    outputs on helper threads and waits with a deadline; a command that overruns is
//!    killed (by its own pid) and reported as [`LabError::Timeout`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::LabError;

/// Tools the lab runs, and the Debian packages that provide them.
pub(crate) const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("sysctl", "procps"),
];

/// Default deadline for one lab setup command.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds `name` on the `PATH` (plus `/usr/sbin` and `/sbin`, which a non-login root shell
/// may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Effective uid of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Checks root and the required tools; the error names everything that is missing.
pub fn preflight() -> Result<(), LabError> {
    let mut problems = Vec::new();
    match effective_uid() {
        Some(0) => {}
        Some(uid) => problems.push(format!("running as uid {uid}, not root")),
        None => problems.push("cannot read effective uid from /proc/self/status".into()),
    }
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            problems.push(format!("`{tool}` not found (package {package})"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Preflight(problems.join("; ")))
    }
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Runs `program args` with `stdin` fed in, waits at most `timeout`, returns its output
/// whatever the exit status.
pub fn run_output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, LabError> {
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Spawn {
            command: describe(),
            source: e,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout {
                    command: describe(),
                    timeout,
                });
            }
            Err(e) => {
                return Err(LabError::Spawn {
                    command: describe(),
                    source: e,
                })
            }
        }
    };
    Ok(Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a setup command that must succeed; a failure carries its stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let output = run_output(program, args, stdin, CMD_TIMEOUT)?;
    if output.success() {
        Ok(output.stdout)
    } else {
        Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            code: output.code,
            stderr: output.stderr.trim().to_string(),
        })
    }
}
