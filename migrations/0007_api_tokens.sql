-- Bearer tokens of the HTTP API. Only a SHA-256 of each token is stored; the token itself is printed once, when it
-- is created. `prefix` (the token's first characters) lets people tell tokens apart without knowing them.
CREATE TABLE api_token (
    id          uuid PRIMARY KEY,
    name        varchar(100) NOT NULL,
    prefix      varchar(16)  NOT NULL,
    token_hash  char(64)     NOT NULL UNIQUE,
    scopes      text[]       NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[] AND cardinality(scopes) > 0),
    created     timestamptz  NOT NULL DEFAULT now(),
    last_used   timestamptz,
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX api_token_live_name ON api_token (name) WHERE revoked_at IS NULL;
