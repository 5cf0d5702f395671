-- 0003_lease: one supervisor per store (issue 9), for PostgreSQL. The twin of
-- sql/sqlite/0003_lease.sql.
--
-- The lease: a row judged by the database's clock (expires_at = now() + ttl, renewed by the
-- holder) plus a session advisory lock on a dedicated connection as the fast path. "term" is
-- the fencing epoch, bumped at every acquisition.

CREATE TABLE supervisor_lease (
    name             text COLLATE "C" PRIMARY KEY,  -- 'store': one lease per store
    term             bigint NOT NULL,
    holder_host      text,
    holder_pid       integer,
    holder_instance  text,
    started_at       timestamptz,
    expires_at       timestamptz
);

-- Every run row carries the epoch of the supervisor that wrote it (see the SQLite twin).
ALTER TABLE runs ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

-- A fire is unique: one first attempt per (actor, scheduled_for); pre-lease rows left out.
CREATE UNIQUE INDEX runs_fire ON runs (actor, scheduled_for)
    WHERE attempt = 1 AND scheduled_for IS NOT NULL AND epoch > 0;
