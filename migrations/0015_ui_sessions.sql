-- Sessions of the web UI (`/ui/`): a person signs in with an API token and gets a session cookie. Only the
-- SHA-256 of the cookie's value is stored; the session lasts while its token is live and until it expires. Each
-- session has its own CSRF token, which every form of the UI carries.
CREATE TABLE ui_session (
    id_hash     char(64)    PRIMARY KEY,
    token_id    uuid        NOT NULL REFERENCES api_token (id) ON DELETE CASCADE,
    csrf        char(64)    NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ui_session_expires ON ui_session (expires_at);
