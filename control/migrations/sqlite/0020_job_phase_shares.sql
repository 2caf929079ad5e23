-- A route's job shared by several workers: each reports the phase of its part here, and the
-- job's phase (jobs.phase) is the worst of the live workers' parts, not whoever reported last:
-- one worker whose share of the sink keeps failing makes the job failing.
CREATE TABLE job_phase_shares (
    route_id   TEXT NOT NULL,
    worker     TEXT NOT NULL,
    version    BIGINT NOT NULL,
    phase      TEXT NOT NULL,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (route_id, worker)
);
