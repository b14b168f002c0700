//! Thin tokio driver for [`NatDiscovery`] (RFC 5780 discovery, RFC 8489 timers).
//!
//! The filtering lane (whose mapping the result describes) runs either on a plain UDP
//! socket ([`discover`]) or on a node's own socket ([`discover_on`]): there its requests
//! go out as [`StunOwner::Discovery`] and the socket's STUN router brings the answers back
//! by transaction id, whichever of the server's addresses they come from, so the result is
//! the mapping the node's QUIC connections use.
//!
//! Steps:
//! 1. Find the local address: the socket's, with an unspecified IP replaced by the source
//!    IP the kernel would route towards the server (a connected throwaway socket; nothing
//!    is sent). Bind the mapping lane's socket on the same IP (for a node socket, the
//!    unspecified address of the server's family), port 0.
//! 2. Loop: send every queued transmit from its lane's socket; return the result once the
//!    machine reports it; otherwise wait for a datagram on either socket or the machine's
//!    timer, whichever comes first. When the timer fires, datagrams already queued on the
//!    sockets are fed first, so a busy machine never turns a delivered answer into
//!    silence.
//!
//! Every wait is bounded by the machine's own timers (RFC 8489 transaction timeouts), so
//! `discover` always ends.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::discovery::{Lane, NatDiscovery, NatEvent};
use super::{NatBehaviour, NatConfig, NatError};
use crate::socket::{Endpoint, StunDatagram};
use crate::stun::StunOwner;

/// Largest datagram read (STUN responses are far smaller).
const RECV_BUFFER: usize = 2048;
/// Bound of the queue of answers routed from a node's socket.
const ANSWER_QUEUE: usize = 32;

/// The unspecified address of `server`'s family.
fn unspecified_for(server: SocketAddr) -> IpAddr {
    match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The address the server should see before any NAT: `local` with an unspecified IP
/// resolved by a route lookup towards `server`.
fn local_address(local: SocketAddr, server: SocketAddr) -> Result<SocketAddr, NatError> {
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let probe = StdUdpSocket::bind(SocketAddr::new(unspecified_for(server), 0))?;
    probe.connect(server)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), local.port()))
}

/// Where the filtering lane sends and receives.
enum FilteringLane<'a> {
    /// A plain UDP socket of its own.
    Udp(&'a UdpSocket),
    /// A node's socket: answers come through its STUN router.
    Node {
        endpoint: &'a Endpoint,
        answers: mpsc::Receiver<StunDatagram>,
    },
}

impl FilteringLane<'_> {
    async fn send(&self, dest: SocketAddr, bytes: &[u8]) -> Result<(), NatError> {
        match self {
            Self::Udp(socket) => {
                socket.send_to(bytes, dest).await?;
            }
            Self::Node { endpoint, .. } => endpoint
                .send_stun_as(StunOwner::Discovery, dest, bytes)
                .await
                .map_err(|e| NatError::Io(io::Error::other(e)))?,
        }
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<(SocketAddr, Bytes)> {
        match self {
            Self::Udp(socket) => {
                let (n, from) = socket.recv_from(buf).await?;
                Ok((from, Bytes::copy_from_slice(&buf[..n])))
            }
            Self::Node { answers, .. } => match answers.recv().await {
                Some(d) => Ok((d.from, d.data)),
                None => Err(io::Error::other("the node's socket closed")),
            },
        }
    }

    /// Feeds every answer already queued to the machine.
    fn drain(&mut self, machine: &mut NatDiscovery, buf: &mut [u8]) -> Result<(), NatError> {
        match self {
            Self::Udp(socket) => drain(machine, socket, Lane::Filtering, buf),
            Self::Node { answers, .. } => {
                while let Ok(d) = answers.try_recv() {
                    machine.handle_input(Instant::now(), Lane::Filtering, d.from, &d.data);
                }
                Ok(())
            }
        }
    }
}

/// Errors a receive may report for an earlier datagram (ICMP on some platforms); the
/// timers handle the loss.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// Feeds every datagram already queued on `socket` to the machine.
fn drain(
    machine: &mut NatDiscovery,
    socket: &UdpSocket,
    lane: Lane,
    buf: &mut [u8],
) -> Result<(), NatError> {
    loop {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => {
                machine.handle_input(Instant::now(), lane, from, &buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs RFC 5780 behaviour discovery on `socket` (the filtering lane; the mapping lane
/// gets a second socket on the same IP) against `server` (a STUN server with an alternate
/// address). Other datagrams arriving on the socket meanwhile are dropped.
pub async fn discover(
    socket: &UdpSocket,
    server: SocketAddr,
    config: NatConfig,
) -> Result<NatBehaviour, NatError> {
    let local = local_address(socket.local_addr()?, server)?;
    let mapping_socket = UdpSocket::bind(SocketAddr::new(socket.local_addr()?.ip(), 0)).await?;
    run(
        FilteringLane::Udp(socket),
        mapping_socket,
        local,
        server,
        config,
    )
    .await
}

/// Runs RFC 5780 behaviour discovery with the filtering lane on `endpoint`'s own socket
/// (see the module docs), so the mapping and filtering found are those of the node's
/// QUIC traffic. The node keeps running meanwhile.
pub async fn discover_on(
    endpoint: &Endpoint,
    server: SocketAddr,
    config: NatConfig,
) -> Result<NatBehaviour, NatError> {
    let local = local_address(endpoint.local_addr()?, server)?;
    let mapping_socket = UdpSocket::bind(SocketAddr::new(unspecified_for(server), 0)).await?;
    let (tx, answers) = mpsc::channel(ANSWER_QUEUE);
    endpoint.socket().route_stun(StunOwner::Discovery, tx);
    let lane = FilteringLane::Node { endpoint, answers };
    run(lane, mapping_socket, local, server, config).await
}

async fn run(
    mut filtering: FilteringLane<'_>,
    mapping_socket: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    config: NatConfig,
) -> Result<NatBehaviour, NatError> {
    let mut machine = NatDiscovery::new(Instant::now(), local, server, config);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut mapping_buf = vec![0u8; RECV_BUFFER];
    loop {
        while let Some(t) = machine.poll_transmit() {
            match t.lane {
                Lane::Filtering => filtering.send(t.dest, &t.bytes).await?,
                Lane::Mapping => {
                    mapping_socket.send_to(&t.bytes, t.dest).await?;
                }
            }
        }
        if let Some(NatEvent::Done(result)) = machine.poll_event() {
            return result;
        }
        let Some(deadline) = machine.poll_timeout() else {
            return Err(NatError::Protocol(
                "discovery stalled without a timer".into(),
            ));
        };
        let (lane, received) = tokio::select! {
            r = filtering.recv(&mut buf) => (Lane::Filtering, r),
            r = mapping_socket.recv_from(&mut mapping_buf) => {
                (Lane::Mapping, r.map(|(n, from)| (from, Bytes::copy_from_slice(&mapping_buf[..n]))))
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                filtering.drain(&mut machine, &mut buf)?;
                drain(&mut machine, &mapping_socket, Lane::Mapping, &mut mapping_buf)?;
                machine.handle_timeout(Instant::now());
                continue;
            }
        };
        match received {
            Ok((from, data)) => {
                machine.handle_input(Instant::now(), lane, from, &data);
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
