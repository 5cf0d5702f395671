-- 0001_initial: the first schema of actor-supervisor for SQLite.
--
-- Timestamps are ISO-8601 UTC text with microseconds and a Z ("2026-11-29T15:15:24.123456Z"):
-- fixed width, so text order is time order and range filters can use the indexes. JSON columns
-- hold JSON text. The PostgreSQL twin (sql/postgres/) has the same tables, columns and meanings
-- with native types (timestamptz, jsonb, boolean). No foreign keys: the batch writer may write a
-- run before its actor row, and history outlives an actor removed from the configuration.

-- One row per applied migration; written by the migration runner in the same transaction.
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);

-- The configured actors, as last seen at start-up or reload.
CREATE TABLE actors (
    name         TEXT PRIMARY KEY,
    script_path  TEXT NOT NULL,
    code_sha256  TEXT NOT NULL,
    schedule     TEXT,                       -- JSON object, NULL for on-demand actors
    config       TEXT NOT NULL DEFAULT '{}', -- JSON object
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- One row per attempt of a run; upserted as the attempt moves from queued to a final status.
CREATE TABLE runs (
    run_id           TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    correlation_id   TEXT NOT NULL,
    "trigger"        TEXT NOT NULL,          -- schedule, submit, trigger, retry
    status           TEXT NOT NULL,          -- queued, running, succeeded, failed_*
    reason           TEXT,
    input_json       TEXT NOT NULL,
    queued_at        TEXT NOT NULL,
    scheduled_for    TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    duration_ms      REAL,
    exit_code        INTEGER,
    signal           INTEGER,
    output_json      TEXT,
    stderr_tail      TEXT NOT NULL,
    error            TEXT,
    code_sha256      TEXT NOT NULL,
    worker_id        TEXT,
    idempotency_key  TEXT,
    utime_s          REAL,
    stime_s          REAL,
    maxrss_kb        INTEGER,
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
    actor                 TEXT PRIMARY KEY,
    last_run_at           TEXT,
    next_run_at           TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    is_paused             INTEGER NOT NULL DEFAULT 0 CHECK (is_paused IN (0, 1)),
    paused_reason         TEXT,
    metadata              TEXT NOT NULL DEFAULT '{}', -- JSON object
    updated_at            TEXT NOT NULL
);

-- The append-only event log. "id" keeps insertion order for events with equal created_at;
-- event_id is the idempotency key that makes a replayed batch harmless.
CREATE TABLE execution_events (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    aggregate_type  TEXT NOT NULL,          -- run, actor, supervisor
    aggregate_id    TEXT NOT NULL,
    correlation_id  TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}', -- JSON object
    created_at      TEXT NOT NULL
);

CREATE INDEX execution_events_aggregate
    ON execution_events (aggregate_type, aggregate_id, created_at);
CREATE INDEX execution_events_conversation
    ON execution_events (json_extract(metadata, '$.conversation_id'));
CREATE INDEX execution_events_correlation ON execution_events (correlation_id);
CREATE INDEX execution_events_created_at ON execution_events (created_at DESC);
