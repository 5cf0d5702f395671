"""Runs in flight as the main loop tracks them, and the outcome a client receives."""

import logging
import operator
import random
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from protocol.messages import Result, Run
from protocol.outcomes import OUTCOME_FIELDS, Reason, RunOutcome, RunStatus
from supervisor.actors import ActorRuntime
from supervisor.code.book import RunCode
from supervisor.config import ActorConfig
from supervisor.records import RunRecord, Trigger, evolve
from supervisor.schedule import retry_delay

log = logging.getLogger("supervisor.runbook")  # attempts are the run book's story

PERMANENT_LOSSES = frozenset({Reason.UNKNOWN_ACTOR, Reason.FILE_MISSING, Reason.POISON})


@dataclass(frozen=True, slots=True)
class Waiter:
    """A client request waiting on a run: its socket identity and request id."""

    identity: bytes
    request_id: str
    wants_result: bool
    envelope: bool = False  # the client sent an empty delimiter frame (a REQ socket)


@dataclass(eq=False)
class ActiveRun:
    """A run between acceptance and its final outcome (across its attempts)."""

    record: RunRecord  # the current attempt
    waiters: list[Waiter] = field(default_factory=list)
    worker_id: str | None = None  # the worker holding the current attempt
    overdue_at: float = float("inf")  # monotonic: past this, the worker is presumed hung
    worker_losses: int = 0  # attempts that ended with their worker's death (POISON_LOSSES)
    metadata: dict[str, Any] = field(default_factory=dict)  # added to every event of the run
    unsent: bool = False  # the worker is not sent the attempt until its running row commits
    acknowledged: bool = False  # its first queued row is committed: its clients were answered

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def sent_to(self) -> str | None:
        """The worker that has the current attempt (None: queued, or not sent yet)."""
        return None if self.unsent else self.worker_id


class Replies(Protocol):
    """Where answers to waiting clients go (the control server satisfies it)."""

    def reply(self, waiter: Waiter, kind: str, data: Any) -> None: ...

    def reply_error(self, waiter: Waiter, code: str, message: str) -> None: ...


class Code(Protocol):
    """Which code an attempt runs (the code book satisfies it)."""

    def loading(self, actor: ActorRuntime) -> bool: ...

    def for_run(self, actor: ActorRuntime) -> RunCode: ...


class Slot(Protocol):
    """A worker able to take one more run."""

    @property
    def worker_id(self) -> str: ...


S = TypeVar("S", bound=Slot)


class Workers(Protocol[S]):
    """The pool as the run book uses it: ``claim`` takes a slot's room for a run before its
    message is sent, and ``release`` gives it back if the run is never sent; ``send`` False:
    that worker is unreachable (the shell kills it, and its death ends the attempt)."""

    def pick(self) -> S | None: ...

    def claim(self, slot: S, run_id: str) -> None: ...

    def release(self, slot: S, run_id: str) -> None: ...

    def send(self, slot: S, message: Run) -> bool: ...


@dataclass(frozen=True, slots=True)
class Dispatched:
    """One attempt handed to a worker: the row it became and the message the worker gets."""

    record: RunRecord
    message: Run


def apply_result(record: RunRecord, result: Result) -> RunRecord:
    """The attempt's row once its worker reported the classified outcome."""
    output = result.output
    has_output = output is not None or result.status == RunStatus.SUCCEEDED
    return evolve(
        record,
        status=result.status,
        reason=result.reason,
        error=result.error,
        started_at=result.started_at or record.started_at,
        finished_at=result.finished_at,
        duration_ms=result.duration_ms,
        exit_code=result.exit_code,
        signal=result.signal,
        output_json=orjson.dumps(output).decode() if has_output else None,
        stderr_tail=result.stderr_tail,
        utime_s=result.rusage.utime_s,
        stime_s=result.rusage.stime_s,
        maxrss_kb=result.rusage.maxrss_kb,
        worker_id=result.worker_id,
        **(_ran_other_code(record, result.code_sha256) if result.code_sha256 else {}),
    )


def _ran_other_code(record: RunRecord, sha256: str) -> dict[str, Any]:
    """The run executed a script other than the version it was sent with (its file changed in
    between): the row names what ran -- a version the code history may never hold, if the file
    changed again before the next look -- rather than what was meant to run."""
    log.warning(
        "run %s (actor %s) ran its script as changed after it was sent: sha256 %s, not %s",
        record.run_id, record.actor, sha256[:12], (record.code_sha256 or "")[:12],
        extra={"actor": record.actor, "run_id": record.run_id, "event": "code_changed_under_run"},
    )  # fmt: skip
    return {"code_sha256": sha256, "code_history_id": None}


# The outcome's fields copied from the row under the same name (all but these two), and a
# getter of their values: worked out once, not for each run.
_DERIVED = frozenset({"output", "attempts"})
_COPIED = tuple(sorted(OUTCOME_FIELDS - _DERIVED))
_copied_values = operator.attrgetter(*_COPIED)


