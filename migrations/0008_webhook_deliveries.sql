-- Every webhook delivery a `producer serve` accepted (its signature checked): what it asked for and what it did.
-- A delivery id seen before is a no-op, so a Git host's redelivery or a replay syncs nothing twice.
CREATE TABLE webhook_delivery (
    id              bigserial PRIMARY KEY,
    provider        varchar(16)  NOT NULL,
    delivery_id     varchar(255) NOT NULL,
    event           varchar(100) NOT NULL,
    received_at     timestamptz  NOT NULL DEFAULT now(),
    remote_url      text,
    ref             text,
    commit_id       varchar(64),
    matched         text[]       NOT NULL DEFAULT '{}',
    job_result_ids  uuid[]       NOT NULL DEFAULT '{}',
    outcome         text         NOT NULL,
    UNIQUE (provider, delivery_id)
);
CREATE INDEX webhook_delivery_received ON webhook_delivery (received_at DESC);
