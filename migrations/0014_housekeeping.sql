-- Housekeeping removes what is past its retention in small batches: these indexes find it without a scan.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX sync_lock_log_acquired ON sync_lock_log (acquired_at);
CREATE INDEX dead_letter_replayed ON dead_letter (replayed_at) WHERE replayed_at IS NOT NULL;
