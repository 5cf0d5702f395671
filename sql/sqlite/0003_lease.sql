-- 0003_lease: one supervisor per store (issue 9), for SQLite. The twin of
-- sql/postgres/0003_lease.sql.
--
-- The lease itself is an exclusive flock on a file beside the database (one host by nature);
-- this table records who holds it and the fencing epoch ("term"), bumped at every acquisition.

CREATE TABLE supervisor_lease (
    name             TEXT PRIMARY KEY,       -- 'store': one lease per store
    term             INTEGER NOT NULL,       -- the fencing epoch of the current holder
    holder_host      TEXT,
    holder_pid       INTEGER,
    holder_instance  TEXT,
    started_at       TEXT,
    expires_at       TEXT                    -- unused on SQLite (the flock is the lease)
);

-- Every run row carries the epoch of the supervisor that wrote it: a stale supervisor's
-- update of a row a newer one has written changes nothing, and start-up recovery touches
-- only rows of earlier epochs. Rows written before this migration have epoch 0.
ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;

-- A fire is unique: one first attempt per (actor, scheduled_for). Rows of epoch 0 predate the
-- lease and may hold the double fires the lease exists to prevent, so they are left out.
CREATE UNIQUE INDEX runs_fire ON runs (actor, scheduled_for)
    WHERE attempt = 1 AND scheduled_for IS NOT NULL AND epoch > 0;
