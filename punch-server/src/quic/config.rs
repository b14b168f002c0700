//! Settings of the QUIC side of the coordinator, the quinn configuration built from them,
//! and the application close codes the server uses.
//!
//! Steps:
//! 1. [`QuicConfig::default`] holds the documented defaults; `main` overrides some from
//!    flags, tests and library users set fields directly. [`QuicConfig::validate`] rejects
//!    zero bounds; [`QuicConfig::validate_with`] also checks the coordinator's
//!    [`CoordConfig`] and that `max_connections` is at least the coordinator's. The start
//!    functions ([`super::start`], [`super::CoordServer::start`]) call it once; `main`
//!    calls it too, before it touches the key file.
//! 2. [`QuicConfig::server_config`] builds the quinn server configuration: the punch
//!    server's identity (mutual TLS 1.3, ALPN `p2pmesh/1`, [`mesh::identity::tls`]), and a
//!    transport for small, mostly idle control connections: one bidirectional stream and
//!    no unidirectional ones, no QUIC datagrams, small flow-control windows, the minimum
//!    MTU of 1200 bytes without path MTU discovery, no GSO batches (quinn keeps each
//!    connection's transmit buffer at the size of its largest batch), and the idle
//!    timeout. Keep-alives come from the peers.
//! 3. [`RetryPolicy`] says when the accept loop makes a client prove its address with a
//!    QUIC Retry (RFC 9000 §8.1.2) before any handshake work. The default, every new
//!    source, keeps the server within RFC 9000 §8.1's limit of 3 times the bytes received
//!    from an unvalidated address: quinn 0.11 lets a server start one more full datagram
//!    whenever any of that budget is left (`quinn-proto` `Connection::poll_transmit`, the
//!    `anti_amplification_blocked(segment_size * num_datagrams + 1)` check, quinn PR
//!    #1148), so an unanswered Initial draws 1200 + 138 bytes of first flight (the 1-RTT
//!    `NEW_CONNECTION_ID`s do not fit in the padded first datagram) and two 1200-byte PTO
//!    probes: 3738 bytes for 1200 (3.1 x).
//! 4. [`QuicConfig::endpoint_config`] is mesh's endpoint configuration (no QUIC-bit
//!    greasing) with connection ids of 8 random bytes. quinn's default generator puts only
//!    24 random bits into each id, and quinn-proto 0.11 neither checks the id it puts into
//!    a Retry against the live ones (`Endpoint::retry`) nor prefers Initial routing for
//!    Initial packets (`ConnectionIndex::get` looks at `connection_ids` first): with tens
//!    of thousands of ids live, a client now and then got a Retry id that an established
//!    connection already used, and its Initials were discarded by that connection until
//!    its handshake timed out (about 1 in 1000 registrations with 5000 to 10 000 peers
//!    connected, in the `idle_peers` benchmark).
//! 5. Connections the server closes carry a [`CloseCode`] (defined in [`mesh::coord`], so
//!    peers can read it) as the QUIC application error code and its text as the reason.

use std::sync::Arc;
use std::time::Duration;

use mesh::identity::{tls, Identity};
use quinn::{ConnectionIdGenerator, IdleTimeout, VarInt};
use quinn_proto::RandomConnectionIdGenerator;

use super::QuicError;
use crate::coordinator::{CloseReason, CoordConfig};
pub use mesh::coord::CloseCode;

/// Length of the server's connection ids: 8 random bytes, as many as quinn's default ids
/// but all of them random (see the module docs, step 4).
const CID_LEN: usize = 8;

/// Upper bound of every count setting (queues, limits): far above any real need, and
/// below what tokio's channels and semaphores accept.
pub const MAX_COUNT: usize = 1 << 28;

/// When a new client must prove its address with a QUIC Retry (one more round trip)
/// before the server does any handshake work for it (see the module docs, step 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Every Initial without a valid address-validation token (default). The server then
    /// answers an unvalidated source with one Retry packet (about a tenth of the Initial),
    /// within RFC 9000 §8.1's 3x; registration takes one more round trip.
    #[default]
    Always,
    /// Only while at least half of `max_handshakes` are in progress. Saves new peers a
    /// round trip, but quinn 0.11 then sends up to 3.1 times an unanswered Initial (more
    /// than RFC 9000 §8.1 allows) to an address nobody validated.
    UnderLoad,
}

