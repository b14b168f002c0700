//! Master server: game sessions listed with timeouts and heartbeats.
//!
//! Hosts post sessions (`POST /v1/sessions`), keep them alive with heartbeats, patch and
//! delete them with the owner token; clients list a game's live sessions with filters and
//! cursor pagination. Rows live in SQLite (embedded default) or PostgreSQL (shared by many
//! instances); reads are served from an in-memory [`index`] that every committed write and
//! every other instance's change keeps coherent, and writes are batched by the [`writer`];
//! heartbeats are acknowledged from memory and written behind ([`heartbeats`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod conn_clock;
pub mod error;
pub mod heartbeats;
pub mod http;
pub mod index;
pub mod model;
pub mod quota;
pub mod serve;
pub mod server;
pub mod store;
pub mod time;
pub mod token;
pub mod validate;
pub mod writer;

pub use config::Config;
pub use server::App;
