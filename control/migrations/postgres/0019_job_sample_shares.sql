-- A route's job shared by several processes (streams on Kafka, partitions spread by consumer
-- groups): each process stores its share of the job's current fine sample here, and the
-- telemetry of the serving processes adds the shares up into the job's sample (job_samples), so
-- a dashboard shows the whole job however many workers run it. Kept for a few minutes.
CREATE TABLE job_sample_shares (
    route_id   TEXT NOT NULL,
    worker     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sample     TEXT NOT NULL,
    PRIMARY KEY (route_id, worker, at)
);
CREATE INDEX job_sample_shares_at ON job_sample_shares (at);
