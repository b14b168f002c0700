//! The membership protocol's messages and their wire encoding.
//!
//! Every message is one frame of the coordinator's framing ([`crate::coord::encode`],
//! [`crate::coord::FrameDecoder`]): `length: u16 BE | version | type | body`, here with the
//! session protocol's own version ([`SESSION_VERSION`]) and a larger frame limit
//! ([`MAX_SESSION_FRAME`]), so a member of another version is told so instead of hanging.
//! Membership frames travel on one long-lived bidirectional QUIC stream per pair of
//! members; reliable game messages ([`SessionMsg::App`]) use the same framing on a
//! unidirectional *app stream* each way, so a game that reads slowly holds back only its
//! own traffic.
//!
//! Body encodings: integers big-endian, a peer id its 32 key bytes, a list `u8 count,
//! items` (at most [`MAX_MEMBERS`]), a byte string `u16 length, bytes`, a string `u8
//! length, UTF-8`. Type codes are listed on [`SessionMsg`].

use crate::coord::{CodecError, Reader, WireMessage, Writer};
use crate::identity::PeerId;

/// The version byte of every session frame. Version 2 added routing through a member
/// (types 0x10-0x14) and the one-byte tag of every datagram on a link
/// ([`crate::route::wire`]); a member of another version is told so and not linked.
pub const SESSION_VERSION: u8 = 2;
/// Largest session frame (version + type + body), in bytes.
pub const MAX_SESSION_FRAME: usize = u16::MAX as usize;
/// Most members of one session (and most ids one message lists).
pub const MAX_MEMBERS: usize = 255;
/// Largest reliable game message, in bytes.
pub const MAX_RELIABLE_MESSAGE: usize = 60 * 1024;
/// Largest join data a joiner may send with its request, in bytes.
pub const MAX_JOIN_DATA: usize = 4 * 1024;

/// A membership as the host sequenced it: epoch and members in join order.
///
/// The first member is the host (the member that has been in the mesh longest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Rises by one with every membership change the host makes.
    pub epoch: u64,
    /// Members in join order; never empty in a valid view.
    pub members: Vec<PeerId>,
    /// Whether the host refuses new joiners.
    pub locked: bool,
}

impl View {
    /// The host of this view (its longest-standing member).
    pub fn host(&self) -> Option<PeerId> {
        self.members.first().copied()
    }

    /// Whether `peer` is a member.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.members.contains(peer)
    }

    /// `peer`'s place in join order.
    pub fn position(&self, peer: &PeerId) -> Option<usize> {
        self.members.iter().position(|m| m == peer)
    }
}

/// The master-server listing's id and owner token, handed to every member over the
/// encrypted mesh so that whichever member becomes host can keep the listing alive.
#[derive(Clone, PartialEq, Eq)]
pub struct ListingGrant {
    /// The listing's id (as the master server prints it).
    pub listing: String,
    /// The owner token (`Authorization: Bearer`).
    pub token: String,
    /// The listing's heartbeat timeout in seconds, so a new host keeps the same cadence.
    pub timeout_secs: u32,
    /// The session is delisted while locked and listed again when unlocked (whoever
    /// hosts then does it).
    pub delist_when_locked: bool,
}

impl std::fmt::Debug for ListingGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs.
        f.debug_struct("ListingGrant")
            .field("listing", &self.listing)
            .finish_non_exhaustive()
    }
}

/// Why a host turned a joiner away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The session is locked. Code 1.
    Locked,
    /// The session has `max_players` members. Code 2.
    Full,
    /// The host's application said no, with its reason. Code 3.
    App(String),
    /// The peer asked is not the host; the host is named. Code 4.
    NotHost(PeerId),
    /// The join took longer than the host allows. Code 5.
    Timeout,
    /// Too many joins are in progress. Code 6.
    Busy,
    /// The joiner could not reach this member, which the host still reaches. Code 7.
    Unreachable(PeerId),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Locked => f.write_str("the session is locked"),
            Self::Full => f.write_str("the session is full"),
            Self::App(r) => write!(f, "the host said no: {r}"),
            Self::NotHost(h) => write!(f, "not the host; the host is {}", h.short()),
            Self::Timeout => f.write_str("the join took too long"),
            Self::Busy => f.write_str("too many joins in progress"),
            Self::Unreachable(p) => write!(f, "member {} unreachable", p.short()),
        }
    }
}

