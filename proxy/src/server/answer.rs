//! Answers: Binding, the credential check with its 401/438 challenges, unknown
//! attributes (420), and the encoding of every response (RFC 8489 sections 6.3 and 9.2).
//!
//! Steps, for each answer:
//!
//! 1. A Binding request gets XOR-MAPPED-ADDRESS (after the 420 check).
//! 2. The four TURN requests go through [`Server::authenticate`]: a challenge (401 with
//!    REALM and a fresh NONCE, unsigned), a refusal (400, 401 or 438, counted by
//!    reason), or the caller's key.
//! 3. [`Server::reply`] encodes with stun-rs: MESSAGE-INTEGRITY with the request's key
//!    when authenticated, FINGERPRINT when the request had one, and queues
//!    [`Command::SendToClient`].

use std::time::Instant;

use stun_rs::attributes::stun::{ErrorCode, Nonce, Realm, UnknownAttributes, XorMappedAddress};
use stun_rs::{HMACKey, MessageClass, StunAttribute, StunMessage};

use super::auth::{self, Auth, AuthContext};
use super::{Authed, Command, DropReason, Req, Server};
use crate::wire;

impl Server {
    pub(super) fn binding(&mut self, req: &Req, msg: &StunMessage) {
        if self.refuse_unknown(req, msg, None) {
            return;
        }
        let attrs = vec![XorMappedAddress::from(req.from).into()];
        self.reply(req, MessageClass::SuccessResponse, attrs, None);
    }

    /// Answers 420 if `msg` has unknown comprehension-required attributes.
    pub(super) fn refuse_unknown(
        &mut self,
        req: &Req,
        msg: &StunMessage,
        key: Option<&HMACKey>,
    ) -> bool {
        let mut unknown = UnknownAttributes::default();
        for attr in msg.attributes() {
            let t = attr.attribute_type();
            if attr.is_unknown() && t.is_comprehension_required() {
                unknown.add(t.as_u16());
            }
        }
        if unknown.attributes().is_empty() {
            return false;
        }
        self.error_with(req, 420, vec![unknown.into()], key);
        true
    }

    /// Checks credentials; answers the challenge or the refusal itself (`None`).
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        req: &Req,
        bytes: &[u8],
        msg: &StunMessage,
    ) -> Option<Authed> {
        let ctx = AuthContext {
            nonces: &self.nonces,
            realm: &self.config.realm,
            secret: &self.config.auth_secret,
            now_unix: self.unix_now(now),
            client_ip: req.from.ip(),
        };
        match auth::authenticate(&ctx, bytes, msg) {
            Auth::Ok {
                key,
                username,
                user,
            } => Some(Authed {
                key,
                username,
                user,
            }),
            Auth::Challenge => {
                self.stats.auth_challenges += 1;
                self.challenge(now, req, 401);
                None
            }
            Auth::Refused {
                code,
                reason,
                challenge,
            } => {
                self.stats.auth(reason);
                tracing::debug!(from = %req.from, code, reason = reason.as_str(), "authentication failed");
                if challenge {
                    self.challenge(now, req, code);
                } else {
                    self.error(req, code, None);
                }
                None
            }
        }
    }

    /// An error answer with REALM and a fresh NONCE (401, 438), unsigned.
    fn challenge(&mut self, now: Instant, req: &Req, code: u16) {
        let nonce = self.nonces.mint(self.unix_now(now), req.from.ip());
        let mut attrs = Vec::with_capacity(2);
        if let Ok(realm) = Realm::new(&self.config.realm) {
            attrs.push(realm.into());
        }
        if let Ok(nonce) = Nonce::new(nonce) {
            attrs.push(nonce.into());
        }
        self.error_with(req, code, attrs, None);
    }

    pub(super) fn error(&mut self, req: &Req, code: u16, key: Option<&HMACKey>) {
        self.error_with(req, code, Vec::new(), key);
    }

    pub(super) fn error_with(
        &mut self,
        req: &Req,
        code: u16,
        extra: Vec<StunAttribute>,
        key: Option<&HMACKey>,
    ) {
        self.stats.error_responses += 1;
        tracing::debug!(from = %req.from, method = req.method.as_u16(), code, "error response");
        let Ok(code) = stun_rs::ErrorCode::new(code, reason_phrase(code)) else {
            self.stats.drop(DropReason::Encode);
            return;
        };
        let mut attrs = Vec::with_capacity(1 + extra.len());
        attrs.push(ErrorCode::from(code).into());
        attrs.extend(extra);
        self.reply(req, MessageClass::ErrorResponse, attrs, key);
    }

    pub(super) fn reply(
        &mut self,
        req: &Req,
        class: MessageClass,
        attrs: Vec<StunAttribute>,
        key: Option<&HMACKey>,
    ) {
        match wire::encode_stun(req.method, class, req.txn, attrs, key, req.fingerprint, 0) {
            Some(bytes) => self.push(Command::SendToClient {
                to: req.from,
                bytes,
            }),
            None => {
                tracing::warn!(method = ?req.method, "cannot encode an answer");
                self.stats.drop(DropReason::Encode);
            }
        }
    }
}

/// The reason phrase of an error code (RFC 8489 section 14.8, RFC 8656 section 19).
fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}
