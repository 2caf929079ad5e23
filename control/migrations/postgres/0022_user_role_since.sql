-- When each user got their current role. An admin may approve only change requests made after
-- they became one, so an admin cannot create a second admin to approve their own change.
-- Existing users count as having had their role all along.
ALTER TABLE users ADD COLUMN role_since BIGINT NOT NULL DEFAULT 0;
