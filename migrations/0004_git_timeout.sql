-- A repository's own limit for each git operation, in seconds (NULL: the worker's default).
ALTER TABLE git_repository ADD COLUMN git_timeout_secs integer CHECK (git_timeout_secs > 0);
