//! TURN relay (RFC 8656 subset) for peers that have no direct path to each other.
//!
//! Not built yet: the relay arrives with the issue that adds relayed paths. This crate is
//! an empty library so the workspace layout is fixed from the start; it ships no binary.
