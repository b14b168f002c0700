//! NAT behaviour discovery (RFC 5780) over STUN Binding transactions (RFC 8489), with the
//! result expressed in RFC 4787 terms and as the classic NAT names.
//!
//! Flow (see [`NatDiscovery`] for the state machine, [`discover`] for the tokio driver); two
//! lanes, each on its own socket, run in parallel (RFC 5780 section 4.5):
//! 1. Filtering lane, on the caller's socket. Test I: Binding request to the server's
//!    primary address; the response gives the reflexive address, OTHER-ADDRESS (the
//!    server's alternate IP and port) and the RTT. Reflexive address equal to the local
//!    address means no NAT.
//! 2. Then filtering tests II (CHANGE-REQUEST change IP and port) and III (change port) at
//!    once: an answer to II means endpoint-independent filtering, else an answer to III
//!    address-dependent, else address-and-port-dependent.
//! 3. Mapping lane, on a second socket (the mapping tests open the NAT's filter towards the
//!    alternate IP, which must not happen on the filtering lane's binding): its own test I,
//!    then mapping test II to (alternate IP, primary port): the same reflexive address as
//!    its test I means endpoint-independent mapping; else mapping test III to (alternate
//!    IP, alternate port): the same reflexive address as in test II means
//!    address-dependent mapping, otherwise address-and-port-dependent.
//!
//! Every request is one RFC 8489 client transaction: retransmitted after RTO, 2·RTO, 4·RTO
//! ... until Rc requests were sent, then given up Rm·RTO after the last one. Each lane's
//! test I uses the RFC defaults (RTO 500 ms, Rc 7, Rm 16); the later tests use an RTO
//! derived from the RTT test I measured (twice the RTT, 100 ms to 3 s), and the filtering
//! tests, whose answer may be silence, only 3 requests and a final wait of 2 RTOs. Behind
//! a restricted NAT on a fast path discovery thus takes about 0.5 s (5 RTOs at the
//! 100 ms floor), at 300 ms RTT about 3.3 s.

mod discovery;
mod driver;
mod mappings;
#[cfg(test)]
mod sim_tests;
mod stun;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use discovery::{Lane, NatDiscovery, NatEvent, Transmit};
pub use driver::{discover, discover_on};
pub use mappings::{MappingEvent, MappingProbe};

/// Mapping behaviour (RFC 4787 section 4.1), or no NAT at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// The reflexive address is the local address: no NAT.
    NoNat,
    /// Same public address and port for every destination.
    EndpointIndependent,
    /// Same public address and port for every destination port of one destination IP.
    AddressDependent,
    /// A new public address or port for every destination address and port.
    AddressAndPortDependent,
}

/// Filtering behaviour (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone may send to the mapped address.
    EndpointIndependent,
    /// Only IP addresses the client sent to may send back.
    AddressDependent,
    /// Only exact (IP, port) pairs the client sent to may send back.
    AddressAndPortDependent,
}

/// Classic NAT names, as the issue and `peer doctor` use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassicNat {
    /// No NAT and no filtering.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering (also: no NAT behind an
    /// address-dependent firewall).
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (also: no NAT
    /// behind an address-and-port-dependent firewall).
    PortRestricted,
    /// Address-dependent or address-and-port-dependent mapping, any filtering.
    Symmetric,
}

impl ClassicNat {
    /// The classic name of a (mapping, filtering) combination.
    pub fn from_behaviour(mapping: Mapping, filtering: Filtering) -> Self {
        match (mapping, filtering) {
            (Mapping::AddressDependent | Mapping::AddressAndPortDependent, _) => Self::Symmetric,
            (Mapping::NoNat, Filtering::EndpointIndependent) => Self::None,
            (Mapping::EndpointIndependent, Filtering::EndpointIndependent) => Self::FullCone,
            (_, Filtering::AddressDependent) => Self::Restricted,
            (_, Filtering::AddressAndPortDependent) => Self::PortRestricted,
        }
    }

    /// snake_case name: `none`, `full_cone`, `restricted`, `port_restricted`, `symmetric`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FullCone => "full_cone",
            Self::Restricted => "restricted",
            Self::PortRestricted => "port_restricted",
            Self::Symmetric => "symmetric",
        }
    }
}

impl Mapping {
    /// snake_case name, e.g. `endpoint_independent` or `no_nat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoNat => "no_nat",
            Self::EndpointIndependent => "endpoint_independent",
            Self::AddressDependent => "address_dependent",
            Self::AddressAndPortDependent => "address_and_port_dependent",
        }
    }
}

impl Filtering {
    /// snake_case name, e.g. `address_and_port_dependent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointIndependent => "endpoint_independent",
            Self::AddressDependent => "address_dependent",
            Self::AddressAndPortDependent => "address_and_port_dependent",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Mapping, Filtering, ClassicNat);

/// The result of a discovery run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatBehaviour {
    /// Mapping behaviour (or [`Mapping::NoNat`]).
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Server-reflexive address from test I (what the server saw).
    pub reflexive: SocketAddr,
    /// The local address the requests were sent from.
    pub local: SocketAddr,
    /// The server's alternate address (OTHER-ADDRESS).
    pub other_address: SocketAddr,
    /// Round-trip time of test I (either lane's), if a first request was answered (Karn's
    /// rule).
    pub rtt: Option<Duration>,
}

impl NatBehaviour {
    /// The classic name of this behaviour.
    pub fn nat_type(&self) -> ClassicNat {
        ClassicNat::from_behaviour(self.mapping, self.filtering)
    }
}

