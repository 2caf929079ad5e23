-- Processes that run route jobs, each renewing its row every few seconds with the partitions of
-- each job it holds now (the console's workers page; a row not renewed is a dead process).
CREATE TABLE workers (
    name         TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    jobs         TEXT NOT NULL
);
