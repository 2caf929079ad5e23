-- Sign-in attempts within the throttling window, per account (`u:<name>`) and per address
-- (`a:<ip>`): kept here so every server sharing the database counts the same attempts.
CREATE TABLE sign_in_attempts (
    id  BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL,
    at  BIGINT NOT NULL
);
CREATE INDEX sign_in_attempts_key ON sign_in_attempts (key, at);
