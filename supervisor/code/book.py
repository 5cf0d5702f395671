"""The supervisor's side of code management: the code every run gets, and keeping it in sync.

* At start-up, before the loop, every actor's file is hashed and compared with what the store
  holds (:func:`sync_actor`): a first sighting records the ``initial`` version, a file changed
  since its last sync records an ``auto_sync`` version (unless ``sync = "manual"``), and a
  missing file keeps the stored code, marks the status and warns -- it never stops the start.
* At dispatch, :meth:`CodeBook.for_run` says which file a run executes and which code that is
  (hash, history id, source). Actors with ``sync = "before_run"`` and every ``file``-mode actor
  (whose run executes the file itself, so the recorded hash must be the file's) get the
  before-run check first (:func:`look`): a ``stat``, and a hash only when the file moved.
* A CLI deploy or rollback, and a reload, make the store hold news the loop must not wait for:
  :meth:`CodeBook.reload` has the reader thread flush the writer, read the actor's code, sync it
  and materialize it; the loop swaps the result in, and the actor's runs wait meanwhile.

Everything the loop learns is written through the batch writer: new versions as
:class:`CodeChange` records with their ``history_id`` chosen here, so a run can name its code
before the row is committed.
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.code.records import (
    AUTO_SYNC,
    DRIFT_DETECTED,
    FILE_MISSING,
    INITIAL,
    SYNCED,
    CodeChange,
    CodeState,
    SyncUpdate,
)
from supervisor.code.sync import (
    DATABASE_SOURCE,
    FILE_SOURCE,
    ActorCode,
    CodeError,
    FileSnapshot,
    RunsAs,
    current_key,
    git_commit,
    git_commits,
    materialize,
    read_snapshot,
    status_of,
)
from supervisor.config import ActorConfig
from supervisor.reader import Reader
from supervisor.records import Record
from supervisor.store.base import Store
from supervisor.writer import BatchWriter

log = logging.getLogger(__name__)

CHANGED_BY = "supervisor"
FLUSH_TIMEOUT_S = 30.0

Loaded = Callable[[ActorCode | None, Exception | None], None]


@dataclass(frozen=True, slots=True)
class RunCode:
    """What one attempt runs: ``script`` in ``cwd``, and which code that is."""

    script: str
    cwd: str
    sha256: str
    history_id: str | None
    source: str  # "file" or "database"
    refused: str | None = None  # why nothing can run: the attempt fails as file_missing
    modules: tuple[str, ...] = ()  # stored code: the bundle's other files, beside ``script``
    argv: tuple[str, ...] = ()  # a command actor: exec ``script`` with these arguments
    stored: bool = False  # ``script`` is our materialized copy: the run's user may not read it
    script_sha256: str = ""  # file mode, a script that is its whole bundle: ``sha256`` again


SUMMARY_KEYS = ("changed", "unchanged", "drifted", "failed")


def sync_outcome(status: str, records: list[Record]) -> str:
    """One of :data:`SUMMARY_KEYS`: a new version recorded, nothing to record, a file that
    differs from its active code (``sync = "manual"``), or no readable file."""
    if any(isinstance(r, CodeChange) for r in records):
        return "changed"
    if status == FILE_MISSING:
        return "failed"
    return "drifted" if status == DRIFT_DETECTED else "unchanged"


def summary_line(counts: dict[str, int]) -> str:
    """``code: 5 actors, 1 changed, 4 unchanged, 0 drifted, 0 failed``: the last line of the
    start-up sync and of ``deploy --all``."""
    total = sum(counts.values())
    return f"code: {total} actor{'s' if total != 1 else ''}, " + ", ".join(
        f"{counts.get(key, 0)} {key}" for key in SUMMARY_KEYS
    )


Snapshots = Callable[[Path, bool], FileSnapshot | None]  # read_snapshot(path, scan=...)


def _read(path: Path, scan: bool) -> FileSnapshot | None:
    return read_snapshot(path, scan=scan)


def sync_actor(
    cfg: ActorConfig,
    stored: CodeState | None,
    cache: Path,
    now: float,
    *,
    git: bool = True,
    read: Snapshots = _read,
) -> tuple[ActorCode, list[Record]]:
    """The start-up sync of one actor: its code as the store and its file say, and the records
    that bring the store up to date. Never raises for a missing or unreadable file.
    A command actor whose program lies outside the configuration's folder is not versioned.
    ``git`` False: a new version's ``git_commit_hash`` is left for the caller to fill in.
    ``read``: how the bundle is read (the start-up sync reads a script shared by actors once)."""
    code = ActorCode(home=str(cfg.workdir))
    if not cfg.versioned:
        return code, []
    text: str | None = None
    others: dict[str, str] | None = None
    if stored is not None:
        code.synced_sha = stored.script_file_hash
        code.status = stored.script_sync_status or SYNCED
        if stored.active_history_id and stored.script_code is not None:
            code.history_id = stored.active_history_id
            code.code_sha256 = stored.script_code_hash or ""
            text, others = stored.script_code, stored.bundle_files
    snap = read(cfg.script, cfg.python)
    if snap is None:
        records = mark_missing(cfg, code, cache, now, always=True)
    else:
        records, fresh = reconcile(
            cfg, code, snap, now, auto_sync=cfg.sync != "manual", always=True, git=git
        )
        if fresh is not None:
            text, others = fresh.script_code, fresh.bundle_files
    if cfg.exec_mode != "file" and code.history_id is not None and text is not None:
        _materialize(cfg, code, cache, text, others)
    return code, records


SharedSnapshots = dict[tuple[Path, bool], FileSnapshot]
SHARED_SNAPSHOTS_MAX = 256  # scripts whose last trusted read look() keeps for other actors


def look(
    cfg: ActorConfig,
    code: ActorCode,
    cache: Path,
    now: float,
    shared: SharedSnapshots | None = None,
    runs_as: RunsAs | None = None,
) -> list[Record]:
    """The before-run check: microseconds when no stat key of the bundle's files has moved.

    ``shared``: the last trusted read of each script, so that when a script many actors run
    changed (or was written just before the start, too recently to trust its key), the first
    actor's run reads and parses it and the others' reuse that while its files' keys hold.
    ``runs_as``: see :func:`read_snapshot`.
    """
    if not cfg.versioned:
        return []
    key = current_key(code.paths or (str(cfg.script),))
    if key is not None and key == code.stat:
        return []
    snap = _shared_snapshot(shared, (cfg.script, cfg.python))
    if snap is None:
        snap = read_snapshot(cfg.script, scan=cfg.python, runs_as=runs_as)
        if shared is not None and snap is not None and snap.key is not None:
            if len(shared) >= SHARED_SNAPSHOTS_MAX:
                shared.clear()
            shared[(cfg.script, cfg.python)] = snap
    if snap is None:
        return mark_missing(cfg, code, cache, now, always=False)
    code.stat, code.paths = snap.key, snap.paths
    if snap.sha256 == code.seen_sha and code.status != FILE_MISSING:
        return []  # touched, not changed
    records, change = reconcile(
        cfg, code, snap, now, auto_sync=cfg.sync == "before_run", always=False, git=False
    )
    if change is not None and cfg.exec_mode != "file":
        _materialize(cfg, code, cache, change.script_code, change.bundle_files)
    return records


def _shared_snapshot(shared: SharedSnapshots | None, key: tuple[Path, bool]) -> FileSnapshot | None:
    """Another actor's read of the same script, if no file of its bundle has moved since."""
    snap = shared.get(key) if shared is not None else None
    if snap is None or current_key(snap.paths) != snap.key:
        return None
    return snap


