-- 0001_initial: the first schema of actor-supervisor for PostgreSQL.
--
-- The twin of sql/sqlite/0001_initial.sql: the same tables, columns and meanings, with native
-- types. Timestamps are timestamptz (microseconds, like the SQLite text). Documents the supervisor
-- queries (event metadata, task metadata, actor config) are jsonb; a script's input and output
-- are json, which keeps the exact text the script got or printed. Integers are bigint because
-- SQLite integers are 64-bit. No foreign keys: the batch writer may write a run before its actor
-- row, and history outlives an actor removed from the configuration. Keys and ids are
-- COLLATE "C": compared byte by byte, as SQLite does, whatever the database's locale -- which
-- orders them the same on both stores and makes every B-tree insert on them cheaper (measured:
-- ~10% more events/s on a C.UTF-8 database; more under a locale such as en_US.UTF-8).

-- One row per applied migration; written by the migration runner in the same transaction.
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL
);

-- The configured actors, as last seen at start-up or reload.
CREATE TABLE actors (
    name         text COLLATE "C" PRIMARY KEY,
    script_path  text NOT NULL,
    code_sha256  text NOT NULL,
    schedule     jsonb,                        -- NULL for on-demand actors
    config       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- One row per attempt of a run; upserted as the attempt moves from queued to a final status.
CREATE TABLE runs (
    run_id           text COLLATE "C" NOT NULL,
    attempt          bigint NOT NULL,
    actor            text COLLATE "C" NOT NULL,
    correlation_id   text COLLATE "C" NOT NULL,
    "trigger"        text NOT NULL,            -- schedule, submit, trigger, retry
    status           text NOT NULL,            -- queued, running, succeeded, failed_*
    reason           text,
    input_json       json NOT NULL,
    queued_at        timestamptz NOT NULL,
    scheduled_for    timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      double precision,
    exit_code        bigint,
    signal           bigint,
    output_json      json,
    stderr_tail      text NOT NULL,
    error            text,
    code_sha256      text NOT NULL,
    worker_id        text,
    idempotency_key  text COLLATE "C",
    utime_s          double precision,
    stime_s          double precision,
    maxrss_kb        bigint,
    PRIMARY KEY (run_id, attempt)
);

-- history / status: the newest attempts, overall and of one actor
CREATE INDEX runs_queued_at ON runs (queued_at DESC, attempt DESC);
CREATE INDEX runs_actor_queued_at ON runs (actor, queued_at DESC, attempt DESC);
-- recovery after a crash: attempts still queued or running
CREATE INDEX runs_status ON runs (status);
-- idempotent submits: keys seen in a recent window, and one key of one actor
CREATE INDEX runs_idempotency_window ON runs (queued_at) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_idempotency_key ON runs (actor, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The scheduling state of each actor that must survive a restart.
CREATE TABLE task_state (
    actor                 text COLLATE "C" PRIMARY KEY,
    last_run_at           timestamptz,
    next_run_at           timestamptz,
    consecutive_failures  bigint NOT NULL DEFAULT 0,
    is_paused             boolean NOT NULL DEFAULT false,
    paused_reason         text,
    metadata              jsonb NOT NULL DEFAULT '{}',
    updated_at            timestamptz NOT NULL
);

-- The append-only event log. event_id is the key, and the idempotency key that makes a
-- replayed batch harmless; "id" keeps insertion order for events with equal created_at. It
-- needs no index of its own (it is the last column of the aggregate index), and one B-tree
-- fewer per insert is measurable at tens of thousands of events per second.
CREATE TABLE execution_events (
    id              bigint GENERATED ALWAYS AS IDENTITY NOT NULL,
    event_id        text COLLATE "C" PRIMARY KEY,
    event_type      text NOT NULL,
    aggregate_type  text COLLATE "C" NOT NULL, -- run, actor, supervisor
    aggregate_id    text COLLATE "C" NOT NULL,
    correlation_id  text COLLATE "C",
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL
);

-- "all events of one aggregate, in order": an index range scan with no sort step
CREATE INDEX execution_events_aggregate
    ON execution_events (aggregate_type, aggregate_id, created_at, id);
-- partial: most events have no conversation id, so most inserts skip this index; a query
-- "metadata->>'conversation_id' = $1" implies the predicate and can use it
CREATE INDEX execution_events_conversation
    ON execution_events ((metadata ->> 'conversation_id'))
    WHERE (metadata ->> 'conversation_id') IS NOT NULL;
CREATE INDEX execution_events_correlation ON execution_events (correlation_id);
CREATE INDEX execution_events_created_at ON execution_events (created_at DESC);
