-- What a holding of a repository's lock was for: a job (one per event), or naming a finished artifact in the
-- storage pointer after the job's commit (the pointer's writers all hold the lock).
ALTER TABLE sync_lock_log ADD COLUMN purpose varchar(16) NOT NULL DEFAULT 'job' CHECK (purpose IN ('job', 'artifact'));
