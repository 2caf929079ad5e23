-- An API token may carry an expiry (ms since the epoch); past it, the token does nothing.
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
