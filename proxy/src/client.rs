//! The TURN client over a blocking std socket, for the relay's tests, benchmark and tools.
//! The messages and the state machine are `mesh::turn`'s (the workspace's one TURN
//! client); this module only drives them.
//!
//! Steps:
//!
//! 1. [`Session::allocate`] drives a `mesh::turn::client::TurnClient` on its socket:
//!    Allocate with the 401 challenge; then [`Session::create_permission`],
//!    [`Session::channel_bind`], [`Session::refresh`] and [`Session::close`] (a 438 Stale
//!    Nonce is retried once with the new nonce). Every exchange retransmits every 500 ms
//!    and gives up after the session's timeout.
//! 2. [`transact`] sends raw bytes (e.g. a hand-made or malformed request) and waits for
//!    the response to its transaction, for tests that probe the server directly.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub use mesh::turn::client::TurnError as ClientError;
use mesh::turn::client::{RequestId, TurnClient, TurnClientConfig, TurnEvent};
pub use mesh::turn::msg::{
    allocate_attrs, binding_request, encode, encode_request, new_txn, parse_data_indication,
    send_indication, ClientAuth, Response,
};
use stun_rs::{HMACKey, MessageMethod, StunAttribute, TransactionId};

use crate::credentials::Credentials;

/// Sends `bytes` and waits for the response to `txn`, retransmitting every 500 ms.
pub fn transact(
    sock: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
    txn: TransactionId,
    key: Option<&HMACKey>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        sock.send_to(bytes, server)?;
        let resend = Instant::now() + Duration::from_millis(500);
        loop {
            let Some((n, from)) = recv_until(sock, &mut buf, resend.min(deadline))? else {
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(timeout));
                }
                break;
            };
            if from != server {
                continue;
            }
            if let Some(r) = Response::parse(&buf[..n], key).filter(|r| r.txn == txn) {
                return Ok(r);
            }
        }
    }
}

/// One datagram received before `until`, or `None` once it passed.
fn recv_until(
    sock: &UdpSocket,
    buf: &mut [u8],
    until: Instant,
) -> io::Result<Option<(usize, SocketAddr)>> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        sock.set_read_timeout(Some(until - now))?;
        match sock.recv_from(buf) {
            Ok(r) => return Ok(Some(r)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An allocation held over a blocking socket.
#[derive(Debug)]
pub struct Session {
    sock: UdpSocket,
    client: TurnClient,
    /// The relayed transport address.
    pub relayed: SocketAddr,
    /// The client's address as the server sees it.
    pub mapped: Option<SocketAddr>,
    /// The lifetime granted.
    pub lifetime: u32,
}

/// Drives `client` on `sock` until transaction `id` ends (the client's timeout bounds it).
fn run(client: &mut TurnClient, sock: &UdpSocket, id: RequestId) -> Result<Response, ClientError> {
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(t) = client.poll_transmit() {
            sock.send_to(&t.payload, t.dst)?;
        }
        while let Some(TurnEvent::Done { id: done, result }) = client.poll_event() {
            if done == id {
                return result;
            }
        }
        let Some(deadline) = client.poll_timeout() else {
            return Err(ClientError::Protocol("transaction lost"));
        };
        match recv_until(sock, &mut buf, deadline)? {
            Some((n, from)) => {
                client.handle_input(Instant::now(), from, &buf[..n]);
            }
            None => client.handle_timeout(Instant::now()),
        }
    }
}

impl Session {
    /// Allocates a UDP relay on `server` (401 challenge, then the signed request).
    pub fn allocate(
        sock: UdpSocket,
        server: SocketAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let config = TurnClientConfig {
            timeout,
            ..TurnClientConfig::default()
        };
        let mut client = TurnClient::new(server, creds.clone(), config);
        let id = client.allocate(Instant::now(), None)?;
        let r = run(&mut client, &sock, id)?;
        if client.auth().is_none() {
            return Err(ClientError::Protocol(
                "allocate without credentials succeeded",
            ));
        }
        let relayed = r
            .relayed
            .ok_or(ClientError::Protocol("no XOR-RELAYED-ADDRESS"))?;
        Ok(Self {
            sock,
            client,
            relayed,
            mapped: r.mapped,
            lifetime: r.lifetime.unwrap_or(0),
        })
    }

    /// The socket (for sending ChannelData and receiving relayed data).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.client.server()
    }

    /// Sends a signed request and returns the success answer; a 438 is retried once
    /// with the new nonce, other errors are [`ClientError::Refused`].
    pub fn request(
        &mut self,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> Result<Response, ClientError> {
        let id = self.client.request(Instant::now(), method, attrs)?;
        run(&mut self.client, &self.sock, id)
    }

    /// CreatePermission for `peers`.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ClientError> {
        let id = self.client.create_permission(Instant::now(), peers)?;
        run(&mut self.client, &self.sock, id).map(|_| ())
    }

    /// ChannelBind `number` to `peer`.
    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), ClientError> {
        let id = self.client.channel_bind(Instant::now(), number, peer)?;
        run(&mut self.client, &self.sock, id).map(|_| ())
    }

    /// Frees the allocation (Refresh with lifetime 0), so the client's address can
    /// allocate again; waits at most the session's timeout.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.refresh(0).map(|_| ())
    }

    /// Refresh with `lifetime` (0 frees the allocation); returns the granted lifetime.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        let id = self.client.refresh(Instant::now(), lifetime)?;
        let r = run(&mut self.client, &self.sock, id)?;
        Ok(r.lifetime.unwrap_or(0))
    }
}