def reconcile(
    cfg: ActorConfig,
    code: ActorCode,
    snap: FileSnapshot,
    now: float,
    *,
    auto_sync: bool,
    always: bool,
    git: bool,
) -> tuple[list[Record], CodeChange | None]:
    """Compare a fresh read of the bundle with the actor's code; update ``code`` and return
    the records to write, and the new active version when one was recorded.

    ``auto_sync``: a file changed since its last sync becomes a new version. ``always``: write
    the sync columns even when the status did not change (start-up). ``git``: look up the
    file's commit (a subprocess: never on the loop).
    """
    code.seen_sha, code.stat, code.paths = snap.sha256, snap.key, snap.paths
    code.home = str(cfg.workdir)  # the folder is back, if it was gone
    if code.history_id is None:
        return _record(cfg, code, snap, INITIAL, now, "first seen", git=git)
    changed = snap.sha256 != code.synced_sha
    records: list[Record] = []
    if changed and auto_sync and snap.sha256 != code.code_sha256:
        records.append(_drift_event(cfg, code, snap, action="auto_sync"))
        recorded, change = _record(
            cfg, code, snap, AUTO_SYNC, now, "the file changed since its last sync", git=git
        )
        return records + recorded, change
    status = status_of(snap.sha256, code.code_sha256)
    synced_now = changed and auto_sync  # the file went back to the active code
    if status == code.status and not always and not synced_now:
        return [], None
    if status == DRIFT_DETECTED and code.status != DRIFT_DETECTED:
        records.append(_drift_event(cfg, code, snap, action=f"not recorded (sync = {cfg.sync})"))
        log.warning(
            "actor %s: %s differs from its active code version %s (sync = %s)",
            cfg.name, cfg.script, code.history_id, cfg.sync, extra={"actor": cfg.name},
        )  # fmt: skip
    code.status = status
    if synced_now:
        code.synced_sha = snap.sha256
    records.append(
        SyncUpdate(
            actor=cfg.name,
            status=status,
            synced_at=now,
            file_path=str(cfg.script),
            file_hash=snap.sha256 if synced_now else None,
            file_mtime=snap.mtime if synced_now else None,
        )
    )
    return records, None


