-- Polling: a repository with a sync interval is asked for its branch's tip when it is due. `next_poll_at` is
-- when (spread over the first interval when the interval is set, so many repositories on one interval do not come
-- due at once); the scheduler moves it on by the interval, and a failed poll pushes it back (doubling per failure,
-- at most an hour). `last_polled_at`, `poll_error` and `poll_failures` record what the last poll found.
ALTER TABLE git_repository
    ADD COLUMN sync_interval_secs integer CHECK (sync_interval_secs >= 10),
    ADD COLUMN next_poll_at timestamptz,
    ADD COLUMN last_polled_at timestamptz,
    ADD COLUMN poll_error text,
    ADD COLUMN poll_failures integer NOT NULL DEFAULT 0;
CREATE INDEX git_repository_poll_due ON git_repository (next_poll_at)
    WHERE sync_interval_secs IS NOT NULL AND deleted_at IS NULL;
