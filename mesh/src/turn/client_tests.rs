//! The sans-IO TURN client on a simulated clock against hand-made server answers: the 401
//! challenge, stale nonces, refusals, integrity, retransmission and timeout, bounds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{ErrorCode, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
use stun_rs::methods::{ALLOCATE, REFRESH};
use stun_rs::{HMACKey, MessageClass, MessageMethod, StunAttribute, TransactionId};

use super::client::{TurnClient, TurnClientConfig, TurnError, TurnEvent, MAX_PENDING};
use super::credentials::Credentials;
use super::wire;

const SECRET: &str = "secret";
const REALM: &str = "mesh";

fn server() -> SocketAddr {
    "127.0.0.1:3478".parse().unwrap()
}

fn creds(secret: &str) -> Credentials {
    Credentials::rest(secret, "peer", 4_000_000_000)
}

fn client(secret: &str) -> (TurnClient, Instant) {
    let config = TurnClientConfig::default();
    (
        TurnClient::new(server(), creds(secret), config),
        Instant::now(),
    )
}

/// The next datagram the client sends: its method, transaction id and whether it is
/// signed (has USERNAME).
fn sent(c: &mut TurnClient) -> (MessageMethod, TransactionId, bool) {
    let t = c.poll_transmit().expect("a transmit");
    assert_eq!(t.dst, server());
    let d = wire::decode_stun(&t.payload).expect("valid STUN");
    assert!(d.fingerprint);
    let m = d.msg;
    (
        m.method(),
        *m.transaction_id(),
        m.get::<UserName>().is_some(),
    )
}

fn error(method: MessageMethod, txn: TransactionId, code: u16, nonce: &str) -> Vec<u8> {
    let code = stun_rs::ErrorCode::new(code, "error").unwrap();
    let attrs: Vec<StunAttribute> = vec![
        ErrorCode::from(code).into(),
        Realm::new(REALM).unwrap().into(),
        Nonce::new(nonce).unwrap().into(),
    ];
    let class = MessageClass::ErrorResponse;
    wire::encode_stun(method, class, txn, attrs, None, true, 0).unwrap()
}

fn success(method: MessageMethod, txn: TransactionId, key: Option<&HMACKey>) -> Vec<u8> {
    let relayed: SocketAddr = "127.0.0.1:49160".parse().unwrap();
    let attrs: Vec<StunAttribute> = vec![
        XorRelayedAddress::from(relayed).into(),
        LifeTime::new(600).into(),
    ];
    let class = MessageClass::SuccessResponse;
    wire::encode_stun(method, class, txn, attrs, key, true, 0).unwrap()
}

fn key() -> HMACKey {
    creds(SECRET).key(REALM).unwrap()
}

fn done(c: &mut TurnClient) -> Result<super::msg::Response, TurnError> {
    match c.poll_event() {
        Some(TurnEvent::Done { result, .. }) => result,
        None => panic!("no event"),
    }
}

#[test]
fn allocate_answers_the_challenge_then_frees() {
    let (mut c, now) = client(SECRET);
    let id = c.allocate(now, None).unwrap();
    let (method, txn, signed) = sent(&mut c);
    assert_eq!((method, signed), (ALLOCATE, false));
    assert!(c.handle_input(now, server(), &error(ALLOCATE, txn, 401, "n1")));
    assert!(c.poll_event().is_none(), "a challenge is not the end");
    let (method, txn2, signed) = sent(&mut c);
    assert_eq!((method, signed), (ALLOCATE, true));
    assert_ne!(txn, txn2);
    assert!(
        !c.handle_input(now, server(), &success(ALLOCATE, txn, Some(&key()))),
        "old txn"
    );
    let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(!c.handle_input(now, other, &success(ALLOCATE, txn2, Some(&key()))));
    assert!(c.handle_input(now, server(), &success(ALLOCATE, txn2, Some(&key()))));
    match c.poll_event() {
        Some(TurnEvent::Done { id: done, result }) => {
            assert_eq!(done, id);
            let r = result.unwrap();
            assert_eq!(r.relayed, Some("127.0.0.1:49160".parse().unwrap()));
            assert_eq!(r.lifetime, Some(600));
        }
        None => panic!("no event"),
    }
    // Free: signed from the start now.
    c.free(now).unwrap();
    let (method, txn, signed) = sent(&mut c);
    assert_eq!((method, signed), (REFRESH, true));
    assert!(c.handle_input(now, server(), &success(REFRESH, txn, Some(&key()))));
    assert!(done(&mut c).is_ok());
    assert_eq!((c.pending(), c.poll_timeout()), (0, None));
}

