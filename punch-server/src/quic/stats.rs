//! Shared counters of the QUIC coordinator, shown on `/metrics` as `punch_coord_*`.
//!
//! Steps:
//! 1. The ingress hook, the accept loop and the connection tasks bump the atomic
//!    [`QuicCounters`] directly (no lock on the packet path).
//! 2. The coordinator task publishes a [`CoordSnapshot`] (the sans-IO
//!    [`CoordStats`] plus its gauges) after every round of work.
//! 3. [`CoordMetrics`] is a [`MetricsSource`]: the metrics endpoint renders both in the
//!    Prometheus text format after the STUN counters, from one table of (name, counter or
//!    gauge, help, value) rows plus the labelled drop counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::coordinator::CoordStats;
use crate::metrics_http::MetricKind::{self, Counter, Gauge};
use crate::metrics_http::{write_labelled, write_metric, MetricsSource};

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
    /// Registered peers.
    pub registered: usize,
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
    fn render_prometheus(&self, out: &mut String) {
        let s = self.snapshot();
        let c = &s.stats;
        let q = &self.quic;
        let get = QuicCounters::get;
        let rows: [(&str, MetricKind, &str, u64); 26] = [
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
            write_metric(out, name, kind, help, value);
        }
        write_labelled(
            out,
            "punch_coord_quic_datagrams_dropped_total",
            Counter,
            "Non-STUN datagrams not handed to quinn, by reason.",
            "reason",
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
            pending: 0,
        });
        let mut out = String::new();
        m.render_prometheus(&mut out);
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
