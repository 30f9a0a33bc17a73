-- The event store schema. Every object lives in the schema the store was configured with
-- (connections set `search_path` to it), so several services and test runs share a database.

-- One row per stream: its current version. Appends check and bump it in the same statement
-- that inserts the events, so the expected version is enforced by the database.
CREATE TABLE streams (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL CHECK (version > 0)
);

-- The event log.
--
-- `tx_id` is the writer's transaction id (`pg_current_xact_id()`, an xid8, kept as bigint) and
-- `seq` a global sequence. The global order is (tx_id, seq), and a reader only reads rows whose
-- transaction is older than the oldest transaction still running
-- (`pg_snapshot_xmin(pg_current_snapshot())`): every such transaction has ended, so no row can
-- later appear before a position a reader has already passed.
CREATE TABLE events (
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    tx_id          bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL,
    category       text NOT NULL,
    event_id       uuid NOT NULL,
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    -- The serialized event exactly as written: bytea, not jsonb, so reads cost no rendering.
    payload        bytea NOT NULL,
    metadata       bytea NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key PRIMARY KEY (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- read_all and subscriptions walk these in order.
CREATE INDEX events_global_order ON events (tx_id, seq);
CREATE INDEX events_category_order ON events (category, tx_id, seq);

-- How far each named reader (projection, relay) got in the global log.
CREATE TABLE checkpoints (
    name       text PRIMARY KEY,
    tx_id      bigint NOT NULL,
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Which messages each consumer handled; written in the same transaction as the handler's effects.
CREATE TABLE inbox (
    consumer   text NOT NULL,
    event_id   uuid NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The latest snapshot of each stream.
CREATE TABLE snapshots (
    stream_id      text PRIMARY KEY,
    version        bigint NOT NULL,
    schema_version integer NOT NULL,
    payload        bytea NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- Saga (process manager) state, the events each saga handled, and its deadlines.
CREATE TABLE saga_states (
    saga       text NOT NULL,
    instance   text NOT NULL,
    data       bytea NOT NULL,
    version    bigint NOT NULL,
    completed  boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, instance)
);

CREATE TABLE saga_inbox (
    saga       text NOT NULL,
    event_id   uuid NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, event_id)
);

CREATE TABLE saga_deadlines (
    id       uuid PRIMARY KEY,
    saga     text NOT NULL,
    instance text NOT NULL,
    key      text NOT NULL,
    due_at   timestamptz NOT NULL,
    payload  bytea NOT NULL,
    metadata bytea NOT NULL,
    UNIQUE (saga, instance, key)
);

CREATE INDEX saga_deadlines_due ON saga_deadlines (due_at, id);

-- Idempotency keys of requests: who claimed them, and the response to replay.
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    response    bytea,
    expires_at  timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
