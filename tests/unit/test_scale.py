"""What one idle actor costs the supervisor: a regression guard for 100,000 actors in 300 MB.

In-process, the start-up steps that build an actor's lasting state -- the configuration, the
actor, its code sync and its seeded schedule -- for a few thousand actors on one script, half
cron and half interval as in ``benchmarks/run.py --actors``; the records they write are
dropped, as the writer does once they are committed.
"""

import gc
import tracemalloc
from pathlib import Path

from supervisor.actors import build_actors
from supervisor.code.book import CodeBook
from supervisor.code.records import CodeState
from supervisor.code.sync import make_cache
from supervisor.config import load_config
from supervisor.heap import ScheduleHeap
from supervisor.records import Record
from supervisor.scheduler import Scheduler

ACTORS = 2000
MAX_BYTES_PER_ACTOR = 1600  # measured 1.1 KB (2.4 KB before slots, sharing and lazy sets)


class _Store:
    def load_code_states(self, names: list[str]) -> dict[str, CodeState]:
        return {}


class _Drop:
    """A sink whose records are committed, hence gone, at once."""

    committed = 0

    def put(self, record: Record) -> int:
        return 0


def _config(folder: Path) -> Path:
    (folder / "scripts").mkdir()
    (folder / "scripts" / "noop.py").write_text("pass\n")
    tables = []
    for i in range(ACTORS):
        every = f'type = "cron", expression = "{i % 60} * * * *"'
        schedule = every if i % 2 == 0 else f'type = "interval", seconds = {3600 + i % 600}'
        tables.append(
            f'[[actors]]\nname = "idle-{i}"\nscript = "scripts/noop.py"\n'
            f"schedule = {{ {schedule} }}\n"
        )
    path = folder / "supervisor.toml"
    path.write_text("\n".join(tables))
    return path


def test_an_idle_actor_costs_little_memory(tmp_path: Path) -> None:
    path = _config(tmp_path)
    cache = make_cache()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        config = load_config(path, environ={})
        actors = build_actors(config.actors, {})
        book = CodeBook(
            store=_Store(), writer=_Drop(), reader=None, cache=cache,  # type: ignore[arg-type]
            actors=lambda: actors, on_ready=lambda: None, clock=lambda: 1.0e9,
        )  # fmt: skip
        book.startup()
        scheduler = Scheduler(ScheduleHeap(), _Drop(), lambda *a, **k: None, lambda: True)
        for actor in actors.values():
            scheduler.seed(actor, 1.0e9)
        del book
        gc.collect()
        per_actor = (tracemalloc.get_traced_memory()[0] - before) / ACTORS
    finally:
        tracemalloc.stop()
    assert len(actors) == ACTORS and all(a.code.history_id for a in actors.values())
    assert per_actor < MAX_BYTES_PER_ACTOR, f"{per_actor:.0f} bytes per actor"