/// Settings of the QUIC driver (the sans-IO part has its own [`CoordConfig`]). Every queue
/// and table is bounded by one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// QUIC datagrams queued between the primary STUN worker and quinn (default 4096).
    /// When full, datagrams are dropped and counted; the STUN worker never waits.
    pub ingress_queue: usize,
    /// Largest QUIC datagram accepted, in bytes (default 2048; QUIC peers stay at or
    /// below 1452 by default). With `ingress_queue` this bounds the queue's memory (8 MiB).
    pub max_datagram_len: usize,
    /// Most QUIC connections at once, handshakes included (default 100 000); more are
    /// refused. Must be at least `CoordConfig::max_connections`
    /// ([`QuicConfig::validate_with`]), so the coordinator's own bound is reachable. An
    /// idle connection holds about 32 KiB, so the default allows about 3.1 GiB.
    pub max_connections: usize,
    /// Most handshakes in progress at once (default 1024); more are refused.
    pub max_handshakes: usize,
    /// When new clients get a Retry first (default [`RetryPolicy::Always`]).
    pub retry: RetryPolicy,
    /// Longest time a handshake may take (default 20 s: at 20 % loss each way a handshake
    /// can need several backed-off retransmissions).
    pub handshake_timeout: Duration,
    /// How long after the handshake the peer has to open its control stream (default 15 s,
    /// for the same reason).
    pub control_stream_timeout: Duration,
    /// QUIC idle timeout (default 30 s; peers send keep-alives more often).
    pub idle_timeout: Duration,
    /// How often the coordinator task reads every connection's RTT estimate and checks it
    /// for migration (default 1 s).
    pub report_interval: Duration,
    /// Encoded messages queued for one connection's writer (default 64). A connection
    /// whose queue is full is closed as too slow.
    pub outgoing_queue: usize,
    /// Events queued from the connection tasks to the coordinator task (default 4096). A
    /// full queue makes connection tasks wait (back-pressure on their streams).
    pub event_queue: usize,
    /// Longest time one frame may take to be written before the connection is closed as
    /// too slow (default 5 s).
    pub write_timeout: Duration,
    /// How long a connection the coordinator closes may take to deliver its last messages
    /// before the close (default 2 s).
    pub close_linger: Duration,
    /// Largest read from a control stream at once, in bytes (default 4096).
    pub read_chunk: usize,
    /// Flow-control window of the control stream, in bytes (default 16 KiB, one largest
    /// frame, [`mesh::coord::MAX_FRAME_LEN`]). Bounds what a peer can make the server
    /// buffer; the reader takes it at once, so it only limits a burst.
    pub stream_receive_window: u32,
    /// Flow-control window of a whole connection, in bytes (default 16 KiB: there is only
    /// the control stream).
    pub receive_window: u32,
    /// Most unacknowledged bytes the server sends on one connection (default 32 KiB, far
    /// above a burst of coordinator messages): with `outgoing_queue`, bounds what a peer
    /// that stops reading costs until `write_timeout`.
    pub send_window: u64,
    /// Longest time shutdown waits for connections to close and drain (default 3 s).
    pub shutdown_timeout: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            ingress_queue: 4096,
            max_datagram_len: 2048,
            max_connections: 100_000,
            max_handshakes: 1024,
            retry: RetryPolicy::Always,
            handshake_timeout: Duration::from_secs(20),
            control_stream_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            outgoing_queue: 64,
            event_queue: 4096,
            write_timeout: Duration::from_secs(5),
            close_linger: Duration::from_secs(2),
            read_chunk: 4096,
            stream_receive_window: 16 * 1024,
            receive_window: 16 * 1024,
            send_window: 32 * 1024,
            shutdown_timeout: Duration::from_secs(3),
        }
    }
}

