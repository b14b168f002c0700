//! NAT lab: network namespaces with real NAT routers, for tests that need root.
//!
//! The lab follows RFC 4787 (NAT behavioural requirements for UDP) so that RFC 5780 NAT
//! behaviour discovery sees exactly the type a router was built as. Building one is:
//! 1. [`preflight`]: root and the tools (`ip`, `nft`, `conntrack`, `sysctl`) are present,
//!    or a clear [`LabError::Preflight`].
//! 2. Remove leftovers of earlier crashed runs: namespaces named with this crate's tag
//!    (`nlab-<pid>-...`) whose owner pid is dead. Nothing else is ever touched.
//! 3. Create the namespaces of one instance, all named `nlab-<pid>-<counter>[-<label>]-<role>`:
//!    a switch (`-sw`, bridges: internet, LAN A, LAN B, and LAN C when router C is asked
//!    for), the server (`-srv`, two public addresses), routers A and B (`-ra`, `-rb`) and
//!    LAN hosts A1, A2 (behind A) and B1 (behind B); router C (`-rc`) and host C1 behind it
//!    only when the builder configured router C ([`LabBuilder::router_c`] or
//!    [`LabBuilder::loss_c`]). IPv6 off unless [`LabBuilder::ipv6`] asks for it (then
//!    global addresses from 2001:db8::/32, no NAT, a stateful firewall per router),
//!    `rp_filter` off, forwarding only on routers.
//! 4. Load each router's nftables ruleset for its [`NatType`] and WAN loss, see `nft.rs`.
//! 5. [`Lab::spawn`] / [`Lab::run`] run programs inside a host with `ip netns exec`.
//!    [`Lab::block_peer`] / [`Lab::unblock_peer`] cut and restore one path at a router
//!    at run time (see `block.rs`).
//! 6. Optionally, [`Lab::start_upnp`] runs miniupnpd (UPnP IGD) on a router, see `upnp.rs`.
//! 7. Drop kills every process in the lab's namespaces and deletes the namespaces; if the
//!    process dies without dropping the lab (Ctrl-C, SIGKILL, CI timeout), a detached
//!    watchdog does the same within a second, and step 2 of the next run is the last resort.
//!
//! Addresses: the "internet" is 198.18.0.0/15 (server 198.18.0.1 and 198.18.0.2, router A
//! WAN 198.18.0.10, router B WAN 198.18.0.20, router C WAN 198.18.0.30); LAN A is
//! 10.1.0.0/24 (router 10.1.0.1, hosts .11 and .12), LAN B is 10.2.0.0/24 (router 10.2.0.1,
//! host .11), LAN C is 10.3.0.0/24 (router 10.3.0.1, host .11). Nothing is linked
//! to the machine's own namespace. Instances have unique names, so tests may build labs in
//! parallel threads.
//!
//! ```no_run
//! use natlab::{Host, Lab, NatType};
//! let lab = Lab::builder().label("demo").router_a(NatType::Symmetric).loss_a(20).build()?;
//! let out = lab.run(Host::LanA1, "ip", &["addr"], std::time::Duration::from_secs(5))?;
//! assert!(out.success());
//! # Ok::<(), natlab::LabError>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod block;
mod cleanup;
mod cmd;
mod ipv6;
mod lab;
mod nft;
mod process;
mod upnp;

use std::fmt;
use std::time::Duration;

pub use cmd::{preflight, which, Output};
pub use lab::{Lab, LabBuilder};
pub use process::LabProcess;
pub use upnp::{UpnpDaemon, UpnpStun, UPNP_HTTP_PORT, UPNP_NAT_TABLE, UPNP_TABLE};

/// The behaviour of a lab router (RFC 4787 mapping and filtering as classically named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatType {
    /// Plain routing: LAN addresses are routed on the lab internet, nothing filtered.
    None,
    /// Endpoint-independent mapping and endpoint-independent filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering, public ports at random.
    Symmetric,
    /// Address-and-port-dependent mapping and filtering, public UDP ports handed out in
    /// sequence (one counter per router, one port per new flow): the NAT port prediction
    /// guesses. Not in [`NatType::ALL`].
    SymmetricSequential,
}

