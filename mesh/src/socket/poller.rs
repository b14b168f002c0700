//! [`WritablePoller`]: the [`quinn::UdpPoller`] for a custom [`quinn::AsyncUdpSocket`] that
//! sends through a shared tokio [`UdpSocket`].
//!
//! quinn asks every socket for one poller per connection
//! ([`AsyncUdpSocket::create_io_poller`](quinn::AsyncUdpSocket::create_io_poller)) and polls it
//! when `try_send` returned `WouldBlock`: the connection waits until the socket can take
//! packets again. Both custom sockets of this workspace ([`MeshSocket`](super::MeshSocket) and
//! the punch server's QUIC socket over its STUN port) answer that with tokio's writability of
//! the underlying socket; this module is the one implementation they share.
//!
//! Use:
//! 1. Implement [`SharedUdpSocket`] for the socket type, returning its tokio socket.
//! 2. In `create_io_poller`, return `Box::pin(WritablePoller::new(self))`.
//!
//! Each wait allocates one boxed future (as quinn's own tokio poller does); once it is ready,
//! the next [`poll_writable`](UdpPoller::poll_writable) starts a new one. Sending and receiving
//! never go through the poller, so per-packet paths stay allocation-free.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::UdpPoller;
use tokio::net::UdpSocket;

/// A type that sends through a tokio [`UdpSocket`] and lets [`WritablePoller`] wait on it.
pub trait SharedUdpSocket {
    /// The socket whose writability gates sending. [`WritablePoller`] only waits on its
    /// readiness ([`UdpSocket::writable`]); it never sends or receives through it.
    fn udp_socket(&self) -> &UdpSocket;
}

/// The pending wait: owns an `Arc` of the socket's owner, so it is `'static`.
type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for a shared tokio UDP socket to become writable (one per quinn connection); see the
/// module docs.
pub struct WritablePoller<T> {
    owner: Arc<T>,
    fut: Option<WritableFuture>,
}

impl<T> WritablePoller<T>
where
    T: SharedUdpSocket + Send + Sync + 'static,
{
    /// A poller that waits on `owner`'s socket ([`SharedUdpSocket::udp_socket`]). No wait
    /// starts until the first [`poll_writable`](UdpPoller::poll_writable).
    pub fn new(owner: Arc<T>) -> Self {
        Self { owner, fut: None }
    }
}

impl<T> fmt::Debug for WritablePoller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl<T> UdpPoller for WritablePoller<T>
where
    T: SharedUdpSocket + Send + Sync + 'static,
{
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fut = this.fut.get_or_insert_with(|| {
            let owner = Arc::clone(&this.owner);
            Box::pin(async move { owner.udp_socket().writable().await })
        });
        let result = ready!(fut.as_mut().poll(cx));
        // A future must not be polled after it is ready: the next call starts a new wait.
        this.fut = None;
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    struct Owner(UdpSocket);

    impl SharedUdpSocket for Owner {
        fn udp_socket(&self) -> &UdpSocket {
            &self.0
        }
    }

    #[tokio::test]
    async fn ready_again_after_each_wait() {
        let sock = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let owner = Arc::new(Owner(sock));
        let mut poller: Pin<Box<dyn UdpPoller>> = Box::pin(WritablePoller::new(Arc::clone(&owner)));
        assert!(format!("{poller:?}").starts_with("WritablePoller"));
        // A fresh socket is writable; the wait after a ready one starts over and is ready too.
        for _ in 0..3 {
            poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
        }
        // The poller holds the owner, and only while it exists.
        assert_eq!(Arc::strong_count(&owner), 2);
        drop(poller);
        assert_eq!(Arc::strong_count(&owner), 1);
    }
}
