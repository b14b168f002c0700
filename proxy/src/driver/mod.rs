//! The driver: binds the sockets, runs the relay thread and the metrics endpoint, stops
//! them.
//!
//! Steps:
//!
//! 1. [`Proxy::start`] validates the config, binds the listening UDP socket (port 0
//!    resolved) and, if asked, the metrics TCP listener; the core learns the bound
//!    listening address (its own address, refused as a peer).
//! 2. A dedicated thread runs the [`event_loop`]: one mio poll over the listening socket
//!    and one socket per allocation, bound on the relay IP when the core asks. The core
//!    needs no lock: the thread owns it.
//! 3. The metrics endpoint (`/metrics`, `/healthz`, [`crate::metrics`]) runs on the
//!    caller's tokio runtime and reads the counters the thread publishes every second.
//! 4. [`Proxy::shutdown`] sets the stop flag, wakes the thread, waits (bounded) for it to
//!    close every socket, and stops the metrics endpoint.

mod batch;
mod event_loop;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ProxyConfig};
use crate::metrics::Metrics;
use crate::server::{Server, Stats};

/// How long [`Proxy::shutdown`] waits for the relay thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The poller or the relay thread could not be set up.
    #[error("cannot start the relay thread: {0}")]
    Thread(std::io::Error),
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<std::thread::JoinHandle<Stats>>,
    http: Option<(JoinHandle<()>, watch::Sender<bool>)>,
}

impl Proxy {
    /// Binds and starts; must run inside a tokio runtime (for the metrics endpoint).
    pub async fn start(config: ProxyConfig) -> Result<Proxy, DriverError> {
        let mut core_config = config.server.clone();
        core_config.listen = config.listen;
        core_config.validate()?;
        let bind_err = |addr| move |source| DriverError::Bind { addr, source };
        let listen = std::net::UdpSocket::bind(config.listen).map_err(bind_err(config.listen))?;
        let local_addr = listen.local_addr().map_err(bind_err(config.listen))?;
        core_config.listen = local_addr;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let core = Server::new(core_config, Instant::now(), now_unix)?;
        let metrics = Arc::new(Metrics::new());
        let mut http = None;
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_err(addr))?;
            metrics_addr = Some(listener.local_addr().map_err(bind_err(addr))?);
            let (tx, rx) = watch::channel(false);
            let m = Arc::clone(&metrics);
            let render: server_ops::metrics::Render = Arc::new(move || m.render());
            let task = tokio::spawn(server_ops::metrics::serve(listener, render, rx));
            http = Some((task, tx));
        }
        let poll = mio::Poll::new().map_err(DriverError::Thread)?;
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), event_loop::WAKER).map_err(DriverError::Thread)?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let event_loop = event_loop::EventLoop::new(
            core,
            poll,
            listen,
            config.gso,
            Arc::clone(&metrics),
            Arc::clone(&stop),
        )
        .map_err(bind_err(local_addr))?;
        let thread = std::thread::Builder::new()
            .name("proxy-relay".into())
            .spawn(move || event_loop.run())
            .map_err(DriverError::Thread)?;
        Ok(Proxy {
            local_addr,
            metrics_addr,
            metrics,
            stop,
            waker,
            thread: Some(thread),
            http,
        })
    }

    /// The bound listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound metrics address, if the endpoint is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Prometheus text of the metrics, as `/metrics` serves it.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stops the relay thread (closing every socket) and the metrics endpoint; returns
    /// the final counters (`None` if the thread did not stop in time or panicked).
    pub async fn shutdown(mut self) -> Option<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        let stats = match self.thread.take() {
            Some(thread) => {
                let join = tokio::task::spawn_blocking(move || thread.join());
                match tokio::time::timeout(STOP_TIMEOUT, join).await {
                    Ok(Ok(Ok(stats))) => Some(stats),
                    _ => {
                        tracing::error!("the relay thread did not stop cleanly");
                        None
                    }
                }
            }
            None => None,
        };
        if let Some((task, tx)) = self.http.take() {
            let _ = tx.send(true);
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
        stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy dropped without shutdown still stops its thread.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some((task, _)) = self.http.take() {
            task.abort();
        }
    }
}
