-- A bounded history of each route's committed positions (all partitions at once), taken at
-- most once a minute from the automatic checkpoints, newest kept; a rewind can return to one.
CREATE TABLE checkpoint_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    route_id   TEXT NOT NULL REFERENCES objects (id),
    taken_at   BIGINT NOT NULL,
    positions  TEXT NOT NULL
);
CREATE INDEX checkpoint_history_route ON checkpoint_history (route_id, id);
