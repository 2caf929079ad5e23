-- Producer tokens: each lets its holder append events to exactly one stream.
CREATE TABLE producer_tokens (
    id          TEXT PRIMARY KEY,
    stream_id   TEXT NOT NULL REFERENCES objects (id),
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX producer_tokens_stream ON producer_tokens (stream_id);