#[test]
fn a_wrong_password_is_refused_with_401() {
    let (mut c, now) = client("not the secret");
    c.allocate(now, None).unwrap();
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &error(ALLOCATE, txn, 401, "n1"));
    let (_, txn, signed) = sent(&mut c);
    assert!(signed);
    c.handle_input(now, server(), &error(ALLOCATE, txn, 401, "n2"));
    assert!(matches!(done(&mut c), Err(TurnError::Refused(401))));
    assert!(c.poll_transmit().is_none(), "no third attempt");
}

#[test]
fn a_stale_nonce_is_retried_once_with_the_new_one() {
    let (mut c, now) = client(SECRET);
    c.allocate(now, None).unwrap();
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &error(ALLOCATE, txn, 401, "n1"));
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &success(ALLOCATE, txn, Some(&key())));
    done(&mut c).unwrap();
    c.refresh(now, 600).unwrap();
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &error(REFRESH, txn, 438, "n2"));
    let (_, txn, signed) = sent(&mut c);
    assert!(signed);
    assert_eq!(c.auth().map(|a| a.nonce.as_str()), Some("n2"));
    c.handle_input(now, server(), &error(REFRESH, txn, 438, "n3"));
    assert!(matches!(done(&mut c), Err(TurnError::Refused(438))));
}

#[test]
fn a_signed_request_needs_a_signed_answer() {
    let (mut c, now) = client(SECRET);
    c.allocate(now, None).unwrap();
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &error(ALLOCATE, txn, 401, "n1"));
    let (_, txn, _) = sent(&mut c);
    c.handle_input(now, server(), &success(ALLOCATE, txn, None));
    assert!(matches!(done(&mut c), Err(TurnError::Protocol(_))));
    // A 401 without realm and nonce cannot be answered.
    c.allocate(now, None).unwrap();
    let (_, txn, _) = sent(&mut c);
    let code = stun_rs::ErrorCode::new(400, "bad").unwrap();
    let bare = wire::encode_stun(
        ALLOCATE,
        MessageClass::ErrorResponse,
        txn,
        vec![ErrorCode::from(code).into()],
        None,
        true,
        0,
    )
    .unwrap();
    c.handle_input(now, server(), &bare);
    assert!(matches!(done(&mut c), Err(TurnError::Refused(400))));
}

#[test]
fn requests_are_retransmitted_then_time_out() {
    let config = TurnClientConfig {
        rto: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
    };
    let now = Instant::now();
    let mut c = TurnClient::new(server(), creds(SECRET), config);
    c.allocate(now, None).unwrap();
    let first = c.poll_transmit().unwrap();
    let mut t = now;
    let mut resent = 0;
    while let Some(at) = c.poll_timeout() {
        assert!(at > t, "the clock moves on");
        t = at;
        c.handle_timeout(t);
        while let Some(again) = c.poll_transmit() {
            assert_eq!(again, first, "the same datagram, same transaction");
            resent += 1;
        }
    }
    assert_eq!(resent, 3, "at 0.5, 1 and 1.5 s");
    assert_eq!(t, now + config.timeout);
    assert!(matches!(done(&mut c), Err(TurnError::Timeout(_))));
}

#[test]
fn transactions_in_flight_are_bounded() {
    let (mut c, now) = client(SECRET);
    for _ in 0..MAX_PENDING {
        c.refresh(now, 600).unwrap();
    }
    assert!(matches!(c.refresh(now, 600), Err(TurnError::Busy)));
    assert_eq!(c.pending(), MAX_PENDING);
}
