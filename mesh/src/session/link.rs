//! One link: the QUIC connection to another member and its long-lived session stream.
//!
//! Steps:
//! 1. The dialing side opens the bidirectional membership stream and writes a heartbeat at
//!    once, so the accepting side sees the stream ([`open`] / [`accept`], each bounded by
//!    a timeout).
//! 2. [`spawn`] starts the membership reader and writer and the game traffic's tasks
//!    (`app_link.rs`: one app stream each way, datagrams). The membership reader decodes
//!    frames ([`SessionMsg`]) and hands them to the session task through its bounded input
//!    queue (frames wait, which slows the sender through QUIC flow control). The link's
//!    datagrams (game datagrams and routed traffic) have their own reader, so a session
//!    task that falls behind holds back neither the game's datagrams nor the routes
//!    through this member. The writers drain bounded queues of encoded frames into their
//!    streams.
//! 3. Closing ([`LinkHandle::close`]) finishes both streams after what is queued, waits
//!    (at most [`FLUSH_WAIT`]) for the peer to read them and to finish its own stream, so
//!    its last frames (a `Leave` sent at the same moment) are read too, then closes the
//!    connection; a lost connection ends the reader, which reports [`Input::Closed`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::app_link::{self, AppSink};
use super::msg::SessionMsg;
use crate::coord::{encode, FrameDecoder};
use crate::identity::PeerId;

/// Most encoded frames queued for one link's membership stream.
pub const LINK_QUEUE: usize = 256;
/// Most reliable game messages queued for one link's app stream.
pub const APP_QUEUE: usize = 1024;
/// How long a closing link waits for its last frames to be read.
const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// QUIC application error code of a session link closed on purpose.
const CLOSE_CODE: u32 = 0x5e55;

/// What a link's reader hands to the session task.
#[derive(Debug)]
pub(crate) enum Input {
    /// A decoded frame.
    Frame {
        peer: PeerId,
        link: u64,
        msg: SessionMsg,
    },
    /// The stream or connection ended; `error` says why when it was not a clean close.
    Closed {
        peer: PeerId,
        link: u64,
        error: Option<String>,
    },
    /// The peer sent bytes that do not decode as the session protocol.
    Malformed {
        peer: PeerId,
        link: u64,
        error: String,
    },
}

/// Counters shared by every link of a session.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Datagrams dropped because the session task's queue was full.
    pub datagrams_dropped: AtomicU64,
    /// Frames that did not decode.
    pub malformed: AtomicU64,
}

/// The session task's handle on one link.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    pub id: u64,
    pub conn: quinn::Connection,
    frames: mpsc::Sender<Bytes>,
    app: mpsc::Sender<Bytes>,
}

impl LinkHandle {
    /// Queues a membership message on the membership stream. False if it does not encode
    /// or the queue is full.
    pub fn send(&self, msg: &SessionMsg) -> bool {
        let mut buf = Vec::new();
        encode(msg, &mut buf).is_ok() && self.frames.try_send(Bytes::from(buf)).is_ok()
    }

    /// Queues an encoded game frame on the app stream. False if the queue is full or the
    /// link closed.
    pub fn send_frame(&self, frame: Bytes) -> bool {
        self.app.try_send(frame).is_ok()
    }

    /// Finishes the streams after the queued frames and closes the connection.
    pub fn close(&self) {
        // Dropping our senders is not enough (clones live in the shared table): an empty
        // frame tells each writer to finish. A full app queue is cut short by the close.
        let _ = self.app.try_send(Bytes::new());
        if self.frames.try_send(Bytes::new()).is_err() {
            self.conn.close(CLOSE_CODE.into(), b"session link closed");
        }
    }
}

/// Opens the session stream on a dialed connection.
pub(crate) async fn open(
    conn: &quinn::Connection,
    timeout: Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let open = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut hello = Vec::new();
        encode(&SessionMsg::Heartbeat, &mut hello).map_err(|e| e.to_string())?;
        send.write_all(&hello).await.map_err(|e| e.to_string())?;
        Ok((send, recv))
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| "timed out opening the session stream".to_string())?
}

/// Accepts the session stream on an accepted connection.
pub(crate) async fn accept(
    conn: &quinn::Connection,
    timeout: Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the peer opened no session stream in time".into()),
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Starts the reader and writer tasks of a link.
pub(crate) fn spawn(
    peer: PeerId,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    input: mpsc::Sender<Input>,
    sink: AppSink,
) -> LinkHandle {
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let (frames, rx) = mpsc::channel(LINK_QUEUE);
    let (app, app_rx) = mpsc::channel(APP_QUEUE);
    let span = tracing::info_span!("link", peer = %peer.short(), link = id);
    let app_writer = tokio::spawn(tracing::Instrument::instrument(
        app_link::write_loop(conn.clone(), app_rx),
        span.clone(),
    ));
    tokio::spawn(tracing::Instrument::instrument(
        app_link::read_loop(peer, id, conn.clone(), input.clone(), sink.clone()),
        span.clone(),
    ));
    // Dropped when the reader ends: the writer closes the connection only after both
    // directions are done, so the peer's last frames (a `Leave`) are read, not cut off.
    let (reader_alive, reader_done) = oneshot::channel::<()>();
    tokio::spawn(tracing::Instrument::instrument(
        write_loop(conn.clone(), send, rx, app_writer, reader_done),
        span.clone(),
    ));
    let reader_conn = conn.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            read_loop(peer, id, reader_conn, recv, input, sink).await;
            drop(reader_alive);
        },
        span,
    ));
    LinkHandle {
        id,
        conn,
        frames,
        app,
    }
}

async fn write_loop(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Bytes>,
    app_writer: tokio::task::JoinHandle<()>,
    reader_done: oneshot::Receiver<()>,
) {
    while let Some(frame) = rx.recv().await {
        if frame.is_empty() {
            break;
        }
        if let Err(e) = send.write_chunk(frame).await {
            tracing::debug!(error = %e, "session stream write failed");
            return;
        }
    }
    // Finish, give the peer a moment to read the last frames of both streams and to
    // finish its own, then close.
    let _ = send.finish();
    let flushed = async {
        let _ = send.stopped().await;
        let _ = app_writer.await;
        let _ = reader_done.await;
    };
    let _ = tokio::time::timeout(FLUSH_WAIT, flushed).await;
    conn.close(CLOSE_CODE.into(), b"session link closed");
}

async fn read_loop(
    peer: PeerId,
    link: u64,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    input: mpsc::Sender<Input>,
    sink: AppSink,
) {
    let stats = sink.shared.stats.links.clone();
    // Ends with the connection, or with this reader.
    let _datagrams = super::driver::AbortOnDrop(tokio::spawn(async move {
        while let Ok(bytes) = conn.read_datagram().await {
            sink.datagram(peer, link, bytes);
        }
    }));
    let mut decoder = FrameDecoder::<SessionMsg>::new();
    let mut buf = vec![0u8; 64 * 1024];
    let error = loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                decoder.push(buf.get(..n).unwrap_or_default());
                while let Some(frame) = decoder.pop() {
                    let item = match frame {
                        Ok(msg) => Input::Frame { peer, link, msg },
                        Err(e) => {
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                            Input::Malformed {
                                peer,
                                link,
                                error: e.to_string(),
                            }
                        }
                    };
                    if input.send(item).await.is_err() {
                        return;
                    }
                }
                if decoder.is_failed() {
                    break Some("undecodable session stream".to_string());
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let _ = input.send(Input::Closed { peer, link, error }).await;
}
