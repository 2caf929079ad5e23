-- Changes an approval policy held back: the proposed declaration, its diff against the goal it
-- was based on, and each decision. `declaration` is what was submitted (it may hold secret
-- values) and is cleared once the request is decided; `spec` and `changes` are what reviewers see.
CREATE TABLE change_requests (
    id           BIGSERIAL PRIMARY KEY,
    team_id      TEXT NOT NULL,
    team_name    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    op           TEXT NOT NULL,
    base_version BIGINT NOT NULL,
    declaration  TEXT,
    spec         TEXT NOT NULL,
    changes      TEXT NOT NULL,
    needs        TEXT NOT NULL,
    requester_id TEXT NOT NULL,
    requester    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    decided_by   TEXT,
    decided_at   BIGINT,
    comment      TEXT NOT NULL DEFAULT '',
    revision_seq BIGINT
);
CREATE INDEX change_requests_object ON change_requests (team_id, kind, name, state);
CREATE INDEX change_requests_state ON change_requests (state, id);
