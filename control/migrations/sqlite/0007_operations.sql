-- What people did to running things, beside the goal changes in `revisions`: job restarts,
-- dead-letter retries, alert silences. Append-only, shown in the audit log.
CREATE TABLE operations (
    id         TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    object_id  TEXT NOT NULL REFERENCES objects (id),
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX operations_at ON operations (at);

-- An alert rule of a route (or all of its rules, `rule` null) silenced until `until`: its state
-- is still evaluated and shown, but no notification is sent.
CREATE TABLE alert_silences (
    id         TEXT PRIMARY KEY,
    route_id   TEXT NOT NULL REFERENCES objects (id),
    rule       TEXT,
    until      BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX alert_silences_route ON alert_silences (route_id, until);
