-- What the last applied load of each repository read, so that the next sync reads only the files that changed.
-- Written in the transaction that applies the load, so it always describes the live commit.
CREATE TABLE loaded_state (
    repository_id uuid PRIMARY KEY REFERENCES git_repository (id) ON DELETE CASCADE,
    commit_sha    varchar(64) NOT NULL,
    -- The sync fingerprint without its commit: definition, provided types, inventory, scope mode, loaders.
    base          text        NOT NULL,
    -- Bytes of JSON the live commit's documents count against the load's budget, and how many files it read.
    doc_bytes     bigint      NOT NULL,
    files         bigint      NOT NULL
);

-- One row per config context file (its blob, where it sits, the record keys it defines, its log lines and budget),
-- and one row per data type with path '' for the type's lines that belong to no single file.
CREATE TABLE loaded_file (
    repository_id uuid         NOT NULL REFERENCES git_repository (id) ON DELETE CASCADE,
    data_type     varchar(100) NOT NULL,
    path          text         NOT NULL,
    blob_id       varchar(64)  NOT NULL DEFAULT '',
    ord           integer      NOT NULL DEFAULT 0,
    keys          text[]       NOT NULL DEFAULT '{}',
    facts         jsonb        NOT NULL DEFAULT '[]',
    bytes         bigint       NOT NULL DEFAULT 0,
    files         bigint       NOT NULL DEFAULT 0,
    PRIMARY KEY (repository_id, data_type, path)
);

-- Every definition of a record key by a file (not only the one that won): when the winning file changes, the
-- next one in processing order takes over.
CREATE TABLE loaded_key (
    repository_id uuid    NOT NULL REFERENCES git_repository (id) ON DELETE CASCADE,
    key           text    NOT NULL,
    ord           integer NOT NULL,
    path          text    NOT NULL,
    PRIMARY KEY (repository_id, key, path)
);
CREATE INDEX loaded_key_path ON loaded_key (repository_id, path);
