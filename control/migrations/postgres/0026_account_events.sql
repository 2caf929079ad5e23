-- Sign-ins (and failed ones) and changes to users, memberships, API tokens and producer tokens:
-- who did what to whom, for admins to review. Never a password or a token.
CREATE TABLE account_events (
    id      TEXT PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX account_events_at ON account_events (at);
