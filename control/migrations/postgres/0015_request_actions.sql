-- A change request is a change of goal state, or an operation the policy gates (a rewind).
ALTER TABLE change_requests ADD COLUMN action TEXT NOT NULL DEFAULT 'change';
