-- Each time a route's job moved to another version of what it runs: from which route version
-- to which, with which strategy, and how it ended (stable, rolled back, superseded by the next).
CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,
    route_id     TEXT NOT NULL REFERENCES objects (id),
    from_version BIGINT,
    to_version   BIGINT NOT NULL,
    strategy     TEXT NOT NULL,
    state        TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    detail       TEXT NOT NULL
);
CREATE INDEX deployments_route ON deployments (route_id, started_at);
CREATE INDEX deployments_state ON deployments (state);
