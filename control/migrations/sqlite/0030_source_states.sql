-- A source's position on its database: whether its initial snapshot is in the log (and at which
-- position it was read), the last position confirmed to the database, the WAL its slot held back
-- when last measured (a stuck slot fills the database's disk), and its job's phase.
CREATE TABLE source_states (
    source_id      TEXT PRIMARY KEY,
    snapshot_lsn   BIGINT,
    confirmed_lsn  BIGINT NOT NULL DEFAULT 0,
    snapshot_rows  BIGINT NOT NULL DEFAULT 0,
    -- The tables the snapshot read (JSON list): a table added later needs a new snapshot.
    snapshot_tables TEXT NOT NULL DEFAULT '[]',
    events         BIGINT NOT NULL DEFAULT 0,
    retained_bytes BIGINT,
    phase          TEXT NOT NULL DEFAULT 'starting',
    cause          TEXT NOT NULL DEFAULT '',
    last_error     TEXT,
    updated_at     BIGINT NOT NULL
);
