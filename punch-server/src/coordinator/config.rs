//! Settings, ids and counters of the [`Coordinator`](super::Coordinator).

use std::fmt;
use std::time::Duration;

use super::relays::RelayConfig;
use crate::config::ConfigError;

/// Identifies one control connection; the driver assigns them and never reuses one while
/// the coordinator may still know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why the coordinator wants a connection closed (after its queued messages are sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The same peer id connected again; the newest connection wins.
    Superseded,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The byte stream cannot be trusted any more (oversized frame).
    Malformed,
    /// Too many malformed messages.
    TooManyMalformed,
    /// The server holds as many connections as it may.
    ServerFull,
    /// The connection was idle; the peer is parked (it got `Park`).
    Parked,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wire close code carries the text peers see.
        f.write_str(mesh::coord::CloseCode::from(*self).reason())
    }
}

/// A token-bucket rate: `per_sec` tokens per second, at most `burst` saved up. A zero
/// `per_sec` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Settings of the coordinator. Every collection it keeps is bounded by one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordConfig {
    /// Most control connections (registered or not) at once (default 100 000).
    pub max_connections: usize,
    /// Most pending connect requests in the whole server (default 20 000).
    pub max_pending_total: usize,
    /// Most pending requests one peer may have made (default 8).
    pub max_pending_per_peer: usize,
    /// Most pending requests waiting for one target's answer (default 16).
    pub max_incoming_per_peer: usize,
    /// How long the target has to accept or refuse (default 10 s).
    pub request_timeout: Duration,
    /// Connect requests per peer (default 4/s, burst 32: a mesh joiner connects to every
    /// member of a session of up to ~32 peers at once). Per peer, not per connection: a
    /// peer's tokens outlast its connection until they would be refilled anyway.
    pub connect_rate: Rate,
    /// Punch attempts (`Go`) per peer, as requester or target: this bounds how often the
    /// coordinator makes one peer probe (default 4/s, burst 32, sized like
    /// `connect_rate`). Kept across reconnects like `connect_rate`.
    pub attempt_rate: Rate,
    /// Messages of any kind per connection; excess ones are dropped and counted (default
    /// 50/s, burst 100).
    pub message_rate: Rate,
    /// Malformed messages tolerated per connection before it is closed (default 8).
    pub max_malformed: u32,
    /// Interval of the server's RTT pings (default 15 s; one is sent at once on connect).
    pub ping_interval: Duration,
    /// RTT assumed for a peer without a sample (default 200 ms).
    pub initial_rtt: Duration,
    /// RTT samples are clamped to this (default 2 s).
    pub max_rtt: Duration,
    /// Shortest lead time from `Go` to the common start (default 20 ms).
    pub start_floor: Duration,
    /// Added to the worst one-way bound for processing and scheduling (default 10 ms).
    pub start_margin: Duration,
    /// TURN relays offered to registered peers, with credentials (default: none).
    pub relays: Option<RelayConfig>,
    /// Park the control connection of a peer that offered it (`Capabilities { park }`)
    /// once it has been idle this long: registered, no pending request, no message but
    /// pongs (default 20 s; `None` = never park).
    pub park_after: Option<Duration>,
    /// Keep-alive interval given to parked peers (default 15 s: inside the 30 s UDP
    /// binding lifetime of common NATs).
    pub park_keepalive: Duration,
    /// A parked peer is dropped after this many keep-alive intervals without a good
    /// keep-alive (default 3).
    pub park_misses: u32,
    /// Wake datagrams sent to a parked peer per wake-up, the first at once, then after
    /// `wake_rto`, doubling (default 5: 0, 0.2, 0.6, 1.4, 3 s).
    pub wake_sends: u32,
    /// First retransmission interval of the wake datagram (default 200 ms).
    pub wake_rto: Duration,
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_pending_total: 20_000,
            max_pending_per_peer: 8,
            max_incoming_per_peer: 16,
            request_timeout: Duration::from_secs(10),
            connect_rate: Rate {
                per_sec: 4,
                burst: 32,
            },
            attempt_rate: Rate {
                per_sec: 4,
                burst: 32,
            },
            message_rate: Rate {
                per_sec: 50,
                burst: 100,
            },
            max_malformed: 8,
            ping_interval: Duration::from_secs(15),
            initial_rtt: Duration::from_millis(200),
            max_rtt: Duration::from_secs(2),
            start_floor: Duration::from_millis(20),
            start_margin: Duration::from_millis(10),
            relays: None,
            park_after: Some(Duration::from_secs(20)),
            park_keepalive: Duration::from_secs(15),
            park_misses: 3,
            wake_sends: 5,
            wake_rto: Duration::from_millis(200),
        }
    }
}

impl CoordConfig {
    /// Checks the settings: every limiting rate needs a burst of at least 1 (a bucket of
    /// size 0 would refuse everything).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            (
                self.connect_rate,
                "connect rate: a non-zero rate needs a burst of at least 1 (--connect-burst)",
            ),
            (
                self.attempt_rate,
                "attempt rate: a non-zero rate needs a burst of at least 1 (--attempt-burst)",
            ),
            (
                self.message_rate,
                "message rate: a non-zero rate needs a burst of at least 1",
            ),
        ];
        if self.park_keepalive < Duration::from_millis(100) || self.park_misses == 0 {
            return Err(ConfigError::Invalid(
                "parking: the keep-alive interval must be at least 100 ms and misses at least 1",
            ));
        }
        if self.wake_sends == 0 || self.wake_sends > 16 {
            return Err(ConfigError::Invalid("parking: wake sends must be 1..=16"));
        }
        for (rate, problem) in rates {
            if rate.per_sec != 0 && rate.burst == 0 {
                return Err(ConfigError::Invalid(problem));
            }
        }
        if let Some(relays) = &self.relays {
            relays.validate()?;
        }
        Ok(())
    }
}

/// Counters of the coordinator (monotonic, for metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordStats {
    /// `Register` messages handled (re-registrations included).
    pub registrations: u64,
    /// Connect requests forwarded to a target.
    pub connects: u64,
    /// Requests accepted (both sides got `Go`).
    pub accepted: u64,
    /// Requests refused by the target.
    pub refused: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests withdrawn because a side disconnected.
    pub cancelled: u64,
    /// Connects to unknown targets.
    pub unknown_target: u64,
    /// Messages or requests rejected by a rate limit.
    pub rate_limited: u64,
    /// Requests or connections rejected by a bound.
    pub limit_reached: u64,
    /// Other rejected requests (not registered, invalid, unknown request id).
    pub rejected: u64,
    /// Malformed messages dropped (oversized frames included).
    pub malformed: u64,
    /// Connections speaking another protocol version.
    pub version_mismatch: u64,
    /// Connections replaced by a newer one of the same peer.
    pub superseded: u64,
    /// RTT samples taken.
    pub rtt_samples: u64,
    /// `Relays` messages sent (first offers and renewals).
    pub relay_offers: u64,
    /// Connections parked.
    pub parked: u64,
    /// Parked peers that came back (woken or on their own).
    pub unparked: u64,
    /// Parked peers dropped for missing keep-alives.
    pub park_expired: u64,
    /// Parked peers that left (a signed leave).
    pub park_left: u64,
    /// Good keep-alives of parked peers.
    pub keepalives: u64,
    /// Keep-alives refused (unknown peer, bad MAC, malformed).
    pub keepalives_refused: u64,
    /// Wake datagrams sent to parked peers.
    pub wakes_sent: u64,
}