def outcome_of(record: RunRecord, output: Any = None) -> RunOutcome:
    """What ``submit --wait`` prints: the final attempt's fields, named as in its row."""
    if output is None and record.output_json is not None:
        output = orjson.loads(record.output_json)
    copied = dict(zip(_COPIED, _copied_values(record), strict=True))
    return RunOutcome(**copied, output=output, attempts=record.attempt)


def lost_attempt(record: RunRecord, reason: Reason, error: str, now: float) -> RunRecord:
    """The attempt's row when it ended without a result from a worker."""
    permanent = reason in PERMANENT_LOSSES
    return evolve(
        record,
        status=RunStatus.FAILED_PERMANENT if permanent else RunStatus.FAILED_RETRYABLE,
        reason=reason,
        error=error,
        finished_at=now,
        duration_ms=(now - record.started_at) * 1000 if record.started_at else None,
    )


def retry_time(
    cfg: ActorConfig, record: RunRecord, worker_losses: int, now: float, rng: random.Random
) -> float | None:
    """When the next attempt is due, or None. Attempts lost with their worker are free:
    the run is not to blame for a worker that another run took down."""
    if (
        record.status != RunStatus.FAILED_RETRYABLE
        or record.attempt - worker_losses > cfg.max_retries
    ):
        return None
    delay = retry_delay(
        record.attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s, cfg.retry_jitter, rng
    )
    return now + delay


def next_attempt(previous: RunRecord, retry_at: float, now: float) -> RunRecord:
    """The queued row of the attempt after ``previous``, due at ``retry_at``."""
    return RunRecord(
        run_id=previous.run_id, attempt=previous.attempt + 1, actor=previous.actor,
        correlation_id=previous.correlation_id, trigger=Trigger.RETRY,
        input_json=previous.input_json, queued_at=now, scheduled_for=retry_at,
        code_sha256=previous.code_sha256, idempotency_key=previous.idempotency_key,
        epoch=previous.epoch,
    )  # fmt: skip


RUN_SUMMARY_S = 60.0  # finished attempts are summarised in one INFO line per this many seconds


class AttemptLog:
    """How finished attempts reach the log: a failure gets a WARNING line of its own (an
    operator needs each one), a success only a DEBUG line, and every attempt is counted in
    one INFO summary per ``RUN_SUMMARY_S`` (counts per actor and status). A line per success
    cost ~0.24 ms of the loop thread per run (record, format, write: PERF-NOTES)."""

    def __init__(self, monotonic: Callable[[], float], every_s: float = RUN_SUMMARY_S) -> None:
        self._monotonic = monotonic
        self._every_s = every_s
        self._counts: Counter[tuple[str, str]] = Counter()  # (actor, status), since the last
        self._due = monotonic() + every_s

    def attempt(self, record: RunRecord, retry_at: float | None, now: float) -> None:
        self._counts[record.actor, record.status] += 1
        level = logging.DEBUG if record.status == RunStatus.SUCCEEDED else logging.WARNING
        if not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "actor": record.actor,
            "run_id": record.run_id,
            "attempt": record.attempt,
            "status": record.status,
            "duration_ms": round(record.duration_ms or 0.0, 1),
        }
        if record.reason:
            extra["reason"] = record.reason
            extra["error"] = record.error
        if retry_at is not None:
            extra["retry_in_s"] = round(retry_at - now, 2)
        log.log(level, "run %s", record.status, extra=extra)

    def summarize(self, force: bool = False) -> None:
        """The INFO summary line, when one is due (or ``force``, at stop) and runs finished."""
        now = self._monotonic()
        if not self._counts or (now < self._due and not force):
            return
        self._due = now + self._every_s
        counts, self._counts = self._counts, Counter()
        by_actor: dict[str, dict[str, int]] = {}
        for (actor, status), count in sorted(counts.items()):
            by_actor.setdefault(actor, {})[status] = count
        log.info(
            "attempts finished: %s",
            ", ".join(
                f"{actor} " + " ".join(f"{status}={n}" for status, n in statuses.items())
                for actor, statuses in by_actor.items()
            ),
            extra={"event": "attempts_finished", "attempts": by_actor,
                   "total": sum(counts.values())},
        )  # fmt: skip


class RecentOutcomes:
    """The last final outcomes, so a duplicate submission can be answered from memory.

    Bounded in count *and* in bytes (the JSON size of each outcome's output and stderr tail):
    1 MB outputs would otherwise keep ~9 GB for 10,000 runs. An outcome evicted early is still
    in the store (``history``); the duplicate's client is told ``result_unavailable``.
    """

    OVERHEAD = 512  # the fixed fields of one outcome, roughly

    def __init__(self, size: int = 10_000, max_bytes: int = 16 << 20) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[RunOutcome, int]] = OrderedDict()

    def add(self, outcome: RunOutcome, size: int = OVERHEAD) -> None:
        previous = self._items.pop(outcome.run_id, None)
        if previous is not None:
            self.bytes -= previous[1]
        self._items[outcome.run_id] = (outcome, size)
        self.bytes += size
        while self._items and (len(self._items) > self._size or self.bytes > self._max_bytes):
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._items)

    def get(self, run_id: str) -> RunOutcome | None:
        found = self._items.get(run_id)
        return None if found is None else found[0]
