//! What the workspace's servers (`master-server`, `punch-server`, `proxy`) share for
//! operators, so each is written once:
//!
//! - [`metrics`]: Prometheus metrics with the `metrics` crate and its Prometheus exporter:
//!   a recorder per server ([`metrics::Registry`]), and the `/metrics` + `/healthz` HTTP
//!   endpoint ([`metrics::router`], [`metrics::serve`]).
//! - [`process`]: the log setup (filter, text or JSON on stderr) and the SIGINT/SIGTERM
//!   shutdown signal of the server binaries.

pub mod metrics;
pub mod process;
