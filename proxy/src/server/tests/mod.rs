//! Unit tests of the sans-IO core, in simulated time: a [`Harness`] plays the driver
//! (binding relay ports on request, collecting commands) and a client built from
//! [`crate::client`].

mod allocate;
mod auth;
mod fuzz;
mod permissions;
mod relay;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::methods::ALLOCATE;
use stun_rs::StunAttribute;

use super::{ClientInput, Command, DropReason, PeerInput, Server};
use crate::client::{self, ClientAuth, Response};
use crate::config::{PortRange, ServerConfig};
use crate::credentials::Credentials;

pub(super) const SECRET: &str = "test-secret";
pub(super) const UNIX0: u64 = 1_700_000_000;

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A client address (TEST-NET-1).
pub(super) fn client_addr() -> SocketAddr {
    addr("192.0.2.10:40000")
}

/// A peer the default policy allows (TEST-NET-2).
pub(super) fn peer_addr() -> SocketAddr {
    addr("198.51.100.7:9000")
}

pub(super) fn test_config() -> ServerConfig {
    let mut c = ServerConfig::new("203.0.113.1".parse().expect("ip"), SECRET);
    c.listen = addr("203.0.113.1:3478");
    c.ports = PortRange {
        lo: 50000,
        hi: 50099,
    };
    c.seed = 7;
    c
}

/// What a client datagram became, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Out {
    Forward {
        port: u16,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
    Handled,
    Dropped(DropReason),
}

impl From<ClientInput<'_>> for Out {
    fn from(i: ClientInput<'_>) -> Self {
        match i {
            ClientInput::Forward {
                port,
                peer,
                payload,
            } => Out::Forward {
                port,
                peer,
                payload: payload.to_vec(),
            },
            ClientInput::Handled => Out::Handled,
            ClientInput::Dropped(r) => Out::Dropped(r),
        }
    }
}

