-- Each job's numbers over time, at two resolutions (10 s kept a day, 300 s kept 30 days): the
-- dashboards read these, so they need no metrics server. A sample is the JSON of
-- `telemetry::JobSample`; the store never aggregates inside it, so both databases agree.
CREATE TABLE job_samples (
    route_id   TEXT NOT NULL REFERENCES objects (id),
    resolution BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    sample     TEXT NOT NULL,
    PRIMARY KEY (route_id, resolution, at)
);
-- Pruning and rolling up go by age across all routes.
CREATE INDEX job_samples_age ON job_samples (resolution, at);
