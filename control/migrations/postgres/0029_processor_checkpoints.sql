-- A processor's checkpoint: the input positions and the operator state that belongs to them,
-- written together in one row so that a restore can never pair one with another's.
CREATE TABLE processor_checkpoints (
    processor_id TEXT PRIMARY KEY,
    positions    TEXT NOT NULL,
    state        BYTEA NOT NULL,
    taken_at     BIGINT NOT NULL
);
