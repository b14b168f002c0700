//! Prometheus metrics with the `metrics` crate, and the operator HTTP endpoint.
//!
//! Steps:
//!
//! 1. [`Metrics::new`] makes a `server_ops::metrics::Registry` (a Prometheus recorder of
//!    its own, no global recorder, so several proxies in one process keep apart), and
//!    registers and describes every metric once, keeping the handles.
//! 2. The relay thread calls [`Metrics::publish`] once a second with the core's
//!    [`Stats`] (plain integers, bumped without atomics on the packet path) and the live
//!    table sizes; counters are set to their absolute values, gauges to the sizes.
//! 3. The driver serves [`Metrics::render`] with `server_ops::metrics::serve` (`GET
//!    /metrics`, `GET /healthz`) on the `--metrics-listen` TCP address, until shutdown.
//!
//! Metrics (all prefixed `proxy_`): `allocations_live`, `permissions_live`,
//! `channels_live` (gauges); `allocations_created_total`, `allocations_expired_total`,
//! `allocations_deleted_total`, `permissions_created_total`, `channels_bound_total`,
//! `relayed_packets_total{direction}`, `relayed_bytes_total{direction}` (direction
//! `client_to_peer` or `peer_to_client`), `requests_total`, `error_responses_total`,
//! `auth_challenges_total`, `auth_failures_total{reason}`, `quota_refusals_total{quota}`,
//! `policy_refusals_total`, `relay_to_relay_packets_total`, `dropped_total{reason}` (incl. `malformed` and `bandwidth`),
//! `send_failures_total`.

use metrics::{Counter, Gauge};
use server_ops::metrics::Registry;
pub use server_ops::metrics::PROMETHEUS_CONTENT_TYPE;

use crate::server::{AuthFailure, DropReason, Quota, Stats};

