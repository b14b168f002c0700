//! The servers of the bench as child processes (their binaries next to the bench, started
//! by the tests' loopback helpers), and the `Mesh` each in-process peer uses to reach them.

use super::*;

/// Starts the master server and the punch server, quietly.
pub(crate) fn start_servers() -> Result<Servers> {
    let hint = "build the servers first: cargo build --release -p master-server -p punch-server";
    Servers::start(Stdio::null).context(hint)
}

pub(crate) fn new_mesh(s: &Servers) -> Result<Mesh> {
    common::loopback::loopback_mesh(s)
}
