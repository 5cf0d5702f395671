-- 0005_code_bundles: a code version is a bundle (issue 12), for SQLite.
--
-- An actor's code is its entry script plus the Python modules it imports from its own folder
-- (supervisor/code/bundle.py). script_code stays the entry script; bundle_files holds the other
-- files; script_code_hash becomes the bundle's hash, which for the entry alone is the file's own
-- SHA256, so the single-file versions recorded before this migration keep their meaning (their
-- bundle_files is NULL). The twin of sql/postgres/0005_code_bundles.sql.

-- JSON object: relative path -> content of every bundle file besides the entry; NULL: none
ALTER TABLE actor_code_history ADD COLUMN bundle_files TEXT;

-- the append-only guard, now covering bundle_files too
DROP TRIGGER actor_code_history_no_rewrite;
CREATE TRIGGER actor_code_history_no_rewrite BEFORE UPDATE ON actor_code_history
WHEN OLD.deactivated_at IS NOT NULL OR NEW.deactivated_at IS NULL
    OR NEW.history_id IS NOT OLD.history_id OR NEW.actor_id IS NOT OLD.actor_id
    OR NEW.script_code IS NOT OLD.script_code OR NEW.script_code_hash IS NOT OLD.script_code_hash
    OR NEW.bundle_files IS NOT OLD.bundle_files
    OR NEW.change_type IS NOT OLD.change_type OR NEW.change_reason IS NOT OLD.change_reason
    OR NEW.changed_by IS NOT OLD.changed_by OR NEW.changed_at IS NOT OLD.changed_at
    OR NEW.source_file_path IS NOT OLD.source_file_path
    OR NEW.source_file_mtime IS NOT OLD.source_file_mtime
    OR NEW.version_tag IS NOT OLD.version_tag OR NEW.git_commit_hash IS NOT OLD.git_commit_hash
    OR NEW.activated_at IS NOT OLD.activated_at
BEGIN
    SELECT RAISE(ABORT, 'actor_code_history is append-only: only deactivated_at is set, once');
END;