impl NatType {
    /// All five types, in a fixed order.
    pub const ALL: [NatType; 5] = [
        NatType::None,
        NatType::FullCone,
        NatType::Restricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ];

    /// The snake_case name (`none`, `full_cone`, `restricted`, `port_restricted`,
    /// `symmetric`), as `peer doctor` prints it.
    pub fn name(self) -> &'static str {
        match self {
            NatType::None => "none",
            NatType::FullCone => "full_cone",
            NatType::Restricted => "restricted",
            NatType::PortRestricted => "port_restricted",
            NatType::Symmetric => "symmetric",
            NatType::SymmetricSequential => "symmetric_sequential",
        }
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the lab routers (C exists only in labs built with router C configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Router {
    /// Router A (LAN 10.1.0.0/24 with hosts A1 and A2).
    A,
    /// Router B (LAN 10.2.0.0/24 with host B1).
    B,
    /// Router C (LAN 10.3.0.0/24 with host C1); see [`LabBuilder::router_c`].
    C,
}

/// A host of the lab (each one is its own network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The server on the lab internet, with two public addresses.
    Server,
    /// Router A (WAN 198.18.0.10, LAN 10.1.0.1).
    RouterA,
    /// Router B (WAN 198.18.0.20, LAN 10.2.0.1).
    RouterB,
    /// First host behind router A (10.1.0.11).
    LanA1,
    /// Second host behind router A (10.1.0.12), for same-NAT tests.
    LanA2,
    /// Host behind router B (10.2.0.11).
    LanB1,
    /// Router C (WAN 198.18.0.30, LAN 10.3.0.1); only in labs with router C.
    RouterC,
    /// Host behind router C (10.3.0.11); only in labs with router C.
    LanC1,
}

impl Host {
    /// Every host, in creation order (the last two only exist in labs with router C).
    pub const ALL: [Host; 8] = [
        Host::Server,
        Host::RouterA,
        Host::RouterB,
        Host::LanA1,
        Host::LanA2,
        Host::LanB1,
        Host::RouterC,
        Host::LanC1,
    ];

    /// Whether the host belongs to router C's part of the lab (created only on request).
    pub fn is_c(self) -> bool {
        matches!(self, Host::RouterC | Host::LanC1)
    }

    /// Short role suffix used in namespace names.
    pub(crate) fn role(self) -> &'static str {
        match self {
            Host::Server => "srv",
            Host::RouterA => "ra",
            Host::RouterB => "rb",
            Host::LanA1 => "a1",
            Host::LanA2 => "a2",
            Host::LanB1 => "b1",
            Host::RouterC => "rc",
            Host::LanC1 => "c1",
        }
    }
}

/// Errors of the lab harness.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Not root, or a tool is missing.
    #[error(
        "NAT lab needs root and packages nftables, iproute2, conntrack (and procps): {0}. \
         Run the lab tests as root (CI does), or set NATLAB_SKIP=1 to skip them explicitly"
    )]
    Preflight(String),
    /// A command could not be started.
    #[error("NAT lab: cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command or a wait overran its deadline.
    #[error("NAT lab: `{command}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line or what was waited for.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A setup command failed.
    #[error("NAT lab: `{command}` failed (exit {code:?}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit code.
        code: Option<i32>,
        /// Its stderr.
        stderr: String,
    },
    /// The host or router is not part of this lab (router C was not configured).
    #[error("NAT lab: {0:?} does not exist in this lab (configure it with LabBuilder::router_c)")]
    Absent(Host),
    /// Local I/O (temporary directory).
    #[error("NAT lab: I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether the environment asks to skip lab tests (`NATLAB_SKIP=1`); prints a loud note
/// when it does. Lab tests call this first and otherwise fail (never pass silently) when
/// the lab cannot be built.
pub fn skip_requested(test: &str) -> bool {
    let skip = std::env::var("NATLAB_SKIP").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: NATLAB_SKIP=1 (this test needs root and the NAT lab)");
    }
    skip
}
