//! `doctor --punch`: NAT behaviour (RFC 5780) against the punch server's STUN port (or
//! `--alt`), registration and RTT over the QUIC control connection, and the UPnP result, as
//! one `doctor` line.
//!
//! Steps:
//! 1. Resolve the STUN server, print `connecting`, start the node (registration). A punch
//!    server that does not answer within `--connect-timeout-ms` ends the doctor at once
//!    with `error {kind: "unreachable"}`.
//! 2. If registration failed, run behaviour discovery on a socket of its own
//!    (`mesh::nat::discover`) and print the NAT findings with `register_error`
//!    (`kind`, `detail`); exit 1.
//! 3. Otherwise, at the same time: behaviour discovery on the node's own socket
//!    (`mesh::nat::discover_on`: its answers come back through the socket's STUN router,
//!    so the mapping and filtering reported are those the node's QUIC traffic gets),
//!    the wait (bounded) for UPnP to settle, and the wait for the server's relay offer
//!    (at most [`RELAY_OFFER_WAIT`]) followed by step 4.
//! 4. The node allocates on every relay offered from its own socket (as every node does:
//!    the relayed address peers would use); wait until each allocation succeeded or
//!    failed (`DirectNode::relay_status`, bounded by `--relay-timeout-ms`), shut the node
//!    down (it frees them), print the `doctor` line with `relays` (`uri`, `username`,
//!    `expires_unix`, and `allocate`: `ok` with `relayed`, `ms`, `freed` (the relay
//!    confirmed the release), or `error` with `reason` and the STUN `code` if refused)
//!    and exit 0.
//!
//! A signal at any step shuts down what was started and exits 1 (`interrupted`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mesh::direct::{DirectNode, IncomingPolicy, RelayState, RelayStatus};
use mesh::nat::{discover, discover_on, NatBehaviour, NatConfig, NatError};
use mesh::turn::RelayCredential;
use mesh::upnp::UpnpState;
use serde_json::{json, Value};

use crate::out::{emit, error_line, ms};
use crate::punch::NodeArgs;
use crate::signals::{bounded_cleanup, interrupted, Stop};

/// Longest wait for the punch server's relay offer after registration (it follows
/// `Registered` at once; a server without relays sends none).
pub const RELAY_OFFER_WAIT: Duration = Duration::from_millis(500);

/// The doctor's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// Timeout of the first STUN transaction, in milliseconds.
    pub stun_ms: u64,
    /// Longest wait for the UPnP result.
    pub upnp: Duration,
    /// Longest check of one relay.
    pub relay: Duration,
}

/// `peer doctor --punch`: NAT behaviour, registration, UPnP, RTT, relays; one line.
///
/// Prints `connecting`, registers, then runs behaviour discovery on the node's socket. A
/// punch server that does not answer within `--connect-timeout-ms` ends it at once with
/// `error {kind: "unreachable"}`; other registration failures are reported in the
/// `doctor` line (`register_error`) next to the NAT findings (found on a socket of its
/// own then).
pub async fn doctor(args: NodeArgs, alt: Option<String>, waits: Waits, stop: &Stop) -> ExitCode {
    let timeout_ms = waits.stun_ms;
    let config = match args.config() {
        Ok(c) => c,
        Err((kind, detail)) => return error_line(kind, &detail),
    };
    let stun = alt.unwrap_or_else(|| config.punch.host_port());
    let server = match crate::stun_cmds::resolve(&stun, args.bind) {
        Ok(server) => server,
        Err(detail) => return error_line("resolve", &detail),
    };
    emit(&args.connecting_line());
    let nat_config = NatConfig::with_transaction_timeout(Duration::from_millis(timeout_ms.max(1)));
    let node = match stop.until(args.start(IncomingPolicy::RefuseAll)).await {
        Err(signal) => return interrupted(signal),
        Ok(Err(("unreachable", detail))) => return error_line("unreachable", &detail),
        Ok(started) => started,
    };
    let node = match node {
        Ok(node) => node,
        Err((kind, detail)) => {
            // Without a node, discovery runs on a socket of its own; the NAT findings
            // stand on their own: report them with why registration failed.
            let bind = SocketAddr::new(args.bind.ip(), 0);
            let discovery = async {
                let socket = tokio::net::UdpSocket::bind(bind).await?;
                discover(&socket, server, nat_config).await
            };
            let nat = match stop.until(discovery).await {
                Ok(nat) => nat,
                Err(signal) => return interrupted(signal),
            };
            let mut line = json!({"event": "doctor", "punch": args.punch});
            add_nat(&mut line, nat);
            line["register_error"] = json!({"kind": kind, "detail": detail});
            emit(&line);
            return ExitCode::FAILURE;
        }
    };
    // Discovery on the node's own socket (the mapping and filtering its QUIC traffic
    // gets), while UPnP settles and the relays offered are checked.
    let work = async {
        let relays = async {
            let offered = node.wait_relays(RELAY_OFFER_WAIT).await;
            settled_relays(&node, &offered, waits.relay).await;
            offered
        };
        tokio::join!(
            discover_on(node.endpoint(), server, nat_config),
            settled_upnp(&node, waits.upnp),
            relays
        )
    };
    let (nat, upnp, offered) = match stop.until(work).await {
        Ok(done) => done,
        Err(signal) => {
            bounded_cleanup(node.shutdown()).await;
            return interrupted(signal);
        }
    };
    // The node's own allocations, as they stood when settled; then it frees them, which
    // the line reports too.
    let mut status = node.relay_status();
    let settled = status.borrow_and_update().clone();
    let mut line = json!({"event": "doctor", "punch": args.punch});
    add_nat(&mut line, nat);
    let reg = node.registration().borrow().clone();
    line["peer"] = node.peer_id().to_string().into();
    line["registered_as"] = reg.observed_addr.to_string().into();
    line["punch_rtt_ms"] = ms(node.server_rtt()).into();
    line["upnp"] = match upnp {
        None => json!({"state": "off"}),
        Some(UpnpState::Mapped { external, .. }) => {
            json!({"state": "mapped", "external": external.to_string()})
        }
        Some(UpnpState::Unavailable { reason }) => {
            json!({"state": "unavailable", "reason": reason})
        }
        Some(UpnpState::Searching) => json!({"state": "searching"}),
    };
    bounded_cleanup(node.shutdown()).await;
    let released = status.borrow().clone();
    line["relays"] = relays_report(&offered, &settled, &released, waits.relay).into();
    emit(&line);
    ExitCode::SUCCESS
}

