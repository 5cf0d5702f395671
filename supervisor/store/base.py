"""The store interface: one contract, one conformance suite, several backends.

Only the batch writer thread writes (``write_batch``); reads happen at start-up, before the
supervisor's loop, and from CLI processes. Both backends store the same values and read back
the same records; the one normalization is in :mod:`supervisor.store.values` (NUL characters).
Implementations must be safe to use from one thread at a time per method call and must not
share connections across ``fork``.
"""

import abc
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, CodeRecorded, CodeState, CodeVersion, SyncUpdate
from supervisor.errors import CommandRefused, SupervisorError
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot


class StoreError(SupervisorError):
    """The store failed in a way that retrying will not fix (bad schema, bad data, bug)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the caller keeps the batch and retries later."""


class SchemaTooNew(StoreError):
    """The database has migrations this version of actor-supervisor does not know."""


class VersionExists(StoreError):
    """A code version with this tag is already recorded for the actor."""


#: what ``resolve_id`` takes: run ids (``run``), code history ids (``history``), event ids
#: (``event``) and workflow run ids (``workflow_run``)
ID_KINDS = ("run", "history", "event", "workflow_run")
MIN_PREFIX = 8  # time-ordered ids share their first digits for ~16 s: ambiguity is reported
MAX_CANDIDATES = 10  # an ambiguous prefix names at most this many of the ids it matches
_ID_TEXT = re.compile(r"^[0-9A-Za-z_.:-]{1,64}$")


