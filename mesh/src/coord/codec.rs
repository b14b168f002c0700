//! Framing of coordinator messages: [`encode`] one message into a frame, and the incremental
//! [`FrameDecoder`] that turns a byte stream back into messages.
//!
//! Steps of [`FrameDecoder::pop`]:
//! 1. Wait for the 2-byte length; a zero length is a malformed (empty) frame, skipped.
//! 2. Check the version byte as soon as it is there: another version is fatal.
//! 3. Check the length against [`MAX_FRAME_LEN`]: longer is fatal (the stream cannot be
//!    trusted any more).
//! 4. Wait for the whole frame, take it off the buffer, decode type and body. A body that
//!    does not decode is a non-fatal error: the frame is skipped, the stream stays in sync.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use super::{MAX_FRAME_LEN, MAX_STRING_LEN, PROTOCOL_VERSION};
use crate::identity::{PeerId, PEER_ID_LEN};

/// Why bytes could not be decoded, or a message not encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The frame announces more than [`MAX_FRAME_LEN`] bytes. Fatal.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame carries another protocol version. Fatal.
    #[error("protocol version mismatch: the other side speaks version {theirs}, we speak version {ours}")]
    VersionMismatch {
        /// Our version.
        ours: u8,
        /// The version in the frame.
        theirs: u8,
    },
    /// A frame without version and type.
    #[error("empty frame")]
    Empty,
    /// The body ends before the message does.
    #[error("truncated message body")]
    Truncated,
    /// The body goes on after the message ended.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A type code this version does not know.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// A field holds a value outside its domain.
    #[error("invalid {0}")]
    InvalidValue(&'static str),
    /// A list or string longer than allowed.
    #[error("{what}: {len} exceeds the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl CodecError {
    /// Whether the stream cannot go on after this error (the connection should be closed).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Oversized { .. } | Self::VersionMismatch { .. })
    }
}

/// A message that travels in coordinator frames: [`super::ClientMsg`] or
/// [`super::ServerMsg`].
pub trait WireMessage: Sized {
    /// The protocol version every frame of this message family carries (the coordinator's
    /// [`PROTOCOL_VERSION`] unless a protocol sets its own).
    const VERSION: u8 = PROTOCOL_VERSION;
    /// Largest frame (version + type + body) of this message family; at most 65,535 (the
    /// length prefix is a u16).
    const MAX_FRAME_LEN: usize = MAX_FRAME_LEN;
    /// The type code of this message.
    fn type_code(&self) -> u8;
    /// Appends the body (after the type code) to `out`.
    fn encode_body(&self, out: &mut Writer<'_>) -> Result<(), CodecError>;
    /// Decodes the body of a message of type `code`; `r` must be read to its end.
    fn decode_body(code: u8, r: &mut Reader<'_>) -> Result<Self, CodecError>;
}

/// Appends `msg` as one frame to `out`. On error `out` is left as it was.
pub fn encode<M: WireMessage>(msg: &M, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, M::VERSION, msg.type_code()]);
    if let Err(e) = msg.encode_body(&mut Writer { out: &mut *out }) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 2;
    match u16::try_from(len) {
        Ok(len16) if len <= M::MAX_FRAME_LEN => {
            out[start..start + 2].copy_from_slice(&len16.to_be_bytes());
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(CodecError::Oversized {
                len,
                max: M::MAX_FRAME_LEN,
            })
        }
    }
}

/// Decodes the frame payload after the length prefix: version, type, body.
fn decode_payload<M: WireMessage>(payload: &[u8]) -> Result<M, CodecError> {
    let (&version, rest) = payload.split_first().ok_or(CodecError::Empty)?;
    if version != M::VERSION {
        return Err(CodecError::VersionMismatch {
            ours: M::VERSION,
            theirs: version,
        });
    }
    let (&code, body) = rest.split_first().ok_or(CodecError::Empty)?;
    let mut r = Reader { buf: body };
    let msg = M::decode_body(code, &mut r)?;
    r.finish()?;
    Ok(msg)
}

/// Incremental decoder of a stream of frames carrying messages of type `M`.
///
/// Push bytes as they arrive and pop messages until [`FrameDecoder::pop`] returns `None`;
/// then the buffer holds less than one frame. After a fatal error the decoder ignores all
/// further input.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
    _msg: PhantomData<fn() -> M>,
}

