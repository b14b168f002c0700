//! STUN server (RFC 8489, RFC 5780 behaviour discovery) and, later, the punchthrough
//! coordinator.
