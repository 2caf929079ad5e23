-- Observed state of route jobs, written by the reconciler and the jobs themselves. Unlike the
-- goal state this is mutable: it says what *is*, and is rebuilt if lost.
CREATE TABLE jobs (
    route_id    TEXT PRIMARY KEY REFERENCES objects (id),
    version     BIGINT NOT NULL,
    phase       TEXT NOT NULL,
    last_error  TEXT,
    restarts    BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL
);

-- Every phase change with its cause, newest last.
CREATE TABLE job_transitions (
    route_id    TEXT NOT NULL REFERENCES objects (id),
    at          BIGINT NOT NULL,
    from_phase  TEXT,
    to_phase    TEXT NOT NULL,
    cause       TEXT NOT NULL
);
CREATE INDEX job_transitions_route ON job_transitions (route_id, at);

-- Where each partition of a route resumes after a restart: committed only after the sink
-- acknowledged everything before `next_offset`.
CREATE TABLE checkpoints (
    route_id     TEXT NOT NULL REFERENCES objects (id),
    partition_no BIGINT NOT NULL,
    next_offset  BIGINT NOT NULL,
    committed_at BIGINT NOT NULL,
    PRIMARY KEY (route_id, partition_no)
);
