-- A route's job temporarily reading another source (a stream, or files imported into a scratch
-- topic) up to the end that source had when the backfill started. The route's normal position
-- stays untouched in `checkpoints`; the backfill's own positions are kept apart. At most one
-- running backfill per route.
CREATE TABLE backfills (
    id             TEXT PRIMARY KEY,
    route_id       TEXT NOT NULL REFERENCES objects (id),
    source         TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partitions     BIGINT NOT NULL,
    end_offsets    TEXT NOT NULL,
    state          TEXT NOT NULL,
    started_by     TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    finished_at    BIGINT
);
CREATE INDEX backfills_route ON backfills (route_id, started_at);
CREATE UNIQUE INDEX backfills_one_running ON backfills (route_id) WHERE state = 'running';

CREATE TABLE backfill_checkpoints (
    backfill_id  TEXT NOT NULL REFERENCES backfills (id),
    partition_no BIGINT NOT NULL,
    next_offset  BIGINT NOT NULL,
    PRIMARY KEY (backfill_id, partition_no)
);