def mark_missing(
    cfg: ActorConfig, code: ActorCode, cache: Path, now: float, *, always: bool
) -> list[Record]:
    """The file is gone: keep the stored code, mark the status, warn; never raise."""
    code.stat = code.seen_sha = None
    if not Path(code.home).is_dir():
        code.home = str(cache)  # runs of the stored code need some working directory
    if code.status == FILE_MISSING and not always:
        return []
    stored = code.history_id is not None and cfg.exec_mode != "file"
    consequence = "its runs use the stored code" if stored else "its runs fail (file_missing)"
    log.warning(
        "actor %s: script file %s is missing (or its runs may not read it); %s",
        cfg.name, cfg.script, consequence,
        extra={"actor": cfg.name, "event": "code_file_missing"},
    )  # fmt: skip
    records: list[Record] = []
    if code.status != FILE_MISSING:
        records.append(
            events.actor_event(
                "code_file_missing",
                cfg.name,
                file_path=str(cfg.script),
                history_id=code.history_id,
                code_sha256=code.code_sha256 or None,
                exec_mode=cfg.exec_mode,
                runs=consequence,
            )
        )
    code.status = FILE_MISSING
    records.append(
        SyncUpdate(actor=cfg.name, status=FILE_MISSING, synced_at=now, file_path=str(cfg.script))
    )
    return records