/// The behaviour found, or why discovery failed, into the `doctor` line.
fn add_nat(line: &mut Value, nat: Result<NatBehaviour, NatError>) {
    match nat {
        Ok(b) => {
            line["mapping"] = b.mapping.as_str().into();
            line["filtering"] = b.filtering.as_str().into();
            line["nat_type"] = b.nat_type().as_str().into();
            line["reflexive"] = b.reflexive.to_string().into();
            line["stun_rtt_ms"] = b.rtt.map(ms).into();
        }
        Err(e) => line["nat_error"] = json!({"kind": e.kind(), "detail": e.to_string()}),
    }
}

/// Waits until the node's allocation on every offered relay succeeded or failed, at most
/// `wait`.
async fn settled_relays(node: &DirectNode, offered: &[RelayCredential], wait: Duration) {
    let mut status = node.relay_status();
    let settled = |now: &Vec<RelayStatus>| {
        offered.iter().all(|o| {
            now.iter()
                .any(|s| s.relay == o.uri && s.state != RelayState::Allocating)
        })
    };
    let _ = tokio::time::timeout(wait, status.wait_for(settled)).await;
}

/// One JSON object per offered relay, in the order offered: the node's allocation as it
/// stood when settled (`settled`), and whether its release was confirmed (`released`).
fn relays_report(
    offered: &[RelayCredential],
    settled: &[RelayStatus],
    released: &[RelayStatus],
    wait: Duration,
) -> Vec<Value> {
    let state_of = |all: &[RelayStatus], o: &RelayCredential| {
        all.iter()
            .find(|s| s.relay == o.uri)
            .map(|s| s.state.clone())
    };
    offered
        .iter()
        .map(|o| {
            let mut v = json!({
                "uri": o.uri.to_string(),
                "username": o.username,
                "expires_unix": o.expires_unix,
            });
            match state_of(settled, o) {
                Some(RelayState::Allocated { relayed, took }) => {
                    v["allocate"] = "ok".into();
                    v["relayed"] = relayed.to_string().into();
                    v["ms"] = ms(took).into();
                    let freed = state_of(released, o);
                    v["freed"] =
                        matches!(freed, Some(RelayState::Released { confirmed: true })).into();
                }
                Some(RelayState::Failed { code, reason }) => {
                    v["allocate"] = "error".into();
                    v["reason"] = reason.into();
                    if let Some(code) = code {
                        v["code"] = code.into();
                    }
                }
                Some(RelayState::Released { .. }) | Some(RelayState::Allocating) | None => {
                    v["allocate"] = "error".into();
                    v["reason"] = format!("no answer within {wait:?}").into();
                }
            }
            v
        })
        .collect()
}

/// The node's UPnP state once it left `Searching`, or as it is after `wait`.
async fn settled_upnp(node: &DirectNode, wait: Duration) -> Option<UpnpState> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match node.upnp_state() {
            Some(UpnpState::Searching) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
