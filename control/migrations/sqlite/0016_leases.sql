-- Leases: which process holds a role (the reconciler) and until when. The token grows with every
-- change of holder: writes made under a lease carry it, so a process that lost the lease cannot
-- write (fencing).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
