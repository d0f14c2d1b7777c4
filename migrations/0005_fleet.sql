-- Fleet correctness (ARCHITECTURE section 4).

-- When the fetch behind the live state began (database clock). A sync event created before it is already
-- satisfied: it ends "already up to date" without a fetch, which coalesces bursts of events.
ALTER TABLE git_repository ADD COLUMN fetched_at timestamptz;

-- Running jobs beat; the reaper ends STARTED results whose worker stopped beating and holds no lock.
ALTER TABLE job_result ADD COLUMN heartbeat timestamptz;
CREATE INDEX job_result_started ON job_result (heartbeat) WHERE status = 'STARTED';

-- Messages the broker dead-lettered (delivery limit reached, or not a valid event), recorded by the workers so
-- `producer dead-letters list` / `replay` work from the database.
CREATE TABLE dead_letter (
    id           bigserial PRIMARY KEY,
    -- NULL when the body is not a valid event.
    event_id     uuid,
    routing_key  text        NOT NULL,
    reason       text        NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    received_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX dead_letter_event ON dead_letter (event_id);
-- A redelivered dead letter (at-least-once) is recorded once while it waits for a replay.
CREATE UNIQUE INDEX dead_letter_open_event ON dead_letter (event_id) WHERE event_id IS NOT NULL AND replayed_at IS NULL;
