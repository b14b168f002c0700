//! Counters of the STUN core, as plain data, and their Prometheus text form.
//!
//! Flow:
//!
//! 1. Each sans-IO [`crate::server::StunServer`] owns one [`Counters`] and bumps it for
//!    every datagram (received, answered, or dropped with a [`DropReason`]).
//! 2. The driver copies each worker's counters into a shared snapshot after every batch.
//! 3. The metrics endpoint sums the snapshots ([`Counters::merge`]) and sets the
//!    `punch_stun_*` metrics from the sum ([`Counters::publish`], with the crate's shared
//!    metric helpers) before rendering them.

use crate::metrics_http::MetricKind::Counter;
use crate::metrics_http::{set_labelled, set_metric};

/// Why a datagram got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Zero-length datagram.
    Empty,
    /// Source failed validation (port 0, unspecified, multicast or broadcast address).
    BadSource,
    /// First byte in the STUN range but no magic cookie (RFC 3489 or garbage).
    NoMagicCookie,
    /// Shorter than a STUN header.
    TooShort,
    /// Longer than the configured maximum request size.
    TooLong,
    /// Header or attribute layout broken (bits, lengths, alignment, overrun).
    Malformed,
    /// FINGERPRINT wrong, misplaced or of a bad length.
    BadFingerprint,
    /// `stun-rs` could not decode an attribute value.
    Undecodable,
    /// An indication (never answered, RFC 8489 §6.3.2).
    Indication,
    /// A success or error response (never answered).
    NotRequest,
    /// A request for a method other than Binding.
    UnsupportedMethod,
    /// The source is over its rate limit.
    RateLimited,
    /// The response would exceed the amplification limit.
    Amplification,
    /// The datagram arrived on a socket index the server does not have.
    UnknownSocket,
    /// The response could not be encoded (should not happen).
    EncodeFailed,
}

impl DropReason {
    /// Every reason, in the order of [`Counters::dropped`].
    pub const ALL: [DropReason; 15] = [
        DropReason::Empty,
        DropReason::BadSource,
        DropReason::NoMagicCookie,
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::Malformed,
        DropReason::BadFingerprint,
        DropReason::Undecodable,
        DropReason::Indication,
        DropReason::NotRequest,
        DropReason::UnsupportedMethod,
        DropReason::RateLimited,
        DropReason::Amplification,
        DropReason::UnknownSocket,
        DropReason::EncodeFailed,
    ];

    /// Index into [`Counters::dropped`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::BadSource => "bad_source",
            DropReason::NoMagicCookie => "no_magic_cookie",
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::Undecodable => "undecodable",
            DropReason::Indication => "indication",
            DropReason::NotRequest => "not_request",
            DropReason::UnsupportedMethod => "unsupported_method",
            DropReason::RateLimited => "rate_limited",
            DropReason::Amplification => "amplification",
            DropReason::UnknownSocket => "unknown_socket",
            DropReason::EncodeFailed => "encode_failed",
        }
    }
}

/// Counters of one STUN core (or the sum of several). Plain data: copy, add, read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to the core.
    pub received: u64,
    /// Datagrams classified as not STUN and passed to the non-STUN hook.
    pub not_stun: u64,
    /// Parked peers' keep-alives passed to the coordinator.
    pub keepalives: u64,
    /// Binding success responses produced.
    pub success_responses: u64,
    /// Error responses produced (420 Unknown Attribute).
    pub error_responses: u64,
    /// Responses sent from another socket because of CHANGE-REQUEST (RFC 5780).
    pub changed_source: u64,
    /// Responses the driver failed to send (socket buffer full, send error).
    pub send_failures: u64,
    /// Dropped datagrams, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Counts one dropped datagram.
    pub fn drop(&mut self, reason: DropReason) {
        if let Some(c) = self.dropped.get_mut(reason.index()) {
            *c += 1;
        }
    }

    /// Dropped datagrams for one reason.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// All dropped datagrams.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds `other` into `self` (for summing the workers' counters).
    pub fn merge(&mut self, other: &Counters) {
        self.received += other.received;
        self.not_stun += other.not_stun;
        self.keepalives += other.keepalives;
        self.success_responses += other.success_responses;
        self.error_responses += other.error_responses;
        self.changed_source += other.changed_source;
        self.send_failures += other.send_failures;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped.iter()) {
            *a += b;
        }
    }

    /// Sets the `punch_stun_*` metrics to these counters, in the recorder the caller runs
    /// it in (see [`crate::metrics_http::Stats::render`]).
    pub fn publish(&self) {
        let simple: [(&'static str, &'static str, u64); 5] = [
            (
                "punch_stun_datagrams_received_total",
                "Datagrams received on the STUN port(s).",
                self.received,
            ),
            (
                "punch_stun_not_stun_total",
                "Datagrams passed to the non-STUN (coordinator) hook.",
                self.not_stun,
            ),
            (
                "punch_stun_keepalives_total",
                "Parked peers' keep-alives passed to the coordinator.",
                self.keepalives,
            ),
            (
                "punch_stun_changed_source_total",
                "Responses sent from another socket because of CHANGE-REQUEST.",
                self.changed_source,
            ),
            (
                "punch_stun_send_failures_total",
                "Responses that could not be sent.",
                self.send_failures,
            ),
        ];
        for (name, help, value) in simple {
            set_metric(name, Counter, help, value);
        }
        set_labelled(
            "punch_stun_responses_total",
            Counter,
            "STUN responses produced, by kind.",
            Some("kind"),
            [
                ("success", self.success_responses),
                ("error", self.error_responses),
            ],
        );
        set_labelled(
            "punch_stun_dropped_total",
            Counter,
            "Datagrams dropped without a response, by reason.",
            Some("reason"),
            DropReason::ALL.map(|r| (r.as_str(), self.dropped_for(r))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reasons_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn merge_and_render() {
        let mut a = Counters {
            received: 3,
            success_responses: 2,
            ..Counters::default()
        };
        a.drop(DropReason::RateLimited);
        let mut total = Counters::default();
        total.merge(&a);
        total.merge(&a);
        assert_eq!(total.received, 6);
        assert_eq!(total.dropped_for(DropReason::RateLimited), 2);
        assert_eq!(total.dropped_total(), 2);
        let registry = server_ops::metrics::Registry::new();
        registry.register(|| total.publish());
        let text = registry.render();
        assert!(text.contains("punch_stun_datagrams_received_total 6\n"));
        assert!(text.contains("punch_stun_responses_total{kind=\"success\"} 4\n"));
        assert!(text.contains("punch_stun_dropped_total{reason=\"rate_limited\"} 2\n"));
    }
}
