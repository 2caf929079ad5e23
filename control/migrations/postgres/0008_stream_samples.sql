-- Each stream's ingest numbers over time, kept like job_samples (10 s for a day, 300 s for 30
-- days). A sample is the JSON of `telemetry::StreamSample`.
CREATE TABLE stream_samples (
    stream_id  TEXT NOT NULL REFERENCES objects (id),
    resolution BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    sample     TEXT NOT NULL,
    PRIMARY KEY (stream_id, resolution, at)
);
CREATE INDEX stream_samples_age ON stream_samples (resolution, at);
