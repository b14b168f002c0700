//! Example programs built on `mesh`: the `peer` CLI (`src/bin/peer.rs`) and its NAT lab
//! tests (`tests/natlab_stun.rs`).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
