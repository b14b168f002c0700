//! Checks that a relay offer works: allocate a UDP relay with its credentials, then free
//! it. A thin tokio driver of the sans-IO [`TurnClient`]; `peer doctor` reports its
//! result per relay.
//!
//! Steps of [`check_relay`]:
//! 1. Resolve the relay's URI (`HOST:PORT`) and bind a fresh UDP socket of its family.
//! 2. Allocate (the 401 challenge, then the signed request) and wait for the relayed
//!    address. Steps 1 and 2 together take at most the timeout.
//! 3. Free the allocation (Refresh with lifetime 0) so the check leaves nothing behind,
//!    within the timeout again; a failed free is reported (`freed: false`), not fatal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::client::{RequestId, TurnClient, TurnClientConfig, TurnError, TurnEvent};
use super::msg::Response;
use super::RelayCredential;

/// A working relay: what the allocation gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCheck {
    /// The relayed transport address (XOR-RELAYED-ADDRESS).
    pub relayed: SocketAddr,
    /// This socket's address as the relay saw it (XOR-MAPPED-ADDRESS).
    pub mapped: Option<SocketAddr>,
    /// The lifetime granted, in seconds.
    pub lifetime: u32,
    /// How long the allocation took (challenge included).
    pub elapsed: Duration,
    /// Whether the allocation was freed again.
    pub freed: bool,
}

/// Allocates on `relay` with its credentials (failing after `timeout`), then frees the
/// allocation (giving up after `timeout` more).
pub async fn check_relay(
    relay: &RelayCredential,
    timeout: Duration,
) -> Result<RelayCheck, TurnError> {
    let (mut client, sock, mut check) =
        match tokio::time::timeout(timeout, allocate(relay, timeout)).await {
            Ok(allocated) => allocated?,
            Err(_) => return Err(TurnError::Timeout(timeout)),
        };
    let id = client.free(Instant::now())?;
    let freed = tokio::time::timeout(timeout, run(&mut client, &sock, id)).await;
    check.freed = matches!(freed, Ok(Ok(_)));
    Ok(check)
}

/// Steps 1 and 2: the client, its socket, and the allocation (not yet freed).
async fn allocate(
    relay: &RelayCredential,
    timeout: Duration,
) -> Result<(TurnClient, UdpSocket, RelayCheck), TurnError> {
    let server = tokio::net::lookup_host(relay.uri.host_port())
        .await?
        .next()
        .ok_or(TurnError::Protocol("the relay's host name has no address"))?;
    let any = match server.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    let config = TurnClientConfig {
        timeout,
        ..TurnClientConfig::default()
    };
    let mut client = TurnClient::new(server, relay.credentials(), config);
    let started = Instant::now();
    let id = client.allocate(started, None)?;
    let allocated = run(&mut client, &sock, id).await?;
    let elapsed = started.elapsed();
    let relayed = allocated.relayed.ok_or(TurnError::Protocol(
        "allocate success without XOR-RELAYED-ADDRESS",
    ))?;
    let check = RelayCheck {
        relayed,
        mapped: allocated.mapped,
        lifetime: allocated.lifetime.unwrap_or(0),
        elapsed,
        freed: false,
    };
    Ok((client, sock, check))
}

/// Drives `client` on `sock` until transaction `id` ends (the client's timeout bounds it).
async fn run(
    client: &mut TurnClient,
    sock: &UdpSocket,
    id: RequestId,
) -> Result<Response, TurnError> {
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(t) = client.poll_transmit() {
            sock.send_to(&t.payload, t.dst).await?;
        }
        while let Some(TurnEvent::Done { id: done, result }) = client.poll_event() {
            if done == id {
                return result;
            }
        }
        let Some(deadline) = client.poll_timeout() else {
            return Err(TurnError::Protocol("transaction lost"));
        };
        tokio::select! {
            received = sock.recv_from(&mut buf) => {
                let (n, from) = received?;
                client.handle_input(Instant::now(), from, buf.get(..n).unwrap_or_default());
            }
            _ = tokio::time::sleep_until(deadline.into()) => client.handle_timeout(Instant::now()),
        }
    }
}