impl<M> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            failed: false,
            _msg: PhantomData,
        }
    }
}

impl<M: WireMessage> FrameDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether a fatal error stopped the decoder.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next message, an error for the next frame, or `None` if no whole frame is
    /// buffered (or the decoder failed).
    pub fn pop(&mut self) -> Option<Result<M, CodecError>> {
        if self.failed {
            return None;
        }
        let avail = self.buf.get(self.pos..)?;
        let len_bytes: [u8; 2] = avail.get(..2)?.try_into().ok()?;
        let len = usize::from(u16::from_be_bytes(len_bytes));
        if len == 0 {
            self.pos += 2;
            return Some(Err(CodecError::Empty));
        }
        let version = *avail.get(2)?;
        let fatal = if version != M::VERSION {
            Some(CodecError::VersionMismatch {
                ours: M::VERSION,
                theirs: version,
            })
        } else if len > M::MAX_FRAME_LEN {
            Some(CodecError::Oversized {
                len,
                max: M::MAX_FRAME_LEN,
            })
        } else {
            None
        };
        if let Some(e) = fatal {
            self.failed = true;
            self.buf = Vec::new();
            self.pos = 0;
            return Some(Err(e));
        }
        let payload = avail.get(2..2 + len)?;
        let result = decode_payload(payload);
        self.pos += 2 + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Some(result)
    }
}

/// Decodes exactly one whole frame (e.g. a test vector or a datagram).
pub fn decode_frame<M: WireMessage>(frame: &[u8]) -> Result<M, CodecError> {
    let mut d = FrameDecoder::<M>::new();
    d.push(frame);
    match d.pop() {
        Some(Ok(m)) if d.buffered() == 0 => Ok(m),
        Some(Ok(_)) => Err(CodecError::TrailingBytes(d.buffered())),
        Some(Err(e)) => Err(e),
        None => Err(CodecError::Truncated),
    }
}

/// Appends body fields to a frame being encoded.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn peer_id(&mut self, id: &PeerId) {
        self.out.extend_from_slice(id.as_bytes());
    }

    /// Bytes of a fixed-size field, as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub(crate) fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.out.extend_from_slice(&ip.octets());
            }
        }
        self.u16(a.port());
    }

    /// A string of at most [`MAX_STRING_LEN`] bytes; longer is an error.
    pub(crate) fn string(&mut self, what: &'static str, s: &str) -> Result<(), CodecError> {
        let len = u8::try_from(s.len()).map_err(|_| CodecError::TooLong {
            what,
            len: s.len(),
            max: MAX_STRING_LEN,
        })?;
        self.u8(len);
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// A byte string with a u16 length prefix (the frame limit bounds it further).
    pub(crate) fn bytes16(&mut self, what: &'static str, b: &[u8]) -> Result<(), CodecError> {
        let len = u16::try_from(b.len()).map_err(|_| CodecError::TooLong {
            what,
            len: b.len(),
            max: usize::from(u16::MAX),
        })?;
        self.u16(len);
        self.out.extend_from_slice(b);
        Ok(())
    }

    /// A string cut (at a character boundary) to [`MAX_STRING_LEN`] bytes.
    pub(crate) fn string_truncated(&mut self, s: &str) {
        let mut end = s.len().min(MAX_STRING_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        // `end` is at most 255, so this is never an error.
        let _ = self.string("detail", &s[..end]);
    }
}

/// Reads body fields of a received frame; every read fails cleanly at the end.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.take(N)?.try_into().map_err(|_| CodecError::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn peer_id(&mut self) -> Result<PeerId, CodecError> {
        Ok(PeerId::from_bytes(self.array::<PEER_ID_LEN>()?))
    }

    pub(crate) fn addr(&mut self) -> Result<SocketAddr, CodecError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(CodecError::InvalidValue("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidValue(what))
    }

    /// A byte string with a u16 length prefix.
    pub(crate) fn bytes16(&mut self) -> Result<Vec<u8>, CodecError> {
        let len = usize::from(self.u16()?);
        Ok(self.take(len)?.to_vec())
    }

    /// Fails if bytes are left.
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::TrailingBytes(self.buf.len()))
        }
    }
}
