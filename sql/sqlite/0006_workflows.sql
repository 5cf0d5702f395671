-- 0006_workflows: workflow runs, their items and snapshots, and the workflow_steps view
-- (numbered 0006: 0005 is another change). See supervisor/workflows/ and the README.
--
-- A step of an item is an ordinary run (runs, execution_events): its events carry the item's id
-- as metadata.conversation_id (indexed since 0001: execution_events_conversation) and the step
-- index as metadata.execution_order; its correlation_id is the workflow run's id.

-- One row per workflow run: settings at start, progress counts, status. Upserted by the batch
-- writer; a row is changed only by a writer of the same or a later lease term (epoch).
CREATE TABLE workflow_runs (
    workflow_run_id  TEXT PRIMARY KEY,
    workflow         TEXT NOT NULL,
    status           TEXT NOT NULL,          -- running, paused, succeeded, failed, stopped, cancelled
    steps            TEXT NOT NULL,          -- JSON array of actor names
    chunk_size       INTEGER NOT NULL,
    max_parallel     INTEGER NOT NULL,
    on_item_failure  TEXT NOT NULL,
    snapshot_every   INTEGER NOT NULL,
    item_count       INTEGER NOT NULL,
    succeeded        INTEGER NOT NULL,
    failed           INTEGER NOT NULL,
    wave             INTEGER NOT NULL,
    waves            INTEGER NOT NULL,
    paused_reason    TEXT,
    "trigger"        TEXT NOT NULL,          -- submit, schedule
    created_at       TEXT NOT NULL,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    epoch            INTEGER NOT NULL
);
-- `workflow status`: the newest runs; start-up: the unfinished ones
CREATE INDEX workflow_runs_created_at ON workflow_runs (created_at DESC);
CREATE INDEX workflow_runs_active ON workflow_runs (status) WHERE status IN ('running', 'paused');

-- The items of a workflow run as submitted: inserted once, in the acknowledging transaction.
CREATE TABLE workflow_items (
    workflow_run_id  TEXT NOT NULL,
    item_id          TEXT NOT NULL,          -- the item's "id", or a generated one
    position         INTEGER NOT NULL,       -- order in the submitted batch (waves follow it)
    input_json       TEXT NOT NULL,          -- what the first step gets
    created_at       TEXT NOT NULL,
    PRIMARY KEY (workflow_run_id, item_id)
);
CREATE UNIQUE INDEX workflow_items_position ON workflow_items (workflow_run_id, position);

-- Every snapshot_every events of a run, its state: a resume reads the newest one plus the
-- events after it.
CREATE TABLE workflow_snapshots (
    workflow_run_id  TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    events_seen      INTEGER NOT NULL,
    state            TEXT NOT NULL,          -- JSON object
    created_at       TEXT NOT NULL,
    PRIMARY KEY (workflow_run_id, seq)
);

-- One row per item per step that ran: a report is one SELECT. A step run is found by its first
-- run_queued event (which names the item and the order); its latest attempt gives the outcome.
CREATE VIEW workflow_steps AS
SELECT
    e.correlation_id                                  AS workflow_run_id,
    json_extract(e.metadata, '$.workflow')            AS workflow,
    json_extract(e.metadata, '$.conversation_id')     AS item_id,
    r.actor                                           AS step,
    json_extract(e.metadata, '$.execution_order')     AS execution_order,
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
  AND json_extract(e.metadata, '$.attempt') = 1
  AND json_extract(e.metadata, '$.workflow_run_id') IS NOT NULL;
