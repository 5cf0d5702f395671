"""In-process stand-ins for the run book's collaborators: a clock that moves only when told,
a sink that commits only when told, and replies and code that are plain lists and values."""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol.messages import Result, Run
from supervisor.actors import ActorRuntime, build_actors
from supervisor.code.book import RunCode
from supervisor.config import load_config
from supervisor.records import Record, RunRecord
from supervisor.runbook import RunBook
from supervisor.runs import Waiter


class FakeClock:
    """Wall time and monotonic time in one: both advance only with :meth:`advance`."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemorySink:
    """Keeps every record; ``committed`` moves with :meth:`commit`, as the writer's would."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.committed = 0

    def put(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    def commit(self) -> None:
        self.committed = len(self.records)

    @property
    def last_seq(self) -> int:
        return len(self.records)

    def runs(self, run_id: str) -> list[RunRecord]:
        return [r for r in self.records if isinstance(r, RunRecord) and r.run_id == run_id]


@dataclass
class Replies:
    sent: list[tuple[str, str, Any]] = field(default_factory=list)  # (request id, kind, data)

    def reply(self, waiter: Waiter, kind: str, data: Any) -> None:
        self.sent.append((waiter.request_id, kind, data))

    def reply_error(self, waiter: Waiter, code: str, message: str) -> None:
        self.sent.append((waiter.request_id, code, message))


@dataclass
class Code:
    loading_actors: set[str] = field(default_factory=set)
    missing: str | None = None

    def loading(self, actor: ActorRuntime) -> bool:
        return actor.name in self.loading_actors

    def for_run(self, actor: ActorRuntime) -> RunCode:
        return RunCode(str(actor.config.script), "/", "sha", None, "file", self.missing)


@dataclass(frozen=True)
class Slot:
    worker_id: str


@dataclass
class Workers:
    """Workers with room for one run each; ``send`` records what each got."""

    free: list[str] = field(default_factory=lambda: ["w1"])
    sent: list[tuple[str, Run]] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)

    def pick(self) -> Slot | None:
        return Slot(self.free[0]) if self.free else None

    def claim(self, slot: Slot, run_id: str) -> None:
        self.free.remove(slot.worker_id)  # one run each

    def release(self, slot: Slot, run_id: str) -> None:
        self.free.append(slot.worker_id)

    def send(self, slot: Slot, message: Run) -> bool:
        if slot.worker_id in self.unreachable:  # the shell kills it; its death ends the run
            return False
        self.sent.append((slot.worker_id, message))
        return True


@dataclass
class Bench:
    book: RunBook
    clock: FakeClock
    sink: MemorySink
    replies: Replies
    code: Code
    workers: Workers

    def dispatch(self, *worker_ids: str) -> list[tuple[str, Run]]:
        """Dispatch to ``worker_ids``, then commit: a worker is sent a run once its running
        row is committed."""
        self.workers.free.extend(worker_ids)
        before = len(self.workers.sent)
        self.book.dispatch(self.workers)
        self.commit()
        return self.workers.sent[before:]

    def commit(self) -> None:
        self.sink.commit()
        self.book.on_commits()


def bench(tmp_path: Path, toml: str, *, epoch: int = 0, **settings: Any) -> Bench:
    path = tmp_path / "supervisor.toml"
    (tmp_path / "job.py").write_text("print('{}')\n")
    path.write_text(toml)
    config = load_config(path, overrides={}, environ={})
    actors = build_actors(config.actors, {})
    clock, sink, replies, code = FakeClock(), MemorySink(), Replies(), Code()
    book = RunBook(
        sink=sink, replies=replies, code=code, actors=actors,
        settings=replace(config.supervisor, **settings), clock=clock, monotonic=clock,
        epoch=epoch,
    )  # fmt: skip
    return Bench(book, clock, sink, replies, code, Workers(free=[]))


def result(run: Run, worker_id: str, status: str, reason: str | None = None, **kw: Any) -> Result:
    return Result(
        run_id=run.run_id, attempt=run.attempt, worker_id=worker_id, status=status,
        reason=reason, **kw,
    )  # fmt: skip
