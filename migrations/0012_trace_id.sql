-- The trace a JobResult belongs to (the W3C trace id of the request that made its event, 32 hex digits): what to
-- look up in the tracing backend to see where the sync spent its time.
ALTER TABLE job_result ADD COLUMN trace_id varchar(32);
