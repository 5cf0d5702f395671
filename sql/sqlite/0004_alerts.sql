-- 0004_alerts: the alert outbox (numbered 0004: 0003 is the supervisor lease).
--
-- One row per alert per destination. The supervisor's batch writer inserts a row in the same
-- transaction as the event that causes it; the alert sender then sets the delivery columns.
-- A later version of a row from the writer (a folded repeat with a higher count) changes only
-- payload, count and updated_at, and only while the row is still pending.

CREATE TABLE alert_outbox (
    alert_id      TEXT PRIMARY KEY,
    destination   TEXT NOT NULL,            -- the [[alerts]] entry's name
    event         TEXT NOT NULL,            -- run_failed, actor_paused, ...
    actor         TEXT,
    run_id        TEXT,
    payload       TEXT NOT NULL,            -- JSON object: what the receiver gets
    count         INTEGER NOT NULL DEFAULT 1,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        TEXT NOT NULL,            -- the next delivery attempt, while pending
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    delivered_at  TEXT,
    last_error    TEXT
);

-- the sender at start-up: what is still to deliver
CREATE INDEX alert_outbox_pending ON alert_outbox (due_at) WHERE status = 'pending';
-- `actor-supervisor alerts`: newest first
CREATE INDEX alert_outbox_created_at ON alert_outbox (created_at DESC);
