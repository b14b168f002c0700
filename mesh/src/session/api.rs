//! The game-facing API: [`Mesh`] hosts, lists and joins sessions; a [`Session`] is one
//! membership with its event stream and messaging.
//!
//! Steps of [`Mesh::host`]:
//! 1. Start a [`DirectNode`] on the configured punch server (per-peer incoming decisions:
//!    [`IncomingPolicy::Allowlist`], open while this node hosts).
//! 2. Post the listing (`connect` = this peer's id and punch server) and keep it alive in
//!    the background ([`crate::listing::KeeperTask`]).
//! 3. Run the session driver (`driver.rs`) with a one-member [`Membership`].
//!
//! Steps of [`Mesh::join`]:
//! 1. Read the listing (unless given) and its `connect` object: the host's peer id and the
//!    punch server every member is registered on.
//! 2. Start a [`DirectNode`] on that punch server, then run the verified join
//!    ([`Membership::join`]) until accepted or failed ([`JoinError`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::driver::{self, Command, Shared};
use super::{
    Decision, JoinFailure, LeaveReason, Membership, MembershipConfig, RejectReason, SessionEnd,
};
use crate::coord::PunchAddr;
use crate::direct::{DirectConfig, DirectNode, IncomingPolicy, StartError};
use crate::identity::{Identity, PeerId};
use crate::listing::{
    Attributes, ConnectInfo, CreateSession, Filter, ListingClient, ListingError, ListingId,
    SessionList, SessionRow,
};

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// On the long-lived QUIC stream to the member: delivered once, in order.
    ReliableOrdered,
    /// As a QUIC datagram: may be lost, never retransmitted; at most the path's datagram
    /// size.
    Unreliable,
}

/// What a session reports to the game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A member joined.
    MemberJoined(PeerId),
    /// A member left.
    MemberLeft {
        /// The member.
        peer: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// The host changed (the old one left or died).
    HostChanged {
        /// The previous host.
        old: PeerId,
        /// The new host.
        new: PeerId,
    },
    /// Host: a verified joiner asks to join. Answer with [`Session::accept_join`] or
    /// [`Session::reject_join`] before the decision timeout; without an answer it is
    /// accepted unless the session is locked or full.
    JoinRequest {
        /// The joiner.
        peer: PeerId,
        /// Its join data.
        data: Vec<u8>,
    },
    /// A game message from a member.
    Message {
        /// The sender.
        from: PeerId,
        /// The bytes.
        bytes: Bytes,
        /// How it travelled.
        reliability: Reliability,
    },
    /// The session is over for this peer; no more events follow.
    Ended(SessionEnd),
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The peer is not a member (or is this peer).
    #[error("peer {0} is not a member")]
    NotMember(String),
    /// The message is larger than the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The member's send queue is full: the game sends faster than the link carries.
    #[error("the send queue to {0} is full")]
    QueueFull(String),
    /// The datagram could not be sent (the peer does not take datagrams, or the link is
    /// gone).
    #[error("datagram not sent: {0}")]
    Datagram(String),
    /// A broadcast missed some members (the others got it).
    #[error("sent to {sent} members, not to {}: {}", failed.len(), failed.first().map(|f| f.1.to_string()).unwrap_or_default())]
    Partial {
        /// How many members it was queued for.
        sent: usize,
        /// The members it missed, each with why.
        failed: Vec<(PeerId, SendError)>,
    },
    /// The session is over.
    #[error("the session is over")]
    Closed,
}