class IdNotResolved(CommandRefused):
    """An id (or prefix) that names no single record: ``code`` is ``bad_id`` (malformed or
    shorter than :data:`MIN_PREFIX`), ``unknown_id`` or ``ambiguous_id``; ``candidates`` holds
    the first ids an ambiguous prefix matches."""

    def __init__(self, code: str, kind: str, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(code, message)
        self.message = message
        self.kind = kind
        self.candidates = tuple(candidates)


class RefusedFires:
    """Run ids of scheduled fires the store refused because another supervisor (or an earlier
    epoch) already claimed their ``(actor, scheduled_for)``: filled by the writer thread after
    a commit, taken by the supervisor's loop, which then does not run them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def add(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            with self._lock:
                self._ids.extend(run_ids)

    def take(self) -> list[str]:
        with self._lock:
            taken, self._ids = self._ids, []
        return taken


@dataclass(frozen=True, slots=True)
class Pruned:
    """What retention deleted (or would delete): runs, their attempts and events, alerts."""

    runs: int = 0
    attempts: int = 0
    events: int = 0
    alerts: int = 0

    def __add__(self, other: "Pruned") -> "Pruned":
        return Pruned(
            self.runs + other.runs,
            self.attempts + other.attempts,
            self.events + other.events,
            self.alerts + other.alerts,
        )

    def __bool__(self) -> bool:
        return bool(self.runs or self.alerts)


class Store(abc.ABC):
    """Durable home of runs, events, task state and actors."""

    #: a safe description for logs and ``status``: the URL with any password removed
    description: str
    #: fires refused by ``write_batch`` (see :class:`RefusedFires`)
    refused: RefusedFires

    @abc.abstractmethod
    def migrate(self) -> list[str]:
        """Apply the numbered migrations not yet applied, in order; return the names applied.

        Safe to call twice. :raises SchemaTooNew: the database is ahead of this code.
        """

    @abc.abstractmethod
    def write_batch(self, records: Sequence[Record]) -> None:
        """Write ``records`` in one transaction: all or nothing.

        Runs, task states and actors are upserted by key (the last version in the batch wins);
        a run row is updated only by a writer of the same or a later ``epoch`` (fencing), and a
        scheduled fire's first attempt is claimed with ``INSERT ... ON CONFLICT DO NOTHING``: a
        fire whose ``(actor, scheduled_for)`` is taken is skipped and named in ``refused``;
        events are inserted, and an ``event_id`` already present is skipped, so replaying a batch
        changes nothing. A :class:`CodeChange` is applied as by :meth:`record_code_version`
        (one whose ``history_id`` is stored is skipped), a :class:`SyncUpdate` sets the actor's
        sync columns; both in batch order, before the other records.
        :raises StoreUnavailable: the store is unreachable; nothing was written.
        """

    def write_batch_now(self, records: Sequence[Record]) -> bool:
        """:meth:`write_batch` if it can be done without waiting for anything but the disk:
        False, with nothing written, when it would have to wait (another thread using the
        connection, another process holding the write lock), or when this store cannot say so.
        The supervisor's loop calls it; the batch writer's thread then writes what it refused.

        :raises StoreUnavailable: as :meth:`write_batch`; nothing was written.
        """
        return False

    def defer_checkpoints(self) -> bool:
        """Leave checkpoints (SQLite's WAL into the database file, which may wait on the disk)
        to :meth:`checkpoint` instead of whichever commit crosses the threshold; True if this
        store has them, so the batch writer may commit on the loop (:meth:`write_batch_now`)."""
        return False

    def checkpoint(self) -> None:
        """Do what :meth:`defer_checkpoints` deferred; the batch writer's thread calls it."""
        return None

    @abc.abstractmethod
    def record_code_version(self, change: CodeChange) -> CodeRecorded:
        """Make ``change`` the actor's active code version, in one transaction.

        Under a per-actor lock: a ``history_id`` already stored records nothing; with
        ``only_if_changed``, an active version of the same hash records nothing; a missing
        ``version_tag`` becomes the previous active version's patch + 1 (1.0.0 first, skipping
        tags in use); the active row is deactivated, the new one inserted active, the actor's
        code columns updated and its code event appended. Two calls racing on one actor leave
        exactly one active version, with distinct tags.

        :raises VersionExists: the given ``version_tag`` is taken.
        :raises StoreUnavailable: the store is unreachable; nothing was written.
        """

    def update_sync_status(self, update: SyncUpdate) -> None:
        """Record what a look at an actor's script file found (its sync columns)."""
        self.write_batch([update])

    @abc.abstractmethod
    def code_history(self, actor: str, *, limit: int | None = None) -> list[CodeVersion]:
        """The actor's code versions, newest (last activated) first."""

    @abc.abstractmethod
    def code_version(
        self, actor: str, *, history_id: str | None = None, version_tag: str | None = None
    ) -> CodeVersion | None:
        """One version of the actor by history id or tag; with neither, the active one."""

    @abc.abstractmethod
    def load_code_states(self, actors: Sequence[str] | None = None) -> dict[str, CodeState]:
        """The code columns of every stored actor (or of those named), by name."""

    @abc.abstractmethod
    def list_runs(
        self, *, actor: str | None = None, run_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Attempts, newest first (by queue time, then attempt), optionally of one actor or run."""

    def find_runs(
        self,
        *,
        actor: str | None = None,
        status: str | None = None,
        since: float | None = None,
        before: tuple[float, int, str] | None = None,
        limit: int = 50,
        latest_only: bool = False,
    ) -> list[RunRecord]:
        """Attempts newest first, filtered; ``before`` continues after a page's last attempt
        ``(queued_at, attempt, run_id)`` (keyset pagination: stable while rows are added).
        ``latest_only``: one row per run, its latest attempt (filters apply to that one)."""
        raise NotImplementedError

    def find_events(
        self,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        before: str | None = None,
        limit: int = 200,
    ) -> list[Event]:
        """Events newest first (time, then insertion order), filtered like :meth:`list_events`;
        ``before`` continues after a page's last ``event_id`` (keyset pagination)."""
        raise NotImplementedError

    def last_runs(self) -> dict[str, RunRecord]:
        """Each actor's most recent attempt, by actor name, in one query (actors without runs
        are absent). Cost: an index probe per stored actor, not a scan of the runs."""
        raise NotImplementedError

    @abc.abstractmethod
    def list_events(
        self,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events oldest first, filtered by every argument given."""

    @abc.abstractmethod
    def load_task_states(self) -> dict[str, TaskState]:
        """Every actor's persisted scheduling state, by actor name."""

    @abc.abstractmethod
    def load_actors(self) -> dict[str, ActorRecord]:
        """Every stored actor by name: the read side of the ``actors`` upsert."""

    @abc.abstractmethod
    def unfinished_runs(self, before_epoch: int | None = None) -> list[RunRecord]:
        """Attempts still ``queued`` or ``running``: after a crash, the runs to recover.

        With ``before_epoch``, only rows written under an earlier lease term: a start-up never
        touches the runs of the supervisor holding the lease now."""

    @abc.abstractmethod
    def idempotency_keys(self, since: float) -> dict[tuple[str, str], str]:
        """``(actor, idempotency_key) -> run_id`` for runs queued at or after ``since``."""

    @abc.abstractmethod
    def save_alert(self, alert: AlertRecord) -> None:
        """The alert sender's record of a delivery attempt: upsert the row's delivery columns
        (``status``, ``attempts``, ``due_at``, ``delivered_at``, ``last_error``), inserting the
        whole row when the batch writer's insert has not landed yet (it waits in the spool).
        :raises StoreUnavailable: the store is unreachable; nothing was written.
        """

    @abc.abstractmethod
    def pending_alerts(self, limit: int = 10000) -> list[AlertRecord]:
        """Outbox rows still ``pending``, earliest due first (the sender at start-up)."""

    @abc.abstractmethod
    def list_alerts(
        self, *, status: str | None = None, destination: str | None = None, limit: int = 50
    ) -> list[AlertRecord]:
        """Outbox rows, newest first, optionally of one status or destination."""

    def prune(self, *, cutoff: float, failed_cutoff: float, limit: int) -> "Pruned":
        """Delete, in one transaction, at most ``limit`` finished runs whose last attempt ended
        before ``cutoff`` (``failed_cutoff`` if it failed), with every attempt and event of
        them, and as many delivered or failed alerts; never code history, actors, task state or
        pending alerts (:mod:`supervisor.store.prune`). An empty result: nothing is due.
        :raises StoreUnavailable: the store is unreachable; nothing was deleted.
        """
        raise StoreError(f"{type(self).__name__} cannot prune")

    def count_prunable(self, *, cutoff: float, failed_cutoff: float) -> "Pruned":
        """What :meth:`prune` would delete with these cut-offs, in all (a dry run)."""
        raise StoreError(f"{type(self).__name__} cannot prune")

    def connections_in_use(self) -> int:
        """Connections checked out right now; 0 between calls (a leak shows up here).

        SQLite's one shared connection is never checked out, hence this default.
        """
        return 0

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards; closing twice is harmless."""

    def ids_with_prefix(self, kind: str, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` distinct ids of ``kind`` (one of :data:`ID_KINDS`) that start with
        ``prefix``, in order; an index range scan, whatever the table's size."""
        raise NotImplementedError

    def resolve_id(self, kind: str, text: str) -> str:
        """The one full id of ``kind`` that ``text`` is, or that ``text`` (at least
        :data:`MIN_PREFIX` characters) is the prefix of. Every command and API endpoint that
        takes a run, history, event or workflow run id resolves it here.

        :raises IdNotResolved: ``bad_id``, ``unknown_id`` or ``ambiguous_id`` (with the
            candidates).
        """
        if kind not in ID_KINDS:
            raise ValueError(f"kind must be one of {ID_KINDS}, got {kind!r}")
        label = kind.replace("_", " ")
        if not _ID_TEXT.match(text):
            raise IdNotResolved(
                "bad_id", kind, f"{text!r} is not a {label} id: expected letters, digits, '_-.:'"
            )
        found = self.ids_with_prefix(kind, text, MAX_CANDIDATES + 1)
        if text in found:
            return text  # a whole id, whatever its length
        if len(text) < MIN_PREFIX:
            raise IdNotResolved(
                "bad_id", kind,
                f"{label} id prefix {text!r} is too short: give at least {MIN_PREFIX} characters",
            )  # fmt: skip
        if not found:
            raise IdNotResolved("unknown_id", kind, f"no {label} id starts with {text!r}")
        if len(found) > 1:
            shown = found[:MAX_CANDIDATES]
            more = " and more" if len(found) > MAX_CANDIDATES else ""
            raise IdNotResolved(
                "ambiguous_id", kind,
                f"{label} id prefix {text!r} is ambiguous: it matches {', '.join(shown)}{more}; "
                "give more characters",
                shown,
            )  # fmt: skip
        return found[0]

    # -- workflows (supervisor/workflows/, supervisor/store/workflows.py) ----------------------

    def workflow_runs(
        self, *, active_only: bool = False, workflow: str | None = None, limit: int = 50
    ) -> list[WorkflowRunRecord]:
        """Workflow runs newest first; ``active_only``: those still running or paused."""
        raise NotImplementedError

    def workflow_run(self, workflow_run_id: str) -> WorkflowRunRecord | None:
        """One workflow run's row by its whole id (a primary key probe), or None."""
        raise NotImplementedError

    def workflow_items(self, workflow_run_id: str) -> list[WorkflowItemRecord]:
        """The run's items as submitted, in position order."""
        raise NotImplementedError

    def latest_workflow_snapshot(self, workflow_run_id: str) -> WorkflowSnapshot | None:
        raise NotImplementedError

    def workflow_snapshot_count(self, workflow_run_id: str) -> int:
        raise NotImplementedError

    def workflow_events(self, workflow_run_id: str, since: float | None = None) -> list[Event]:
        """The run's events (step runs' and its own: correlation id = the run's id), oldest
        first, created at or after ``since``."""
        raise NotImplementedError

    def conversation_events(self, conversation_id: str, limit: int = 10000) -> list[Event]:
        """Every event whose metadata names ``conversation_id`` (one workflow item), oldest
        first: one probe of the conversation index."""
        raise NotImplementedError

    def workflow_steps(self, workflow_run_id: str) -> list[dict[str, Any]]:
        """The ``workflow_steps`` view's rows of one run, by item and order."""
        raise NotImplementedError
