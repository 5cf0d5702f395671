"""What the SQL stores share: table mapping, batch splitting, fire claims and every read.

:class:`SqlStore` implements the reading half of :class:`~supervisor.store.base.Store` once, on
four hooks a backend provides: ``_read`` and ``_tx`` (a connection for reading, and one inside a
write transaction), ``_fetch`` (one query written with ``?`` placeholders, see
:mod:`supervisor.store.queries`) and ``_code_db`` (the code-history and outbox logic on a
connection). The backends keep what differs: connections, pragmas or pools, COPY, how errors
are translated, and the write path of a batch.
"""

import abc
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, CodeRecorded, CodeState, CodeVersion, SyncUpdate
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store import code, outbox, prune, queries, workflows
from supervisor.store.base import Pruned, Store, StoreError
from supervisor.store.values import NUL, SplitBatch, clean_text
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot

Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to the database, from it)


def same(value: Any) -> Any:
    return value


TEXT: Codec = (clean_text, same)  # NULs replaced: PostgreSQL refuses them (store/values.py)
PLAIN: Codec = (same, same)


def texts(record: type[Any], *json_columns: str) -> dict[str, Codec]:
    """``TEXT`` for every ``str`` field of ``record`` except the JSON-text ones."""
    return {
        f.name: TEXT
        for f in fields(record)
        if f.type in (str, str | None) and f.name not in json_columns
    }


def quote(identifier: str) -> str:
    # "trigger" is an SQL keyword; quoting every column keeps the generated SQL uniform.
    return f'"{identifier}"'


def names(columns: Sequence[str]) -> str:
    return ", ".join(quote(c) for c in columns)


class Table:
    """One record type's table: column order, value codecs and the SQL that reads and writes it.

    ``insert`` upserts by ``key`` (every non-key column but the ``fixed`` ones takes the new
    value), or for an ``append_only`` table skips a row whose key exists. ``extra_columns`` are
    inserted after the record's own columns and never updated (``actors.created_at``).
    ``placeholder`` is the driver's parameter mark (``?`` for sqlite3, ``%s`` for psycopg).
    """

    def __init__(
        self,
        name: str,
        record: type[Any],
        *,
        key: tuple[str, ...],
        codecs: dict[str, Codec],
        placeholder: str,
        extra_columns: tuple[str, ...] = (),
        append_only: bool = False,
        fence: str | None = None,
        fixed: tuple[str, ...] = (),
    ) -> None:
        self.record = record
        self.columns = [f.name for f in fields(record)]
        self._values = operator.attrgetter(*self.columns)  # one C call for every column
        # text columns are checked for NUL all at once (one join), the others converted each
        self._text_index = [i for i, c in enumerate(self.columns) if codecs.get(c) is TEXT]
        index = self._text_index
        self._texts = operator.itemgetter(*index, *index[:1]) if index else None  # always a tuple
        self._encode = [
            (i, codecs[c][0])
            for i, c in enumerate(self.columns)
            if c in codecs and codecs[c] is not TEXT and codecs[c][0] is not same
        ]  # only the other columns that need converting
        self._from_db = [codecs.get(c, PLAIN)[1] for c in self.columns]
        self.select = f"SELECT {names(self.columns)} FROM {name}"
        insert_columns = [*self.columns, *extra_columns]
        # Columns a row never changes are left out of the upsert's SET: SQLite rewrites every
        # index on a column the SET names, changed or not, and each is a WAL page per commit.
        updates = ", ".join(
            f"{quote(c)} = excluded.{quote(c)}"
            for c in self.columns
            if c not in key and c not in fixed
        )
        action = "DO NOTHING" if append_only else f"DO UPDATE SET {updates}"
        if fence is not None:  # a row is changed only by a writer of the same or a later epoch
            action += f" WHERE {name}.{quote(fence)} <= excluded.{quote(fence)}"
        values = f"VALUES ({', '.join([placeholder] * len(insert_columns))})"
        self.insert = (
            f"INSERT INTO {name} ({names(insert_columns)}) {values} "
            f"ON CONFLICT ({names(key)}) {action}"
        )
        # claims (scheduled fires): update our own row, else insert unless any key is taken
        self.claim_insert = (
            f"INSERT INTO {name} ({names(insert_columns)}) {values} ON CONFLICT DO NOTHING"
        )
        others = [c for c in self.columns if c not in key]
        self._key_index = [self.columns.index(c) for c in key]
        self._other_index = [self.columns.index(c) for c in others]
        self._fence_index = self.columns.index(fence) if fence else None
        self.claim_update = (
            f"UPDATE {name} SET {', '.join(f'{quote(c)} = {placeholder}' for c in others)} WHERE "
            + " AND ".join(f"{quote(c)} = {placeholder}" for c in key)
            + (f" AND {quote(fence)} <= {placeholder}" if fence else "")
        )

    def claim_update_params(self, row: Sequence[Any]) -> list[Any]:
        """A row's values for ``claim_update``: the other columns, the key, the fence."""
        params = [row[i] for i in self._other_index] + [row[i] for i in self._key_index]
        if self._fence_index is not None:
            params.append(row[self._fence_index])
        return params

    def row(self, record: Any) -> list[Any]:
        """The record's column values, converted where needed (the writer's hot path)."""
        values = list(self._values(record))
        if self._texts is not None and _has_nul(self._texts(values)):
            for index in self._text_index:
                values[index] = clean_text(values[index])
        for index, to_db in self._encode:
            values[index] = to_db(values[index])
        return values

    def record_from(self, row: Sequence[Any]) -> Any:
        return self.record(
            **{
                column: from_db(value)
                for column, from_db, value in zip(self.columns, self._from_db, row, strict=True)
            }
        )


