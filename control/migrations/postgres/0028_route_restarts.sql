-- A requested restart is goal state: each request bumps the route's generation, which is part of
-- its job's fingerprint, so every process running the job (the server or any worker) restarts it.
CREATE TABLE route_restarts (
    route_id     TEXT PRIMARY KEY,
    generation   BIGINT NOT NULL,
    requested_at BIGINT NOT NULL
);