/// The core plus a fake driver.
pub(super) struct Harness {
    pub server: Server,
    pub now: Instant,
    /// Relay ports the fake driver fails to bind.
    pub unbindable: HashSet<u16>,
    /// Relay ports bound now.
    pub bound: HashSet<u16>,
    /// Commands other than port management, oldest first.
    pub out: Vec<Command>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(test_config())
    }

    pub fn with(config: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            server: Server::new(config, now, UNIX0).expect("valid config"),
            now,
            unbindable: HashSet::new(),
            bound: HashSet::new(),
            out: Vec::new(),
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Plays the driver: binds or refuses relay ports, collects the rest.
    pub fn drain(&mut self) {
        while let Some(cmd) = self.server.poll_command() {
            match cmd {
                Command::CreateRelayPort { port, .. } => {
                    let ok = !self.unbindable.contains(&port);
                    if ok {
                        assert!(self.bound.insert(port), "port {port} bound twice");
                    }
                    self.server.handle_relay_port(self.now, port, ok);
                }
                Command::FreeRelayPort { port, .. } => {
                    self.bound.remove(&port);
                    self.out.push(cmd);
                }
                other => self.out.push(other),
            }
        }
    }

    /// Feeds a client datagram.
    pub fn input(&mut self, from: SocketAddr, bytes: &[u8]) -> Out {
        let now = self.now;
        let out = Out::from(self.server.handle_client_input(now, from, bytes));
        self.drain();
        out
    }

    /// Feeds a peer datagram.
    pub fn peer(&mut self, port: u16, from: SocketAddr, bytes: &[u8]) -> PeerInput {
        let out = self.server.handle_peer_input(self.now, port, from, bytes);
        self.drain();
        out
    }

    /// Takes the datagrams sent to `to` so far.
    pub fn sent_to(&mut self, to: SocketAddr) -> Vec<Vec<u8>> {
        let mut taken = Vec::new();
        self.out.retain(|c| match c {
            Command::SendToClient { to: t, bytes } if *t == to => {
                taken.push(bytes.clone());
                false
            }
            _ => true,
        });
        taken
    }

    /// Sends a request and returns its single answer, checked against `key`.
    pub fn request(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        key: Option<&stun_rs::HMACKey>,
    ) -> Response {
        // Earlier datagrams to this client (Data indications) are not answers.
        let _ = self.sent_to(from);
        let out = self.input(from, bytes);
        assert_eq!(out, Out::Handled, "a request is handled");
        let mut answers = self.sent_to(from);
        assert_eq!(answers.len(), 1, "exactly one answer");
        let bytes = answers.pop().expect("one answer");
        Response::parse(&bytes, key).expect("the answer parses")
    }

    /// A signed request of `method` with `attrs` from `from`; a 438 (stale nonce) is
    /// retried once with the new nonce, as clients do.
    pub fn signed(
        &mut self,
        from: SocketAddr,
        auth: &ClientAuth,
        method: stun_rs::MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> Response {
        let r = self.signed_once(from, auth, method, attrs.clone());
        match (r.error, r.nonce.clone()) {
            (Some(438), Some(nonce)) => {
                let fresh = ClientAuth {
                    nonce,
                    ..auth.clone()
                };
                self.signed_once(from, &fresh, method, attrs)
            }
            _ => r,
        }
    }

    /// ChannelBind `number` to `peer` from the default client.
    pub fn bind(&mut self, auth: &ClientAuth, number: u16, peer: SocketAddr) -> Response {
        let attrs = channel_bind_attrs(number, peer);
        self.signed(client_addr(), auth, stun_rs::methods::CHANNEL_BIND, attrs)
    }

    /// CreatePermission for `peers` from the default client.
    pub fn permit(&mut self, auth: &ClientAuth, peers: &[SocketAddr]) -> Response {
        let attrs = peer_attrs(peers);
        self.signed(
            client_addr(),
            auth,
            stun_rs::methods::CREATE_PERMMISSION,
            attrs,
        )
    }

    /// A signed request, without retrying a 438.
    pub fn signed_once(
        &mut self,
        from: SocketAddr,
        auth: &ClientAuth,
        method: stun_rs::MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> Response {
        let txn = client::new_txn();
        let bytes = client::encode_request(method, txn, attrs, Some(auth));
        let r = self.request(from, &bytes, Some(&auth.key));
        assert_eq!(r.txn, txn);
        r
    }

    /// The 401 challenge and the credentials of `user` for it.
    pub fn challenge(&mut self, from: SocketAddr, user: &str) -> ClientAuth {
        let creds = Credentials::rest(SECRET, user, UNIX0 + 3600);
        self.challenge_with(from, &creds)
    }

    pub fn challenge_with(&mut self, from: SocketAddr, creds: &Credentials) -> ClientAuth {
        let txn = client::new_txn();
        let r = self.request(
            from,
            &client::encode_request(ALLOCATE, txn, client::allocate_attrs(None), None),
            None,
        );
        assert_eq!(r.error, Some(401));
        let (realm, nonce) = (r.realm.expect("REALM"), r.nonce.expect("NONCE"));
        ClientAuth::new(creds, &realm, &nonce).expect("credentials")
    }

    /// Allocates for `from` as `user`; returns the credentials and the relay port.
    pub fn allocate(&mut self, from: SocketAddr, user: &str) -> (ClientAuth, u16) {
        let auth = self.challenge(from, user);
        let r = self.signed(from, &auth, ALLOCATE, client::allocate_attrs(None));
        assert!(r.is_success(), "allocate failed with {:?}", r.error);
        let relayed = r.relayed.expect("XOR-RELAYED-ADDRESS");
        (auth, relayed.port())
    }

    /// Allocates for the default client and permits and binds channel 0x4000 to the
    /// default peer.
    pub fn bound_channel(&mut self) -> (ClientAuth, u16) {
        let (auth, port) = self.allocate(client_addr(), "alice");
        let r = self.signed(
            client_addr(),
            &auth,
            stun_rs::methods::CHANNEL_BIND,
            channel_bind_attrs(0x4000, peer_addr()),
        );
        assert!(r.is_success(), "channel bind failed with {:?}", r.error);
        (auth, port)
    }
}

pub(super) fn channel_bind_attrs(number: u16, peer: SocketAddr) -> Vec<StunAttribute> {
    use stun_rs::attributes::turn::{ChannelNumber, XorPeerAddress};
    vec![
        ChannelNumber::new(number).into(),
        XorPeerAddress::from(peer).into(),
    ]
}

pub(super) fn peer_attrs(peers: &[SocketAddr]) -> Vec<StunAttribute> {
    use stun_rs::attributes::turn::XorPeerAddress;
    peers
        .iter()
        .map(|p| XorPeerAddress::from(*p).into())
        .collect()
}
