//! Thin tokio driver for [`NatDiscovery`] (RFC 5780 discovery, RFC 8489 timers).
//!
//! Steps:
//! 1. Find the local address: the socket's, with an unspecified IP replaced by the source
//!    IP the kernel would route towards the server (a connected throwaway socket; nothing
//!    is sent). Bind the mapping lane's socket on the same IP, port 0.
//! 2. Loop: send every queued transmit from its lane's socket; return the result once the
//!    machine reports it; otherwise wait for a datagram on either socket or the machine's
//!    timer, whichever comes first. When the timer fires, datagrams already queued on the
//!    sockets are fed first, so a busy machine never turns a delivered answer into
//!    silence.
//!
//! Every wait is bounded by the machine's own timers (RFC 8489 transaction timeouts), so
//! `discover` always ends.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::discovery::{Lane, NatDiscovery, NatEvent};
use super::{NatBehaviour, NatConfig, NatError};

/// Largest datagram read (STUN responses are far smaller).
const RECV_BUFFER: usize = 2048;

/// The address the server should see before any NAT: `socket`'s local address with an
/// unspecified IP resolved by a route lookup towards `server`.
fn local_address(socket: &UdpSocket, server: SocketAddr) -> Result<SocketAddr, NatError> {
    let local = socket.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let probe = StdUdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
    probe.connect(server)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), local.port()))
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
    let local = local_address(socket, server)?;
    let mapping_socket = UdpSocket::bind(SocketAddr::new(socket.local_addr()?.ip(), 0)).await?;
    let lane_socket = |lane| match lane {
        Lane::Filtering => socket,
        Lane::Mapping => &mapping_socket,
    };
    let mut machine = NatDiscovery::new(Instant::now(), local, server, config);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut mapping_buf = vec![0u8; RECV_BUFFER];
    loop {
        while let Some(t) = machine.poll_transmit() {
            lane_socket(t.lane).send_to(&t.bytes, t.dest).await?;
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
            r = socket.recv_from(&mut buf) => (Lane::Filtering, r.map(|(n, from)| (from, &buf[..n]))),
            r = mapping_socket.recv_from(&mut mapping_buf) => {
                (Lane::Mapping, r.map(|(n, from)| (from, &mapping_buf[..n])))
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                drain(&mut machine, socket, Lane::Filtering, &mut buf)?;
                drain(&mut machine, &mapping_socket, Lane::Mapping, &mut mapping_buf)?;
                machine.handle_timeout(Instant::now());
                continue;
            }
        };
        match received {
            Ok((from, data)) => {
                machine.handle_input(Instant::now(), lane, from, data);
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
