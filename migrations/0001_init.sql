-- gitfleet schema, version 1: repository definitions, JobResults and their log entries, the transactional outbox,
-- and the workers' record of lock holding.

CREATE TABLE git_repository (
    id                uuid PRIMARY KEY,
    name              varchar(255) NOT NULL CHECK (btrim(name) <> ''),
    slug              varchar(255) NOT NULL CHECK (slug ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    remote_url        varchar(255) NOT NULL,
    branch            varchar(255) NOT NULL DEFAULT 'main' CHECK (branch ~ '^[^[:space:]-][^[:space:]]*$'),
    -- Full commit id of the last successful sync; '' until then (spec a.1).
    current_head      varchar(48)  NOT NULL DEFAULT '' CHECK (current_head ~ '^([0-9a-fA-F]{4,48})?$'),
    secrets_group     varchar(255),
    provided_contents jsonb        NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(provided_contents) = 'array'),
    -- Strictly increasing with every definition change (create, update, delete).
    version           bigint       NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- The definition version the last successful sync applied; 0 before the first one.
    applied_version   bigint       NOT NULL DEFAULT 0 CHECK (applied_version >= 0),
    created           timestamptz  NOT NULL DEFAULT now(),
    last_updated      timestamptz  NOT NULL DEFAULT now(),
    -- Set by the worker when a delete event has removed everything the repository owned.
    deleted_at        timestamptz
);
-- Names and slugs are unique among live definitions; a tombstone frees them.
CREATE UNIQUE INDEX git_repository_name_live ON git_repository (name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX git_repository_slug_live ON git_repository (slug) WHERE deleted_at IS NULL;
CREATE INDEX git_repository_remote_url ON git_repository (remote_url) WHERE deleted_at IS NULL;

CREATE TABLE job_result (
    id                  uuid PRIMARY KEY,
    name                varchar(255) NOT NULL,
    task_name           varchar(255),
    repository_id       uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    event_kind          varchar(16),
    date_created        timestamptz  NOT NULL DEFAULT now(),
    date_started        timestamptz,
    date_done           timestamptz,
    requested_by        varchar(255),
    status              varchar(30)  NOT NULL DEFAULT 'PENDING' CHECK (status IN
                            ('PENDING', 'RECEIVED', 'STARTED', 'SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED', 'RETRY',
                             'IGNORED')),
    result              jsonb,
    worker              varchar(100),
    task_args           jsonb        NOT NULL DEFAULT '[]',
    task_kwargs         jsonb        NOT NULL DEFAULT '{}',
    celery_kwargs       jsonb        NOT NULL DEFAULT '{}',
    traceback           text,
    meta                jsonb,
    debug_log_count     integer      NOT NULL DEFAULT 0,
    success_log_count   integer      NOT NULL DEFAULT 0,
    info_log_count      integer      NOT NULL DEFAULT 0,
    warning_log_count   integer      NOT NULL DEFAULT 0,
    -- failure + error + critical, as Nautobot counts them.
    error_log_count     integer      NOT NULL DEFAULT 0
);
CREATE INDEX job_result_date_created ON job_result (date_created DESC);
CREATE INDEX job_result_repository ON job_result (repository_id, date_created DESC);
CREATE INDEX job_result_unready ON job_result (status) WHERE status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED');

CREATE TABLE job_log_entry (
    id            uuid PRIMARY KEY,
    job_result_id uuid         NOT NULL REFERENCES job_result (id) ON DELETE CASCADE,
    log_level     varchar(32)  NOT NULL DEFAULT 'info' CHECK (log_level IN
                      ('debug', 'info', 'success', 'warning', 'failure', 'error', 'critical')),
    grouping      varchar(100) NOT NULL DEFAULT 'main',
    message       text         NOT NULL,
    created       timestamptz  NOT NULL DEFAULT clock_timestamp(),
    log_object    varchar(200) NOT NULL DEFAULT '',
    absolute_url  varchar(255) NOT NULL DEFAULT '',
    -- Entries written in the same microsecond keep their order.
    seq           bigserial
);
CREATE INDEX job_log_entry_result ON job_log_entry (job_result_id, created, seq);

-- Transactional outbox: written in the producer's transaction, published by the relay with confirms.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    routing_key  text        NOT NULL,
    payload      jsonb       NOT NULL,
    traceparent  text        NOT NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Every time a worker held a repository's lock: the evidence that no two syncs of one repository overlapped.
CREATE TABLE sync_lock_log (
    id            bigserial PRIMARY KEY,
    repository_id uuid         NOT NULL,
    slug          varchar(255) NOT NULL,
    event_id      uuid         NOT NULL,
    worker        varchar(100) NOT NULL,
    acquired_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    released_at   timestamptz
);
CREATE INDEX sync_lock_log_repository ON sync_lock_log (repository_id, acquired_at);