/// Transaction timing (RFC 8489 section 6.2.1): the first test of each lane uses `rto`,
/// `rc` and `rm`; later tests an RTO derived from the RTT the first one measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Initial retransmission timeout of each lane's test I, when nothing is known about
    /// the path (RFC default 500 ms).
    pub rto: Duration,
    /// Requests per transaction of test I and of the mapping tests (RFC default 7).
    pub rc: u32,
    /// Final wait after the last request of test I and of the mapping tests, in multiples
    /// of their RTO (RFC default 16).
    pub rm: u32,
    /// Smallest RTO of the tests after test I (twice test I's RTT, or the whole time test
    /// I took when its first request went unanswered). Default 100 ms: a loaded machine
    /// still answers well within 5 RTOs.
    pub rto_floor: Duration,
    /// Largest RTO of the tests after test I. Default 3 s (the RTO RFC 6298 starts from
    /// when nothing is known).
    pub rto_cap: Duration,
    /// Requests per filtering transaction (tests II and III, whose answer may be silence).
    /// Default 3: an answer lost twice still arrives.
    pub filter_rc: u32,
    /// Final wait after the last filtering request, in RTOs. Default 2: silence is decided
    /// 5 RTOs after the first request (RTO + 2·RTO + 2·RTO).
    pub filter_rm: u32,
    /// Seed for transaction ids (tests); `None` draws from the OS.
    pub seed: Option<u64>,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
            rto_floor: Duration::from_millis(100),
            rto_cap: Duration::from_secs(3),
            filter_rc: 3,
            filter_rm: 2,
            seed: None,
        }
    }
}

impl NatConfig {
    /// Timing whose test I transaction timeout (Rc requests plus the final wait) is close
    /// to `total`, keeping Rc = 7 and Rm = 16 (RTO = total / 79, at least 1 ms); the later
    /// tests keep their RTT-derived defaults.
    pub fn with_transaction_timeout(total: Duration) -> Self {
        let rto = (total / 79).max(Duration::from_millis(1));
        NatConfig {
            rto,
            ..NatConfig::default()
        }
    }

    /// How long test I lasts when nothing answers.
    pub fn transaction_timeout(&self) -> Duration {
        let rc = self.rc.max(1);
        let mut total = Duration::ZERO;
        for k in 1..rc {
            total += self.rto.saturating_mul(1u32 << (k - 1).min(20));
        }
        total + self.rto.saturating_mul(self.rm)
    }
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The server did not answer (test I, or a mapping test to its alternate address).
    #[error("no response from {server} during {test} after {after:?}")]
    Timeout {
        /// Which test timed out.
        test: &'static str,
        /// The address the requests went to.
        server: SocketAddr,
        /// The transaction timeout.
        after: Duration,
    },
    /// The server's response lacks OTHER-ADDRESS, or it names the same IP: the server does
    /// not support RFC 5780 behaviour discovery.
    #[error("server {0} does not support RFC 5780 (no usable OTHER-ADDRESS)")]
    NoOtherAddress(SocketAddr),
    /// The server answered a CHANGE-REQUEST from an address it should have changed.
    #[error("server ignored CHANGE-REQUEST: response came from {from}")]
    ChangeRequestIgnored {
        /// Where the response came from.
        from: SocketAddr,
    },
    /// The server answered with a STUN error response.
    #[error("server error {code}: {reason}")]
    ServerError {
        /// STUN error code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// A success response without (XOR-)MAPPED-ADDRESS.
    #[error("malformed response: {0}")]
    Protocol(String),
    /// Encoding a request failed (a bug).
    #[error("cannot encode STUN request: {0}")]
    Encode(String),
    /// Socket error in the driver.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl NatError {
    /// A short machine-readable kind: `timeout`, `no_other_address`,
    /// `change_request_ignored`, `server_error`, `protocol`, `encode`, `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            NatError::Timeout { .. } => "timeout",
            NatError::NoOtherAddress(_) => "no_other_address",
            NatError::ChangeRequestIgnored { .. } => "change_request_ignored",
            NatError::ServerError { .. } => "server_error",
            NatError::Protocol(_) => "protocol",
            NatError::Encode(_) => "encode",
            NatError::Io(_) => "io",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_names() {
        use Filtering as F;
        use Mapping as M;
        let c = ClassicNat::from_behaviour;
        assert_eq!(c(M::NoNat, F::EndpointIndependent), ClassicNat::None);
        assert_eq!(
            c(M::EndpointIndependent, F::EndpointIndependent),
            ClassicNat::FullCone
        );
        assert_eq!(
            c(M::EndpointIndependent, F::AddressDependent),
            ClassicNat::Restricted
        );
        assert_eq!(
            c(M::EndpointIndependent, F::AddressAndPortDependent),
            ClassicNat::PortRestricted
        );
        assert_eq!(
            c(M::AddressDependent, F::EndpointIndependent),
            ClassicNat::Symmetric
        );
        assert_eq!(
            c(M::AddressAndPortDependent, F::AddressAndPortDependent),
            ClassicNat::Symmetric
        );
        assert_eq!(
            c(M::NoNat, F::AddressAndPortDependent),
            ClassicNat::PortRestricted
        );
    }

    #[test]
    fn default_transaction_timeout_is_rfc_8489s_39_5_seconds() {
        assert_eq!(
            NatConfig::default().transaction_timeout(),
            Duration::from_millis(39_500)
        );
    }
}