def _record(
    cfg: ActorConfig,
    code: ActorCode,
    snap: FileSnapshot,
    change_type: str,
    now: float,
    reason: str,
    *,
    git: bool,
) -> tuple[list[Record], CodeChange | None]:
    try:
        text, others = snap.text(), snap.texts()
    except CodeError as exc:  # runs from the file still work; the store cannot hold it
        log.error("actor %s: cannot record its code: %s", cfg.name, exc)
        code.status = DRIFT_DETECTED
        update = SyncUpdate(
            actor=cfg.name, status=DRIFT_DETECTED, synced_at=now, file_path=str(cfg.script)
        )
        return [update], None
    change = CodeChange(
        history_id=events.new_id(),
        actor=cfg.name,
        script_code=text,
        script_code_hash=snap.sha256,
        bundle_files=others or None,
        change_type=change_type,
        change_reason=reason,
        changed_by=CHANGED_BY,
        changed_at=now,
        source_file_path=str(cfg.script),
        source_file_mtime=snap.mtime,
        git_commit_hash=git_commit(cfg.script) if git else None,
        synced_file=True,
    )
    code.history_id, code.code_sha256 = change.history_id, snap.sha256
    code.synced_sha, code.status = snap.sha256, SYNCED
    log.info(
        "actor %s: recorded its code as a new version (%s)", cfg.name, change_type,
        extra={"actor": cfg.name, "history_id": change.history_id, "code_sha256": snap.sha256},
    )  # fmt: skip
    return [change], change


def _drift_event(cfg: ActorConfig, code: ActorCode, snap: FileSnapshot, *, action: str) -> Record:
    return events.actor_event(
        "code_drift_detected",
        cfg.name,
        file_path=str(cfg.script),
        file_sha256=snap.sha256,
        synced_file_sha256=code.synced_sha,
        active_history_id=code.history_id,
        active_sha256=code.code_sha256,
        action=action,
    )


def _materialize(
    cfg: ActorConfig, code: ActorCode, cache: Path, text: str, others: dict[str, str] | None
) -> None:
    """Write the active version's bundle to the cache; its runs then execute it from there."""
    try:
        code.cache_path = str(materialize(cache, code.code_sha256, cfg.script.name, text, others))
        code.modules = tuple(sorted(others or ()))
    except (CodeError, OSError) as exc:
        log.error("actor %s: cannot materialize its stored code: %s", cfg.name, exc)
        code.cache_path, code.modules = None, ()


