-- Each route's alert rules as last evaluated: the state, since when, and the value seen.
CREATE TABLE alert_states (
    route_id   TEXT NOT NULL REFERENCES objects (id),
    rule       TEXT NOT NULL,
    state      TEXT NOT NULL,
    since      BIGINT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (route_id, rule)
);

-- Every firing and resolution, newest last, with whether the team's webhook took it.
CREATE TABLE alert_events (
    route_id  TEXT NOT NULL REFERENCES objects (id),
    rule      TEXT NOT NULL,
    at        BIGINT NOT NULL,
    state     TEXT NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    message   TEXT NOT NULL,
    notified  TEXT NOT NULL
);
CREATE INDEX alert_events_route ON alert_events (route_id, at);
