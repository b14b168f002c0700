//! Binding and authentication: every refusal of RFC 8489 section 9.2.4 in the REST form.

use std::time::Duration;

use stun_rs::methods::{ALLOCATE, REFRESH};

use super::*;
use crate::server::AuthFailure;

#[test]
fn binding_needs_no_credentials_and_reflects_the_source() {
    let mut h = Harness::new();
    let txn = client::new_txn();
    let r = h.request(client_addr(), &client::binding_request(txn), None);
    assert!(r.is_success());
    assert_eq!(r.txn, txn);
    assert_eq!(r.mapped, Some(client_addr()));
    assert!(
        r.fingerprint,
        "the request had a FINGERPRINT, so does the answer"
    );
    assert!(!r.signed);
}

#[test]
fn no_credentials_get_401_with_realm_and_nonce() {
    let mut h = Harness::new();
    let txn = client::new_txn();
    let bytes = client::encode_request(ALLOCATE, txn, client::allocate_attrs(None), None);
    let r = h.request(client_addr(), &bytes, None);
    assert_eq!(r.error, Some(401));
    assert_eq!(r.realm.as_deref(), Some(crate::config::DEFAULT_REALM));
    assert_eq!(r.nonce.as_ref().map(String::len), Some(40));
    assert!(!r.signed, "a challenge is not signed");
    assert_eq!(h.server.stats().auth_challenges, 1);
    assert!(h.bound.is_empty(), "nothing allocated");
}

#[test]
fn correct_credentials_allocate_and_answers_are_signed() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert!(r.is_success());
    assert!(r.integrity_ok, "signed with the client's key");
    assert!(r.fingerprint);
    assert_eq!(h.server.stats().allocations_created, 1);
}

#[test]
fn wrong_secret_gets_401() {
    let mut h = Harness::new();
    let creds = Credentials::rest("not-the-secret", "mallory", UNIX0 + 3600);
    let auth = h.challenge_with(client_addr(), &creds);
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(401));
    assert!(r.nonce.is_some() && r.realm.is_some(), "a fresh challenge");
    assert!(!r.signed);
    assert_eq!(
        h.server.stats().auth_failures_of(AuthFailure::BadIntegrity),
        1
    );
    assert!(h.bound.is_empty());
}

#[test]
fn tampered_message_fails_integrity() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    let txn = client::new_txn();
    let mut bytes = client::encode_request(
        ALLOCATE,
        txn,
        client::allocate_attrs(Some(600)),
        Some(&auth),
    );
    // Change the requested lifetime (inside LIFETIME, before MESSAGE-INTEGRITY) and fix
    // nothing else: the FINGERPRINT no longer matches, so it is dropped as malformed.
    let at = 20 + 8 + 4 + 3;
    bytes[at] ^= 1;
    assert_eq!(
        h.input(client_addr(), &bytes),
        Out::Dropped(DropReason::Malformed)
    );
    assert!(h.sent_to(client_addr()).is_empty(), "never answered");
}

#[test]
fn expired_username_gets_401() {
    let mut h = Harness::new();
    let creds = Credentials::rest(SECRET, "alice", UNIX0 - 1);
    let auth = h.challenge_with(client_addr(), &creds);
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(401));
    assert_eq!(
        h.server
            .stats()
            .auth_failures_of(AuthFailure::ExpiredUsername),
        1
    );
    // A username that expires while in use stops working for new requests.
    let creds = Credentials::rest(SECRET, "bob", UNIX0 + 100);
    let auth = h.challenge_with(client_addr(), &creds);
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert!(r.is_success());
    h.advance(Duration::from_secs(101));
    let r = h.signed(client_addr(), &auth, REFRESH, Vec::new());
    assert_eq!(r.error, Some(401));
    assert_eq!(
        h.server
            .stats()
            .auth_failures_of(AuthFailure::ExpiredUsername),
        2
    );
}

#[test]
fn malformed_username_gets_401() {
    let mut h = Harness::new();
    let creds = Credentials {
        username: "alice".into(),
        password: crate::credentials::rest_password(SECRET, "alice"),
    };
    let auth = h.challenge_with(client_addr(), &creds);
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(401));
    assert_eq!(
        h.server.stats().auth_failures_of(AuthFailure::BadUsername),
        1
    );
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    h.advance(Duration::from_secs(601));
    let r = h.signed_once(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(438));
    let fresh = r.nonce.expect("a new NONCE");
    assert_ne!(fresh, auth.nonce);
    assert!(r.realm.is_some());
    assert_eq!(
        h.server.stats().auth_failures_of(AuthFailure::StaleNonce),
        1
    );
    let mut auth = auth;
    auth.nonce = fresh;
    let r = h.signed(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert!(r.is_success(), "the new nonce works");
}

#[test]
fn nonce_of_another_client_ip_gets_438() {
    let mut h = Harness::new();
    let auth = h.challenge(addr("192.0.2.99:1"), "alice");
    let r = h.signed_once(client_addr(), &auth, ALLOCATE, client::allocate_attrs(None));
    assert_eq!(r.error, Some(438));
    assert_eq!(h.server.stats().auth_failures_of(AuthFailure::BadNonce), 1);
}

#[test]
fn integrity_without_username_realm_or_nonce_gets_400() {
    let mut h = Harness::new();
    let auth = h.challenge(client_addr(), "alice");
    // Sign with the right key but leave the identifying attributes out.
    let txn = client::new_txn();
    let bytes = crate::wire::encode_stun(
        ALLOCATE,
        stun_rs::MessageClass::Request,
        txn,
        client::allocate_attrs(None),
        Some(&auth.key),
        true,
        0,
    )
    .expect("encode");
    let r = h.request(client_addr(), &bytes, None);
    assert_eq!(r.error, Some(400));
    assert_eq!(
        h.server
            .stats()
            .auth_failures_of(AuthFailure::MissingAttributes),
        1
    );
}

#[test]
fn another_username_on_the_allocation_gets_441() {
    let mut h = Harness::new();
    let (_alice, _) = h.allocate(client_addr(), "alice");
    let bob = h.challenge(client_addr(), "bob");
    let r = h.signed(client_addr(), &bob, REFRESH, Vec::new());
    assert_eq!(r.error, Some(441));
    assert!(r.integrity_ok, "signed with bob's (valid) key");
    assert_eq!(
        h.server
            .stats()
            .auth_failures_of(AuthFailure::WrongCredentials),
        1
    );
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    use stun_rs::attributes::turn::LifeTime;
    let mut h = Harness::new();
    // stun-rs cannot encode an unknown attribute: encode LIFETIME and rename it 0x0030
    // (no FINGERPRINT, which would cover the type).
    let txn = client::new_txn();
    let mut bytes = crate::wire::encode_stun(
        stun_rs::methods::BINDING,
        stun_rs::MessageClass::Request,
        txn,
        vec![LifeTime::new(1).into()],
        None,
        false,
        0,
    )
    .expect("encode");
    bytes[20..22].copy_from_slice(&0x0030u16.to_be_bytes());
    let r = h.request(client_addr(), &bytes, None);
    assert_eq!(r.error, Some(420));
    assert_eq!(r.unknown, vec![0x0030]);
    // A comprehension-optional unknown attribute (0x8000 and up) is ignored.
    bytes[20..22].copy_from_slice(&0x8030u16.to_be_bytes());
    let r = h.request(client_addr(), &bytes, None);
    assert!(r.is_success());
}
