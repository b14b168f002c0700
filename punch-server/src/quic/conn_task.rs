//! One task per incoming QUIC connection: handshake, control stream, and the pumps between
//! the stream and the coordinator task.
//!
//! Steps (all inside a tracing span naming the connection, its address and, once known,
//! the peer id):
//! 1. Complete the handshake within `handshake_timeout`; read the peer id the client
//!    certificate proved ([`tls::remote_peer_id`]).
//! 2. Wait up to `control_stream_timeout` for the peer's bidirectional control stream;
//!    without one the connection is closed ([`CloseCode::NoControlStream`]).
//! 3. Send `Connected` to the coordinator task with the writer's bounded queue and the
//!    connection (the coordinator task reads its RTT estimate and remote address from
//!    it), then run until one of these ends:
//!    - the reader: chunks of at most `read_chunk` bytes become `Bytes` events (a full
//!      event queue makes it wait, which stops the peer through QUIC flow control);
//!    - the writer: frames from the queue are written, each within `write_timeout`; a
//!      `Close` finishes the stream, waits up to `close_linger` for the peer to take it,
//!      then closes the connection with the close code;
//!    - the connection closing (idle timeout, peer close, server shutdown).
//!
//!    The transport allows one bidirectional stream at a time, so the peer cannot open
//!    another while the control stream is open. An idle connection is this one task
//!    waiting on three futures (kept small: it is most of what an idle peer costs us, next
//!    to quinn's own per-connection state).
//! 4. Close the connection if still open, and send `Disconnected`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesh::identity::tls;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::timeout;
use tracing::Instrument;

use super::config::{CloseCode, QuicConfig};
use super::coord_task::{Event, Outgoing};
use super::stats::{CoordMetrics, QuicCounters};
use crate::coordinator::ConnId;

/// Longest wait for the coordinator task to take the final `Disconnected` event.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection task shares.
#[derive(Debug)]
pub struct ConnCtx {
    /// Settings.
    pub config: QuicConfig,
    /// The coordinator task's event queue.
    pub events: mpsc::Sender<Event>,
    /// Shared counters.
    pub metrics: Arc<CoordMetrics>,
}

/// Why a connection's service ended.
#[derive(Debug)]
enum End {
    /// The coordinator asked for the close, which is done.
    Closed(CloseCode),
    /// The writer gave up (too slow); the connection is closed.
    TooSlow,
    /// The peer finished or reset its control stream.
    StreamClosed(String),
    /// The coordinator task is gone (shutdown).
    CoordinatorGone,
    /// The connection closed (by the peer, an idle timeout, or the server).
    ConnectionLost(quinn::ConnectionError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed(code) => write!(f, "closed by the coordinator: {}", code.reason()),
            Self::TooSlow => f.write_str("too slow"),
            Self::StreamClosed(why) => write!(f, "control stream closed: {why}"),
            Self::CoordinatorGone => f.write_str("coordinator stopped"),
            Self::ConnectionLost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

/// Decrements the active-connections gauge when the task ends, however it ends.
struct ActiveGuard(Arc<CoordMetrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        QuicCounters::dec(&self.0.quic.connections_active);
    }
}

/// Serves one incoming connection (see the module docs). `handshake` is released once the
/// handshake is over; `slot` (a `max_connections` slot) when the task ends.
///
/// A plain function returning the task's future (rather than an `async fn` around an
/// instrumented block), so the arguments are stored once in the task, not twice.
pub fn run(
    incoming: quinn::Incoming,
    id: ConnId,
    ctx: Arc<ConnCtx>,
    handshake: OwnedSemaphorePermit,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    QuicCounters::inc(&ctx.metrics.quic.connections_active);
    let active = ActiveGuard(Arc::clone(&ctx.metrics));
    let addr = incoming.remote_address();
    let span = tracing::info_span!("coord_conn", conn = %id, %addr, peer = tracing::field::Empty);
    async move {
        let _guards = (active, slot);
        let Some(connection) = complete_handshake(incoming, &ctx).await else {
            return;
        };
        drop(handshake);
        let peer = match tls::remote_peer_id(&connection) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!(error = %e, "no usable peer id");
                QuicCounters::inc(&ctx.metrics.quic.handshakes_failed);
                CloseCode::BadIdentity.close(&connection);
                return;
            }
        };
        tracing::Span::current().record("peer", tracing::field::display(peer.short()));
        let Some((send, recv)) = control_stream(&ctx, &connection).await else {
            return;
        };
        QuicCounters::inc(&ctx.metrics.quic.connections_established);
        let (out, out_rx) = mpsc::channel(ctx.config.outgoing_queue);
        let connected = Event::Connected {
            conn: id,
            peer,
            addr: connection.remote_address(),
            out,
            connection: connection.clone(),
        };
        if ctx.events.send(connected).await.is_err() {
            CloseCode::Shutdown.close(&connection);
            return;
        }
        tracing::debug!("control stream open");
        // Step 3: the pumps, until the first one ends.
        let end = tokio::select! {
            end = read_loop(&ctx, id, recv) => end,
            end = write_loop(&ctx, &connection, send, out_rx) => end,
            e = connection.closed() => End::ConnectionLost(e),
        };
        if connection.close_reason().is_none() {
            match &end {
                End::StreamClosed(_) => CloseCode::ControlStreamClosed.close(&connection),
                End::CoordinatorGone => CloseCode::Shutdown.close(&connection),
                End::Closed(_) | End::TooSlow | End::ConnectionLost(_) => {}
            }
        }
        tracing::debug!(%end, "connection ended");
        let _ = timeout(
            DISCONNECT_TIMEOUT,
            ctx.events.send(Event::Disconnected { conn: id }),
        )
        .await;
    }
    .instrument(span)
}