def _has_nul(texts: tuple[Any, ...]) -> bool:
    """Whether any of ``texts`` (strings or None) holds a NUL: one ``join`` and one search
    instead of a call per column. A value that is not text takes the slow path too."""
    try:
        return NUL in "".join(filter(None, texts))
    except TypeError:
        return True


@dataclass(frozen=True)
class Tables:
    """A backend's four record tables and how it stores a timestamp (epoch float in)."""

    runs: Table
    states: Table
    actors: Table
    events: Table
    timestamp: Callable[[float], Any]


def make_tables(
    *,
    placeholder: str,
    timestamp: Codec,
    to_timestamp: Callable[[float], Any],
    json: Codec,
    opt_json: Codec,
    boolean: Codec = PLAIN,
) -> Tables:
    """The four record tables for one driver: its placeholder and its value codecs."""
    runs = Table(
        "runs",
        RunRecord,
        key=("run_id", "attempt"),
        codecs={
            # JSON text columns take the text as it is: NULs arrive escaped as \u0000
            **texts(RunRecord, "input_json", "output_json"),
            **{c: timestamp for c in ("queued_at", "scheduled_for", "started_at", "finished_at")},
        },
        placeholder=placeholder,
        fence="epoch",
        # an attempt's identity: set when it is queued, never after (its indexes stay put)
        fixed=(
            "actor", "correlation_id", "trigger", "input_json", "queued_at", "scheduled_for",
            "idempotency_key",
        ),
    )  # fmt: skip
    states = Table(
        "task_state",
        TaskState,
        key=("actor",),
        codecs={
            **texts(TaskState),
            "last_run_at": timestamp,
            "next_run_at": timestamp,
            "updated_at": timestamp,
            "is_paused": boolean,
            "metadata": json,
        },
        placeholder=placeholder,
    )
    actors = Table(
        "actors",
        ActorRecord,
        key=("name",),
        codecs={
            **texts(ActorRecord),
            "schedule": opt_json,
            "config": json,
            "updated_at": timestamp,
        },
        placeholder=placeholder,
        extra_columns=("created_at",),  # set by the first insert, kept by every later upsert
    )
    events = Table(
        "execution_events",
        Event,
        key=("event_id",),
        codecs={**texts(Event), "metadata": json, "created_at": timestamp},
        placeholder=placeholder,
        append_only=True,  # a replayed batch must not touch events already stored
    )
    return Tables(runs, states, actors, events, to_timestamp)


@contextmanager
def encoding() -> Iterator[None]:
    """Values Python cannot encode fail the batch as a :class:`StoreError`."""
    try:
        yield
    except (TypeError, ValueError, OverflowError) as exc:  # orjson and datetime limits
        raise StoreError(f"a record in the batch cannot be encoded: {exc}") from exc


class BatchRows:
    """A batch split by table, coalesced by key (the last version wins), converted to rows.

    Conversion happens before the transaction opens, so a record that cannot be encoded fails
    the batch without touching the database. With ``convert_events=False`` the events stay
    records, for a backend that converts them as it sends them (PostgreSQL's COPY).
    """

    def __init__(
        self, records: Sequence[Record], tables: Tables, *, convert_events: bool = True
    ) -> None:
        split = SplitBatch(records)
        with encoding():
            self.runs = [tables.runs.row(r) for r in split.runs]
            self.fires = [(r.run_id, tables.runs.row(r)) for r in split.fires]
            self.states = [tables.states.row(s) for s in split.states]
            self.actors = [
                (*tables.actors.row(a), tables.timestamp(a.updated_at)) for a in split.actors
            ]
            self.events: list[Any] = (
                [tables.events.row(e) for e in split.events] if convert_events else split.events
            )
        self.code = split.code
        self.alerts = split.alerts
        self.workflows = split.workflows

    def upsert(self, executemany: Callable[[str, Any], Any], tables: Tables) -> None:
        """Upsert the runs, task states and actors (not fires or events) with ``executemany``."""
        for table, rows in (
            (tables.runs, self.runs),
            (tables.states, self.states),
            (tables.actors, self.actors),
        ):
            if rows:
                executemany(table.insert, rows)

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.fires
            or self.states
            or self.actors
            or self.events
            or self.code
            or self.alerts
            or self.workflows
        )


