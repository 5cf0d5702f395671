-- 0005_code_bundles: a code version is a bundle (issue 12), for PostgreSQL.
--
-- The twin of sql/sqlite/0005_code_bundles.sql. An actor's code is its entry script plus the
-- Python modules it imports from its own folder (supervisor/code/bundle.py). script_code stays
-- the entry script; bundle_files holds the other files; script_code_hash becomes the bundle's
-- hash, which for the entry alone is the file's own SHA256, so the single-file versions
-- recorded before this migration keep their meaning (their bundle_files is NULL).

-- JSON object (as text, byte for byte as written): relative path -> content of every bundle
-- file besides the entry; NULL: none
ALTER TABLE actor_code_history ADD COLUMN bundle_files text;

-- the append-only guard, now covering bundle_files too
CREATE OR REPLACE FUNCTION actor_code_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'actor_code_history is append-only: rows are never deleted';
    END IF;
    IF OLD.deactivated_at IS NOT NULL OR NEW.deactivated_at IS NULL
        OR (NEW.history_id, NEW.actor_id, NEW.script_code, NEW.script_code_hash,
            NEW.bundle_files, NEW.change_type, NEW.change_reason, NEW.changed_by,
            NEW.changed_at, NEW.source_file_path, NEW.source_file_mtime, NEW.version_tag,
            NEW.git_commit_hash, NEW.activated_at)
        IS DISTINCT FROM
           (OLD.history_id, OLD.actor_id, OLD.script_code, OLD.script_code_hash,
            OLD.bundle_files, OLD.change_type, OLD.change_reason, OLD.changed_by,
            OLD.changed_at, OLD.source_file_path, OLD.source_file_mtime, OLD.version_tag,
            OLD.git_commit_hash, OLD.activated_at)
    THEN
        RAISE EXCEPTION 'actor_code_history is append-only: only deactivated_at is set, once';
    END IF;
    RETURN NEW;
END
$$;
