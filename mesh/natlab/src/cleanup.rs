//! Removal of lab namespaces: this instance's on drop, dead runs' leftovers on start
//! (plumbing, no RFC).
//!
//! Steps, for one namespace:
//! 1. `ip netns pids NS` lists the processes inside; each is killed with `kill -KILL PID`
//!    (every process in a lab namespace was started by the lab).
//! 2. `ip netns delete NS` removes it; its veths, bridges and nftables tables go with it.
//!
//! A watchdog ([`spawn_watchdog`]) covers interruptions: a detached `sh` loop (own session
//! via `setsid`, so a Ctrl-C to the test's process group does not reach it) that waits
//! for the owner process to disappear and then does steps 1 and 2 for the instance's
//! namespaces. A normal drop kills the watchdog (by its pid) first.
//!
//! Leftovers are namespaces named `nlab-<pid>-...` whose `<pid>` no longer runs (no
//! `/proc/<pid>`). Namespaces of live processes (parallel tests, other runs) and names
//! without the tag are never touched.

use std::path::Path;
use std::time::Duration;

use crate::cmd::{run, run_output};
use crate::LabError;

/// Tag every lab namespace name starts with.
pub(crate) const TAG: &str = "nlab-";

/// Names of all namespaces on the machine.
pub(crate) fn list_namespaces() -> Result<Vec<String>, LabError> {
    let out = run("ip", &["netns", "list"], None)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Kills the processes in `ns` and deletes it; best effort, returns the first error.
pub(crate) fn remove_namespace(ns: &str) -> Result<(), LabError> {
    let mut first_error = None;
    if let Ok(out) = run_output("ip", &["netns", "pids", ns], None, Duration::from_secs(10)) {
        for pid in out
            .stdout
            .split_whitespace()
            .filter(|p| p.parse::<u32>().is_ok())
        {
            let _ = run_output("kill", &["-KILL", pid], None, Duration::from_secs(5));
        }
    }
    if let Err(e) = run("ip", &["netns", "delete", ns], None) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Starts the watchdog of one lab instance; see the module docs.
pub(crate) fn spawn_watchdog(namespaces: &[String]) -> Result<std::process::Child, LabError> {
    let owner = std::process::id();
    // Names are made of [A-Za-z0-9_-] only (see `LabBuilder::label`), safe to embed.
    let script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; \
         for ns in {}; do \
           for p in $(ip netns pids $ns 2>/dev/null); do kill -KILL $p; done; \
           ip netns delete $ns 2>/dev/null; \
         done",
        namespaces.join(" ")
    );
    std::process::Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| LabError::Spawn {
            command: "setsid sh -c <watchdog>".into(),
            source: e,
        })
}

/// The owner pid encoded in a lab namespace name, if the name is ours.
pub(crate) fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(TAG)?.split('-').next()?.parse().ok()
}

/// Removes namespaces left by lab runs whose process is gone. Best effort: another test
/// process may be removing the same leftover at the same moment, so a failed removal is
/// only reported on stderr.
pub(crate) fn remove_leftovers() -> Result<(), LabError> {
    for ns in list_namespaces()? {
        if let Some(pid) = owner_pid(&ns) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("natlab: removing leftover namespace {ns} (owner pid {pid} is gone)");
                if let Err(e) = remove_namespace(&ns) {
                    eprintln!("natlab: could not remove leftover {ns}: {e}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("nlab-1234-0-srv"), Some(1234));
        assert_eq!(owner_pid("nlab-1234-3-stun-ra"), Some(1234));
        assert_eq!(owner_pid("other-1234-srv"), None);
        assert_eq!(owner_pid("nlab-x-srv"), None);
    }
}