class CodeBook:
    """Owns the code cache folder; the supervisor's entry points to code management."""

    def __init__(
        self,
        *,
        store: Store,
        writer: BatchWriter,
        reader: Reader,
        cache: Path,
        actors: Callable[[], dict[str, ActorRuntime]],
        on_ready: Callable[[], None],
        clock: Callable[[], float] = time.time,
        runs_as: RunsAs | None = None,
    ) -> None:
        """``runs_as``: the user runs read files as (we read scripts only if it may)."""
        self.cache, self._runs_as = cache, runs_as
        self._store, self._writer, self._reader = store, writer, reader
        self._actors, self._on_ready, self._clock = actors, on_ready, clock
        self._loading: dict[str, int] = {}  # actor -> reader jobs in flight
        self._shared: SharedSnapshots = {}  # see look()

    def _read(self, path: Path, scan: bool) -> FileSnapshot | None:
        return read_snapshot(path, scan=scan, runs_as=self._runs_as)

    def loading(self, actor: ActorRuntime) -> bool:
        """True while the reader reloads the actor's code: its runs wait for the result."""
        return actor.name in self._loading

    def startup(self) -> None:
        """Sync every actor (before the loop: reads are fine here)."""
        actors = self._actors()
        stored = self._store.load_code_states(list(actors))
        now = self._clock()
        synced: list[list[Record]] = []
        counts = dict.fromkeys(SUMMARY_KEYS, 0)
        snapshots: dict[tuple[Path, bool], FileSnapshot | None] = {}

        def read(path: Path, scan: bool) -> FileSnapshot | None:
            """Each script once, however many actors run it (read, hashed, imports parsed)."""
            key = (path, scan)
            if key not in snapshots:
                snapshots[key] = read_snapshot(path, scan=scan, runs_as=self._runs_as)
            return snapshots[key]

        for actor in actors.values():
            actor.code, records = sync_actor(
                actor.config, stored.pop(actor.name, None), self.cache, now, git=False, read=read
            )
            synced.append(records)
            counts[sync_outcome(actor.code.status, records)] += 1
        del stored
        snapshots.clear()
        # The new versions' commits, in a few git processes per repository, not one per actor.
        scripts = {
            r.source_file_path
            for records in synced
            for r in records
            if isinstance(r, CodeChange) and r.source_file_path is not None
        }
        found = git_commits(Path(script) for script in scripts) if scripts else {}
        commits = {str(path): commit for path, commit in found.items() if commit is not None}
        for records in synced:
            for record in records:
                if isinstance(record, CodeChange) and record.source_file_path in commits:
                    commit = commits[record.source_file_path]
                    record = dataclasses.replace(record, git_commit_hash=commit)
                self._writer.put(record)
        log.info(summary_line(counts), extra={"event": "code_sync", **counts})

    def for_run(self, actor: ActorRuntime) -> RunCode:
        """The code of the attempt about to be dispatched (its records are already queued)."""
        cfg, code = actor.config, actor.code
        if not cfg.versioned:
            return RunCode(str(cfg.script), code.home, "", None, FILE_SOURCE, argv=cfg.command)
        if cfg.exec_mode == "file" or cfg.sync == "before_run":
            self._put(look(cfg, code, self.cache, self._clock(), self._shared, self._runs_as))
        if cfg.exec_mode != "file" and code.cache_path is not None:
            return RunCode(
                code.cache_path, code.home, code.code_sha256, code.history_id, DATABASE_SOURCE,
                modules=code.modules, stored=True,
            )  # fmt: skip
        script, home = str(cfg.script), code.home
        if cfg.exec_mode == "database":
            nothing = "no stored code for this actor (exec_mode = database): deploy it"
            return RunCode(script, home, "", None, DATABASE_SOURCE, nothing)
        sha = code.seen_sha or ""
        history_id = code.history_id if sha and sha == code.code_sha256 else None
        missing = (
            f"script file {script} does not exist (or its runs may not read it)"
            if code.status == FILE_MISSING
            else None
        )
        alone = sha if len(code.paths) == 1 and not cfg.command else ""  # its own hash: checkable
        return RunCode(
            script, home, sha, history_id, FILE_SOURCE, missing, argv=cfg.command,
            script_sha256=alone,
        )  # fmt: skip

    def reconfigure(self, actor: ActorRuntime, before: ActorConfig | None) -> None:
        """After a reload: a new actor, or a new script, exec_mode or sync, is synced again."""
        if before is None or _code_key(before) != _code_key(actor.config):
            self.reload(actor)

    def reload(self, actor: ActorRuntime, loaded: Loaded | None = None) -> None:
        """Sync ``actor`` again off the loop; its runs wait until the result is swapped in.

        ``loaded(code, error)`` runs on the loop afterwards (``code`` None when superseded).
        """
        cfg = actor.config
        self._loading[cfg.name] = self._loading.get(cfg.name, 0) + 1

        def job() -> tuple[ActorCode, list[Record]]:
            # first let the store see what this supervisor already decided about the actor
            self._writer.flush(FLUSH_TIMEOUT_S)
            stored = self._store.load_code_states([cfg.name]).get(cfg.name)
            return sync_actor(cfg, stored, self.cache, self._clock(), read=self._read)

        def done(result: Any, error: Exception | None) -> None:
            left = self._loading.pop(cfg.name, 1) - 1
            if left:
                self._loading[cfg.name] = left
            current = self._actors().get(cfg.name)
            if current is None or _code_key(current.config) != _code_key(cfg):
                if loaded is not None:  # removed or reconfigured since: a newer job follows
                    loaded(None, error)
                return
            if error is not None:
                log.error("actor %s: could not load its code: %s", cfg.name, error)
            else:
                current.code, records = result
                self._put(records)
            if loaded is not None:
                loaded(current.code if error is None else None, error)
            self._on_ready()

        self._reader.submit(job, done)

    def _put(self, records: list[Record]) -> None:
        for record in records:
            self._writer.put(record)


def _code_key(cfg: ActorConfig) -> tuple[Path, str, str, tuple[str, ...]]:
    """What decides an actor's code: a change to any of these needs a new sync."""
    return (cfg.script, cfg.exec_mode, cfg.sync, cfg.command)
