-- The goal-state store. `revisions` is the source of truth and is append-only (enforced by
-- triggers); `objects` is an index of each object's head, written in the same transaction.

CREATE TABLE objects (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    -- Owning team's id; a team object uses the empty string so team names are unique platform-wide.
    team_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    head_version BIGINT NOT NULL,
    deleted      BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX objects_live_name ON objects (kind, team_id, name) WHERE deleted = 0;

CREATE TABLE revisions (
    seq         BIGSERIAL PRIMARY KEY,
    object_id   TEXT NOT NULL REFERENCES objects (id),
    kind        TEXT NOT NULL,
    team_id     TEXT NOT NULL,
    team_name   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    op          TEXT NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    author_id   TEXT NOT NULL,
    author_name TEXT NOT NULL,
    reason      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (object_id, version)
);
CREATE INDEX revisions_team ON revisions (team_id, seq);
CREATE INDEX revisions_kind ON revisions (kind, seq);

CREATE FUNCTION revisions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'revisions are immutable';
END $$;
CREATE TRIGGER revisions_no_change BEFORE UPDATE OR DELETE ON revisions
FOR EACH ROW EXECUTE FUNCTION revisions_immutable();

-- Secret values of sinks, apart from the specs so history and diffs never show them.
-- Append-only: the newest row per (sink, key) is the current value.
CREATE TABLE sink_secrets (
    sink_id    TEXT NOT NULL REFERENCES objects (id),
    key        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (sink_id, key, version)
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    user_id TEXT NOT NULL REFERENCES users (id),
    team_id TEXT NOT NULL REFERENCES objects (id),
    PRIMARY KEY (user_id, team_id)
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    team_id     TEXT NOT NULL REFERENCES objects (id),
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'editor')),
    -- SHA-256 of the token: tokens are 256-bit random, so a fast hash is enough and lookups stay O(1).
    token_hash  TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_by  TEXT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
