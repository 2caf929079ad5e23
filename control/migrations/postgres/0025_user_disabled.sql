-- A disabled user signs in no more; their sessions end and their API tokens stop at once (both
-- are checked against this on every request).
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
