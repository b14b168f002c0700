//! The operator HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`.
//!
//! It lives on its own TCP address (`--metrics-listen`), never on the STUN UDP port. Steps:
//!
//! 1. The driver binds the listener and spawns [`serve`] with the shared [`Stats`]: the
//!    slots its workers publish their counters to, and the extra [`MetricsSource`]s.
//! 2. `GET /metrics` sums the workers' counters and renders them in the Prometheus text
//!    exposition format 0.0.4, followed by every [`MetricsSource`] added to the [`Stats`]
//!    (the QUIC coordinator's `punch_coord_*`); `GET /healthz` answers `ok`.
//! 3. The server stops gracefully when the driver's shutdown signal flips.
//!
//! The crate's renderers write their lines with `write_metric` (one sample) and
//! `write_labelled` (one sample per label value), so every metric has the same `# HELP` /
//! `# TYPE` form.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::counters::Counters;

/// Further metrics shown on `/metrics` (see [`Stats::add_source`]).
pub trait MetricsSource: Send + Sync + std::fmt::Debug + 'static {
    /// Appends this source's metrics, with `# HELP` and `# TYPE` lines, in the Prometheus
    /// text exposition format.
    fn render_prometheus(&self, out: &mut String);
}

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    /// Only ever goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// Appends one unlabelled metric: its `# HELP` and `# TYPE` lines and its sample.
pub(crate) fn write_metric(out: &mut String, name: &str, kind: MetricKind, help: &str, value: u64) {
    let kind = kind.as_str();
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Appends one metric with a sample per value of `label`: `name{label="value"} sample`.
pub(crate) fn write_labelled<'a>(
    out: &mut String,
    name: &str,
    kind: MetricKind,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
    for (value, sample) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {sample}");
    }
}

/// Most extra metrics sources [`Stats::add_source`] keeps (they are added by code, never
/// by traffic; the bound only guards against a bug adding one per event).
const MAX_METRICS_SOURCES: usize = 16;

/// The counters of all workers, as the latest snapshot each worker published, plus any
/// extra metrics sources (the coordinator's) rendered after them on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    slots: Arc<Vec<Mutex<Counters>>>,
    sources: Arc<Mutex<Vec<Arc<dyn MetricsSource>>>>,
}

impl Stats {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: Arc::new((0..n).map(|_| Mutex::new(Counters::default())).collect()),
            sources: Arc::default(),
        }
    }

    /// Adds a source of further metrics to `/metrics` (at most 16; more are ignored with
    /// a warning).
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() < MAX_METRICS_SOURCES {
            sources.push(source);
        } else {
            tracing::warn!("too many metrics sources, one ignored");
        }
    }

    /// Renders the summed STUN counters, then every added source, in the Prometheus text
    /// format.
    pub fn render_prometheus(&self, out: &mut String) {
        self.total().render_prometheus(out);
        let sources: Vec<_> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for source in sources {
            source.render_prometheus(out);
        }
    }

    pub(crate) fn publish(&self, worker: usize, counters: &Counters) {
        if let Some(slot) = self.slots.get(worker) {
            // A poisoned slot only means a worker panicked mid-copy; the data is plain.
            let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            *guard = *counters;
        }
    }

    /// The sum over all workers.
    pub fn total(&self) -> Counters {
        let mut total = Counters::default();
        for slot in self.slots.iter() {
            total.merge(&slot.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The router, for embedding or testing.
pub fn router(stats: Stats) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let stats = stats.clone();
                async move {
                    let mut body = String::with_capacity(4096);
                    stats.render_prometheus(&mut body);
                    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves the router on `listener` until `shutdown` becomes true.
pub async fn serve(listener: TcpListener, stats: Stats, mut shutdown: watch::Receiver<bool>) {
    let signal = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router(stats))
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
