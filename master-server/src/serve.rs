//! The HTTP/1.1 listener: an accept loop with connection caps, and one task per
//! connection driven by its [`ConnClock`] (RFC 9112: persistence, section 9.3; closing,
//! section 9.6).
//!
//! 1. At start the binary raises the soft descriptor limit to the hard one
//!    ([`raise_fd_limit`]); the global cap is lowered to that limit minus
//!    [`RESERVED_FDS`] so accepting never fails with "too many open files".
//! 2. Each accepted socket takes a global permit and a slot of its peer address; when
//!    either is exhausted the socket is closed at once (counted in
//!    `master_connections_refused_total`) and the loop goes on.
//! 3. The connection is served by hyper with the router as its service; the socket
//!    wrapper and the service report reads, requests and responses to the clock.
//! 4. At each clock deadline the task shuts the connection down gracefully (idle) or drops
//!    it (headers too slow, or a graceful close that lingers).
//! 5. On the shutdown signal the loop stops accepting, every connection is asked to close
//!    after its response in progress, and the loop waits (bounded) for them to finish.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::ConnLimits;
use crate::conn_clock::{Action, ConnClock};

/// Descriptors kept free for the database pool, log files and the listener itself.
pub const RESERVED_FDS: u64 = 128;

/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (soft, hard) limits in
/// force afterwards (`None` where unlimited or unknown).
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
    let target = old.maximum.unwrap_or(1 << 20);
    if old.current.is_some_and(|soft| soft < target) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: old.maximum,
            },
        )?;
    }
    let new = getrlimit(Resource::Nofile);
    Ok((new.current, new.maximum))
}

/// The soft descriptor limit in force (`None` where unlimited or unknown).
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The global connection cap: the configured one, below the descriptor limit.
pub fn effective_max_total(limits: &ConnLimits) -> usize {
    let by_fds = fd_limit().map_or(usize::MAX, |soft| {
        usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX)
    });
    limits.max_total.min(by_fds).max(1)
}

/// Open connections: a global semaphore and a count per peer address.
struct Gate {
    total: Arc<Semaphore>,
    max_total: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// One admitted connection; gives its slots back when dropped.
struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, &'static str> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "total")?;
        let mut counts = self.counts();
        let count = counts.entry(ip).or_insert(0);
        if self.max_per_ip != 0 && *count >= self.max_per_ip {
            if *count == 0 {
                counts.remove(&ip);
            }
            return Err("per_ip");
        }
        *count += 1;
        Ok(Ticket {
            gate: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
        metrics::gauge!("master_connections_open").decrement(1.0);
    }
}

/// Serves `router` on `listener` until `signal` completes, then drains connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ConnLimits,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max_total = effective_max_total(limits);
    if max_total < limits.max_total {
        tracing::warn!(
            configured = limits.max_total,
            max_total,
            "connection cap lowered to the descriptor limit"
        );
    }
    tracing::info!(
        max_total,
        max_per_ip = limits.max_per_ip,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    let gate = Arc::new(Gate {
        total: Arc::new(Semaphore::new(max_total)),
        max_total,
        per_ip: Mutex::new(HashMap::new()),
        max_per_ip: limits.max_per_ip,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut signal = pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Per-connection errors (reset before accept) and descriptor
                    // exhaustion alike: pause briefly so a storm cannot spin the loop.
                    tracing::warn!(%err, "accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        match gate.admit(peer.ip()) {
            Ok(ticket) => {
                metrics::gauge!("master_connections_open").increment(1.0);
                let conn = Connection {
                    router: router.clone(),
                    peer,
                    header: limits.header_read_timeout,
                    idle: limits.idle_timeout,
                };
                tokio::spawn(conn.run(stream, ticket, stop_rx.clone()));
            }
            Err(reason) => {
                metrics::counter!("master_connections_refused_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(%peer, reason, "connection refused");
                drop(stream);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(gate.max_total).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, gate.total.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping without them");
    }
    Ok(())
}

/// One accepted connection.
struct Connection {
    router: Router,
    peer: SocketAddr,
    header: Duration,
    idle: Duration,
}

type SharedClock = Arc<Mutex<ConnClock>>;

fn lock(clock: &SharedClock) -> MutexGuard<'_, ConnClock> {
    clock.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    async fn run(self, stream: TcpStream, ticket: Ticket, mut stop: watch::Receiver<bool>) {
        let _ticket = ticket;
        let _ = stream.set_nodelay(true);
        let clock: SharedClock = Arc::new(Mutex::new(ConnClock::new(
            self.header,
            self.idle,
            Instant::now(),
        )));
        let io = TokioIo::new(Watched {
            stream,
            clock: clock.clone(),
        });
        let (router, peer, service_clock) = (self.router, self.peer, clock.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            lock(&service_clock).on_request();
            req.extensions_mut().insert(ConnectInfo(peer));
            let (router, clock) = (router.clone(), service_clock.clone());
            async move {
                let response = router.oneshot(req).await;
                lock(&clock).on_response(Instant::now());
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.header_read_timeout(None).keep_alive(true);
        let mut conn = pin!(builder.serve_connection(io, service));
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        });
        let mut stopped = false;
        let mut sleep = pin!(tokio::time::sleep(self.header));
        let outcome = poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                stopped = true;
                conn.as_mut().graceful_shutdown();
            }
            loop {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(result.map_err(|e| e.to_string()));
                }
                let mut clock = lock(&clock);
                let Some(deadline) = clock.deadline() else {
                    return Poll::Pending;
                };
                if sleep.deadline().into_std() != deadline {
                    sleep.as_mut().reset(deadline.into());
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match clock.poll(Instant::now()) {
                    Action::Wait => {}
                    Action::Shutdown => {
                        drop(clock);
                        conn.as_mut().graceful_shutdown();
                    }
                    Action::Close => return Poll::Ready(Err("closed at its deadline".into())),
                }
            }
        })
        .await;
        if let Some(expired) = lock(&clock).expired() {
            metrics::counter!("master_connections_timed_out_total", "phase" => expired.label())
                .increment(1);
        }
        if let Err(err) = outcome {
            tracing::debug!(%peer, %err, "connection ended");
        }
    }
}

/// The socket, reporting reads to the connection's clock.
struct Watched {
    stream: TcpStream,
    clock: SharedClock,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            lock(&self.clock).on_read(Instant::now());
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
