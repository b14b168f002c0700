-- Session listings. `seq` orders a game's rows for cursor pagination (new rows sort last).
-- What a host sets lives in `sessions`; what heartbeats change lives in the narrow
-- `session_liveness`, so a heartbeat rewrites a ~20-byte row, not the whole listing.
-- `session_liveness` has no index on `expires_at_ms` on purpose: every heartbeat would
-- rewrite index pages too (and, in PostgreSQL, lose HOT updates); the once-a-second reaper
-- scans the narrow table instead (~600 pages per 100,000 rows).
-- `version` rises on every write so caches apply changes in order.
CREATE TABLE sessions (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    game          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    max_players   INTEGER NOT NULL,
    players       INTEGER NOT NULL,
    attributes    TEXT    NOT NULL,
    connect       TEXT    NOT NULL,
    addr          TEXT    NOT NULL,
    token_hash    BLOB    NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX sessions_game_seq ON sessions (game, seq);

CREATE TABLE session_liveness (
    seq           INTEGER PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL,
    version       INTEGER NOT NULL
);
