//! Peer identity: an Ed25519 key pair, the [`PeerId`] derived from it, its key file, and the
//! mutual-TLS configuration that proves it on every QUIC connection.
//!
//! Flow:
//! 1. [`Identity::generate`] makes a fresh Ed25519 key pair (RFC 8032), or
//!    [`Identity::load_or_generate`] reads one from a key file (PKCS#8 in PEM, RFC 5958 /
//!    RFC 7468), writing a new one with mode 0600 if the file does not exist yet.
//! 2. The identity makes a self-signed X.509 certificate for its key (RFC 8410); the
//!    certificate carries nothing but the key: names and validity dates are not checked.
//! 3. [`tls`] builds quinn client and server configurations (QUIC-TLS, RFC 9001, TLS 1.3 only,
//!    RFC 8446) in which both sides present their certificate and verify the other's
//!    handshake signature. The client checks that the server's key is the [`PeerId`] it
//!    expected; the server accepts any key and reports it ([`tls::remote_peer_id`]).

pub mod peer_id;
pub mod tls;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use peer_id::{ParsePeerIdError, PeerId, PEER_ID_LEN, PEER_ID_TEXT_LEN};

/// Subject name put in the self-signed certificates; informative only, never checked.
const CERT_NAME: &str = "p2pmesh-peer";

/// Largest key file we read; a PEM Ed25519 PKCS#8 key is about 120 bytes.
const MAX_KEY_FILE: u64 = 16 * 1024;

/// Errors of identity handling: key generation, key files and certificates.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key generation or certificate creation failed in the crypto library.
    #[error("cannot create key or certificate: {0}")]
    Crypto(#[from] rcgen::Error),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but does not hold an Ed25519 private key in PKCS#8 PEM form.
    #[error("key file {path} is corrupt or not an Ed25519 PKCS#8 PEM key: {reason}")]
    CorruptKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate does not carry an Ed25519 public key.
    #[error("certificate does not carry an Ed25519 public key")]
    NotEd25519,
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    /// The remote peer presented a key other than the one expected.
    #[error("peer id mismatch: expected {expected}, remote presented {actual}")]
    PeerIdMismatch {
        /// The peer id the caller asked for.
        expected: PeerId,
        /// The peer id the remote proved it holds.
        actual: PeerId,
    },
    /// Building the TLS configuration failed.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration is not usable for QUIC.
    #[error("quic tls configuration: {0}")]
    QuicTls(String),
}

/// A peer's key pair and its self-signed certificate.
pub struct Identity {
    key: rcgen::KeyPair,
    cert: CertificateDer<'static>,
    peer_id: PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Makes a fresh Ed25519 identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_key(key)
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Self, IdentityError> {
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(IdentityError::NotEd25519);
        }
        let raw: [u8; PEER_ID_LEN] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| IdentityError::NotEd25519)?;
        let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_owned()])?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            key,
            cert,
            peer_id: PeerId::from_bytes(raw),
        })
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The self-signed certificate (DER) presented in TLS handshakes.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key in PKCS#8 DER form, as rustls wants it.
    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Reads an identity from a PKCS#8 PEM key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = |reason: String| IdentityError::CorruptKeyFile {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.len() > MAX_KEY_FILE {
            return Err(corrupt(format!(
                "file is {} bytes, too large for a key",
                meta.len()
            )));
        }
        warn_if_readable_by_others(path, &meta);
        let bytes = std::fs::read(path).map_err(io_err)?;
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
        let key = rcgen::KeyPair::from_pem(&text).map_err(|e| corrupt(e.to_string()))?;
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(corrupt("key is not Ed25519".into()));
        }
        Self::from_key(key)
    }

    /// Writes the private key to `path` (PKCS#8 PEM) with mode 0600, replacing any file there.
    ///
    /// The key is written to a temporary file beside `path` and renamed over it, so a crash
    /// never leaves a half-written key.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        let path = path.as_ref();
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let result = (|| {
            let mut file = options.open(&tmp)?;
            #[cfg(unix)]
            {
                // `mode` only applies to new files; force it on a reused temp file too.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(self.key.serialize_pem().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io_err)
    }

    /// Loads the identity in `path`, or generates one and saves it there if the file does not
    /// exist. A file that exists but cannot be read is an error, never silently replaced.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate()?;
                id.save(path)?;
                tracing::info!(peer = %id.peer_id, path = %path.display(), "generated new identity");
                Ok(id)
            }
            Err(source) => Err(IdentityError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "key file is accessible by group or others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _meta: &std::fs::Metadata) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_gives_distinct_ids_matching_cert() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.peer_id(), b.peer_id());
        assert_eq!(
            tls::peer_id_from_cert(a.certificate()).unwrap(),
            a.peer_id()
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn key_file_round_trip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        let a = Identity::load_or_generate(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = Identity::load(&path).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        let c = Identity::load_or_generate(&path).unwrap();
        assert_eq!(a.peer_id(), c.peer_id());
        assert!(!dir.path().join("peer.key.tmp").exists());
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nnot base64!\n").unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::CorruptKeyFile { .. }), "{err}");
        assert!(err.to_string().contains("bad.key"), "{err}");
        // load_or_generate must not overwrite it.
        assert!(Identity::load_or_generate(&path).is_err());
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::CorruptKeyFile { .. })
        ));
        let missing = Identity::load(dir.path().join("missing.key")).unwrap_err();
        assert!(matches!(missing, IdentityError::Io { .. }), "{missing}");
    }

    #[test]
    fn non_ed25519_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p256.key");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&path, key.serialize_pem()).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::CorruptKeyFile { .. }), "{err}");
    }
}
