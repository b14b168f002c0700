//! Shared counters of the QUIC coordinator, shown on `/metrics` as `punch_coord_*`.
//!
//! Steps:
//! 1. The ingress hook, the accept loop and the connection tasks bump the atomic
//!    [`QuicCounters`] directly (no lock on the packet path).
//! 2. The coordinator task publishes a [`CoordSnapshot`] (the sans-IO
//!    [`CoordStats`] plus its gauges) after every round of work.
//! 3. [`CoordMetrics`] is a [`MetricsSource`]: before each render of `/metrics` it sets
//!    the metrics from one table of (name, counter or gauge, help, value) rows plus the
//!    labelled drop counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::coordinator::CoordStats;
use crate::metrics_http::MetricKind::{self, Counter, Gauge};
use crate::metrics_http::{set_labelled, set_metric, MetricsSource};

/// Monotonic counters (and one gauge) of the QUIC side.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// QUIC datagrams queued for quinn.
    pub datagrams_queued: AtomicU64,
    /// Datagrams dropped because the ingress queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Non-STUN datagrams that are not QUIC either (first byte outside 64-127, 192-255).
    pub dropped_not_quic: AtomicU64,
    /// QUIC datagrams larger than `max_datagram_len` (or than quinn's buffer).
    pub dropped_too_large: AtomicU64,
    /// QUIC datagrams on an RFC 5780 alternate socket (QUIC runs on the primary only).
    pub dropped_other_socket: AtomicU64,
    /// QUIC datagrams that arrived while the QUIC endpoint was not running.
    pub dropped_no_endpoint: AtomicU64,
    /// Handshakes started (incoming connections accepted by the limits).
    pub connections_accepted: AtomicU64,
    /// Incoming connections refused by `max_handshakes` or `max_connections`.
    pub connections_refused: AtomicU64,
    /// Incoming connections from unvalidated addresses answered with a QUIC Retry because
    /// many handshakes were in progress.
    pub retries_sent: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
    /// Connections that completed the handshake and opened their control stream.
    pub connections_established: AtomicU64,
    /// Connections closed for not opening a control stream in time.
    pub no_control_stream: AtomicU64,
    /// Connections closed for not taking their messages fast enough.
    pub too_slow: AtomicU64,
    /// Connection tasks alive (gauge).
    pub connections_active: AtomicU64,
    /// Parked peers' keep-alives dropped because the keep-alive queue was full.
    pub keepalives_dropped: AtomicU64,
    /// Datagrams to parked peers (keep-alive answers, wakes) that could not be sent.
    pub park_send_failures: AtomicU64,
}

