-- The generations of each versioned read model (see `PgReadModelRunner`). A generation's tables
-- live in a schema of their own, `<store schema>_rm_<name>_<generation>`; readers query views
-- of the same names in the store's schema, which point at the active generation. A rebuild
-- adds a `building` generation beside the active one; when it has caught up, one transaction
-- points the views at it, makes it active and drops the old generation.
CREATE TABLE projection_versions (
    name        text NOT NULL,
    generation  bigint NOT NULL CHECK (generation > 0),
    -- The version of the projection's code that builds this generation.
    version     integer NOT NULL,
    state       text NOT NULL CHECK (state IN ('active', 'building')),
    -- Whether its schema and tables exist (a requested rebuild has none until its runner acts).
    ready       boolean NOT NULL DEFAULT false,
    -- The category its filter reads (NULL: every stream), for counting its lag.
    category    text,
    -- Its checkpoint, moved in the transaction that writes its rows.
    tx_id       bigint NOT NULL DEFAULT 0,
    seq         bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

-- At most one active and one building generation per projection.
CREATE UNIQUE INDEX projection_versions_active ON projection_versions (name) WHERE state = 'active';
CREATE UNIQUE INDEX projection_versions_building ON projection_versions (name) WHERE state = 'building';
