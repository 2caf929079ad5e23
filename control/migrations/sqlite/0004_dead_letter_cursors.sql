-- How far each route's dead-letter queue has been handled (replayed): letters before
-- `next_offset` were re-delivered, or re-queued with their new reason.
CREATE TABLE dead_letter_cursors (
    route_id    TEXT PRIMARY KEY REFERENCES objects (id),
    next_offset BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