/// The registered metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    allocations_live: Gauge,
    permissions_live: Gauge,
    channels_live: Gauge,
    allocations_created: Counter,
    allocations_expired: Counter,
    allocations_deleted: Counter,
    permissions_created: Counter,
    channels_bound: Counter,
    packets: [Counter; 2],
    bytes: [Counter; 2],
    requests: Counter,
    error_responses: Counter,
    auth_challenges: Counter,
    auth_failures: Vec<Counter>,
    quota: Vec<Counter>,
    policy_refusals: Counter,
    relay_to_relay: Counter,
    dropped: Vec<Counter>,
    send_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with every metric registered (at zero).
    pub fn new() -> Self {
        let registry = Registry::new();
        registry.clone().register(|| {
            describe();
            let dir = |name: &'static str| {
                ["client_to_peer", "peer_to_client"]
                    .map(|d| metrics::counter!(name, "direction" => d))
            };
            Self {
                allocations_live: metrics::gauge!("proxy_allocations_live"),
                permissions_live: metrics::gauge!("proxy_permissions_live"),
                channels_live: metrics::gauge!("proxy_channels_live"),
                allocations_created: metrics::counter!("proxy_allocations_created_total"),
                allocations_expired: metrics::counter!("proxy_allocations_expired_total"),
                allocations_deleted: metrics::counter!("proxy_allocations_deleted_total"),
                permissions_created: metrics::counter!("proxy_permissions_created_total"),
                channels_bound: metrics::counter!("proxy_channels_bound_total"),
                packets: dir("proxy_relayed_packets_total"),
                bytes: dir("proxy_relayed_bytes_total"),
                requests: metrics::counter!("proxy_requests_total"),
                error_responses: metrics::counter!("proxy_error_responses_total"),
                auth_challenges: metrics::counter!("proxy_auth_challenges_total"),
                auth_failures: AuthFailure::ALL
                    .iter()
                    .map(|r| metrics::counter!("proxy_auth_failures_total", "reason" => r.as_str()))
                    .collect(),
                quota: Quota::ALL
                    .iter()
                    .map(|q| metrics::counter!("proxy_quota_refusals_total", "quota" => q.as_str()))
                    .collect(),
                policy_refusals: metrics::counter!("proxy_policy_refusals_total"),
                relay_to_relay: metrics::counter!("proxy_relay_to_relay_packets_total"),
                dropped: DropReason::ALL
                    .iter()
                    .map(|r| metrics::counter!("proxy_dropped_total", "reason" => r.as_str()))
                    .collect(),
                send_failures: metrics::counter!("proxy_send_failures_total"),
                registry,
            }
        })
    }

    /// Sets every metric from the core's counters and live table sizes
    /// `(allocations, permissions, channels)`.
    pub fn publish(&self, s: &Stats, live: (usize, usize, usize)) {
        self.allocations_live.set(live.0 as f64);
        self.permissions_live.set(live.1 as f64);
        self.channels_live.set(live.2 as f64);
        self.allocations_created.absolute(s.allocations_created);
        self.allocations_expired.absolute(s.allocations_expired);
        self.allocations_deleted.absolute(s.allocations_deleted);
        self.permissions_created.absolute(s.permissions_created);
        self.channels_bound.absolute(s.channels_bound);
        self.packets[0].absolute(s.to_peer.packets);
        self.packets[1].absolute(s.to_client.packets);
        self.bytes[0].absolute(s.to_peer.bytes);
        self.bytes[1].absolute(s.to_client.bytes);
        self.requests.absolute(s.requests);
        self.error_responses.absolute(s.error_responses);
        self.auth_challenges.absolute(s.auth_challenges);
        for (c, v) in self.auth_failures.iter().zip(s.auth_failures) {
            c.absolute(v);
        }
        for (c, v) in self.quota.iter().zip(s.quota) {
            c.absolute(v);
        }
        self.policy_refusals.absolute(s.policy_refusals);
        self.relay_to_relay.absolute(s.relay_to_relay);
        for (c, v) in self.dropped.iter().zip(s.dropped) {
            c.absolute(v);
        }
        self.send_failures.absolute(s.send_failures);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("proxy_allocations_live", "allocations now");
    describe_gauge!("proxy_permissions_live", "live permissions now");
    describe_gauge!("proxy_channels_live", "bound channels now");
    describe_counter!("proxy_allocations_created_total", "allocations created");
    describe_counter!(
        "proxy_allocations_expired_total",
        "allocations freed by expiry"
    );
    describe_counter!(
        "proxy_allocations_deleted_total",
        "allocations freed by Refresh lifetime 0"
    );
    describe_counter!(
        "proxy_permissions_created_total",
        "permissions installed (not refreshes)"
    );
    describe_counter!(
        "proxy_channels_bound_total",
        "channels bound (not refreshes)"
    );
    describe_counter!(
        "proxy_relayed_packets_total",
        "datagrams relayed, by direction"
    );
    describe_counter!(
        "proxy_relayed_bytes_total",
        "application bytes relayed, by direction"
    );
    describe_counter!("proxy_requests_total", "STUN/TURN requests handled");
    describe_counter!("proxy_error_responses_total", "error responses sent");
    describe_counter!(
        "proxy_auth_challenges_total",
        "401 challenges to requests without credentials"
    );
    describe_counter!(
        "proxy_auth_failures_total",
        "authentication failures, by reason"
    );
    describe_counter!(
        "proxy_quota_refusals_total",
        "requests refused by a limit, by quota"
    );
    describe_counter!(
        "proxy_policy_refusals_total",
        "peers refused by the address policy (403)"
    );
    describe_counter!(
        "proxy_relay_to_relay_packets_total",
        "datagrams handed from one allocation to another of this proxy"
    );
    describe_counter!(
        "proxy_dropped_total",
        "datagrams dropped unanswered, by reason"
    );
    describe_counter!(
        "proxy_send_failures_total",
        "datagrams the kernel refused to send"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_renders_counters_with_labels() {
        let m = Metrics::new();
        let mut s = Stats::default();
        s.to_peer.add(1200);
        s.drop(DropReason::Malformed);
        s.auth(AuthFailure::StaleNonce);
        m.publish(&s, (3, 2, 1));
        let text = m.render();
        for line in [
            "proxy_allocations_live 3",
            "proxy_relayed_packets_total{direction=\"client_to_peer\"} 1",
            "proxy_relayed_bytes_total{direction=\"client_to_peer\"} 1200",
            "proxy_dropped_total{reason=\"malformed\"} 1",
            "proxy_auth_failures_total{reason=\"stale_nonce\"} 1",
            "proxy_quota_refusals_total{quota=\"per_user\"} 0",
            "# HELP proxy_dropped_total datagrams dropped unanswered, by reason",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // A second proxy's metrics are its own.
        assert!(Metrics::new().render().contains("proxy_allocations_live 0"));
    }
}
