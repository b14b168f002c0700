//! Desired-state changes of a [`Keeper`] and the request bodies built from them.
//!
//! Steps:
//! 1. A setter changes the desired row and marks the field dirty (a no-op if the value
//!    is unchanged), so any number of changes coalesce into one patch.
//! 2. The next patch carries exactly the dirty fields; a create carries the whole row.

use super::Keeper;
use crate::listing::keeper_io::Desired;
use crate::listing::wire::{Attributes, ConnectInfo, CreateSession, PatchSession};

/// Which desired fields a patch must carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dirty {
    pub(super) name: bool,
    pub(super) max_players: bool,
    pub(super) players: bool,
    pub(super) attributes: bool,
    pub(super) connect: bool,
}

impl Dirty {
    pub(super) fn any(&self) -> bool {
        self.name || self.max_players || self.players || self.attributes || self.connect
    }

    pub(super) fn merge(&mut self, other: Dirty) {
        self.name |= other.name;
        self.max_players |= other.max_players;
        self.players |= other.players;
        self.attributes |= other.attributes;
        self.connect |= other.connect;
    }
}

impl Keeper {
    /// Sets the player count (sent in the next patch if it changed).
    pub fn set_players(&mut self, players: u32) {
        if self.desired.players != players {
            self.desired.players = players;
            self.dirty.players = true;
        }
    }

    /// Sets the capacity.
    pub fn set_max_players(&mut self, max_players: u32) {
        if self.desired.max_players != max_players {
            self.desired.max_players = max_players;
            self.dirty.max_players = true;
        }
    }

    /// Sets the display name.
    pub fn set_name(&mut self, name: String) {
        if self.desired.name != name {
            self.desired.name = name;
            self.dirty.name = true;
        }
    }

    /// Replaces the attributes.
    pub fn set_attributes(&mut self, attributes: Attributes) {
        if self.desired.attributes != attributes {
            self.desired.attributes = attributes;
            self.dirty.attributes = true;
        }
    }

    /// Sets how to reach the host.
    pub fn set_connect(&mut self, connect: ConnectInfo) {
        if self.desired.connect.as_ref() != Some(&connect) {
            self.desired.connect = Some(connect);
            self.dirty.connect = true;
        }
    }

    /// Applies every changed field of `desired` (the game cannot change and is ignored).
    pub fn set_desired(&mut self, desired: &Desired) {
        self.set_players(desired.players);
        self.set_max_players(desired.max_players);
        self.set_name(desired.name.clone());
        self.set_attributes(desired.attributes.clone());
        if let Some(connect) = &desired.connect {
            self.set_connect(connect.clone());
        }
    }

    fn timeout_secs(&self) -> u32 {
        u32::try_from(self.timeout.as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    }

    fn connect_raw(&self) -> Option<Box<serde_json::value::RawValue>> {
        self.desired.connect.as_ref().and_then(|c| c.to_raw().ok())
    }

    pub(super) fn create_body(&self) -> CreateSession {
        let d = &self.desired;
        CreateSession {
            game: d.game.clone(),
            name: d.name.clone(),
            max_players: d.max_players,
            players: d.players,
            timeout_secs: Some(self.timeout_secs()),
            attributes: d.attributes.clone(),
            connect: self.connect_raw(),
        }
    }

    pub(super) fn patch_body(&self, dirty: Dirty) -> PatchSession {
        let d = &self.desired;
        PatchSession {
            name: dirty.name.then(|| d.name.clone()),
            max_players: dirty.max_players.then_some(d.max_players),
            players: dirty.players.then_some(d.players),
            attributes: dirty.attributes.then(|| d.attributes.clone()),
            connect: if dirty.connect {
                self.connect_raw()
            } else {
                None
            },
            timeout_secs: None,
        }
    }
}
