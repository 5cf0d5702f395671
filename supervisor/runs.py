"""Runs in flight as the main loop tracks them, and the outcome a client receives."""

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from protocol.messages import Result
from supervisor.records import RunRecord, RunState


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

    @property
    def run_id(self) -> str:
        return self.record.run_id


def apply_result(record: RunRecord, result: Result) -> RunRecord:
    """The attempt's row once its worker reported the classified outcome."""
    output = result.output
    has_output = output is not None or result.status == RunState.SUCCEEDED
    return replace(
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
    )


def outcome_of(record: RunRecord, output: Any = None) -> dict[str, Any]:
    """The JSON object ``submit --wait`` prints: the final attempt's fields."""
    if output is None and record.output_json is not None:
        output = orjson.loads(record.output_json)
    return {
        "run_id": record.run_id,
        "actor": record.actor,
        "status": record.status,
        "reason": record.reason,
        "error": record.error,
        "exit_code": record.exit_code,
        "signal": record.signal,
        "output": output,
        "stderr_tail": record.stderr_tail,
        "duration_ms": record.duration_ms,
        "code_sha256": record.code_sha256,
        "code_history_id": record.code_history_id,
        "code_source": record.code_source,
        "attempt": record.attempt,
        "attempts": record.attempt,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "worker_id": record.worker_id,
    }


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
        self._items: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()

    def add(self, outcome: dict[str, Any], size: int = OVERHEAD) -> None:
        previous = self._items.pop(outcome["run_id"], None)
        if previous is not None:
            self.bytes -= previous[1]
        self._items[outcome["run_id"]] = (outcome, size)
        self.bytes += size
        while self._items and (len(self._items) > self._size or self.bytes > self._max_bytes):
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._items)

    def get(self, run_id: str) -> dict[str, Any] | None:
        found = self._items.get(run_id)
        return None if found is None else found[0]
