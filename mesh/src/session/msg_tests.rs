//! Round trips and refusals of the session codec.

use super::*;
use crate::coord::{decode_frame, encode, FrameDecoder};

fn id(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn all() -> Vec<SessionMsg> {
    let view = View {
        epoch: 7,
        members: vec![id(1), id(2), id(3)],
        locked: true,
    };
    let grant = ListingGrant {
        listing: "6f1c".into(),
        token: "secret".into(),
        timeout_secs: 30,
        delist_when_locked: true,
    };
    vec![
        SessionMsg::JoinRequest { data: vec![1, 2] },
        SessionMsg::JoinMembers {
            epoch: 3,
            members: vec![id(2), id(3)],
        },
        SessionMsg::JoinReport {
            epoch: 3,
            failed: None,
        },
        SessionMsg::JoinReport {
            epoch: 3,
            failed: Some(id(3)),
        },
        SessionMsg::Welcome {
            view: view.clone(),
            grant: Some(grant.clone()),
            expected: vec![id(9)],
        },
        SessionMsg::Welcome {
            view: view.clone(),
            grant: None,
            expected: vec![],
        },
        SessionMsg::JoinRejected {
            reason: RejectReason::App("no".into()),
        },
        SessionMsg::JoinRejected {
            reason: RejectReason::NotHost(id(1)),
        },
        SessionMsg::JoinRejected {
            reason: RejectReason::Full,
        },
        SessionMsg::JoinRejected {
            reason: RejectReason::Unreachable(id(5)),
        },
        SessionMsg::Expect { joiner: id(4) },
        SessionMsg::Unexpect { joiner: id(4) },
        SessionMsg::View { view },
        SessionMsg::Grant { grant },
        SessionMsg::LinkDown { peer: id(2) },
        SessionMsg::Down {
            host: id(1),
            down: vec![id(1), id(3)],
        },
        SessionMsg::Heartbeat,
        SessionMsg::Leave,
        SessionMsg::RouteAsk { to: id(2) },
        SessionMsg::RouteWanted { from: id(3) },
        SessionMsg::RouteReady { with: id(4) },
        SessionMsg::RouteRefused { with: id(5) },
        SessionMsg::LinkRtts {
            rtts: vec![(id(2), 1_500), (id(3), u32::MAX)],
        },
        SessionMsg::LinkRtts { rtts: vec![] },
        SessionMsg::App {
            data: vec![0; MAX_RELIABLE_MESSAGE],
        },
    ]
}

#[test]
fn every_message_round_trips_through_one_stream() {
    let mut stream = Vec::new();
    for m in all() {
        encode(&m, &mut stream).expect("encodes");
    }
    let mut d = FrameDecoder::<SessionMsg>::new();
    // Byte by byte: the decoder must cope with any split.
    let mut out = Vec::new();
    for b in stream.chunks(7) {
        d.push(b);
        while let Some(m) = d.pop() {
            out.push(m.expect("decodes"));
        }
    }
    assert_eq!(out, all());
}

#[test]
fn oversized_messages_are_refused_on_both_sides() {
    let mut out = Vec::new();
    let big = SessionMsg::App {
        data: vec![0; MAX_RELIABLE_MESSAGE + 1],
    };
    assert!(matches!(
        encode(&big, &mut out),
        Err(CodecError::TooLong { .. })
    ));
    assert!(out.is_empty());
    // A hand-made frame with a too-long join request.
    let mut frame = vec![0, 0, SESSION_VERSION, 0x01];
    let n = MAX_JOIN_DATA + 1;
    frame.extend_from_slice(&(n as u16).to_be_bytes());
    frame.extend(std::iter::repeat_n(0, n));
    let len = (frame.len() - 2) as u16;
    frame[..2].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        decode_frame::<SessionMsg>(&frame),
        Err(CodecError::TooLong { .. })
    ));
}

#[test]
fn a_wrong_version_is_fatal_and_named() {
    let mut frame = Vec::new();
    encode(&SessionMsg::Heartbeat, &mut frame).expect("encodes");
    frame[2] = 9;
    let mut d = FrameDecoder::<SessionMsg>::new();
    d.push(&frame);
    let err = d.pop().expect("a frame").expect_err("wrong version");
    assert_eq!(
        err,
        CodecError::VersionMismatch {
            ours: SESSION_VERSION,
            theirs: 9
        }
    );
    assert!(err.is_fatal() && d.is_failed());
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    for m in all() {
        let mut frame = Vec::new();
        encode(&m, &mut frame).expect("encodes");
        for cut in 4..frame.len() {
            let mut f = frame[..cut].to_vec();
            let len = (f.len() - 2) as u16;
            f[..2].copy_from_slice(&len.to_be_bytes());
            let _ = decode_frame::<SessionMsg>(&f);
        }
    }
    // Duplicate ids and an empty view are refused.
    let mut f = vec![0, 0, SESSION_VERSION, 0x08];
    f.extend_from_slice(&1u64.to_be_bytes());
    f.push(0);
    f.push(0);
    let len = (f.len() - 2) as u16;
    f[..2].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        decode_frame::<SessionMsg>(&f),
        Err(CodecError::InvalidValue("empty membership"))
    );
}
