//! The in-memory index that serves every read.
//!
//! The database is the source of truth; this index mirrors its live rows so that lists and
//! lookups never touch the database:
//! 1. At start the server loads every live row.
//! 2. The writer applies each committed write here, after the commit and before answering.
//! 3. With PostgreSQL, changes made by other instances arrive as notifications and are
//!    applied the same way; `version` makes the order of arrival irrelevant.
//! 4. Reads filter on `expires_at`, so an expired row vanishes at once even before the
//!    reaper deletes it.
//!
//! Rows are grouped per game and ordered by `seq`, which gives stable cursor pagination:
//! new rows always sort after existing ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::model::{Liveness, Session, SessionBody, SessionId};
use crate::time::Millis;

/// What a list request asks for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// The game (required).
    pub game: String,
    /// `attr.KEY=VALUE` filters; all must match.
    pub attributes: Vec<(String, String)>,
    /// Only rows with `players < max_players`.
    pub has_space: bool,
    /// Start after this `seq` (the cursor).
    pub after_seq: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// The rows.
    pub rows: Vec<Session>,
    /// `seq` to continue after, if more rows match.
    pub next_after: Option<i64>,
}

#[derive(Default)]
struct Inner {
    /// id -> (game, seq): where the row sits in `games`.
    ids: HashMap<SessionId, (Arc<str>, i64)>,
    /// game -> seq -> row.
    games: HashMap<Arc<str>, BTreeMap<i64, Session>>,
    /// creator address -> its rows (for the per-address session cap).
    by_addr: HashMap<IpAddr, HashSet<SessionId>>,
}

impl Inner {
    fn insert(&mut self, row: Session) {
        let game: Arc<str> = match self.games.get_key_value(row.body.game.as_str()) {
            Some((key, _)) => key.clone(),
            None => Arc::from(row.body.game.as_str()),
        };
        let (id, seq) = (row.body.id, row.body.seq);
        self.by_addr.entry(row.body.addr).or_default().insert(id);
        self.ids.insert(id, (game.clone(), seq));
        self.games.entry(game).or_default().insert(seq, row);
    }
}

/// The shared index of live rows.
#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The row with this id, whether live or not (callers check `expires_at`).
    pub fn get_any(&self, id: SessionId) -> Option<Session> {
        let inner = self.read();
        let (game, seq) = inner.ids.get(&id)?;
        inner.games.get(game)?.get(seq).cloned()
    }

    /// The row with this id if it is live at `now`.
    pub fn get_live(&self, id: SessionId, now: Millis) -> Option<Session> {
        self.get_any(id).filter(|s| s.live.expires_at > now)
    }

    /// One page of live rows of a game, in `seq` order.
    pub fn list(&self, filter: &ListFilter, now: Millis) -> Page {
        let inner = self.read();
        let mut rows = Vec::with_capacity(filter.limit.min(64));
        let Some(game) = inner.games.get(filter.game.as_str()) else {
            return Page {
                rows,
                next_after: None,
            };
        };
        let start = filter.after_seq.map_or(Bound::Unbounded, Bound::Excluded);
        let mut next_after = None;
        for (seq, row) in game.range((start, Bound::Unbounded)) {
            if !matches(row, filter, now) {
                continue;
            }
            if rows.len() == filter.limit {
                next_after = rows.last().map(|r: &Session| r.body.seq);
                break;
            }
            debug_assert_eq!(*seq, row.body.seq);
            rows.push(row.clone());
        }
        Page { rows, next_after }
    }

    /// Inserts or replaces a row unless the index already holds a newer version.
    pub fn upsert(&self, body: Arc<SessionBody>, live: Liveness) {
        let mut inner = self.write();
        let id = body.id;
        if let Some((game, seq)) = inner.ids.get(&id).cloned() {
            if let Some(existing) = inner.games.get_mut(&game).and_then(|g| g.get_mut(&seq)) {
                if existing.live.version < live.version {
                    *existing = Session { body, live };
                }
                return;
            }
        }
        inner.insert(Session { body, live });
    }

    /// Applies a new liveness (heartbeat) unless the index already holds a newer version.
    /// Returns false when the row is not in the index.
    pub fn set_liveness(&self, id: SessionId, live: Liveness) -> bool {
        self.with_row(id, |row| {
            if row.live.version < live.version {
                row.live = live;
            }
        })
    }

    /// Sets a row's expiry from a buffered heartbeat (its version is confirmed later).
    /// Returns false when the row is not in the index.
    pub fn extend(&self, id: SessionId, expires_at: Millis) -> bool {
        self.with_row(id, |row| row.live.expires_at = expires_at)
    }

    /// Confirms a flushed heartbeat: takes the database's version, and keeps the later of
    /// the two expiries (a newer heartbeat may have arrived during the flush).
    pub fn confirm(&self, id: SessionId, live: Liveness) -> bool {
        self.with_row(id, |row| {
            if row.live.version < live.version {
                row.live.version = live.version;
                row.live.expires_at = row.live.expires_at.max(live.expires_at);
            }
        })
    }

    fn with_row(&self, id: SessionId, change: impl FnOnce(&mut Session)) -> bool {
        let mut inner = self.write();
        let Some((game, seq)) = inner.ids.get(&id).cloned() else {
            return false;
        };
        match inner.games.get_mut(&game).and_then(|g| g.get_mut(&seq)) {
            Some(row) => {
                change(row);
                true
            }
            None => false,
        }
    }

    /// Removes a row; returns whether it was present.
    pub fn remove(&self, id: SessionId) -> bool {
        let mut inner = self.write();
        let Some((game, seq)) = inner.ids.remove(&id) else {
            return false;
        };
        if let Some(rows) = inner.games.get_mut(&game) {
            let removed = rows.remove(&seq);
            if rows.is_empty() {
                inner.games.remove(&game);
            }
            if let Some(row) = removed {
                if let Some(ids) = inner.by_addr.get_mut(&row.body.addr) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        inner.by_addr.remove(&row.body.addr);
                    }
                }
            }
        }
        true
    }

    /// Replaces the whole content (after a resynchronisation with the database).
    pub fn replace_all(&self, rows: Vec<Session>) {
        let mut fresh = Inner::default();
        for row in rows {
            fresh.insert(row);
        }
        *self.write() = fresh;
    }

    /// Rows held, live or expired-but-not-yet-reaped.
    pub fn len(&self) -> usize {
        self.read().ids.len()
    }

    /// Whether the index holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows created from `addr` that are live at `now`.
    pub fn live_count_for(&self, addr: IpAddr, now: Millis) -> usize {
        let inner = self.read();
        let Some(ids) = inner.by_addr.get(&addr) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| {
                let (game, seq) = inner.ids.get(id)?;
                inner.games.get(game)?.get(seq)
            })
            .filter(|row| row.live.expires_at > now)
            .count()
    }

    /// Rows live at `now`.
    pub fn live_count(&self, now: Millis) -> usize {
        let inner = self.read();
        inner
            .games
            .values()
            .map(|rows| rows.values().filter(|r| r.live.expires_at > now).count())
            .sum()
    }
}