/// A message between members (or between a joiner and members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMsg {
    /// Joiner to host: let me in. Type 0x01.
    JoinRequest {
        /// The game's own join data (at most [`MAX_JOIN_DATA`] bytes).
        data: Vec<u8>,
    },
    /// Host to joiner: connect to these members (host and joiner left out). Type 0x02.
    JoinMembers {
        /// The epoch of the membership listed.
        epoch: u64,
        /// The members to connect to.
        members: Vec<PeerId>,
    },
    /// Joiner to host: connected to every member of `epoch`, or not to `failed`. Type 0x03.
    JoinReport {
        /// The epoch of the list the joiner worked from.
        epoch: u64,
        /// A member the joiner could not reach, if any.
        failed: Option<PeerId>,
    },
    /// Host to joiner: accepted. Type 0x04.
    Welcome {
        /// The membership with the joiner in it.
        view: View,
        /// The listing, if the session is listed.
        grant: Option<ListingGrant>,
        /// Other joiners in progress, whose connections the new member must accept.
        expected: Vec<PeerId>,
    },
    /// Host to joiner: not accepted. Type 0x05.
    JoinRejected {
        /// Why.
        reason: RejectReason,
    },
    /// Host to members: accept connections from this joiner. Type 0x06.
    Expect {
        /// The joiner.
        joiner: PeerId,
    },
    /// Host to members: the join of this joiner ended without it. Type 0x07.
    Unexpect {
        /// The joiner.
        joiner: PeerId,
    },
    /// Host to members: the membership changed. Type 0x08.
    View {
        /// The new membership.
        view: View,
    },
    /// Host to members: the listing changed (e.g. it was posted again). Type 0x09.
    Grant {
        /// The listing.
        grant: ListingGrant,
    },
    /// Member to host: my connection to `peer` broke. Type 0x0a.
    LinkDown {
        /// The member no longer reached.
        peer: PeerId,
    },
    /// Member to members, while the host is lost: which members I no longer reach (the
    /// host among them). Type 0x0b.
    Down {
        /// The host this report is about.
        host: PeerId,
        /// Every member the sender lost since the current membership.
        down: Vec<PeerId>,
    },
    /// Liveness, sent when nothing else was sent for a heartbeat interval. Type 0x0c.
    Heartbeat,
    /// The sender leaves the session. Type 0x0d.
    Leave,
    /// End to a member that reaches both: forward between me and `to` (routing through
    /// a member, [`crate::route`]). Type 0x10.
    RouteAsk {
        /// The other end.
        to: PeerId,
    },
    /// Router to the other end: `from` asked for a route to you through me; ask too to
    /// open it. Type 0x11.
    RouteWanted {
        /// The end that asked.
        from: PeerId,
    },
    /// Router to both ends: the route to `with` through me is open. Type 0x12.
    RouteReady {
        /// The other end.
        with: PeerId,
    },
    /// Router to an end: no route to `with` through me (not a member, too many routes,
    /// the other end cannot take it). Type 0x13.
    RouteRefused {
        /// The other end.
        with: PeerId,
    },
    /// Member to member: the smoothed RTT of each of my links, so that an end that needs
    /// a router picks the one with the lowest sum of RTTs. Sent when a link comes up or
    /// goes and every [`crate::session::RTT_REPORT_EVERY`]. Type 0x14.
    LinkRtts {
        /// Peer and RTT in microseconds (saturating), at most [`MAX_MEMBERS`] entries.
        rtts: Vec<(PeerId, u32)>,
    },
    /// A reliable game message (at most [`MAX_RELIABLE_MESSAGE`] bytes). Type 0x40.
    App {
        /// The game's bytes.
        data: Vec<u8>,
    },
}

fn write_ids(w: &mut Writer<'_>, ids: &[PeerId]) -> Result<(), CodecError> {
    let n = u8::try_from(ids.len()).map_err(|_| CodecError::TooLong {
        what: "members",
        len: ids.len(),
        max: MAX_MEMBERS,
    })?;
    w.u8(n);
    for id in ids {
        w.peer_id(id);
    }
    Ok(())
}

fn read_ids(r: &mut Reader<'_>) -> Result<Vec<PeerId>, CodecError> {
    let n = usize::from(r.u8()?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.peer_id()?;
        if out.contains(&id) {
            return Err(CodecError::InvalidValue("duplicate member"));
        }
        out.push(id);
    }
    Ok(out)
}