def apply_code(db: code.CodeDb, records: Sequence[CodeChange | SyncUpdate]) -> None:
    for record in records:
        if isinstance(record, CodeChange):
            code.record_version(db, record)
        else:
            code.update_sync(db, record)


def claim_fires(
    execute: Callable[[str, Sequence[Any]], Any], runs: Table, fires: Sequence[tuple[str, Any]]
) -> list[str]:
    """Write each scheduled fire's run row unless another supervisor holds the fire.

    ``execute`` runs one statement and returns a cursor (``rowcount``); the result is the
    run ids refused. Few rows (one per fire), so one statement each.
    """
    refused: list[str] = []
    for run_id, row in fires:
        if execute(runs.claim_update, runs.claim_update_params(row)).rowcount:
            continue
        if not execute(runs.claim_insert, row).rowcount:
            refused.append(run_id)
    return refused


ConnT = TypeVar("ConnT")


class SqlStore(Store, Generic[ConnT]):
    """The :class:`Store` methods both SQL backends implement the same way."""

    _tables: Tables

    @abc.abstractmethod
    def _read(self, action: str) -> AbstractContextManager[ConnT]:
        """A connection to read with; errors translated, ``action`` naming what failed."""

    @abc.abstractmethod
    def _tx(self, action: str) -> AbstractContextManager[ConnT]:
        """A connection inside one write transaction: committed on success, else rolled back."""

    @abc.abstractmethod
    def _fetch(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query written with ``?`` placeholders and return its rows."""

    @abc.abstractmethod
    def _code_db(self, conn: ConnT) -> code.CodeDb:
        """The code-history and outbox logic on ``conn``."""

    def _log_applied(self, applied: Sequence[str]) -> None:
        log = logging.getLogger(type(self).__module__)
        for name in applied:
            log.info(
                "%s: applied migration %s",
                self.description,
                name,
                extra={"event": "migration_applied", "migration": name},
            )

    # -- reads ---------------------------------------------------------------------------------

    def list_runs(
        self, *, actor: str | None = None, run_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        runs = self._tables.runs
        sql, params = queries.list_runs(runs.select, actor=actor, run_id=run_id, limit=limit)
        return [runs.record_from(row) for row in self._fetch("list runs", sql, params)]

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
        runs = self._tables.runs
        sql, params = queries.find_runs(
            runs.select, self._tables.timestamp, actor=actor, status=status, since=since,
            before=before, limit=limit, latest_only=latest_only,
        )  # fmt: skip
        return [runs.record_from(row) for row in self._fetch("find runs", sql, params)]

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
        events = self._tables.events
        sql, params = queries.find_events(
            events.select, self._tables.timestamp, aggregate_type=aggregate_type,
            aggregate_id=aggregate_id, correlation_id=correlation_id, since=since, before=before,
            limit=limit,
        )  # fmt: skip
        return [events.record_from(row) for row in self._fetch("find events", sql, params)]

    def last_runs(self) -> dict[str, RunRecord]:
        runs = self._tables.runs
        sql, params = queries.latest_attempt_per_actor(runs.columns)
        found = [runs.record_from(row) for row in self._fetch("find last runs", sql, params)]
        return {run.actor: run for run in found}

    def list_events(
        self,
        *,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        events = self._tables.events
        sql, params = queries.list_events(
            events.select, self._tables.timestamp, aggregate_type=aggregate_type,
            aggregate_id=aggregate_id, correlation_id=correlation_id, since=since, limit=limit,
        )  # fmt: skip
        return [events.record_from(row) for row in self._fetch("list events", sql, params)]

    def load_task_states(self) -> dict[str, TaskState]:
        table = self._tables.states
        rows = self._fetch("load task states", f"{table.select} ORDER BY actor")
        states = [table.record_from(row) for row in rows]
        return {state.actor: state for state in states}

    def load_actors(self) -> dict[str, ActorRecord]:
        table = self._tables.actors
        rows = self._fetch("load actors", f"{table.select} ORDER BY name")
        actors = [table.record_from(row) for row in rows]
        return {actor.name: actor for actor in actors}

    def unfinished_runs(self, before_epoch: int | None = None) -> list[RunRecord]:
        runs = self._tables.runs
        sql, params = queries.unfinished_runs(runs.select, before_epoch)
        return [runs.record_from(row) for row in self._fetch("list unfinished runs", sql, params)]

    def idempotency_keys(self, since: float) -> dict[tuple[str, str], str]:
        sql, params = queries.idempotency_keys(self._tables.timestamp, since)
        rows = self._fetch("load idempotency keys", sql, params)
        return {(actor, key): run_id for actor, key, run_id in rows}

    # -- code history and the alert outbox -----------------------------------------------------

    def record_code_version(self, change: CodeChange) -> CodeRecorded:
        with self._tx("record a code version") as conn:
            return code.record_version(self._code_db(conn), change)

    def code_history(self, actor: str, *, limit: int | None = None) -> list[CodeVersion]:
        with self._read("read the code history") as conn:
            return code.history(self._code_db(conn), actor, limit)

    def code_version(
        self, actor: str, *, history_id: str | None = None, version_tag: str | None = None
    ) -> CodeVersion | None:
        with self._read("read a code version") as conn:
            return code.find_version(
                self._code_db(conn), actor, history_id=history_id, version_tag=version_tag
            )

    def load_code_states(self, actors: Sequence[str] | None = None) -> dict[str, CodeState]:
        with self._read("load the actors' code") as conn:
            return code.code_states(self._code_db(conn), actors)

    def prune(self, *, cutoff: float, failed_cutoff: float, limit: int) -> Pruned:
        with self._tx("prune old runs") as conn:
            return prune.prune_batch(
                self._code_db(conn), cutoff=cutoff, failed_cutoff=failed_cutoff, limit=limit
            )

    def count_prunable(self, *, cutoff: float, failed_cutoff: float) -> Pruned:
        with self._read("count old runs") as conn:
            return prune.count_due(self._code_db(conn), cutoff=cutoff, failed_cutoff=failed_cutoff)

    def save_alert(self, alert: AlertRecord) -> None:
        with self._tx("save an alert") as conn:
            outbox.save(self._code_db(conn), alert)

    def pending_alerts(self, limit: int = 10000) -> list[AlertRecord]:
        with self._read("read pending alerts") as conn:
            return outbox.pending(self._code_db(conn), limit)

    def list_alerts(
        self, *, status: str | None = None, destination: str | None = None, limit: int = 50
    ) -> list[AlertRecord]:
        with self._read("list alerts") as conn:
            return outbox.listing(
                self._code_db(conn), status=status, destination=destination, limit=limit
            )

    def ids_with_prefix(self, kind: str, prefix: str, limit: int) -> list[str]:
        sql, params = queries.ids_with_prefix(kind, prefix, limit)
        return [row[0] for row in self._fetch(f"find {kind} ids", sql, params)]

    # -- workflows -----------------------------------------------------------------------------

    #: the SQL of an event's conversation id, as the backend's index on it is written
    _conversation_sql: str

    def workflow_runs(
        self, *, active_only: bool = False, workflow: str | None = None, limit: int = 50
    ) -> list[WorkflowRunRecord]:
        with self._read("list workflow runs") as conn:
            return workflows.runs(
                self._code_db(conn), active_only=active_only, workflow=workflow, limit=limit
            )

    def workflow_run(self, workflow_run_id: str) -> WorkflowRunRecord | None:
        with self._read("read a workflow run") as conn:
            return workflows.run(self._code_db(conn), workflow_run_id)

    def workflow_items(self, workflow_run_id: str) -> list[WorkflowItemRecord]:
        with self._read("read workflow items") as conn:
            return workflows.items(self._code_db(conn), workflow_run_id)

    def latest_workflow_snapshot(self, workflow_run_id: str) -> WorkflowSnapshot | None:
        with self._read("read a workflow snapshot") as conn:
            return workflows.latest_snapshot(self._code_db(conn), workflow_run_id)

    def workflow_snapshot_count(self, workflow_run_id: str) -> int:
        with self._read("count workflow snapshots") as conn:
            return workflows.snapshot_count(self._code_db(conn), workflow_run_id)

    def workflow_events(self, workflow_run_id: str, since: float | None = None) -> list[Event]:
        events = self._tables.events
        sql, params = f"{events.select} WHERE correlation_id = ?", [workflow_run_id]
        if since is not None:
            sql += " AND created_at >= ?"
            params.append(self._tables.timestamp(since))
        rows = self._fetch("read workflow events", f"{sql} ORDER BY created_at, id", params)
        return [events.record_from(row) for row in rows]

    def conversation_events(self, conversation_id: str, limit: int = 10000) -> list[Event]:
        events = self._tables.events
        sql = f"{events.select} WHERE {self._conversation_sql} = ? ORDER BY created_at, id LIMIT ?"
        rows = self._fetch("read a conversation's events", sql, [conversation_id, limit])
        return [events.record_from(row) for row in rows]

    def workflow_steps(self, workflow_run_id: str) -> list[dict[str, Any]]:
        with self._read("read workflow steps") as conn:
            return workflows.steps(self._code_db(conn), workflow_run_id)
