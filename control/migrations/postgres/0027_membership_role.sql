-- Roles per team: a member's role on one team (an editor of team A may be a viewer of team B).
-- NULL keeps the user's own role, so existing memberships mean what they meant.
ALTER TABLE memberships ADD COLUMN role TEXT CHECK (role IN ('viewer', 'editor'));
