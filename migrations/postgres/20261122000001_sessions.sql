-- Session listings. `seq` orders a game's rows for cursor pagination (new rows sort last).
-- What a host sets lives in `sessions`; what heartbeats change lives in the narrow
-- `session_liveness`, so a heartbeat rewrites a small tuple, not the whole listing.
-- `session_liveness` has no index on `expires_at_ms` on purpose: every heartbeat would
-- rewrite index pages too (and, in PostgreSQL, lose HOT updates); the once-a-second reaper
-- scans the narrow table instead (~600 pages per 100,000 rows).
-- `version` rises on every write so every instance's cache applies changes in order.
CREATE TABLE sessions (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            UUID    NOT NULL UNIQUE,
    game          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    max_players   INTEGER NOT NULL,
    players       INTEGER NOT NULL,
    attributes    TEXT    NOT NULL,
    connect       TEXT    NOT NULL,
    addr          TEXT    NOT NULL,
    token_hash    BYTEA   NOT NULL,
    timeout_secs  INTEGER NOT NULL,
    created_at_ms BIGINT  NOT NULL
);
CREATE INDEX sessions_game_seq ON sessions (game, seq);

CREATE TABLE session_liveness (
    seq           BIGINT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL,
    version       BIGINT NOT NULL
);
