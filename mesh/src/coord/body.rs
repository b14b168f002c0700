//! Body encoding of every coordinator message (layout in the [module docs](super)).
//!
//! Steps for each message: write (or read) the type code, then the fields in declaration
//! order with the primitive encodings of [`Writer`] / [`Reader`]; decoding checks every
//! enum code and list length and leaves trailing-byte detection to the caller.

use std::time::Duration;

use super::codec::{CodecError, Reader, WireMessage, Writer};
use super::msg::{
    Candidate, CandidateKind, ClientMsg, Credentials, ErrorKind, Go, NatMapping, Role,
};
use super::park::ParkKey;
use super::{ServerMsg, MAX_CANDIDATES, MAX_RELAYS};
use crate::turn::{RelayCredential, TurnUri};

fn write_candidates(w: &mut Writer<'_>, cands: &[Candidate]) -> Result<(), CodecError> {
    let n = u8::try_from(cands.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_CANDIDATES)
        .ok_or(CodecError::TooLong {
            what: "candidates",
            len: cands.len(),
            max: MAX_CANDIDATES,
        })?;
    w.u8(n);
    for c in cands {
        w.u8(c.kind.code());
        w.addr(&c.addr);
    }
    Ok(())
}

fn read_candidates(r: &mut Reader<'_>) -> Result<Vec<Candidate>, CodecError> {
    let n = usize::from(r.u8()?);
    if n > MAX_CANDIDATES {
        return Err(CodecError::TooLong {
            what: "candidates",
            len: n,
            max: MAX_CANDIDATES,
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind =
            CandidateKind::from_code(r.u8()?).ok_or(CodecError::InvalidValue("candidate kind"))?;
        out.push(Candidate::new(kind, r.addr()?));
    }
    Ok(out)
}

/// Durations travel as whole microseconds in a u32 (up to 71 minutes, saturating).
fn write_micros(w: &mut Writer<'_>, d: Duration) {
    w.u32(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
}

fn read_micros(r: &mut Reader<'_>) -> Result<Duration, CodecError> {
    Ok(Duration::from_micros(u64::from(r.u32()?)))
}

fn read_mapping(r: &mut Reader<'_>) -> Result<NatMapping, CodecError> {
    NatMapping::from_code(r.u8()?).ok_or(CodecError::InvalidValue("nat mapping"))
}

fn read_flag(r: &mut Reader<'_>) -> Result<bool, CodecError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(CodecError::InvalidValue("option flag")),
    }
}

impl WireMessage for ClientMsg {
    fn type_code(&self) -> u8 {
        match self {
            Self::Register { .. } => 0x01,
            Self::Connect { .. } => 0x02,
            Self::Accept { .. } => 0x03,
            Self::Refuse { .. } => 0x04,
            Self::Ping { .. } => 0x05,
            Self::Pong { .. } => 0x06,
            Self::Policy { .. } => 0x07,
            Self::Capabilities { .. } => 0x08,
            Self::HideAddress => 0x09,
            Self::NatMapping { .. } => 0x0A,
        }
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), CodecError> {
        match self {
            Self::Register { candidates } => write_candidates(w, candidates)?,
            Self::Connect { request_id, target } => {
                w.u64(*request_id);
                w.peer_id(target);
            }
            Self::Accept { request_id } | Self::Refuse { request_id } => w.u64(*request_id),
            Self::Ping { ts } | Self::Pong { ts } => w.u64(*ts),
            Self::Policy { accept_all } => w.u8(u8::from(*accept_all)),
            Self::Capabilities { park } => w.u8(u8::from(*park)),
            Self::HideAddress => {}
            Self::NatMapping { mapping } => w.u8(mapping.code()),
        }
        Ok(())
    }

    fn decode_body(code: u8, r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(match code {
            0x01 => Self::Register {
                candidates: read_candidates(r)?,
            },
            0x02 => Self::Connect {
                request_id: r.u64()?,
                target: r.peer_id()?,
            },
            0x03 => Self::Accept {
                request_id: r.u64()?,
            },
            0x04 => Self::Refuse {
                request_id: r.u64()?,
            },
            0x05 => Self::Ping { ts: r.u64()? },
            0x06 => Self::Pong { ts: r.u64()? },
            0x07 => Self::Policy {
                accept_all: read_flag(r)?,
            },
            0x08 => Self::Capabilities {
                park: read_flag(r)?,
            },
            0x09 => Self::HideAddress,
            0x0A => Self::NatMapping {
                mapping: read_mapping(r)?,
            },
            other => return Err(CodecError::UnknownType(other)),
        })
    }
}

fn write_relays(w: &mut Writer<'_>, relays: &[RelayCredential]) -> Result<(), CodecError> {
    let n = u8::try_from(relays.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_RELAYS)
        .ok_or(CodecError::TooLong {
            what: "relays",
            len: relays.len(),
            max: MAX_RELAYS,
        })?;
    w.u8(n);
    for r in relays {
        w.string("relay uri", &r.uri.to_string())?;
        w.string("relay username", &r.username)?;
        w.string("relay password", &r.password)?;
        w.u64(r.expires_unix);
    }
    Ok(())
}

fn read_relays(r: &mut Reader<'_>) -> Result<Vec<RelayCredential>, CodecError> {
    let n = usize::from(r.u8()?);
    if n > MAX_RELAYS {
        return Err(CodecError::TooLong {
            what: "relays",
            len: n,
            max: MAX_RELAYS,
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let uri: TurnUri = r
            .string("relay uri")?
            .parse()
            .map_err(|_| CodecError::InvalidValue("relay uri"))?;
        out.push(RelayCredential {
            uri,
            username: r.string("relay username")?,
            password: r.string("relay password")?,
            expires_unix: r.u64()?,
        });
    }
    Ok(out)
}

fn write_go(w: &mut Writer<'_>, go: &Go) -> Result<(), CodecError> {
    w.u64(go.request_id);
    w.peer_id(&go.peer);
    write_candidates(w, &go.peer_candidates)?;
    let c = &go.credentials;
    w.string("local ufrag", &c.local_ufrag)?;
    w.string("local password", &c.local_pwd)?;
    w.string("remote ufrag", &c.remote_ufrag)?;
    w.string("remote password", &c.remote_pwd)?;
    write_micros(w, go.start_in);
    w.u8(match go.role {
        Role::Controlling => 0,
        Role::Controlled => 1,
    });
    Ok(())
}

fn read_go(r: &mut Reader<'_>) -> Result<Go, CodecError> {
    Ok(Go {
        request_id: r.u64()?,
        peer: r.peer_id()?,
        peer_candidates: read_candidates(r)?,
        credentials: Credentials {
            local_ufrag: r.string("local ufrag")?,
            local_pwd: r.string("local password")?,
            remote_ufrag: r.string("remote ufrag")?,
            remote_pwd: r.string("remote password")?,
        },
        start_in: read_micros(r)?,
        role: match r.u8()? {
            0 => Role::Controlling,
            1 => Role::Controlled,
            _ => return Err(CodecError::InvalidValue("role")),
        },
        peer_mapping: None,
    })
}

impl WireMessage for ServerMsg {
    fn type_code(&self) -> u8 {
        match self {
            Self::Registered { .. } => 0x81,
            Self::Incoming { .. } => 0x82,
            Self::Go(_) => 0x83,
            Self::Cancelled { .. } => 0x84,
            Self::Error { .. } => 0x85,
            Self::Ping { .. } => 0x86,
            Self::Pong { .. } => 0x87,
            Self::Relays { .. } => 0x88,
            Self::Park { .. } => 0x89,
            Self::PeerMapping { .. } => 0x8A,
        }
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), CodecError> {
        match self {
            Self::Registered { observed_addr, rtt } => {
                w.addr(observed_addr);
                match rtt {
                    Some(d) => {
                        w.u8(1);
                        write_micros(w, *d);
                    }
                    None => w.u8(0),
                }
            }
            Self::Incoming { request_id, from } => {
                w.u64(*request_id);
                w.peer_id(from);
            }
            Self::Go(go) => write_go(w, go)?,
            Self::Cancelled { request_id } => w.u64(*request_id),
            Self::Error {
                request_id,
                kind,
                detail,
            } => {
                match request_id {
                    Some(id) => {
                        w.u8(1);
                        w.u64(*id);
                    }
                    None => w.u8(0),
                }
                w.u8(kind.code());
                w.string_truncated(detail);
            }
            Self::Ping { ts } | Self::Pong { ts } => w.u64(*ts),
            Self::Relays { relays } => write_relays(w, relays)?,
            Self::Park { key, keepalive } => {
                w.raw(&key.0);
                write_micros(w, *keepalive);
            }
            Self::PeerMapping {
                request_id,
                mapping,
            } => {
                w.u64(*request_id);
                w.u8(mapping.code());
            }
        }
        Ok(())
    }

    fn decode_body(code: u8, r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(match code {
            0x81 => Self::Registered {
                observed_addr: r.addr()?,
                rtt: if read_flag(r)? {
                    Some(read_micros(r)?)
                } else {
                    None
                },
            },
            0x82 => Self::Incoming {
                request_id: r.u64()?,
                from: r.peer_id()?,
            },
            0x83 => Self::Go(read_go(r)?),
            0x84 => Self::Cancelled {
                request_id: r.u64()?,
            },
            0x85 => Self::Error {
                request_id: if read_flag(r)? { Some(r.u64()?) } else { None },
                kind: ErrorKind::from_code(r.u8()?)
                    .ok_or(CodecError::InvalidValue("error kind"))?,
                detail: r.string("error detail")?,
            },
            0x86 => Self::Ping { ts: r.u64()? },
            0x87 => Self::Pong { ts: r.u64()? },
            0x88 => Self::Relays {
                relays: read_relays(r)?,
            },
            0x89 => Self::Park {
                key: ParkKey(r.array()?),
                keepalive: read_micros(r)?,
            },
            0x8A => Self::PeerMapping {
                request_id: r.u64()?,
                mapping: read_mapping(r)?,
            },
            other => return Err(CodecError::UnknownType(other)),
        })
    }
}
