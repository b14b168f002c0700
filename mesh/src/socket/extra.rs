//! The extra local sockets of a [`super::MeshSocket`]: birthday probing's hard side opens
//! many ([`crate::punch::birthday`]), and the one whose pair validates carries the QUIC
//! connection from then on, as a path's [`LocalSocket`].
//!
//! Flow:
//! 1. [`ExtraSockets::open`] binds up to [`MAX_EXTRA_SOCKETS`] UDP sockets on the primary
//!    socket's IP (ephemeral ports), each with its own `quinn-udp` state and a fresh
//!    [`LocalSocket`] id (never 0, the primary's, and never one still open).
//! 2. The mesh socket's receive polls them after the primary one: a datagram on an extra
//!    socket goes through the same demux as the primary's (STUN to the STUN router with the
//!    socket's id, QUIC to quinn under its peer's synthetic address, learned per local
//!    socket), so nothing else reads them.
//! 3. Sends on a path naming an extra socket leave from it; STUN is sent from one with
//!    [`super::MeshSocket::send_stun_from`].
//! 4. [`ExtraSockets::close`] drops the ones that lost (their ports are released at once).
//!
//! With no extra socket open, the receive path pays one atomic load for them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use quinn_udp::UdpSocketState;

use super::family::{bind_udp, canonical};
use super::path::LocalSocket;

/// Most extra sockets open at once (birthday probing's default takes 256).
pub const MAX_EXTRA_SOCKETS: usize = 1024;

/// One extra socket.
pub(crate) struct ExtraSocket {
    pub(crate) id: LocalSocket,
    pub(crate) io: tokio::net::UdpSocket,
    pub(crate) state: UdpSocketState,
}

/// The open extra sockets (see the module docs).
#[derive(Default)]
pub(crate) struct ExtraSockets {
    list: RwLock<Vec<Arc<ExtraSocket>>>,
    count: AtomicUsize,
    next_id: AtomicU16,
}

/// Errors of opening extra sockets.
#[derive(Debug, thiserror::Error)]
pub enum ExtraSocketError {
    /// Opening `asked` more would pass [`MAX_EXTRA_SOCKETS`].
    #[error("{open} extra sockets open, {asked} more would pass the limit of {MAX_EXTRA_SOCKETS}")]
    TooMany {
        /// Open now.
        open: usize,
        /// Asked for.
        asked: usize,
    },
    /// Binding failed (file descriptors, ports).
    #[error("binding an extra socket failed: {0}")]
    Io(#[from] io::Error),
}

impl ExtraSockets {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<ExtraSocket>>> {
        // Every writer leaves the list consistent.
        self.list.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether none is open (one atomic load: the per-receive check).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// How many are open.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Step 1: `n` sockets on `primary`'s IP (inside a tokio runtime).
    pub(crate) fn open(
        &self,
        primary: SocketAddr,
        n: usize,
    ) -> Result<Vec<LocalSocket>, ExtraSocketError> {
        let open = self.len();
        if open.saturating_add(n) > MAX_EXTRA_SOCKETS {
            return Err(ExtraSocketError::TooMany { open, asked: n });
        }
        let bind_to = SocketAddr::new(primary.ip(), 0);
        let mut fresh = Vec::with_capacity(n);
        for _ in 0..n {
            let std_socket = bind_udp(bind_to)?;
            std_socket.set_nonblocking(true)?;
            let state = UdpSocketState::new((&std_socket).into())?;
            let io = tokio::net::UdpSocket::from_std(std_socket)?;
            let id = self.fresh_id(&fresh);
            fresh.push(Arc::new(ExtraSocket { id, io, state }));
        }
        let ids = fresh.iter().map(|s| s.id).collect();
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        list.extend(fresh);
        self.count.store(list.len(), Ordering::Relaxed);
        Ok(ids)
    }

    /// An id that is neither the primary's (0) nor one open or in `pending`; ids count up
    /// and wrap after 65,535 (at most [`MAX_EXTRA_SOCKETS`] are taken at once).
    fn fresh_id(&self, pending: &[Arc<ExtraSocket>]) -> LocalSocket {
        let open = self.read();
        loop {
            let id = LocalSocket(self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1));
            let taken =
                id == LocalSocket::PRIMARY || open.iter().chain(pending).any(|s| s.id == id);
            if !taken {
                return id;
            }
        }
    }

    /// Step 4: closes `ids` (unknown ones are ignored).
    pub(crate) fn close(&self, ids: &[LocalSocket]) {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        list.retain(|s| !ids.contains(&s.id));
        self.count.store(list.len(), Ordering::Relaxed);
    }

    /// The socket `id`, if open.
    pub(crate) fn get(&self, id: LocalSocket) -> Option<Arc<ExtraSocket>> {
        if self.is_empty() {
            return None;
        }
        self.read().iter().find(|s| s.id == id).cloned()
    }

    /// The local address of `id` (canonical).
    pub(crate) fn local_addr(&self, id: LocalSocket) -> Option<SocketAddr> {
        let socket = self.get(id)?;
        socket.io.local_addr().ok().map(canonical)
    }
}
