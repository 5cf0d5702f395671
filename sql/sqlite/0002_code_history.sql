-- 0002_code_history: script code versions (issue 4), for SQLite.
--
-- Files on disk are the source of truth; the database keeps a synchronized copy of each actor's
-- active code in `actors` and every version ever active in `actor_code_history`. The twin of
-- sql/postgres/0002_code_history.sql.

-- The actor's active code and what the last look at its file found. script_file_hash is the
-- file's hash at its last sync: "drift" means the file changed since then, so a rollback is
-- not undone by the next start-up.
ALTER TABLE actors ADD COLUMN exec_mode TEXT NOT NULL DEFAULT 'file'
    CHECK (exec_mode IN ('file', 'database', 'auto'));
ALTER TABLE actors ADD COLUMN script_code TEXT;
ALTER TABLE actors ADD COLUMN script_code_hash TEXT;
ALTER TABLE actors ADD COLUMN script_file_path TEXT;
ALTER TABLE actors ADD COLUMN script_file_hash TEXT;
ALTER TABLE actors ADD COLUMN script_file_mtime TEXT;
ALTER TABLE actors ADD COLUMN script_synced_at TEXT;
ALTER TABLE actors ADD COLUMN script_sync_status TEXT
    CHECK (script_sync_status IN ('synced', 'drift_detected', 'file_missing'));
ALTER TABLE actors ADD COLUMN active_history_id TEXT;

-- Every run names the exact code it ran: its hash (code_sha256), its history row, its source.
ALTER TABLE runs ADD COLUMN code_history_id TEXT;
ALTER TABLE runs ADD COLUMN code_source TEXT CHECK (code_source IN ('file', 'database'));

-- Append-only: a row is inserted active; deactivated_at is set once, when a later version
-- replaces it, and nothing else is ever updated or deleted (the triggers below).
CREATE TABLE actor_code_history (
    history_id         TEXT PRIMARY KEY,     -- time-ordered, chosen by the writer
    actor_id           TEXT NOT NULL,        -- the actor's name (actors.name)
    script_code        TEXT NOT NULL,
    script_code_hash   TEXT NOT NULL,        -- SHA256 of the UTF-8 code, in hex
    change_type        TEXT NOT NULL
        CHECK (change_type IN ('initial', 'manual_deploy', 'auto_sync', 'rollback')),
    change_reason      TEXT,
    changed_by         TEXT,
    changed_at         TEXT NOT NULL,
    source_file_path   TEXT,
    source_file_mtime  TEXT,
    version_tag        TEXT NOT NULL,        -- MAJOR.MINOR.PATCH, unique per actor
    git_commit_hash    TEXT,
    activated_at       TEXT NOT NULL,
    deactivated_at     TEXT                  -- NULL: the active version
);

-- exactly one active version per actor
CREATE UNIQUE INDEX actor_code_history_active
    ON actor_code_history (actor_id) WHERE deactivated_at IS NULL;
CREATE UNIQUE INDEX actor_code_history_version ON actor_code_history (actor_id, version_tag);
-- `versions ACTOR`: newest first
CREATE INDEX actor_code_history_actor ON actor_code_history (actor_id, activated_at DESC);

CREATE TRIGGER actor_code_history_no_delete BEFORE DELETE ON actor_code_history
BEGIN
    SELECT RAISE(ABORT, 'actor_code_history is append-only: rows are never deleted');
END;

CREATE TRIGGER actor_code_history_no_rewrite BEFORE UPDATE ON actor_code_history
WHEN OLD.deactivated_at IS NOT NULL OR NEW.deactivated_at IS NULL
    OR NEW.history_id IS NOT OLD.history_id OR NEW.actor_id IS NOT OLD.actor_id
    OR NEW.script_code IS NOT OLD.script_code OR NEW.script_code_hash IS NOT OLD.script_code_hash
    OR NEW.change_type IS NOT OLD.change_type OR NEW.change_reason IS NOT OLD.change_reason
    OR NEW.changed_by IS NOT OLD.changed_by OR NEW.changed_at IS NOT OLD.changed_at
    OR NEW.source_file_path IS NOT OLD.source_file_path
    OR NEW.source_file_mtime IS NOT OLD.source_file_mtime
    OR NEW.version_tag IS NOT OLD.version_tag OR NEW.git_commit_hash IS NOT OLD.git_commit_hash
    OR NEW.activated_at IS NOT OLD.activated_at
BEGIN
    SELECT RAISE(ABORT, 'actor_code_history is append-only: only deactivated_at is set, once');
END;
