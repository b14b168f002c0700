//! Thin tokio driver for [`NatDiscovery`] (RFC 5780 discovery, RFC 8489 timers).
//!
//! Steps:
//! 1. Find the local address: the socket's, with an unspecified IP replaced by the source
//!    IP the kernel would route towards the server (a connected throwaway socket; nothing
//!    is sent).
//! 2. Loop: send every queued transmit; return the result once the machine reports it;
//!    otherwise wait for a datagram or the machine's timer, whichever comes first.
//!
//! Every wait is bounded by the machine's own timers (RFC 8489 transaction timeouts), so
//! `discover` always ends.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::discovery::{NatDiscovery, NatEvent};
use super::{NatBehaviour, NatConfig, NatError};

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

/// Runs RFC 5780 behaviour discovery on `socket` against `server` (a STUN server with an
/// alternate address). Other datagrams arriving on the socket meanwhile are dropped.
pub async fn discover(
    socket: &UdpSocket,
    server: SocketAddr,
    config: NatConfig,
) -> Result<NatBehaviour, NatError> {
    let local = local_address(socket, server)?;
    let mut machine = NatDiscovery::new(Instant::now(), local, server, config);
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(t) = machine.poll_transmit() {
            socket.send_to(&t.bytes, t.dest).await?;
        }
        if let Some(NatEvent::Done(result)) = machine.poll_event() {
            return result;
        }
        let Some(deadline) = machine.poll_timeout() else {
            return Err(NatError::Protocol(
                "discovery stalled without a timer".into(),
            ));
        };
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                match received {
                    Ok((n, from)) => {
                        machine.handle_input(Instant::now(), from, &buf[..n]);
                    }
                    // ICMP errors surface here on some platforms; the timers handle loss.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset
                        || e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e.into()),
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => machine.handle_timeout(Instant::now()),
        }
    }
}
