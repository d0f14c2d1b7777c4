-- The records a sync loads (spec c, d, e), each owned by the repository that loaded it (owner NULL: made by hand
-- or by another tool), and the scope inventory that config context lookups resolve against.

CREATE TABLE scope_object (
    kind       varchar(64)  NOT NULL,
    object_id  varchar(255) NOT NULL,
    fields     jsonb        NOT NULL CHECK (jsonb_typeof(fields) = 'object'),
    updated    timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, object_id)
);
CREATE INDEX scope_object_name ON scope_object (kind, (fields ->> 'name'));

CREATE TABLE config_context_schema (
    id                  uuid PRIMARY KEY,
    name                varchar(255) NOT NULL UNIQUE,
    description         varchar(255) NOT NULL DEFAULT '',
    data_schema         jsonb        NOT NULL,
    owner_repository_id uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    created             timestamptz  NOT NULL DEFAULT now(),
    last_updated        timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX config_context_schema_owner ON config_context_schema (owner_repository_id);

CREATE TABLE config_context (
    id                       uuid PRIMARY KEY,
    name                     varchar(255) NOT NULL UNIQUE,
    weight                   smallint     NOT NULL DEFAULT 1000 CHECK (weight >= 0),
    description              varchar(255) NOT NULL DEFAULT '',
    is_active                boolean      NOT NULL DEFAULT true,
    config_context_schema_id uuid REFERENCES config_context_schema (id) ON DELETE SET NULL,
    data                     jsonb        NOT NULL,
    -- Filter -> lookups as written; filter -> inventory object ids they resolved to.
    scope                    jsonb        NOT NULL DEFAULT '{}',
    scope_resolved           jsonb        NOT NULL DEFAULT '{}',
    owner_repository_id      uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    created                  timestamptz  NOT NULL DEFAULT now(),
    last_updated             timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX config_context_owner ON config_context (owner_repository_id);

-- Local config context data of a device or virtual machine (Nautobot keeps it on the object itself).
CREATE TABLE local_context (
    kind                varchar(32)  NOT NULL CHECK (kind IN ('devices', 'virtual_machines')),
    name                varchar(255) NOT NULL,
    target_object_id    varchar(255),
    data                jsonb,
    owner_repository_id uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    last_updated        timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE INDEX local_context_owner ON local_context (owner_repository_id);

CREATE TABLE export_template (
    id                  uuid PRIMARY KEY,
    content_type        varchar(100) NOT NULL,
    name                varchar(255) NOT NULL,
    mime_type           varchar(255) NOT NULL DEFAULT 'text/plain',
    file_extension      varchar(255) NOT NULL DEFAULT '',
    template_code       text         NOT NULL,
    owner_repository_id uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    created             timestamptz  NOT NULL DEFAULT now(),
    last_updated        timestamptz  NOT NULL DEFAULT now(),
    UNIQUE (content_type, name)
);
CREATE INDEX export_template_owner ON export_template (owner_repository_id);

CREATE TABLE graphql_query (
    id                  uuid PRIMARY KEY,
    name                varchar(255) NOT NULL UNIQUE,
    query               text         NOT NULL,
    variables           jsonb        NOT NULL DEFAULT '{}',
    owner_repository_id uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    created             timestamptz  NOT NULL DEFAULT now(),
    last_updated        timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX graphql_query_owner ON graphql_query (owner_repository_id);

-- Jobs are never deleted by a sync: a job that disappears is marked installed = false.
CREATE TABLE job (
    id                  uuid PRIMARY KEY,
    module_name         varchar(100) NOT NULL,
    job_class_name      varchar(100) NOT NULL,
    grouping            varchar(255) NOT NULL,
    name                varchar(100) NOT NULL UNIQUE,
    name_override       boolean      NOT NULL DEFAULT false,
    description         text         NOT NULL DEFAULT '',
    installed           boolean      NOT NULL DEFAULT true,
    enabled             boolean      NOT NULL DEFAULT false,
    flags               jsonb        NOT NULL DEFAULT '{}',
    owner_repository_id uuid REFERENCES git_repository (id) ON DELETE SET NULL,
    created             timestamptz  NOT NULL DEFAULT now(),
    last_updated        timestamptz  NOT NULL DEFAULT now(),
    UNIQUE (module_name, job_class_name)
);
CREATE INDEX job_owner ON job (owner_repository_id);

-- Records of extension data types.
CREATE TABLE extension_record (
    repository_id uuid         NOT NULL REFERENCES git_repository (id) ON DELETE CASCADE,
    data_type     varchar(255) NOT NULL,
    key           varchar(255) NOT NULL,
    data          jsonb        NOT NULL,
    last_updated  timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, data_type, key)
);
