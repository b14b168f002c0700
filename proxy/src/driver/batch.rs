//! Sockets and batched sending: runs of equal-sized datagrams from one socket to one
//! destination leave in one GSO `sendmsg` (Linux `UDP_SEGMENT`, through quinn-udp).
//!
//! Steps:
//!
//! 1. [`Io`] is a non-blocking mio socket with its quinn-udp state (batched receive with
//!    `recvmmsg` and GRO, GSO send, DF set).
//! 2. [`SendBatch::push`] appends a datagram (an optional header, e.g. ChannelData's, and
//!    a payload) to the pending run of its flow (socket, destination, source IP) if it
//!    has the run's length and the run has room; otherwise it sends that run first, so a
//!    flow's datagrams keep their order. Up to 16 flows have a run at once, so the
//!    interleaved datagrams of a few clients still leave as one GSO send per flow:
//!    relayed traffic is windows of packets of a few flows.
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

/// Most flows with a pending run at once; one more sends them all.
const MAX_RUNS: usize = 16;

/// The pending datagrams of one flow (socket, destination, source IP), all of one size.
#[derive(Debug)]
struct Run {
    from: Src,
    to: SocketAddr,
    src_ip: Option<IpAddr>,
    segment: usize,
    count: usize,
    buf: Vec<u8>,
}

impl Run {
    fn send(&mut self, sockets: &impl SocketSet) -> u64 {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return 0;
        }
        let segment = (count > 1).then_some(self.segment);
        let ok = sockets
            .io(self.from)
            .is_some_and(|io| io.send(self.to, self.src_ip, &self.buf, segment));
        self.buf.clear();
        if ok {
            0
        } else {
            count as u64
        }
    }
}

/// The pending runs; see the module docs.
#[derive(Debug)]
pub(crate) struct SendBatch {
    /// `runs[..live]` are pending; the rest keep their buffers for reuse.
    runs: Vec<Run>,
    live: usize,
    max_segments: usize,
}

impl SendBatch {
    /// A batch of at most `max_segments` datagrams per send (1 disables GSO).
    pub fn new(max_segments: usize) -> Self {
        Self {
            runs: Vec::with_capacity(MAX_RUNS),
            live: 0,
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
        if header.is_empty() && (self.max_segments == 1 || len > MAX_GSO_BYTES / 2) {
            // Alone anyway: no copy. Earlier datagrams of the flow go first.
            let mut lost = self.send_flow(sockets, from, to, src_ip);
            let ok = sockets
                .io(from)
                .is_some_and(|io| io.send(to, src_ip, payload, None));
            lost += u64::from(!ok);
            return lost;
        }
        let (max_segments, mut lost) = (self.max_segments, 0);
        let found = self.runs[..self.live]
            .iter()
            .position(|r| r.from == from && r.to == to && r.src_ip == src_ip);
        let i = match found {
            Some(i) => {
                let r = &mut self.runs[i];
                let joins = r.count == 0
                    || (r.segment == len
                        && r.count < max_segments
                        && r.buf.len() + len <= MAX_GSO_BYTES);
                if !joins {
                    lost += r.send(sockets);
                }
                i
            }
            None => {
                if self.live == MAX_RUNS {
                    lost += self.flush(sockets);
                }
                let i = self.live;
                self.live += 1;
                let run = Run {
                    from,
                    to,
                    src_ip,
                    segment: len,
                    count: 0,
                    buf: Vec::new(),
                };
                match self.runs.get_mut(i) {
                    Some(r) => {
                        let buf = std::mem::take(&mut r.buf);
                        *r = Run { buf, ..run };
                    }
                    None => self.runs.push(run),
                }
                i
            }
        };
        let r = &mut self.runs[i];
        if r.count == 0 {
            r.segment = len;
            r.buf.reserve(MAX_GSO_BYTES + 2048);
        }
        r.buf.extend_from_slice(header);
        r.buf.extend_from_slice(payload);
        r.count += 1;
        lost
    }

    /// Sends the pending run of one flow, if any.
    fn send_flow(
        &mut self,
        sockets: &impl SocketSet,
        from: Src,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
    ) -> u64 {
        self.runs[..self.live]
            .iter_mut()
            .find(|r| r.from == from && r.to == to && r.src_ip == src_ip)
            .map_or(0, |r| r.send(sockets))
    }

    /// Sends every pending run; returns how many datagrams were lost.
    pub fn flush(&mut self, sockets: &impl SocketSet) -> u64 {
        let lost = self.runs[..self.live]
            .iter_mut()
            .map(|r| r.send(sockets))
            .sum();
        self.live = 0;
        lost
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

    #[test]
    fn interleaved_flows_each_keep_their_order() {
        let tx = One(Io::new(
            std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"),
            1 << 20,
        )
        .expect("io"));
        let rx: Vec<_> = (0..3)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s
            })
            .collect();
        let mut b = SendBatch::new(64);
        // Three flows interleaved, with a size change in the middle of flow 0.
        for i in 0..30u8 {
            let flow = usize::from(i % 3);
            let to = rx[flow].local_addr().expect("addr");
            let len = if flow == 0 && i >= 15 { 300 } else { 1200 };
            assert_eq!(b.push(&tx, Src::Listen, to, None, &[i], &vec![i; len]), 0);
        }
        assert_eq!(b.flush(&tx), 0);
        let mut buf = [0u8; 2048];
        for (flow, sock) in rx.iter().enumerate() {
            let expected: Vec<u8> = (0..30u8).filter(|i| usize::from(i % 3) == flow).collect();
            for want in expected {
                let (len, _) = sock.recv_from(&mut buf).expect("datagram");
                assert_eq!(buf[0], want, "flow {flow} in order");
                assert_eq!(len, 1 + if flow == 0 && want >= 15 { 300 } else { 1200 });
            }
        }
    }
}