fn matches(row: &Session, filter: &ListFilter, now: Millis) -> bool {
    if row.live.expires_at <= now {
        return false;
    }
    let body = &row.body;
    if filter.has_space && body.players >= body.max_players {
        return false;
    }
    filter
        .attributes
        .iter()
        .all(|(key, value)| body.attributes.get(key).is_some_and(|v| v == value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;
    use crate::validate::empty_connect;

    fn body(seq: i64, game: &str, players: u32, mode: &str) -> Arc<SessionBody> {
        Arc::new(SessionBody {
            id: SessionId::random(),
            seq,
            game: game.into(),
            name: format!("s{seq}"),
            max_players: 4,
            players,
            attributes: [("mode".to_owned(), mode.to_owned())].into(),
            connect: empty_connect(),
            addr: "127.0.0.1".parse().expect("ip"),
            token_hash: Token::generate().hash(),
            timeout_secs: 60,
            created_at: Millis(0),
            json: Default::default(),
        })
    }

    fn live(expires: i64, version: i64) -> Liveness {
        Liveness {
            expires_at: Millis(expires),
            version,
        }
    }

    #[test]
    fn pages_are_stable_while_rows_are_added() {
        let index = Index::new();
        for seq in 1..=5 {
            index.upsert(body(seq, "g", 0, "ctf"), live(1000, 1));
        }
        let mut filter = ListFilter {
            game: "g".into(),
            limit: 2,
            ..Default::default()
        };
        let first = index.list(&filter, Millis(0));
        assert_eq!(
            first.rows.iter().map(|r| r.body.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        index.upsert(body(6, "g", 0, "ctf"), live(1000, 1));
        filter.after_seq = first.next_after;
        let second = index.list(&filter, Millis(0));
        assert_eq!(
            second.rows.iter().map(|r| r.body.seq).collect::<Vec<_>>(),
            [3, 4]
        );
        filter.after_seq = second.next_after;
        filter.limit = 10;
        let last = index.list(&filter, Millis(0));
        assert_eq!(
            last.rows.iter().map(|r| r.body.seq).collect::<Vec<_>>(),
            [5, 6]
        );
        assert_eq!(last.next_after, None);
    }

    #[test]
    fn filters_and_expiry_apply() {
        let index = Index::new();
        index.upsert(body(1, "g", 4, "ctf"), live(1000, 1));
        index.upsert(body(2, "g", 1, "dm"), live(1000, 1));
        index.upsert(body(3, "g", 1, "ctf"), live(10, 1));
        index.upsert(body(4, "other", 1, "ctf"), live(1000, 1));
        let filter = ListFilter {
            game: "g".into(),
            attributes: vec![("mode".into(), "ctf".into())],
            has_space: true,
            limit: 50,
            ..Default::default()
        };
        assert!(index.list(&filter, Millis(100)).rows.is_empty());
        let all = ListFilter {
            game: "g".into(),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(index.list(&all, Millis(100)).rows.len(), 2);
        assert_eq!(index.list(&all, Millis(5)).rows.len(), 3);
        assert_eq!(index.live_count(Millis(100)), 3);
    }

    #[test]
    fn older_versions_never_overwrite_newer_ones() {
        let index = Index::new();
        let b = body(1, "g", 0, "ctf");
        index.upsert(b.clone(), live(1000, 3));
        assert!(index.set_liveness(b.id, live(500, 2)));
        assert_eq!(index.get_any(b.id).map(|s| s.live), Some(live(1000, 3)));
        assert!(index.set_liveness(b.id, live(2000, 4)));
        assert_eq!(index.get_any(b.id).map(|s| s.live), Some(live(2000, 4)));
        assert!(index.extend(b.id, Millis(2500)));
        assert!(index.confirm(b.id, live(2400, 5)));
        assert_eq!(
            index.get_any(b.id).map(|s| s.live),
            Some(live(2500, 5)),
            "later expiry kept"
        );
        let addr = b.addr;
        assert_eq!(index.live_count_for(addr, Millis(2000)), 1);
        assert_eq!(
            index.live_count_for(addr, Millis(2500)),
            0,
            "expired rows stop counting"
        );
        assert!(index.remove(b.id));
        assert_eq!(index.live_count_for(addr, Millis(0)), 0);
        assert!(!index.set_liveness(b.id, live(3000, 6)));
        assert!(!index.extend(b.id, Millis(1)));
        assert!(index.is_empty());
    }
}
