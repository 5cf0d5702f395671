-- 0002_code_history: script code versions (issue 4), for PostgreSQL.
--
-- The twin of sql/sqlite/0002_code_history.sql, with native types. Files on disk are the source
-- of truth; the database keeps a synchronized copy of each actor's active code in `actors` and
-- every version ever active in `actor_code_history`.

-- The actor's active code and what the last look at its file found. script_file_hash is the
-- file's hash at its last sync: "drift" means the file changed since then, so a rollback is
-- not undone by the next start-up.
ALTER TABLE actors
    ADD COLUMN exec_mode text NOT NULL DEFAULT 'file'
        CHECK (exec_mode IN ('file', 'database', 'auto')),
    ADD COLUMN script_code text,
    ADD COLUMN script_code_hash text,
    ADD COLUMN script_file_path text,
    ADD COLUMN script_file_hash text,
    ADD COLUMN script_file_mtime timestamptz,
    ADD COLUMN script_synced_at timestamptz,
    ADD COLUMN script_sync_status text
        CHECK (script_sync_status IN ('synced', 'drift_detected', 'file_missing')),
    ADD COLUMN active_history_id text COLLATE "C";

-- Every run names the exact code it ran: its hash (code_sha256), its history row, its source.
ALTER TABLE runs
    ADD COLUMN code_history_id text COLLATE "C",
    ADD COLUMN code_source text CHECK (code_source IN ('file', 'database'));

-- Append-only: a row is inserted active; deactivated_at is set once, when a later version
-- replaces it, and nothing else is ever updated or deleted (the trigger below).
CREATE TABLE actor_code_history (
    history_id         text COLLATE "C" PRIMARY KEY, -- time-ordered, chosen by the writer
    actor_id           text COLLATE "C" NOT NULL, -- the actor's name (actors.name)
    script_code        text NOT NULL,
    script_code_hash   text NOT NULL,          -- SHA256 of the UTF-8 code, in hex
    change_type        text NOT NULL
        CHECK (change_type IN ('initial', 'manual_deploy', 'auto_sync', 'rollback')),
    change_reason      text,
    changed_by         text,
    changed_at         timestamptz NOT NULL,
    source_file_path   text,
    source_file_mtime  timestamptz,
    version_tag        text NOT NULL,          -- MAJOR.MINOR.PATCH, unique per actor
    git_commit_hash    text,
    activated_at       timestamptz NOT NULL,
    deactivated_at     timestamptz             -- NULL: the active version
);

-- exactly one active version per actor
CREATE UNIQUE INDEX actor_code_history_active
    ON actor_code_history (actor_id) WHERE deactivated_at IS NULL;
CREATE UNIQUE INDEX actor_code_history_version ON actor_code_history (actor_id, version_tag);
-- `versions ACTOR`: newest first
CREATE INDEX actor_code_history_actor ON actor_code_history (actor_id, activated_at DESC);

CREATE FUNCTION actor_code_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'actor_code_history is append-only: rows are never deleted';
    END IF;
    IF OLD.deactivated_at IS NOT NULL OR NEW.deactivated_at IS NULL
        OR (NEW.history_id, NEW.actor_id, NEW.script_code, NEW.script_code_hash,
            NEW.change_type, NEW.change_reason, NEW.changed_by, NEW.changed_at,
            NEW.source_file_path, NEW.source_file_mtime, NEW.version_tag,
            NEW.git_commit_hash, NEW.activated_at)
        IS DISTINCT FROM
           (OLD.history_id, OLD.actor_id, OLD.script_code, OLD.script_code_hash,
            OLD.change_type, OLD.change_reason, OLD.changed_by, OLD.changed_at,
            OLD.source_file_path, OLD.source_file_mtime, OLD.version_tag,
            OLD.git_commit_hash, OLD.activated_at)
    THEN
        RAISE EXCEPTION 'actor_code_history is append-only: only deactivated_at is set, once';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER actor_code_history_append_only
    BEFORE UPDATE OR DELETE ON actor_code_history
    FOR EACH ROW EXECUTE FUNCTION actor_code_history_append_only();
