//! Mutual TLS for peer-to-peer QUIC: each side proves its Ed25519 key, the dialer checks that
//! key against the [`PeerId`] it expected.
//!
//! Flow (QUIC-TLS, RFC 9001, over TLS 1.3, RFC 8446 section 4.4):
//! 1. Both sides present one self-signed certificate ([`super::Identity::certificate`]).
//!    No CA, name or validity date is involved: the certificate only carries the key.
//! 2. The client's [`ServerCertVerifier`] reads the Ed25519 key from the server's certificate
//!    (RFC 8410) and compares it with the expected [`PeerId`]. A mismatch aborts the
//!    handshake with [`IdentityError::PeerIdMismatch`], which is also kept in the
//!    [`PeerCheck`] of that connection so the caller gets a typed error.
//! 3. The server's [`ClientCertVerifier`] requires a client certificate with an Ed25519 key
//!    and accepts any such key; the application reads it with [`remote_peer_id`].
//! 4. Both verify the peer's CertificateVerify signature over the handshake transcript with
//!    rustls' `verify_tls13_signature` and the ring provider's algorithms: this proves the
//!    peer holds the private key. Only Ed25519 is offered; TLS 1.2 is refused.
//! 5. ALPN is [`ALPN`] on both sides, so a mismatch in protocol fails the handshake.

use std::sync::{Arc, Mutex};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{PeerIncompatible, SignatureScheme};

use super::{Identity, IdentityError, PeerId, PEER_ID_LEN};

/// ALPN protocol id of peer-to-peer mesh connections.
pub const ALPN: &[u8] = b"p2pmesh/1";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 section 4): SEQUENCE { SEQUENCE {
/// OID 1.3.101.112 }, BIT STRING (32 bytes of key) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the [`PeerId`] (Ed25519 public key) from a DER certificate.
pub fn peer_id_from_cert(cert: &CertificateDer<'_>) -> Result<PeerId, IdentityError> {
    let parsed = ParsedCertificate::try_from(cert)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let spki = parsed.subject_public_key_info();
    let raw = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or(IdentityError::NotEd25519)?;
    let key: [u8; PEER_ID_LEN] = raw.try_into().map_err(|_| IdentityError::NotEd25519)?;
    Ok(PeerId::from_bytes(key))
}

/// The verified [`PeerId`] of the remote side of an established connection.
pub fn remote_peer_id(conn: &quinn::Connection) -> Result<PeerId, IdentityError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| IdentityError::BadCertificate("peer presented no certificate".into()))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::BadCertificate("unexpected peer identity type".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| IdentityError::BadCertificate("empty certificate chain".into()))?;
    peer_id_from_cert(first)
}

fn to_rustls_error(e: IdentityError) -> rustls::Error {
    match e {
        IdentityError::BadCertificate(_) => {
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        }
        other => {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(other))))
        }
    }
}

/// Checks a presented chain: exactly one certificate carrying an Ed25519 key.
fn check_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "peer sent more than one certificate".into(),
        ));
    }
    peer_id_from_cert(end_entity).map_err(to_rustls_error)
}

/// Shared verification of TLS 1.3 CertificateVerify signatures.
#[derive(Debug)]
struct SignatureCheck {
    provider: Arc<CryptoProvider>,
}

impl SignatureCheck {
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered,
        ))
    }
}

/// What the client verifier of one connection found; read it after a failed handshake.
#[derive(Debug, Clone, Default)]
pub struct PeerCheck {
    mismatch: Arc<Mutex<Option<(PeerId, PeerId)>>>,
}

impl PeerCheck {
    /// The [`IdentityError::PeerIdMismatch`] if the server presented an unexpected key.
    pub fn mismatch(&self) -> Option<IdentityError> {
        let guard = self.mismatch.lock().unwrap_or_else(|p| p.into_inner());
        guard.map(|(expected, actual)| IdentityError::PeerIdMismatch { expected, actual })
    }
}

