"""What one idle actor costs the supervisor: a regression guard for 100,000 actors in 300 MB.

In-process, the start-up steps that build an actor's lasting state -- the configuration, the
actor, its code sync and its seeded schedule -- for a few thousand actors on one script, half
cron and half interval as in ``benchmarks/run.py --actors``; the records they write are
dropped, as the writer does once they are committed.
"""

import gc
import tracemalloc
from pathlib import Path

from supervisor.actors import ActorRuntime, build_actors
from supervisor.code.book import CodeBook
from supervisor.code.records import CodeState
from supervisor.code.sync import make_cache
from supervisor.config import ActorConfig, load_config
from supervisor.heap import ScheduleHeap
from supervisor.records import Record, TaskState
from supervisor.reload import _apply_actors, plan_reload
from supervisor.scheduler import Scheduler
from tests.unit.fakes import bench

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


class _Codebook:
    def reconfigure(self, actor: ActorRuntime, before: ActorConfig | None) -> None:
        pass


def test_start_up_states_are_held_once_and_a_removed_actors_state_is_kept(
    tmp_path: Path,
) -> None:
    """build_actors hands each stored state to its actor (not kept twice for 100,000 actors);
    the store's states of unconfigured actors stay for a reload, and so does the current state
    of an actor a reload removes, should a later one add it again."""
    b = bench(tmp_path, '[[actors]]\nname = "job"\nscript = "job.py"\n')
    one = load_config(tmp_path / "supervisor.toml", environ={})
    stored = {
        "job": TaskState(actor="job", consecutive_failures=2, updated_at=1.0),
        "other": TaskState(actor="other", is_paused=True, updated_at=1.0),
    }
    actors = build_actors(one.actors, stored)
    assert actors["job"].state.consecutive_failures == 2 and list(stored) == ["other"]
    b.book.actors["job"].update_state(consecutive_failures=5)
    (tmp_path / "supervisor.toml").write_text("")
    none = load_config(tmp_path / "supervisor.toml", environ={})
    _apply_actors(plan_reload(one, none), none, b.book, _Codebook(), stored)  # type: ignore[arg-type]
    assert "job" not in b.book.actors and stored["job"].consecutive_failures == 5
    _apply_actors(plan_reload(none, one), one, b.book, _Codebook(), stored)  # type: ignore[arg-type]
    assert b.book.actors["job"].state.consecutive_failures == 5