fn write_rtts(w: &mut Writer<'_>, rtts: &[(PeerId, u32)]) -> Result<(), CodecError> {
    let n = u8::try_from(rtts.len()).map_err(|_| CodecError::TooLong {
        what: "link RTTs",
        len: rtts.len(),
        max: MAX_MEMBERS,
    })?;
    w.u8(n);
    for (id, micros) in rtts {
        w.peer_id(id);
        w.u32(*micros);
    }
    Ok(())
}

fn read_rtts(r: &mut Reader<'_>) -> Result<Vec<(PeerId, u32)>, CodecError> {
    let n = usize::from(r.u8()?);
    let mut out: Vec<(PeerId, u32)> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.peer_id()?;
        let micros = r.u32()?;
        if out.iter().any(|(p, _)| *p == id) {
            return Err(CodecError::InvalidValue("duplicate peer in link RTTs"));
        }
        out.push((id, micros));
    }
    Ok(out)
}

fn write_view(w: &mut Writer<'_>, v: &View) -> Result<(), CodecError> {
    w.u64(v.epoch);
    w.u8(u8::from(v.locked));
    write_ids(w, &v.members)
}

fn read_view(r: &mut Reader<'_>) -> Result<View, CodecError> {
    let epoch = r.u64()?;
    let locked = read_bool(r)?;
    let members = read_ids(r)?;
    if members.is_empty() {
        return Err(CodecError::InvalidValue("empty membership"));
    }
    Ok(View {
        epoch,
        members,
        locked,
    })
}

fn read_bool(r: &mut Reader<'_>) -> Result<bool, CodecError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(CodecError::InvalidValue("flag")),
    }
}

fn write_grant(w: &mut Writer<'_>, g: &ListingGrant) -> Result<(), CodecError> {
    w.string("listing id", &g.listing)?;
    w.string("listing token", &g.token)?;
    w.u32(g.timeout_secs);
    w.u8(u8::from(g.delist_when_locked));
    Ok(())
}

fn read_grant(r: &mut Reader<'_>) -> Result<ListingGrant, CodecError> {
    Ok(ListingGrant {
        listing: r.string("listing id")?,
        token: r.string("listing token")?,
        timeout_secs: r.u32()?,
        delist_when_locked: read_bool(r)?,
    })
}

fn write_reason(w: &mut Writer<'_>, reason: &RejectReason) -> Result<(), CodecError> {
    match reason {
        RejectReason::Locked => w.u8(1),
        RejectReason::Full => w.u8(2),
        RejectReason::App(text) => {
            w.u8(3);
            w.string_truncated(text);
        }
        RejectReason::NotHost(host) => {
            w.u8(4);
            w.peer_id(host);
        }
        RejectReason::Timeout => w.u8(5),
        RejectReason::Busy => w.u8(6),
        RejectReason::Unreachable(peer) => {
            w.u8(7);
            w.peer_id(peer);
        }
    }
    Ok(())
}

fn read_reason(r: &mut Reader<'_>) -> Result<RejectReason, CodecError> {
    Ok(match r.u8()? {
        1 => RejectReason::Locked,
        2 => RejectReason::Full,
        3 => RejectReason::App(r.string("reason")?),
        4 => RejectReason::NotHost(r.peer_id()?),
        5 => RejectReason::Timeout,
        6 => RejectReason::Busy,
        7 => RejectReason::Unreachable(r.peer_id()?),
        _ => return Err(CodecError::InvalidValue("reject reason")),
    })
}

