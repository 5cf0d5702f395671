"""The supervisor's live view of each configured actor: config, code, durable state."""

import time
from dataclasses import dataclass, field, replace
from typing import Any

from supervisor.code.sync import ActorCode
from supervisor.config import ActorConfig
from supervisor.records import ActorRecord, RunRecord, TaskState
from supervisor.schedule import Schedule


@dataclass(eq=False, slots=True)
class ActorRuntime:
    """One actor as the main loop sees it. Only the main loop touches it.

    Slots, and ``active`` and ``pending`` made on first use (an empty set is 216 bytes, an
    empty list 56): 100,000 idle actors then fit in the memory budget."""

    config: ActorConfig
    state: TaskState
    code: ActorCode
    _active: set[str] | None = field(default=None, repr=False)
    _pending: list[tuple[str, float]] | None = field(default=None, repr=False)
    # The last run that ended since this supervisor started (final attempt), for ``status``.
    last_run: RunRecord | None = None

    @property
    def pending(self) -> list[tuple[str, float]]:
        """Fires waiting for the active run to end: (trigger, scheduled_for), oldest first, at
        most ``MAX_PENDING``. Filled by overlap = "queue" and by catch-up, so an actor's runs
        never overlap unless it allows it."""
        if self._pending is None:
            self._pending = []
        return self._pending

    @property
    def active(self) -> set[str]:
        """Run ids accepted and not yet final."""
        if self._active is None:
            self._active = set()
        return self._active

    @property
    def running(self) -> int:
        """How many runs are active, without making the set of an actor that never ran."""
        return len(self._active) if self._active else 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def code_sha256(self) -> str:
        """The hash of the code a run would get now (the dispatch confirms it)."""
        code = self.code
        if self.config.exec_mode != "file" and code.cache_path is not None:
            return code.code_sha256
        return code.seen_sha or ""

    def record(self) -> ActorRecord:
        """The store's row of this actor. Its ``schedule`` and ``config`` dicts are shared with
        the actors that have the same ones (records are never changed in place): at start-up
        100,000 of them wait for the writer at once."""
        cfg = self.config
        key = (cfg.mode, cfg.timezone, cfg.timeout_s, cfg.max_retries, cfg.overlap,
               cfg.catch_up, cfg.sync, cfg.command)  # fmt: skip
        config = _CONFIGS.get(key)
        if config is None:
            config = _remember(_CONFIGS, key, {
                "mode": cfg.mode, "timezone": cfg.timezone, "timeout_s": cfg.timeout_s,
                "max_retries": cfg.max_retries, "overlap": cfg.overlap,
                "catch_up": cfg.catch_up, "sync": cfg.sync,
                **({"command": list(cfg.command)} if cfg.command else {}),
            })  # fmt: skip
        schedule = cfg.schedule
        described = None
        if schedule is not None:
            described = _SCHEDULES.get(schedule)
            if described is None:
                described = _remember(_SCHEDULES, schedule, schedule.describe())
        return ActorRecord(
            name=self.name,
            script_path=str(cfg.script),
            code_sha256=self.code_sha256,
            schedule=described,
            config=config,
            updated_at=time.time(),
            exec_mode=cfg.exec_mode,
        )

    def update_state(self, **changes: object) -> TaskState:
        self.state = replace(self.state, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        return self.state


_CONFIGS: dict[tuple[Any, ...], dict[str, Any]] = {}
_SCHEDULES: dict[Schedule, dict[str, Any]] = {}
_REMEMBER_MAX = 10_000  # distinct values; beyond, a table starts again


def _remember(table: dict[Any, dict[str, Any]], key: Any, value: dict[str, Any]) -> dict[str, Any]:
    if len(table) >= _REMEMBER_MAX:
        table.clear()
    table[key] = value
    return value


def build_actors(
    configs: dict[str, ActorConfig], states: dict[str, TaskState]
) -> dict[str, ActorRuntime]:
    """Pair each configured actor with its stored state (or a fresh one); its code is loaded
    by the start-up sync (:mod:`supervisor.code.book`).

    The states taken are removed from ``states``, which keeps those of actors not configured
    (a reload may add them): with 100,000 actors, holding every start-up state twice -- once
    here, once in the actor until its first change -- would cost tens of MB."""
    now = time.time()
    return {
        name: ActorRuntime(
            config=cfg,
            state=states.pop(name) if name in states else TaskState(actor=name, updated_at=now),
            code=ActorCode(home=str(cfg.workdir)),
        )
        for name, cfg in configs.items()
    }
