//! The operator HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`.
//!
//! It lives on its own TCP address (`--metrics-listen`), never on the STUN UDP port. Steps:
//!
//! 1. The driver binds the listener and spawns [`serve`] with the shared [`Stats`]: the
//!    slots its workers publish their counters to, and the extra [`MetricsSource`]s.
//! 2. `GET /metrics` sums the workers' counters and sets the `punch_stun_*` metrics from
//!    them, lets every [`MetricsSource`] (the QUIC coordinator's `punch_coord_*`) set its
//!    own, and renders the server's registry in the Prometheus text exposition format
//!    0.0.4; `GET /healthz` answers `ok`. The metrics live in a `metrics` crate recorder
//!    of this server (`server_ops::metrics::Registry`, the Prometheus exporter), as in the
//!    other servers of the workspace; the workers' counters stay plain integers.
//! 3. The server stops gracefully when the driver's shutdown signal flips.
//!
//! Every metric is set with [`set_metric`] (one sample) or [`set_labelled`] (one sample
//! per label value), which also describe it (`# HELP`).

use std::sync::{Arc, Mutex};

use axum::Router;
use server_ops::metrics::{Registry, Render};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::counters::Counters;

/// Further metrics shown on `/metrics` (see [`Stats::add_source`]).
pub trait MetricsSource: Send + Sync + std::fmt::Debug + 'static {
    /// Sets this source's metrics to their current values with [`set_metric`] and
    /// [`set_labelled`]; called inside the server's registry before each render.
    fn publish(&self);
}

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Describes the metric `name` and sets its value (a counter's absolute value, a gauge's
/// level), in the registry a [`MetricsSource::publish`] runs in.
pub fn set_metric(name: &'static str, kind: MetricKind, help: &'static str, value: u64) {
    set_labelled(name, kind, help, None, [("", value)]);
}

/// [`set_metric`] with one sample per value of `label` (`name{label="value"}`); without a
/// label, one unlabelled sample.
pub fn set_labelled(
    name: &'static str,
    kind: MetricKind,
    help: &'static str,
    label: Option<&'static str>,
    samples: impl IntoIterator<Item = (&'static str, u64)>,
) {
    match kind {
        MetricKind::Counter => metrics::describe_counter!(name, help),
        MetricKind::Gauge => metrics::describe_gauge!(name, help),
    }
    for (value, sample) in samples {
        let labels: Vec<metrics::Label> = label
            .map(|l| metrics::Label::new(l, value))
            .into_iter()
            .collect();
        match kind {
            MetricKind::Counter => metrics::counter!(name, labels).absolute(sample),
            MetricKind::Gauge => metrics::gauge!(name, labels).set(sample as f64),
        }
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
    registry: Registry,
}

impl Stats {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: Arc::new((0..n).map(|_| Mutex::new(Counters::default())).collect()),
            sources: Arc::default(),
            registry: Registry::new(),
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

    /// Sets the metrics from the summed STUN counters and every added source, and renders
    /// them in the Prometheus text format.
    pub fn render(&self) -> String {
        let total = self.total();
        let sources: Vec<_> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.registry.register(|| {
            total.publish();
            for source in sources {
                source.publish();
            }
        });
        self.registry.render()
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
pub use server_ops::metrics::PROMETHEUS_CONTENT_TYPE;

fn render_fn(stats: Stats) -> Render {
    Arc::new(move || stats.render())
}

/// The router, for embedding or testing.
pub fn router(stats: Stats) -> Router {
    server_ops::metrics::router(render_fn(stats))
}

/// Serves the router on `listener` until `shutdown` becomes true.
pub async fn serve(listener: TcpListener, stats: Stats, shutdown: watch::Receiver<bool>) {
    server_ops::metrics::serve(listener, render_fn(stats), shutdown).await;
}
