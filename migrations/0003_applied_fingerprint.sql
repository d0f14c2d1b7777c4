-- What the last successful sync applied: commit, definition version, inventory state and loader version. A sync
-- that would apply the same again has nothing to do.
ALTER TABLE git_repository ADD COLUMN applied_fingerprint text NOT NULL DEFAULT '';