/// Why hosting failed.
#[derive(Debug, Error)]
pub enum HostError {
    /// The node did not start (punch server unreachable, bad address, key...).
    #[error("could not start the node: {0}")]
    Start(#[from] StartError),
    /// The master server did not take the listing.
    #[error("could not post the listing: {0}")]
    Listing(#[from] ListingError),
    /// The settings make no session.
    #[error("invalid session settings: {0}")]
    Invalid(String),
}

/// Why a join failed.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The host turned us away.
    #[error("rejected: {0}")]
    Rejected(RejectReason),
    /// A member could not be reached (no direct path, or it did not answer).
    #[error("member {peer} unreachable: {reason}")]
    MemberUnreachable {
        /// The member.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The host is gone (unreachable, or its connection broke during the join).
    #[error("the host is gone")]
    HostGone,
    /// The join took too long.
    #[error("the join timed out")]
    Timeout,
    /// No live listing with that id.
    #[error("no such session")]
    NotFound,
    /// The listing does not say how to reach its host.
    #[error("the listing has no usable connect object: {0}")]
    BadListing(String),
    /// The master server failed.
    #[error("listing error: {0}")]
    Listing(ListingError),
    /// The node did not start.
    #[error("could not start the node: {0}")]
    Start(#[from] StartError),
}

impl JoinError {
    /// A stable name for logs and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected(_) => "rejected",
            Self::MemberUnreachable { .. } => "member_unreachable",
            Self::HostGone => "host_gone",
            Self::Timeout => "timeout",
            Self::NotFound => "not_found",
            Self::BadListing(_) => "bad_listing",
            Self::Listing(_) => "listing",
            Self::Start(e) => e.kind(),
        }
    }
}

impl From<JoinFailure> for JoinError {
    fn from(f: JoinFailure) -> Self {
        match f {
            JoinFailure::Rejected(r) => Self::Rejected(r),
            JoinFailure::MemberUnreachable { peer } => Self::MemberUnreachable {
                peer,
                reason: "no connection could be made".into(),
            },
            JoinFailure::HostGone => Self::HostGone,
            JoinFailure::Timeout => Self::Timeout,
        }
    }
}

/// What a host lists, and the session's limits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Display name of the listing.
    pub name: String,
    /// Most members, the host included (at most [`super::MAX_MEMBERS`]). Default 8.
    pub max_players: u32,
    /// Filterable attributes of the listing.
    pub attributes: Attributes,
    /// Seconds a listing lives without a heartbeat (the host heartbeats at a third of it).
    /// Default 30.
    pub listing_timeout_secs: u32,
    /// Delist the session while it is locked ([`Session::set_locked`]) and list it again,
    /// under a new id, when it is unlocked. Default false: a locked session stays listed
    /// (with `locked` visible to nobody but joiners, who are turned away).
    pub delist_when_locked: bool,
}

impl SessionConfig {
    /// A session named `name` with the defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_players: 8,
            attributes: Attributes::new(),
            listing_timeout_secs: 30,
            delist_when_locked: false,
        }
    }
}

/// Settings of a [`Mesh`].
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The master server's base URL, e.g. `http://127.0.0.1:8080`.
    pub master: String,
    /// Node settings; `punch` is the punch server a hosted session uses (a joiner uses
    /// the one its listing names).
    pub direct: DirectConfig,
    /// Membership tunables (detection, timeouts); `max_players` comes from the session.
    pub membership: MembershipConfig,
    /// Timeout of each master-server request. Default 5 s.
    pub request_timeout: Duration,
    /// Bound of the queue of game messages not yet taken by the game. Default 4096. A
    /// reliable message that finds it full waits (the sender's queue then fills and its
    /// `send` says [`SendError::QueueFull`]); a datagram is dropped and counted.
    pub event_queue: usize,
}

impl MeshConfig {
    /// The defaults for a master server and a punch server.
    pub fn new(master: impl Into<String>, punch: PunchAddr) -> Self {
        Self {
            master: master.into(),
            direct: DirectConfig::new(punch),
            membership: MembershipConfig::default(),
            request_timeout: Duration::from_secs(5),
            event_queue: 4096,
        }
    }
}

/// The entry point a game links: hosts, lists and joins sessions (see the module docs).
#[derive(Debug, Clone)]
pub struct Mesh {
    identity: Arc<Identity>,
    config: MeshConfig,
    listing: ListingClient,
}

/// Which session to join.
#[derive(Debug, Clone)]
pub enum JoinTarget {
    /// A listing already read (e.g. from [`Mesh::list`]).
    Listing(Box<SessionRow>),
    /// A listing's id: it is read first.
    Id(ListingId),
}

