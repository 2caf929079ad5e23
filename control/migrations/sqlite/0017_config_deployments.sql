-- A console override of a route's configuration is deployed like a new version: the row keeps
-- the key and its value before and after (JSON), so the stability gate can put it back.
ALTER TABLE deployments ADD COLUMN config TEXT;
