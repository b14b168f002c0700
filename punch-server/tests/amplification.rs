//! QUIC anti-amplification on the punch server's port (RFC 9000 §8.1): before a client's
//! address is validated the server may send it at most three times the bytes it received
//! from it.
//!
//! Flow:
//! 1. Start the real binary on 127.0.0.1:0 with its defaults (`common::ServerProc`).
//! 2. Build a genuine client Initial (a full ClientHello of our mutual-TLS configuration,
//!    padded to 1200 bytes) with a quinn-proto client endpoint, one per source, and take
//!    its datagrams from `poll_transmit`. Nothing the server sends is ever fed back: the
//!    spoofed victim of a reflection attack never answers.
//! 3. Send each Initial from its own UDP socket on 127.0.0.1 ([`SOURCES`] at once) and
//!    count every byte the server sends back to that socket for [`LISTEN`].
//! 4. Assert per source: the server answered (a Retry, `--quic-retry always`), and the
//!    bytes back are at most 3 x the bytes in. (Without the Retry, quinn 0.11 answers
//!    1200 bytes with 3738: see `punch_server::quic::RetryPolicy`.)
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ServerProc;
use mesh::identity::{tls, Identity, PeerId};

/// How long each source listens for the server's answers: long enough for the PTO
/// retransmissions a handshake would make (the first at about 300 ms, then doubling).
const LISTEN: Duration = Duration::from_secs(10);
/// Sources sending one Initial each, at once.
const SOURCES: usize = 4;

/// The datagrams of a client's first flight (its Initial) towards `server`.
fn client_initial(server: PeerId, to: SocketAddr) -> Vec<Vec<u8>> {
    let identity = Identity::generate().expect("identity");
    let (config, _) = tls::client_config(&identity, server, None).expect("client config");
    let mut endpoint =
        quinn_proto::Endpoint::new(Arc::new(mesh::socket::endpoint_config()), None, true, None);
    let now = Instant::now();
    let (_, mut conn) = endpoint
        .connect(now, config, to, &tls::server_name(&server))
        .expect("connect");
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..8 {
        buf.clear();
        let Some(t) = conn.poll_transmit(now, 1, &mut buf) else {
            break;
        };
        datagrams.push(buf[..t.size].to_vec());
    }
    assert!(!datagrams.is_empty(), "the client sends an Initial");
    datagrams
}

/// What one source sent and got back.
struct Reflected {
    /// Bytes sent (the Initial).
    sent: usize,
    /// Bytes the server sent back.
    got: usize,
    /// The first datagram back.
    first: Option<Vec<u8>>,
    /// Arrival offset and size of every datagram back.
    log: Vec<(Duration, usize)>,
}

/// Sends `initial` from a fresh socket to `to` and counts what comes back for [`LISTEN`].
fn reflect(initial: &[Vec<u8>], to: SocketAddr) -> Reflected {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let start = Instant::now();
    let mut r = Reflected {
        sent: 0,
        got: 0,
        first: None,
        log: Vec::new(),
    };
    for d in initial {
        sock.send_to(d, to).expect("send");
        r.sent += d.len();
    }
    let mut buf = [0u8; 2048];
    loop {
        let left = LISTEN.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        // A timeout ends the wait; `LISTEN` has passed.
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            break;
        };
        if from == to {
            r.got += n;
            r.log.push((start.elapsed(), n));
            r.first.get_or_insert_with(|| buf[..n].to_vec());
        }
    }
    r
}

/// A QUIC v1 Retry packet: long header, fixed bit, type 3 (RFC 9000 §17.2.5).
fn is_retry(datagram: &[u8]) -> bool {
    datagram.len() > 5 && datagram[0] & 0xf0 == 0xf0 && datagram[1..5] == [0, 0, 0, 1]
}

#[test]
fn unanswered_initial_draws_at_most_three_times_its_size() {
    let server = ServerProc::start(&["--listen", "127.0.0.1:0"], &[]);
    let to = server.addr();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..SOURCES)
            .map(|_| {
                let initial = client_initial(server.id(), to);
                s.spawn(move || reflect(&initial, to))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reflect thread"))
            .collect()
    });
    for r in &results {
        eprintln!(
            "sent {}, got {} (factor {:.2}): {:?}",
            r.sent,
            r.got,
            r.got as f64 / r.sent as f64,
            r.log
        );
    }
    for r in results {
        assert!(r.sent >= 1200, "a client Initial fills 1200 bytes");
        // The server did answer (the Initial is genuine): with a Retry, before any
        // handshake work.
        let first = r.first.as_deref().expect("the server answers the Initial");
        assert!(is_retry(first), "first answer is a Retry: {first:02x?}");
        assert!(
            r.got <= 3 * r.sent,
            "{} bytes back for {} in: {:?}",
            r.got,
            r.sent,
            r.log
        );
    }
}