fn bounded_bytes(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, CodecError> {
    let b = r.bytes16()?;
    if b.len() > max {
        return Err(CodecError::TooLong {
            what,
            len: b.len(),
            max,
        });
    }
    Ok(b)
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), CodecError> {
    if len > max {
        return Err(CodecError::TooLong { what, len, max });
    }
    Ok(())
}

impl WireMessage for SessionMsg {
    const VERSION: u8 = SESSION_VERSION;
    const MAX_FRAME_LEN: usize = MAX_SESSION_FRAME;

    fn type_code(&self) -> u8 {
        match self {
            Self::JoinRequest { .. } => 0x01,
            Self::JoinMembers { .. } => 0x02,
            Self::JoinReport { .. } => 0x03,
            Self::Welcome { .. } => 0x04,
            Self::JoinRejected { .. } => 0x05,
            Self::Expect { .. } => 0x06,
            Self::Unexpect { .. } => 0x07,
            Self::View { .. } => 0x08,
            Self::Grant { .. } => 0x09,
            Self::LinkDown { .. } => 0x0a,
            Self::Down { .. } => 0x0b,
            Self::Heartbeat => 0x0c,
            Self::Leave => 0x0d,
            Self::RouteAsk { .. } => 0x10,
            Self::RouteWanted { .. } => 0x11,
            Self::RouteReady { .. } => 0x12,
            Self::RouteRefused { .. } => 0x13,
            Self::LinkRtts { .. } => 0x14,
            Self::App { .. } => 0x40,
        }
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), CodecError> {
        match self {
            Self::JoinRequest { data } => {
                check_len("join data", data.len(), MAX_JOIN_DATA)?;
                w.bytes16("join data", data)?;
            }
            Self::JoinMembers { epoch, members } => {
                w.u64(*epoch);
                write_ids(w, members)?;
            }
            Self::JoinReport { epoch, failed } => {
                w.u64(*epoch);
                match failed {
                    None => w.u8(0),
                    Some(p) => {
                        w.u8(1);
                        w.peer_id(p);
                    }
                }
            }
            Self::Welcome {
                view,
                grant,
                expected,
            } => {
                write_view(w, view)?;
                match grant {
                    None => w.u8(0),
                    Some(g) => {
                        w.u8(1);
                        write_grant(w, g)?;
                    }
                }
                write_ids(w, expected)?;
            }
            Self::JoinRejected { reason } => write_reason(w, reason)?,
            Self::Expect { joiner } | Self::Unexpect { joiner } => w.peer_id(joiner),
            Self::View { view } => write_view(w, view)?,
            Self::Grant { grant } => write_grant(w, grant)?,
            Self::LinkDown { peer } => w.peer_id(peer),
            Self::Down { host, down } => {
                w.peer_id(host);
                write_ids(w, down)?;
            }
            Self::Heartbeat | Self::Leave => {}
            Self::RouteAsk { to: p }
            | Self::RouteWanted { from: p }
            | Self::RouteReady { with: p }
            | Self::RouteRefused { with: p } => w.peer_id(p),
            Self::LinkRtts { rtts } => write_rtts(w, rtts)?,
            Self::App { data } => {
                check_len("message", data.len(), MAX_RELIABLE_MESSAGE)?;
                w.bytes16("message", data)?;
            }
        }
        Ok(())
    }

    fn decode_body(code: u8, r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(match code {
            0x01 => Self::JoinRequest {
                data: bounded_bytes(r, "join data", MAX_JOIN_DATA)?,
            },
            0x02 => Self::JoinMembers {
                epoch: r.u64()?,
                members: read_ids(r)?,
            },
            0x03 => {
                let epoch = r.u64()?;
                let failed = if read_bool(r)? {
                    Some(r.peer_id()?)
                } else {
                    None
                };
                Self::JoinReport { epoch, failed }
            }
            0x04 => {
                let view = read_view(r)?;
                let grant = if read_bool(r)? {
                    Some(read_grant(r)?)
                } else {
                    None
                };
                Self::Welcome {
                    view,
                    grant,
                    expected: read_ids(r)?,
                }
            }
            0x05 => Self::JoinRejected {
                reason: read_reason(r)?,
            },
            0x06 => Self::Expect {
                joiner: r.peer_id()?,
            },
            0x07 => Self::Unexpect {
                joiner: r.peer_id()?,
            },
            0x08 => Self::View {
                view: read_view(r)?,
            },
            0x09 => Self::Grant {
                grant: read_grant(r)?,
            },
            0x0a => Self::LinkDown { peer: r.peer_id()? },
            0x0b => Self::Down {
                host: r.peer_id()?,
                down: read_ids(r)?,
            },
            0x0c => Self::Heartbeat,
            0x0d => Self::Leave,
            0x10 => Self::RouteAsk { to: r.peer_id()? },
            0x11 => Self::RouteWanted { from: r.peer_id()? },
            0x12 => Self::RouteReady { with: r.peer_id()? },
            0x13 => Self::RouteRefused { with: r.peer_id()? },
            0x14 => Self::LinkRtts {
                rtts: read_rtts(r)?,
            },
            0x40 => Self::App {
                data: bounded_bytes(r, "message", MAX_RELIABLE_MESSAGE)?,
            },
            other => return Err(CodecError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
#[path = "msg_tests.rs"]
mod tests;