/// Step 1: the handshake, bounded; failures are counted.
async fn complete_handshake(incoming: quinn::Incoming, ctx: &ConnCtx) -> Option<quinn::Connection> {
    let failed = &ctx.metrics.quic.handshakes_failed;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            QuicCounters::inc(failed);
            tracing::debug!(error = %e, "cannot accept the handshake");
            return None;
        }
    };
    match timeout(ctx.config.handshake_timeout, connecting).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(e)) => {
            QuicCounters::inc(failed);
            tracing::debug!(error = %e, "handshake failed");
            None
        }
        Err(_) => {
            // Dropping the `Connecting` abandons the connection.
            QuicCounters::inc(failed);
            tracing::debug!("handshake timed out");
            None
        }
    }
}

/// Step 2: the peer's control stream, within `control_stream_timeout`.
async fn control_stream(
    ctx: &ConnCtx,
    connection: &quinn::Connection,
) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    match timeout(ctx.config.control_stream_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => Some(streams),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection lost before the control stream");
            None
        }
        Err(_) => {
            tracing::debug!("no control stream in time");
            QuicCounters::inc(&ctx.metrics.quic.no_control_stream);
            CloseCode::NoControlStream.close(connection);
            None
        }
    }
}

async fn read_loop(ctx: &ConnCtx, id: ConnId, mut recv: quinn::RecvStream) -> End {
    loop {
        match recv.read_chunk(ctx.config.read_chunk, true).await {
            Ok(Some(chunk)) => {
                tracing::trace!(len = chunk.bytes.len(), "control bytes");
                // Wait for room first, so the waiting future does not hold the event.
                let Ok(permit) = ctx.events.reserve().await else {
                    return End::CoordinatorGone;
                };
                permit.send(Event::Bytes {
                    conn: id,
                    bytes: chunk.bytes,
                });
            }
            Ok(None) => return End::StreamClosed("finished by the peer".into()),
            Err(quinn::ReadError::ConnectionLost(e)) => return End::ConnectionLost(e),
            Err(e) => return End::StreamClosed(e.to_string()),
        }
    }
}

async fn write_loop(
    ctx: &ConnCtx,
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    mut out: mpsc::Receiver<Outgoing>,
) -> End {
    loop {
        let Some(next) = out.recv().await else {
            // The coordinator task dropped the queue: it is gone, or it forgot us after
            // closing the connection itself.
            return End::CoordinatorGone;
        };
        match next {
            Outgoing::Frame(frame) => {
                tracing::trace!(len = frame.len(), "control frame");
                match timeout(ctx.config.write_timeout, send.write_all(&frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(quinn::WriteError::ConnectionLost(e))) => return End::ConnectionLost(e),
                    Ok(Err(e)) => return End::StreamClosed(e.to_string()),
                    Err(_) => {
                        QuicCounters::inc(&ctx.metrics.quic.too_slow);
                        CloseCode::TooSlow.close(connection);
                        return End::TooSlow;
                    }
                }
            }
            Outgoing::Close(code) => {
                // Deliver what is queued: finish, and give the peer a moment to take it.
                let _ = send.finish();
                let _ = timeout(ctx.config.close_linger, send.stopped()).await;
                code.close(connection);
                return End::Closed(code);
            }
        }
    }
}
