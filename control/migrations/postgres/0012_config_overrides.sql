-- Operators' overrides of a route's configuration (the top layer of its effective config):
-- one value per route and key. Every set and clear is also in the operations log.
CREATE TABLE config_overrides (
    route_id   TEXT NOT NULL REFERENCES objects (id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    set_by     TEXT NOT NULL,
    set_at     BIGINT NOT NULL,
    PRIMARY KEY (route_id, key)
);
