-- How many objects of the same kind, team and name existed before this one (all deleted). A
-- re-created stream gets a topic of its own from it, so the old stream's events never come back.
-- Existing rows stay 0: their topics keep the names they have today.
ALTER TABLE objects ADD COLUMN incarnation BIGINT NOT NULL DEFAULT 0;