impl Mesh {
    /// A mesh for `identity` with `config` (no network activity yet).
    pub fn new(identity: Arc<Identity>, config: MeshConfig) -> Result<Self, ListingError> {
        let listing = ListingClient::new(&config.master, config.request_timeout)?;
        Ok(Self {
            identity,
            config,
            listing,
        })
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// The master-server client.
    pub fn listing(&self) -> &ListingClient {
        &self.listing
    }

    /// One page of `game`'s live sessions.
    pub async fn list(&self, game: &str, filter: &Filter) -> Result<SessionList, ListingError> {
        self.listing.list(game, filter).await
    }

    fn membership(&self, max_players: u32) -> MembershipConfig {
        let mut m = self.config.membership.clone();
        m.max_players = usize::try_from(max_players).unwrap_or(usize::MAX);
        m
    }

    async fn start_node(&self, punch: PunchAddr) -> Result<Arc<DirectNode>, StartError> {
        let mut direct = self.config.direct.clone();
        direct.punch = punch;
        direct.incoming = IncomingPolicy::Allowlist;
        Ok(Arc::new(
            DirectNode::start(self.identity.clone(), direct).await?,
        ))
    }

    /// Hosts a session of `game`: starts the node, posts the listing and keeps it alive.
    pub async fn host(&self, game: &str, config: SessionConfig) -> Result<Session, HostError> {
        if config.max_players == 0 || config.max_players as usize > super::MAX_MEMBERS {
            return Err(HostError::Invalid(format!(
                "max_players must be 1..={}",
                super::MAX_MEMBERS
            )));
        }
        let punch = self.config.direct.punch.clone();
        let node = self.start_node(punch.clone()).await?;
        node.allowlist().set_open(true);
        let connect = ConnectInfo {
            peer: self.peer_id().to_string(),
            punch: punch.to_string(),
        };
        let raw = connect
            .to_raw()
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        let created = self
            .listing
            .create(&CreateSession {
                game: game.to_string(),
                name: config.name.clone(),
                max_players: config.max_players,
                players: 1,
                timeout_secs: Some(config.listing_timeout_secs),
                attributes: config.attributes.clone(),
                connect: Some(raw),
            })
            .await?;
        let mut core = Membership::host(self.peer_id(), self.membership(config.max_players));
        core.set_grant(super::ListingGrant {
            listing: created.id.to_string(),
            token: created.token,
            timeout_secs: config.listing_timeout_secs,
            delist_when_locked: config.delist_when_locked,
        });
        let listing = driver::ListingContext {
            client: self.listing.clone(),
            game: game.to_string(),
            config,
            punch: punch.to_string(),
        };
        Ok(driver::spawn(core, node, listing, self.config.event_queue))
    }

    /// Joins a session: verified against every member, so the result is a full mesh.
    pub async fn join(&self, target: JoinTarget, join_data: Vec<u8>) -> Result<Session, JoinError> {
        self.join_via(target, join_data, None).await
    }

    /// [`Mesh::join`] through `punch` instead of the punch server the listing names.
    pub async fn join_via(
        &self,
        target: JoinTarget,
        join_data: Vec<u8>,
        punch: Option<PunchAddr>,
    ) -> Result<Session, JoinError> {
        let row = match target {
            JoinTarget::Listing(row) => *row,
            JoinTarget::Id(id) => self.listing.get(id).await.map_err(|e| match e.status() {
                Some(404) => JoinError::NotFound,
                _ => JoinError::Listing(e),
            })?,
        };
        let info = row
            .connect_info()
            .ok_or_else(|| JoinError::BadListing("no peer/punch in connect".into()))?;
        let host: PeerId = info
            .peer
            .parse()
            .map_err(|e| JoinError::BadListing(format!("peer: {e}")))?;
        let punch = match punch {
            Some(p) => p,
            None => info
                .punch
                .parse()
                .map_err(|e| JoinError::BadListing(format!("punch: {e}")))?,
        };
        let node = self.start_node(punch.clone()).await?;
        let core = Membership::join(
            Instant::now(),
            self.peer_id(),
            host,
            join_data,
            self.membership(row.max_players),
        );
        let listing = driver::ListingContext {
            client: self.listing.clone(),
            game: row.game.clone(),
            config: SessionConfig {
                name: row.name.clone(),
                max_players: row.max_players,
                attributes: row.attributes.clone(),
                listing_timeout_secs: 30,
                // The host's choice travels with the listing grant.
                delist_when_locked: false,
            },
            punch: punch.to_string(),
        };
        let mut session = driver::spawn(core, node, listing, self.config.event_queue);
        match session.joined.take() {
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(session),
                Ok(Err(f)) => Err(f.into()),
                Err(_) => Err(JoinError::HostGone),
            },
            None => Ok(session),
        }
    }
}

