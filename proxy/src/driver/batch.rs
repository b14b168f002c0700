//! Sockets and batched sending: runs of equal-sized datagrams from one socket to one
//! destination leave in one GSO `sendmsg` (Linux `UDP_SEGMENT`, through quinn-udp).
//!
//! Steps:
//!
//! 1. [`Io`] is a non-blocking mio socket with its quinn-udp state (batched receive with
//!    `recvmmsg` and GRO, GSO send, DF set).
//! 2. [`SendBatch::push`] appends a datagram (an optional header, e.g. ChannelData's, and
//!    a payload) to the pending run if it goes from the same socket to the same
//!    destination with the same length and the run has room; otherwise it sends the run
//!    first. Relayed traffic is exactly that: a window of packets of one flow.
//! 3. The event loop calls [`SendBatch::flush`] after every receive batch, so nothing
//!    waits longer than one batch. A send the kernel refuses (full buffer) drops the run
//!    and is counted, as UDP would.

use std::io;
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{Transmit, UdpSocketState};

/// Largest GSO send in bytes (the kernel limit is 64 KiB of payload).
const MAX_GSO_BYTES: usize = 65_000;

/// A bound socket with its quinn-udp state.
#[derive(Debug)]
pub(crate) struct Io {
    pub sock: mio::net::UdpSocket,
    pub state: UdpSocketState,
}

impl Io {
    /// Wraps a bound std socket: non-blocking, quinn-udp options, buffer sizes.
    pub fn new(sock: std::net::UdpSocket, buffer: usize) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&sock).into(), buffer);
        let _ = state.set_send_buffer_size((&sock).into(), buffer);
        Ok(Self {
            sock: mio::net::UdpSocket::from_std(sock),
            state,
        })
    }

    /// Sends `contents` (several `segment`-sized datagrams if `segment` is set).
    pub fn send(
        &self,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        contents: &[u8],
        segment: Option<usize>,
    ) -> bool {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip,
        };
        self.state.try_send((&self.sock).into(), &t).is_ok()
    }
}

/// Which socket a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Src {
    /// The listening socket (to clients).
    Listen,
    /// A relay port (to peers).
    Relay(u16),
}

/// Finds the socket of a [`Src`].
pub(crate) trait SocketSet {
    fn io(&self, from: Src) -> Option<&Io>;
}

/// The pending run; see the module docs.
#[derive(Debug)]
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    from: Src,
    to: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
}

impl SendBatch {
    /// A batch of at most `max_segments` datagrams per send (1 disables GSO).
    pub fn new(max_segments: usize) -> Self {
        Self {
            buf: Vec::with_capacity(MAX_GSO_BYTES + 2048),
            from: Src::Listen,
            to: None,
            src_ip: None,
            segment: 0,
            count: 0,
            max_segments: max_segments.max(1),
        }
    }

    /// Queues `header` + `payload` from `from` to `to`; returns datagrams lost by sends
    /// this caused.
    pub fn push(
        &mut self,
        sockets: &impl SocketSet,
        from: Src,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        header: &[u8],
        payload: &[u8],
    ) -> u64 {
        let len = header.len() + payload.len();
        let joins = self.to == Some(to)
            && self.from == from
            && self.src_ip == src_ip
            && self.segment == len
            && self.count < self.max_segments
            && self.buf.len() + len <= MAX_GSO_BYTES;
        let mut lost = 0;
        if !joins {
            lost += self.flush(sockets);
            if self.max_segments == 1 || len > MAX_GSO_BYTES / 2 {
                // Alone anyway: no copy.
                if header.is_empty() {
                    let ok = sockets
                        .io(from)
                        .is_some_and(|io| io.send(to, src_ip, payload, None));
                    return lost + u64::from(!ok);
                }
            }
            self.from = from;
            self.to = Some(to);
            self.src_ip = src_ip;
            self.segment = len;
        }
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(payload);
        self.count += 1;
        lost
    }

    /// Sends the pending run; returns how many datagrams were lost.
    pub fn flush(&mut self, sockets: &impl SocketSet) -> u64 {
        let Some(to) = self.to.take() else {
            return 0;
        };
        let count = std::mem::take(&mut self.count);
        let segment = (count > 1).then_some(self.segment);
        let ok = sockets
            .io(self.from)
            .is_some_and(|io| io.send(to, self.src_ip, &self.buf, segment));
        self.buf.clear();
        if ok {
            0
        } else {
            count as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct One(Io);

    impl SocketSet for One {
        fn io(&self, from: Src) -> Option<&Io> {
            (from == Src::Listen).then_some(&self.0)
        }
    }

    #[test]
    fn runs_coalesce_and_arrive_as_separate_datagrams() {
        let tx = One(Io::new(
            std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
            1 << 20,
        )
        .expect("io"));
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        let mut b = SendBatch::new(64);
        let sizes = [1200usize, 1200, 1200, 40, 1200];
        for (i, n) in sizes.iter().enumerate() {
            let header = [0x40, i as u8];
            assert_eq!(
                b.push(&tx, Src::Listen, to, None, &header, &vec![i as u8; *n]),
                0
            );
        }
        assert_eq!(b.flush(&tx), 0);
        assert_eq!(b.flush(&tx), 0, "nothing pending");
        assert_eq!(
            b.push(&tx, Src::Relay(1), to, None, &[], b"x"),
            0,
            "unknown socket: pending"
        );
        assert_eq!(b.flush(&tx), 1, "lost");
        let mut buf = [0u8; 2048];
        for (i, n) in sizes.iter().enumerate() {
            let (len, _) = rx.recv_from(&mut buf).expect("datagram");
            assert_eq!(len, n + 2);
            assert_eq!(buf[1], i as u8);
            assert!(buf[2..len].iter().all(|b| *b == i as u8));
        }
    }
}
