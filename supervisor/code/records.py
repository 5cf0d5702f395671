"""The records of code management: history rows, an actor's code columns, and the two writes.

``actor_code_history`` is append-only: a row is inserted active and, when a later version
replaces it, gets its ``deactivated_at`` -- the one column ever set after the insert. Exactly one
row per actor is active (``deactivated_at IS NULL``), which a partial unique index enforces on
both stores. ``actor_id`` is the actor's name, the key of ``actors``.

:class:`CodeChange` and :class:`SyncUpdate` are what gets written: by a CLI command straight to
the store (``Store.record_code_version``), or by the supervisor through its batch writer. Both
are frozen and made of plain values, so they can wait in the spool like any other record.
"""

from dataclasses import dataclass

# change types
INITIAL = "initial"  # the first version of an actor, recorded when it is first seen
MANUAL_DEPLOY = "manual_deploy"  # `actor-supervisor deploy`
AUTO_SYNC = "auto_sync"  # the file changed since its last sync; recorded by the supervisor
ROLLBACK = "rollback"  # `actor-supervisor rollback`: an earlier version's code, active again
CHANGE_TYPES = (INITIAL, MANUAL_DEPLOY, AUTO_SYNC, ROLLBACK)

# sync statuses
SYNCED = "synced"  # the file holds the active code
DRIFT_DETECTED = "drift_detected"  # the file differs from the active code
FILE_MISSING = "file_missing"  # the file is gone; the stored code is kept
UNVERSIONED = "unversioned"  # `drift` only: a command whose program is outside the config's folder


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeVersion:
    """One row of ``actor_code_history``: a version of an actor's code, active or not."""

    history_id: str
    actor_id: str
    script_code: str  # the entry script's content
    script_code_hash: str  # the bundle's hash (supervisor.code.bundle)
    change_type: str
    change_reason: str | None = None
    changed_by: str | None = None
    changed_at: float
    source_file_path: str | None = None
    source_file_mtime: float | None = None
    version_tag: str
    git_commit_hash: str | None = None
    activated_at: float
    deactivated_at: float | None = None
    bundle_files: dict[str, str] | None = None  # the bundle's other files: relative path -> code

    @property
    def is_active(self) -> bool:
        return self.deactivated_at is None

    def files(self, entry: str) -> dict[str, str]:
        """Every file of the version's bundle, the entry (named ``entry``) first."""
        return {entry: self.script_code, **dict(sorted((self.bundle_files or {}).items()))}


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeState:
    """The code columns of one ``actors`` row, with the active version's tag."""

    actor: str
    exec_mode: str = "file"
    script_code: str | None = None
    script_code_hash: str | None = None
    bundle_files: dict[str, str] | None = None  # the active version's other files
    active_history_id: str | None = None
    active_version: str | None = None
    script_file_path: str | None = None
    script_file_hash: str | None = None  # the file's content hash at its last sync
    script_file_mtime: float | None = None
    script_synced_at: float | None = None
    script_sync_status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeChange:
    """Make ``script_code`` (with ``bundle_files``) the active version of ``actor``, as a new
    history row.

    ``history_id`` is chosen by the writer (``events.new_id()``), so a run can name the code it
    uses before the row is committed, and a replayed change is recognized and skipped.
    ``version_tag`` None: the store takes the previous active version's patch + 1 (1.0.0 for the
    first), under the actor's lock. ``only_if_changed``: record nothing when the active version
    already has this hash. ``synced_file``: the script file now holds exactly this code (the
    actor's file columns are updated and its status becomes ``synced``); otherwise they are kept.
    """

    history_id: str
    actor: str
    script_code: str
    script_code_hash: str
    bundle_files: dict[str, str] | None = None
    change_type: str
    change_reason: str | None = None
    changed_by: str | None = None
    changed_at: float
    source_file_path: str | None = None
    source_file_mtime: float | None = None
    version_tag: str | None = None
    git_commit_hash: str | None = None
    only_if_changed: bool = False
    synced_file: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncUpdate:
    """What a look at the script file found: the sync status, and the file's new hash if it
    was synced (``file_hash`` None keeps the stored ``script_file_hash``)."""

    actor: str
    status: str
    synced_at: float
    file_path: str
    file_hash: str | None = None
    file_mtime: float | None = None


@dataclass(frozen=True, slots=True)
class CodeRecorded:
    """The answer of ``Store.record_code_version``."""

    version: CodeVersion | None  # the row inserted; None when nothing was recorded
    active: CodeVersion | None  # the active version afterwards
    previous: CodeVersion | None  # the active version before
