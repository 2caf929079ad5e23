-- What the console shows of a source beyond its position: how many rows its snapshot expects
-- (the planner's estimate, for a progress bar), how far its slot's confirmed position is behind
-- the database's WAL, and how old the last change was when it was appended.
ALTER TABLE source_states ADD COLUMN snapshot_estimate BIGINT;
ALTER TABLE source_states ADD COLUMN lag_bytes BIGINT;
ALTER TABLE source_states ADD COLUMN lag_ms BIGINT;
