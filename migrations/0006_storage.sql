-- Storage (ARCHITECTURE section 6): what the live commit's artifacts are, per store: storage, manifest and artifact
-- keys and the artifact's sha256.
ALTER TABLE git_repository ADD COLUMN artifacts jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(artifacts) = 'array');
