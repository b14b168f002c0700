//! `doctor --punch`: NAT behaviour (RFC 5780) against the punch server's STUN port (or
//! `--alt`), registration and RTT over the QUIC control connection, and the UPnP result, as
//! one `doctor` line.
//!
//! Steps:
//! 1. Resolve the STUN server, bind the discovery socket, print `connecting`.
//! 2. Run behaviour discovery (`mesh::nat::discover`) and the node's start (registration)
//!    at the same time. A punch server that does not answer within
//!    `--connect-timeout-ms` ends the doctor at once with `error {kind: "unreachable"}`.
//! 3. If registration failed otherwise, print the NAT findings with `register_error`
//!    (`kind`, `detail`) and exit 1; else wait (bounded) for UPnP to settle, print the
//!    `doctor` line, shut the node down and exit 0.
//!
//! A signal at any step shuts down what was started and exits 1 (`interrupted`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mesh::direct::{DirectNode, IncomingPolicy};
use mesh::nat::{discover, NatConfig};
use mesh::upnp::UpnpState;
use serde_json::json;

use crate::out::{emit, error_line, ms};
use crate::punch::NodeArgs;
use crate::signals::{bounded_cleanup, interrupted, Stop};

/// `peer doctor --punch`: NAT behaviour, registration, UPnP, RTT; one line.
///
/// Prints `connecting`, then runs behaviour discovery and the registration at the same
/// time. A punch server that does not answer within `--connect-timeout-ms` ends it at once
/// with `error {kind: "unreachable"}`; other registration failures are reported in the
/// `doctor` line (`register_error`) next to the NAT findings.
pub async fn doctor(
    args: NodeArgs,
    alt: Option<String>,
    timeout_ms: u64,
    upnp_wait: Duration,
    stop: &Stop,
) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err((kind, detail)) => return error_line(kind, &detail),
    };
    let stun = alt.unwrap_or_else(|| config.punch.host_port());
    let server = match crate::stun_cmds::resolve(&stun, args.bind) {
        Ok(server) => server,
        Err(detail) => return error_line("resolve", &detail),
    };
    let bind = SocketAddr::new(args.bind.ip(), 0);
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(e) => return error_line("io", &format!("bind {bind}: {e}")),
    };
    emit(&args.connecting_line());
    let nat_config = NatConfig::with_transaction_timeout(Duration::from_millis(timeout_ms.max(1)));
    let discovery = discover(&socket, server, nat_config);
    let registration = args.start(IncomingPolicy::RefuseAll);
    tokio::pin!(discovery, registration);
    let (mut nat, mut node) = (None, None);
    while nat.is_none() || node.is_none() {
        tokio::select! {
            found = &mut discovery, if nat.is_none() => nat = Some(found),
            started = &mut registration, if node.is_none() => match started {
                Err(("unreachable", detail)) => return error_line("unreachable", &detail),
                started => node = Some(started),
            },
            signal = stop.wait() => {
                if let Some(Ok(node)) = node {
                    bounded_cleanup(DirectNode::shutdown(node)).await;
                }
                return interrupted(signal);
            }
        }
    }
    let mut line = json!({"event": "doctor", "punch": args.punch});
    match nat {
        Some(Ok(b)) => {
            line["mapping"] = b.mapping.as_str().into();
            line["filtering"] = b.filtering.as_str().into();
            line["nat_type"] = b.nat_type().as_str().into();
            line["reflexive"] = b.reflexive.to_string().into();
            line["stun_rtt_ms"] = b.rtt.map(ms).into();
        }
        Some(Err(e)) => line["nat_error"] = json!({"kind": e.kind(), "detail": e.to_string()}),
        None => {}
    }
    let node = match node {
        Some(Ok(node)) => node,
        Some(Err((kind, detail))) => {
            // The NAT findings stand on their own: report them with why registration
            // failed.
            line["register_error"] = json!({"kind": kind, "detail": detail});
            emit(&line);
            return ExitCode::FAILURE;
        }
        None => return error_line("internal", "registration did not finish"),
    };
    let reg = node.registration().borrow().clone();
    line["peer"] = node.peer_id().to_string().into();
    line["registered_as"] = reg.observed_addr.to_string().into();
    line["punch_rtt_ms"] = ms(node.server_rtt()).into();
    let upnp = match stop.until(settled_upnp(&node, upnp_wait)).await {
        Ok(upnp) => upnp,
        Err(signal) => {
            bounded_cleanup(node.shutdown()).await;
            return interrupted(signal);
        }
    };
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
    emit(&line);
    bounded_cleanup(node.shutdown()).await;
    ExitCode::SUCCESS
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
