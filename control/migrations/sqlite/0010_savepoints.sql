-- Named positions of a route's job, taken by hand, to rewind to later (the automatic
-- checkpoints keep only the newest position per partition).
CREATE TABLE savepoints (
    route_id   TEXT NOT NULL REFERENCES objects (id),
    name       TEXT NOT NULL,
    positions  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (route_id, name)
);
