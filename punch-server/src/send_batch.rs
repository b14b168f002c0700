//! Batched sending: consecutive responses to one destination leave in one GSO send.
//!
//! Linux UDP GSO (`UDP_SEGMENT`, via `quinn-udp`) sends many equal-sized datagrams to one
//! destination with one `sendmsg`. A worker handles a batch of received datagrams; steps:
//!
//! 1. [`SendBatcher::push`] appends a response to the pending run if it goes from the same
//!    local socket to the same destination with the same length, and the run is shorter
//!    than the GSO limit; otherwise it first flushes the pending run.
//! 2. [`SendBatcher::flush`] sends the pending run: one datagram plainly, several as one
//!    GSO send. The worker flushes after every receive batch, so nothing waits long.
//! 3. A failed send (full socket buffer) drops the run; the caller counts the datagrams.
//!
//! Only bursts from one source (a flood, or a client that pipelines) coalesce; everything
//! else goes out one `sendmsg` per response, as before.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use quinn_udp::{Transmit, UdpSocketState};
use tokio::net::UdpSocket;

/// Most datagrams coalesced into one send.
pub const MAX_SEGMENTS: usize = 64;
/// Largest datagram that is coalesced (responses are far smaller).
const MAX_SEGMENT_LEN: usize = 512;

/// A bound socket with its `quinn-udp` state (batched receive, GSO send).
#[derive(Debug)]
pub struct SocketIo {
    /// The socket.
    pub sock: UdpSocket,
    /// Its `quinn-udp` state.
    pub state: UdpSocketState,
}

impl SocketIo {
    /// Wraps a bound socket; sets the socket options `quinn-udp` needs.
    pub fn new(sock: UdpSocket) -> std::io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        Ok(Self { sock, state })
    }

    fn send(&self, to: (SocketAddr, Option<IpAddr>), contents: &[u8], seg: Option<usize>) -> bool {
        let (destination, src_ip) = to;
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: seg,
            src_ip,
        };
        // Straight to the non-blocking fd, not through tokio's readiness: the workers never
        // wait for writability, so a full buffer simply fails this send.
        self.state.try_send((&self.sock).into(), &t).is_ok()
    }
}

/// The pending run of equal responses; see the module docs.
#[derive(Debug)]
pub struct SendBatcher {
    buf: Vec<u8>,
    local: usize,
    destination: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
}

impl SendBatcher {
    /// A batcher coalescing at most `max_segments` datagrams (1 disables coalescing).
    pub fn new(max_segments: usize) -> Self {
        let max_segments = max_segments.clamp(1, MAX_SEGMENTS);
        Self {
            buf: Vec::with_capacity(max_segments * MAX_SEGMENT_LEN),
            local: 0,
            destination: None,
            src_ip: None,
            segment: 0,
            count: 0,
            max_segments,
        }
    }

    /// Queues `contents` from socket `local` (with source IP `src_ip` if the socket is
    /// bound to a wildcard) to `destination`; returns how many datagrams were lost by a
    /// flush this caused.
    pub fn push(
        &mut self,
        sockets: &[Arc<SocketIo>],
        local: usize,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
        contents: &[u8],
    ) -> u64 {
        let joins = self.destination == Some(destination)
            && self.local == local
            && self.src_ip == src_ip
            && self.segment == contents.len()
            && self.count < self.max_segments;
        let mut lost = 0;
        if !joins {
            lost = self.flush(sockets);
            if contents.len() > MAX_SEGMENT_LEN || self.max_segments == 1 {
                let ok = sockets
                    .get(local)
                    .is_some_and(|s| s.send((destination, src_ip), contents, None));
                return lost + u64::from(!ok);
            }
            self.local = local;
            self.src_ip = src_ip;
            self.destination = Some(destination);
            self.segment = contents.len();
        }
        self.buf.extend_from_slice(contents);
        self.count += 1;
        lost
    }

    /// Sends the pending run; returns how many datagrams were lost.
    pub fn flush(&mut self, sockets: &[Arc<SocketIo>]) -> u64 {
        let Some(destination) = self.destination.take() else {
            return 0;
        };
        let count = std::mem::take(&mut self.count) as u64;
        let segment = (count > 1).then_some(self.segment);
        let ok = sockets
            .get(self.local)
            .is_some_and(|s| s.send((destination, self.src_ip), &self.buf, segment));
        self.buf.clear();
        if ok {
            0
        } else {
            count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_coalesce_and_arrive_as_separate_datagrams() {
        let io = SocketIo::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")).expect("io");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        let sockets = vec![Arc::new(io)];
        let mut b = SendBatcher::new(64);
        let sizes = [32usize, 32, 32, 44, 32];
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(b.push(&sockets, 0, to, None, &vec![i as u8; *n]), 0);
        }
        assert_eq!(b.flush(&sockets), 0);
        assert_eq!(b.flush(&sockets), 0, "nothing pending after a flush");
        let mut buf = [0u8; 1500];
        for (i, n) in sizes.iter().enumerate() {
            let (len, _) = rx.recv_from(&mut buf).expect("datagram");
            assert_eq!(len, *n);
            assert!(buf[..len].iter().all(|b| *b == i as u8));
        }
    }
}