/// Client side: accepts exactly the server whose key is `expected`, or (insecure mode,
/// `None`) any server with a well-formed Ed25519 key.
#[derive(Debug)]
struct ExpectedPeerVerifier {
    expected: Option<PeerId>,
    check: PeerCheck,
    sig: SignatureCheck,
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = check_chain(end_entity, intermediates)?;
        let Some(expected) = self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        if actual != expected {
            let mut slot = self
                .check
                .mismatch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *slot = Some((expected, actual));
            return Err(to_rustls_error(IdentityError::PeerIdMismatch {
                expected,
                actual,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        SignatureCheck::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.sig.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: requires a client certificate with an Ed25519 key, accepts any such key.
#[derive(Debug)]
struct AnyPeerVerifier {
    sig: SignatureCheck,
}

impl ClientCertVerifier for AnyPeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        SignatureCheck::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.sig.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The TLS server name sent when the server's key is not known in advance (insecure mode).
pub const INSECURE_SERVER_NAME: &str = "punch-server";

/// The TLS server name used when dialing `peer`: its text form, a valid DNS label.
pub fn server_name(peer: &PeerId) -> String {
    peer.to_string()
}

/// A quinn client configuration that presents `identity` and accepts only `expected`.
///
/// The returned [`PeerCheck`] tells, after a failed handshake, whether the reason was a key
/// mismatch.
pub fn client_config(
    identity: &Identity,
    expected: PeerId,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<(quinn::ClientConfig, PeerCheck), IdentityError> {
    build_client_config(identity, Some(expected), transport)
}

/// A quinn client configuration that presents `identity` and accepts *any* server key
/// (still Ed25519, still proved by the handshake signature). Development only: this is
/// what `--insecure` means for a punch server named without its id. Read the key the
/// server proved with [`remote_peer_id`] after the handshake.
pub fn client_config_insecure(
    identity: &Identity,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<quinn::ClientConfig, IdentityError> {
    build_client_config(identity, None, transport).map(|(config, _)| config)
}

fn build_client_config(
    identity: &Identity,
    expected: Option<PeerId>,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<(quinn::ClientConfig, PeerCheck), IdentityError> {
    let provider = provider();
    let check = PeerCheck::default();
    let verifier = ExpectedPeerVerifier {
        expected,
        check: check.clone(),
        sig: SignatureCheck {
            provider: provider.clone(),
        },
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| IdentityError::QuicTls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    if let Some(transport) = transport {
        config.transport_config(transport);
    }
    Ok((config, check))
}

/// A quinn server configuration that presents `identity` and requires a client key.
pub fn server_config(
    identity: &Identity,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<quinn::ServerConfig, IdentityError> {
    let provider = provider();
    let verifier = AnyPeerVerifier {
        sig: SignatureCheck {
            provider: provider.clone(),
        },
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| IdentityError::QuicTls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    if let Some(transport) = transport {
        config.transport_config(transport);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_key_is_the_peer_id() {
        let id = Identity::generate().unwrap();
        assert_eq!(peer_id_from_cert(id.certificate()).unwrap(), id.peer_id());
        assert!(peer_id_from_cert(&CertificateDer::from(vec![1u8, 2, 3])).is_err());
    }

    #[test]
    fn non_ed25519_cert_is_rejected() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            peer_id_from_cert(cert.der()),
            Err(IdentityError::NotEd25519)
        ));
    }

    #[test]
    fn verifier_rejects_wrong_key_and_records_it() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let check = PeerCheck::default();
        let v = ExpectedPeerVerifier {
            expected: Some(a.peer_id()),
            check: check.clone(),
            sig: SignatureCheck {
                provider: provider(),
            },
        };
        let name = ServerName::try_from(server_name(&a.peer_id())).unwrap();
        let now = UnixTime::now();
        assert!(v
            .verify_server_cert(a.certificate(), &[], &name, &[], now)
            .is_ok());
        assert!(check.mismatch().is_none());
        assert!(v
            .verify_server_cert(b.certificate(), &[], &name, &[], now)
            .is_err());
        match check.mismatch() {
            Some(IdentityError::PeerIdMismatch { expected, actual }) => {
                assert_eq!(expected, a.peer_id());
                assert_eq!(actual, b.peer_id());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(v
            .verify_server_cert(a.certificate(), &[b.certificate().clone()], &name, &[], now)
            .is_err());
    }

    #[test]
    fn configs_build() {
        let a = Identity::generate().unwrap();
        assert!(server_config(&a, None).is_ok());
        assert!(client_config(&a, a.peer_id(), None).is_ok());
        assert!(client_config_insecure(&a, None).is_ok());
    }

    #[test]
    fn insecure_verifier_accepts_any_key_but_not_garbage() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let v = ExpectedPeerVerifier {
            expected: None,
            check: PeerCheck::default(),
            sig: SignatureCheck {
                provider: provider(),
            },
        };
        let name = ServerName::try_from("punch-server").unwrap();
        let now = UnixTime::now();
        assert!(v
            .verify_server_cert(a.certificate(), &[], &name, &[], now)
            .is_ok());
        assert!(v
            .verify_server_cert(b.certificate(), &[], &name, &[], now)
            .is_ok());
        let garbage = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(v
            .verify_server_cert(&garbage, &[], &name, &[], now)
            .is_err());
    }
}
