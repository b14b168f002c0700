-- Session listings. `seq` orders a game's rows for cursor pagination (new rows sort last);
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
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    version       INTEGER NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at_ms);
CREATE INDEX sessions_game_seq ON sessions (game, seq);