impl QuicCounters {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge, never below zero.
    pub fn dec(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the coordinator task last published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordSnapshot {
    /// The sans-IO counters.
    pub stats: CoordStats,
    /// Connections the coordinator knows.
    pub connections: usize,
    /// Registered peers (parked ones included).
    pub registered: usize,
    /// Parked peers.
    pub parked: usize,
    /// Connections the QUIC endpoint holds (closing and draining ones included).
    pub quic_connections: usize,
    /// Pending connect requests.
    pub pending: usize,
}

/// All metrics of the QUIC coordinator, shared by its tasks and the metrics endpoint.
#[derive(Debug, Default)]
pub struct CoordMetrics {
    /// The QUIC-side counters.
    pub quic: QuicCounters,
    coord: Mutex<CoordSnapshot>,
}

impl CoordMetrics {
    /// Replaces the coordinator snapshot.
    pub fn publish(&self, snapshot: CoordSnapshot) {
        *self.coord.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// The latest coordinator snapshot.
    pub fn snapshot(&self) -> CoordSnapshot {
        self.coord.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl MetricsSource for CoordMetrics {
    fn publish(&self) {
        let s = self.snapshot();
        let c = &s.stats;
        let q = &self.quic;
        let get = QuicCounters::get;
        let rows: [(&'static str, MetricKind, &'static str, u64); 38] = [
            (
                "punch_coord_park_left_total",
                Counter,
                "Parked peers that left (signed leave).",
                c.park_left,
            ),
            (
                "punch_coord_quic_connections",
                Gauge,
                "Connections the QUIC endpoint holds (closing and draining ones included).",
                s.quic_connections as u64,
            ),
            (
                "punch_coord_peers_parked",
                Gauge,
                "Registered peers parked without a connection (keep-alives only).",
                s.parked as u64,
            ),
            (
                "punch_coord_parked_total",
                Counter,
                "Idle control connections parked.",
                c.parked,
            ),
            (
                "punch_coord_unparked_total",
                Counter,
                "Parked peers that connected again.",
                c.unparked,
            ),
            (
                "punch_coord_park_expired_total",
                Counter,
                "Parked peers dropped for missing keep-alives.",
                c.park_expired,
            ),
            (
                "punch_coord_keepalives_total",
                Counter,
                "Good keep-alives of parked peers.",
                c.keepalives,
            ),
            (
                "punch_coord_keepalives_refused_total",
                Counter,
                "Keep-alives refused (unknown peer, bad MAC).",
                c.keepalives_refused,
            ),
            (
                "punch_coord_wakes_sent_total",
                Counter,
                "Wake datagrams sent to parked peers.",
                c.wakes_sent,
            ),
            (
                "punch_coord_keepalives_dropped_total",
                Counter,
                "Keep-alives dropped because the coordinator's queue was full.",
                get(&q.keepalives_dropped),
            ),
            (
                "punch_coord_park_send_failures_total",
                Counter,
                "Datagrams to parked peers that could not be sent.",
                get(&q.park_send_failures),
            ),
            (
                "punch_coord_registrations_total",
                Counter,
                "Register messages handled.",
                c.registrations,
            ),
            (
                "punch_coord_connects_total",
                Counter,
                "Connect requests forwarded to a target.",
                c.connects,
            ),
            (
                "punch_coord_accepted_total",
                Counter,
                "Requests accepted (both sides got Go).",
                c.accepted,
            ),
            (
                "punch_coord_refused_total",
                Counter,
                "Requests refused by the target.",
                c.refused,
            ),
            (
                "punch_coord_timeouts_total",
                Counter,
                "Requests that timed out.",
                c.timeouts,
            ),
            (
                "punch_coord_cancelled_total",
                Counter,
                "Requests withdrawn because a side left.",
                c.cancelled,
            ),
            (
                "punch_coord_unknown_target_total",
                Counter,
                "Connects to unknown targets.",
                c.unknown_target,
            ),
            (
                "punch_coord_rate_limited_total",
                Counter,
                "Messages or requests rate limited.",
                c.rate_limited,
            ),
            (
                "punch_coord_limit_reached_total",
                Counter,
                "Requests or connections over a bound.",
                c.limit_reached,
            ),
            (
                "punch_coord_rejected_total",
                Counter,
                "Other rejected requests.",
                c.rejected,
            ),
            (
                "punch_coord_malformed_total",
                Counter,
                "Malformed messages dropped.",
                c.malformed,
            ),
            (
                "punch_coord_version_mismatch_total",
                Counter,
                "Connections of another protocol version.",
                c.version_mismatch,
            ),
            (
                "punch_coord_superseded_total",
                Counter,
                "Connections replaced by a newer one.",
                c.superseded,
            ),
            (
                "punch_coord_rtt_samples_total",
                Counter,
                "RTT samples taken.",
                c.rtt_samples,
            ),
            (
                "punch_coord_relay_offers_total",
                Counter,
                "Relays messages sent (TURN credentials, first offers and renewals).",
                c.relay_offers,
            ),
            (
                "punch_coord_peers_connected",
                Gauge,
                "Control connections the coordinator knows.",
                s.connections as u64,
            ),
            (
                "punch_coord_peers_registered",
                Gauge,
                "Registered peers.",
                s.registered as u64,
            ),
            (
                "punch_coord_requests_pending",
                Gauge,
                "Pending connect requests.",
                s.pending as u64,
            ),
            (
                "punch_coord_quic_datagrams_queued_total",
                Counter,
                "QUIC datagrams handed to quinn.",
                get(&q.datagrams_queued),
            ),
            (
                "punch_coord_connections_accepted_total",
                Counter,
                "Incoming QUIC connections admitted to the handshake.",
                get(&q.connections_accepted),
            ),
            (
                "punch_coord_connections_refused_total",
                Counter,
                "Incoming QUIC connections refused by a limit.",
                get(&q.connections_refused),
            ),
            (
                "punch_coord_retries_sent_total",
                Counter,
                "QUIC Retry packets sent to make clients prove their address under load.",
                get(&q.retries_sent),
            ),
            (
                "punch_coord_handshakes_failed_total",
                Counter,
                "QUIC handshakes that failed or timed out.",
                get(&q.handshakes_failed),
            ),
            (
                "punch_coord_connections_established_total",
                Counter,
                "Connections with a control stream.",
                get(&q.connections_established),
            ),
            (
                "punch_coord_no_control_stream_total",
                Counter,
                "Connections closed without a control stream.",
                get(&q.no_control_stream),
            ),
            (
                "punch_coord_too_slow_total",
                Counter,
                "Connections closed as too slow.",
                get(&q.too_slow),
            ),
            (
                "punch_coord_connections_active",
                Gauge,
                "QUIC connections alive (handshakes included).",
                get(&q.connections_active),
            ),
        ];
        for (name, kind, help, value) in rows {
            set_metric(name, kind, help, value);
        }
        set_labelled(
            "punch_coord_quic_datagrams_dropped_total",
            Counter,
            "Non-STUN datagrams not handed to quinn, by reason.",
            Some("reason"),
            [
                ("queue_full", get(&q.dropped_queue_full)),
                ("not_quic", get(&q.dropped_not_quic)),
                ("too_large", get(&q.dropped_too_large)),
                ("other_socket", get(&q.dropped_other_socket)),
                ("no_endpoint", get(&q.dropped_no_endpoint)),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_coordinator_and_quic_metrics() {
        let m = CoordMetrics::default();
        QuicCounters::inc(&m.quic.dropped_queue_full);
        QuicCounters::inc(&m.quic.connections_active);
        QuicCounters::dec(&m.quic.connections_active);
        QuicCounters::dec(&m.quic.connections_active);
        m.publish(CoordSnapshot {
            stats: CoordStats {
                registrations: 3,
                ..CoordStats::default()
            },
            connections: 2,
            registered: 1,
            parked: 0,
            quic_connections: 0,
            pending: 0,
        });
        let registry = server_ops::metrics::Registry::new();
        registry.register(|| MetricsSource::publish(&m));
        let out = registry.render();
        assert!(out.contains("punch_coord_registrations_total 3\n"), "{out}");
        assert!(
            out.contains(
                "# TYPE punch_coord_peers_connected gauge\npunch_coord_peers_connected 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("punch_coord_connections_active 0\n"), "{out}");
        assert!(
            out.contains("punch_coord_quic_datagrams_dropped_total{reason=\"queue_full\"} 1\n"),
            "{out}"
        );
    }
}
