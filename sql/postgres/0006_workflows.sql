-- 0006_workflows: workflow runs, their items and snapshots, and the workflow_steps view
-- (numbered 0006: 0005 is another change). The SQLite twin has the same tables and meanings.
--
-- A step of an item is an ordinary run (runs, execution_events): its events carry the item's id
-- as metadata->>'conversation_id' (indexed since 0001: execution_events_conversation) and the
-- step index as metadata->>'execution_order'; its correlation_id is the workflow run's id.

CREATE TABLE workflow_runs (
    workflow_run_id  text COLLATE "C" PRIMARY KEY,
    workflow         text NOT NULL,
    status           text NOT NULL,
    steps            text NOT NULL,          -- JSON array of actor names
    chunk_size       integer NOT NULL,
    max_parallel     integer NOT NULL,
    on_item_failure  text NOT NULL,
    snapshot_every   integer NOT NULL,
    item_count       integer NOT NULL,
    succeeded        integer NOT NULL,
    failed           integer NOT NULL,
    wave             integer NOT NULL,
    waves            integer NOT NULL,
    paused_reason    text,
    "trigger"        text NOT NULL,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    epoch            bigint NOT NULL
);
CREATE INDEX workflow_runs_created_at ON workflow_runs (created_at DESC);
CREATE INDEX workflow_runs_active ON workflow_runs (status) WHERE status IN ('running', 'paused');

CREATE TABLE workflow_items (
    workflow_run_id  text COLLATE "C" NOT NULL,
    item_id          text COLLATE "C" NOT NULL,
    position         integer NOT NULL,
    input_json       text NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workflow_run_id, item_id)
);
CREATE UNIQUE INDEX workflow_items_position ON workflow_items (workflow_run_id, position);

CREATE TABLE workflow_snapshots (
    workflow_run_id  text COLLATE "C" NOT NULL,
    seq              integer NOT NULL,
    events_seen      integer NOT NULL,
    state            text NOT NULL,          -- JSON object
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workflow_run_id, seq)
);

CREATE VIEW workflow_steps AS
SELECT
    e.correlation_id                                  AS workflow_run_id,
    e.metadata ->> 'workflow'                         AS workflow,
    e.metadata ->> 'conversation_id'                  AS item_id,
    r.actor                                           AS step,
    (e.metadata ->> 'execution_order')::integer       AS execution_order,
    r.run_id                                          AS run_id,
    r.status                                          AS status,
    r.attempt                                         AS attempts,
    r.duration_ms                                     AS duration_ms,
    first.queued_at                                   AS started,
    r.finished_at                                     AS finished,
    h.version_tag                                     AS code_version,
    r.code_sha256                                     AS code_sha256
FROM execution_events e
JOIN runs r
    ON r.run_id = e.aggregate_id
   AND r.attempt = (SELECT max(attempt) FROM runs m WHERE m.run_id = e.aggregate_id)
JOIN runs first ON first.run_id = e.aggregate_id AND first.attempt = 1
LEFT JOIN actor_code_history h ON h.history_id = r.code_history_id
WHERE e.event_type = 'run_queued'
  AND e.aggregate_type = 'run'
  AND e.metadata ->> 'attempt' = '1'
  AND e.metadata ? 'workflow_run_id';