/// The game's handle on one session (see [`Mesh::host`] and [`Mesh::join`]).
#[derive(Debug)]
pub struct Session {
    pub(super) local: PeerId,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: tokio::sync::mpsc::Sender<Command>,
    /// Membership events (rare; dropped and counted if the game never reads).
    pub(super) events: tokio::sync::mpsc::Receiver<SessionEvent>,
    /// Game messages (reliable ones wait for room).
    pub(super) messages: tokio::sync::mpsc::Receiver<SessionEvent>,
    /// The session ended: `Ended` (once the queued messages are taken), then nothing.
    pub(super) ending: Option<Option<SessionEvent>>,
    pub(super) joined: Option<tokio::sync::oneshot::Receiver<Result<(), JoinFailure>>>,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    /// The node (weak: the session task owns it and shuts it down at the end).
    pub(super) node: std::sync::Weak<crate::direct::DirectNode>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        // The links' readers hold the shared state: without their handles in it, the
        // links' writers end and close the connections.
        self.shared.clear_links();
    }
}

impl Session {
    /// This peer's id.
    pub fn local_id(&self) -> PeerId {
        self.local
    }

    /// The path the link to `peer` runs on now (direct, relayed, or through a member:
    /// [`crate::direct::ActivePath::via`]); `None` without a link or once the session
    /// ended.
    pub fn path_of(&self, peer: &PeerId) -> Option<crate::direct::ActivePath> {
        self.node.upgrade()?.path_of(peer)
    }

    /// The members in join order (the host first).
    pub fn members(&self) -> Vec<PeerId> {
        self.shared.snapshot().members
    }

    /// The current host.
    pub fn host(&self) -> Option<PeerId> {
        self.shared.snapshot().host
    }

    /// The membership epoch (rises with every change).
    pub fn epoch(&self) -> u64 {
        self.shared.snapshot().epoch
    }

    /// The master-server listing's id, if the session is listed.
    pub fn listing_id(&self) -> Option<String> {
        self.shared.snapshot().listing
    }

    /// Counters of this session.
    pub fn stats(&self) -> &driver::SessionStats {
        &self.shared.stats
    }

    /// The next event; `None` once the session is over and every event was taken.
    ///
    /// Membership events come before game messages that are waiting at the same time;
    /// the messages already received when the session ends come before
    /// [`SessionEvent::Ended`].
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        if self.ending.is_none() {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(SessionEvent::Ended(why)) => {
                        self.ending = Some(Some(SessionEvent::Ended(why)));
                    }
                    Some(e) => return Some(e),
                    None => self.ending = Some(None),
                },
                Some(message) = self.messages.recv() => return Some(message),
            }
        }
        if let Ok(message) = self.messages.try_recv() {
            return Some(message);
        }
        self.ending.as_mut().and_then(Option::take)
    }

    /// Sends `bytes` to one member.
    pub fn send(
        &self,
        peer: PeerId,
        bytes: Bytes,
        reliability: Reliability,
    ) -> Result<(), SendError> {
        self.shared.send(peer, bytes, reliability)
    }

    /// Sends `bytes` to every other member. When some members cannot take it,
    /// [`SendError::Partial`] names them (the others got it); a message too large or a
    /// closed session fails for everyone.
    pub fn broadcast(&self, bytes: Bytes, reliability: Reliability) -> Result<(), SendError> {
        self.shared.broadcast(bytes, reliability)
    }

    fn command(&self, c: Command) {
        if self.commands.try_send(c).is_err() {
            tracing::warn!("session command dropped: the session is over or overloaded");
        }
    }

    /// Host: locks (no joiners) or unlocks the session.
    pub fn set_locked(&self, locked: bool) {
        self.command(Command::SetLocked(locked));
    }

    /// Host: accepts a joiner ([`SessionEvent::JoinRequest`]).
    pub fn accept_join(&self, peer: PeerId) {
        self.command(Command::Decide(peer, Decision::Accept));
    }

    /// Host: turns a joiner away with a reason it sees.
    pub fn reject_join(&self, peer: PeerId, reason: impl Into<String>) {
        self.command(Command::Decide(peer, Decision::Reject(reason.into())));
    }

    /// Host: changes the listing's name and attributes (the player count is kept up to
    /// date by the session itself).
    pub fn update_listing(&self, name: Option<String>, attributes: Option<Attributes>) {
        self.command(Command::UpdateListing { name, attributes });
    }

    /// Leaves gracefully: members are told, links flushed and closed; the last member
    /// delists the session; the node shuts down (its UPnP mapping removed). Waits at most
    /// 10 s.
    pub async fn leave(mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        // Then the node's shutdown: connections closed, the UPnP mapping removed.
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