impl QuicConfig {
    /// Rejects settings that cannot work (zero bounds or timeouts).
    pub fn validate(&self) -> Result<(), QuicError> {
        let counts = [
            ("ingress_queue", self.ingress_queue),
            ("max_datagram_len", self.max_datagram_len),
            ("max_connections", self.max_connections),
            ("max_handshakes", self.max_handshakes),
            ("outgoing_queue", self.outgoing_queue),
            ("event_queue", self.event_queue),
            ("read_chunk", self.read_chunk),
        ];
        for (name, value) in counts {
            if value == 0 || value > MAX_COUNT {
                return Err(QuicError::Config(format!(
                    "{name} must be between 1 and {MAX_COUNT}"
                )));
            }
        }
        if self.max_datagram_len < 1200 {
            // RFC 9000 §14: a QUIC endpoint must accept datagrams of 1200 bytes.
            return Err(QuicError::Config(
                "max_datagram_len must be at least 1200 (RFC 9000 §14)".into(),
            ));
        }
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("control_stream_timeout", self.control_stream_timeout),
            ("idle_timeout", self.idle_timeout),
            ("report_interval", self.report_interval),
            ("write_timeout", self.write_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(QuicError::Config(format!("{name} must not be zero")));
            }
        }
        if self.stream_receive_window == 0 || self.receive_window == 0 || self.send_window == 0 {
            return Err(QuicError::Config(
                "flow-control windows must not be zero".into(),
            ));
        }
        Ok(())
    }

    /// Checks this config ([`QuicConfig::validate`]), the coordinator's `coord`
    /// ([`CoordConfig::validate`]), and the limit between them: `max_connections` must be
    /// at least `coord.max_connections`.
    pub fn validate_with(&self, coord: &CoordConfig) -> Result<(), QuicError> {
        self.validate()?;
        coord.validate().map_err(QuicError::Coord)?;
        if self.max_connections < coord.max_connections {
            return Err(QuicError::Config(format!(
                "max_connections ({}) must be at least the coordinator's max_connections ({})",
                self.max_connections, coord.max_connections
            )));
        }
        Ok(())
    }

    /// The transport parameters of every connection (see the module docs).
    pub fn transport(&self) -> Result<quinn::TransportConfig, QuicError> {
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| QuicError::Config("idle_timeout too large".into()))?;
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(None)
            .initial_rtt(mesh::socket::INITIAL_RTT)
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0)
            .mtu_discovery_config(None)
            .enable_segmentation_offload(false);
        Ok(t)
    }

    /// The quinn endpoint configuration (see the module docs, step 4).
    pub fn endpoint_config() -> quinn::EndpointConfig {
        let mut config = mesh::socket::endpoint_config();
        config.cid_generator(cid_generator);
        config
    }

    /// The quinn server configuration presenting `identity` (mutual TLS, see
    /// [`mesh::identity::tls::server_config`]) with [`QuicConfig::transport`].
    pub fn server_config(&self, identity: &Identity) -> Result<quinn::ServerConfig, QuicError> {
        let transport = Arc::new(self.transport()?);
        let mut config = tls::server_config(identity, Some(transport))?;
        // Incoming handshakes quinn buffers before the accept loop sees them; the accept
        // loop applies `max_handshakes` itself. Buffered bytes per handshake and in total
        // are bounded too (a handshake needs a few KiB).
        let max_incoming = self.max_handshakes.saturating_mul(2).max(1);
        config
            .max_incoming(max_incoming)
            .incoming_buffer_size(64 * 1024)
            .incoming_buffer_size_total(max_incoming as u64 * 16 * 1024)
            .migration(true);
        Ok(config)
    }
}

/// The server's connection id generator: [`CID_LEN`] random bytes.
fn cid_generator() -> Box<dyn ConnectionIdGenerator> {
    Box::new(RandomConnectionIdGenerator::new(CID_LEN))
}

impl From<CloseReason> for CloseCode {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Superseded => Self::Superseded,
            CloseReason::VersionMismatch => Self::VersionMismatch,
            CloseReason::Malformed => Self::Malformed,
            CloseReason::TooManyMalformed => Self::TooManyMalformed,
            CloseReason::ServerFull => Self::ServerFull,
            CloseReason::Parked => Self::Parked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_bounds_are_not() {
        let config = QuicConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.transport().is_ok());
        let bad = QuicConfig {
            ingress_queue: 0,
            ..QuicConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = QuicConfig {
            max_datagram_len: 1000,
            ..QuicConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = QuicConfig {
            max_connections: MAX_COUNT + 1,
            ..QuicConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = QuicConfig {
            write_timeout: Duration::ZERO,
            ..QuicConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn quic_connection_limit_must_cover_the_coordinators() {
        let coord = CoordConfig {
            max_connections: 1000,
            ..CoordConfig::default()
        };
        let equal = QuicConfig {
            max_connections: 1000,
            ..QuicConfig::default()
        };
        assert!(equal.validate_with(&coord).is_ok());
        let below = QuicConfig {
            max_connections: 999,
            ..QuicConfig::default()
        };
        let err = below
            .validate_with(&coord)
            .expect_err("below the coordinator's limit");
        assert!(matches!(err, QuicError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("max_connections (999)"), "{err}");
        // Each config's own checks still run.
        let bad_quic = QuicConfig {
            event_queue: 0,
            ..QuicConfig::default()
        };
        assert!(bad_quic.validate_with(&CoordConfig::default()).is_err());
        let mut bad_coord = CoordConfig::default();
        bad_coord.attempt_rate.burst = 0;
        let err = QuicConfig::default()
            .validate_with(&bad_coord)
            .expect_err("burst 0 with a rate");
        assert!(matches!(err, QuicError::Coord(_)), "{err:?}");
        assert!(err.to_string().contains("--attempt-burst"), "{err}");
    }

    #[test]
    fn connection_ids_are_fully_random() {
        // 100 000 ids of quinn's default generator (24 random bits each) hold about 300
        // pairs of equal ids; 64 random bits make a repeat practically impossible.
        let mut generator = cid_generator();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert!(seen.insert(cid.to_vec()), "connection id repeated: {cid}");
        }
    }

    #[test]
    fn close_reasons_map_to_codes() {
        assert_eq!(
            CloseCode::from(CloseReason::VersionMismatch),
            CloseCode::VersionMismatch
        );
    }
}
