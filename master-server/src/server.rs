//! Starting and stopping the service.
//!
//! 1. Connect to the database and run migrations.
//! 2. With PostgreSQL, start listening for other instances' changes *before* loading, so
//!    nothing committed in between is missed.
//! 3. Load every live row into the index.
//! 4. Spawn the writer, the heartbeat flusher (and the change feed, and the rate
//!    limiter's pruning).
//! 5. Serve until the shutdown signal; then stop accepting, finish in-flight requests,
//!    flush buffered heartbeats, let the writer drain its queue, and close the database.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::Config;
use crate::heartbeats::{run_flusher, HeartbeatBuffer};
use crate::http::{admit, router, AppState};
use crate::index::Index;
use crate::store::{PgChangeFeed, Store, StoreError};
use crate::time::Millis;
use crate::writer::{writer, WriterStop};

/// Errors when starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened, migrated or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// A running service (without its listener): state plus background tasks.
pub struct App {
    state: AppState,
    writer: JoinHandle<()>,
    writer_stop: WriterStop,
    flusher: Option<(JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    background: Vec<JoinHandle<()>>,
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => handle,
            Err(err) => {
                tracing::warn!(%err, "a metrics recorder is already installed; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

/// Describes the service's metrics and makes the counters visible before their first event.
fn describe_metrics() {
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP responses by route, method and status"
    );
    metrics::describe_gauge!("master_sessions_live", "sessions live now");
    metrics::describe_counter!("master_sessions_expired_total", "expired sessions reaped");
    metrics::describe_counter!(
        "master_heartbeats_flushed_total",
        "buffered heartbeats written"
    );
    metrics::describe_counter!("master_write_errors_total", "write batches that failed");
    metrics::describe_gauge!("master_connections_open", "HTTP connections open now");
    metrics::describe_counter!(
        "master_connections_refused_total",
        "connections closed at accept by reason (per_ip or total cap)"
    );
    metrics::describe_counter!(
        "master_connections_timed_out_total",
        "connections closed at a deadline by phase (header, idle, linger)"
    );
    for name in [
        "master_sessions_expired_total",
        "master_heartbeats_flushed_total",
        "master_write_errors_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

impl App {
    /// Connects, loads and spawns the background tasks.
    pub async fn start(config: Config) -> Result<App, StartError> {
        if config.min_timeout_secs == 0 || config.min_timeout_secs > config.max_timeout_secs {
            return Err(StartError::Config(
                "need 0 < min_timeout_secs <= max_timeout_secs",
            ));
        }
        let metrics = metrics_handle();
        describe_metrics();
        let store = Store::connect(&config.database_url, Uuid::new_v4()).await?;
        let feed = match &store {
            Store::Postgres(pg) => Some(PgChangeFeed::listen(pg).await?),
            Store::Sqlite(_) => None,
        };
        let index = Arc::new(Index::new());
        let rows = store.load_live(Millis::now()).await?;
        tracing::info!(rows = rows.len(), "loaded live sessions");
        index.replace_all(rows);

        let (writer_task, writer_handle, writer_stop) =
            writer(store.clone(), index.clone(), config.writer.clone());
        let writer = tokio::spawn(writer_task.run());
        let mut background = Vec::new();
        if let Some(feed) = feed {
            background.push(tokio::spawn(feed.run(index.clone())));
        }
        let limiter = admit::limiter(config.rate_limit_per_sec);
        if let Some(limiter) = &limiter {
            background.push(tokio::spawn(admit::prune(
                limiter.clone(),
                Duration::from_secs(30),
            )));
        }
        let heartbeats = (!config.heartbeat_flush.is_zero())
            .then(|| Arc::new(HeartbeatBuffer::new(config.max_sessions)));
        let flusher = heartbeats.as_ref().map(|buffer| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = run_flusher(
                buffer.clone(),
                writer_handle.clone(),
                index.clone(),
                config.heartbeat_flush,
                stopped,
            );
            (tokio::spawn(task), stop)
        });
        let state = AppState {
            config: Arc::new(config),
            index,
            writer: writer_handle,
            store,
            limiter,
            metrics,
            heartbeats,
            quota: Default::default(),
        };
        Ok(App {
            state,
            writer,
            writer_stop,
            flusher,
            background,
        })
    }

    /// The router serving this app.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `signal` completes, then shuts down cleanly.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.state.config.conn.clone();
        let served = crate::serve::serve(listener, self.router(), &limits, signal).await;
        self.shutdown().await;
        served
    }

    /// Stops the background tasks, lets the writer drain and closes the database.
    pub async fn shutdown(self) {
        let App {
            state,
            writer,
            writer_stop,
            flusher,
            background,
        } = self;
        for task in background {
            task.abort();
        }
        if let Some((task, stop)) = flusher {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!("heartbeat flush did not finish within 15 s");
            }
        }
        writer_stop.stop();
        if tokio::time::timeout(Duration::from_secs(15), writer)
            .await
            .is_err()
        {
            tracing::warn!("writer did not drain within 15 s");
        }
        state.store.close().await;
        tracing::info!("stopped");
    }
}
