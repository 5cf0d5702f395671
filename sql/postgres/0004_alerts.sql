-- 0004_alerts: the alert outbox (numbered 0004: 0003 is the supervisor lease).
--
-- One row per alert per destination. The supervisor's batch writer inserts a row in the same
-- transaction as the event that causes it; the alert sender then sets the delivery columns.
-- A later version of a row from the writer (a folded repeat with a higher count) changes only
-- payload, count and updated_at, and only while the row is still pending. The payload is text
-- (the JSON object a receiver gets), as written, on both stores.

CREATE TABLE alert_outbox (
    alert_id      text COLLATE "C" PRIMARY KEY,
    destination   text NOT NULL,
    event         text NOT NULL,
    actor         text,
    run_id        text,
    payload       text NOT NULL,
    count         integer NOT NULL DEFAULT 1,
    status        text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    due_at        timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    delivered_at  timestamptz,
    last_error    text
);

CREATE INDEX alert_outbox_pending ON alert_outbox (due_at) WHERE status = 'pending';
CREATE INDEX alert_outbox_created_at ON alert_outbox (created_at DESC);
