-- Session listings. `seq` orders a game's rows for cursor pagination (new rows sort last);
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
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL,
    version       BIGINT  NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at_ms);
CREATE INDEX sessions_game_seq ON sessions (game, seq);
