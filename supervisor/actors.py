"""The supervisor's live view of each configured actor: config, code hash, durable state."""

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from supervisor.config import ActorConfig
from supervisor.records import ActorRecord, TaskState

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    """Hex SHA256 of a file, or "" when it cannot be read (the run will then fail, classified)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        log.warning("cannot hash script %s: %s", path, exc)
        return ""


@dataclass(eq=False)
class ActorRuntime:
    """One actor as the main loop sees it. Only the main loop touches it."""

    config: ActorConfig
    code_sha256: str
    state: TaskState
    active: set[str] = field(default_factory=set)  # run ids accepted and not yet final
    # Fires waiting for the active run to end: (trigger, scheduled_for). Filled by
    # overlap = "queue" and by catch-up, so an actor's runs never overlap unless it allows it.
    pending: deque[tuple[str, float]] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.config.name

    def record(self) -> ActorRecord:
        schedule = self.config.schedule
        return ActorRecord(
            name=self.name,
            script_path=str(self.config.script),
            code_sha256=self.code_sha256,
            schedule=schedule.describe() if schedule else None,
            config={
                "mode": self.config.mode,
                "timezone": self.config.timezone,
                "timeout_s": self.config.timeout_s,
                "max_retries": self.config.max_retries,
                "overlap": self.config.overlap,
                "catch_up": self.config.catch_up,
            },
            updated_at=time.time(),
        )

    def update_state(self, **changes: object) -> TaskState:
        self.state = replace(self.state, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        return self.state


def build_actors(
    configs: dict[str, ActorConfig], states: dict[str, TaskState]
) -> dict[str, ActorRuntime]:
    """Pair each configured actor with its stored state (or a fresh one) and its code hash."""
    now = time.time()
    return {
        name: ActorRuntime(
            config=cfg,
            code_sha256=sha256_of(cfg.script),
            state=states.get(name) or TaskState(actor=name, updated_at=now),
        )
        for name, cfg in configs.items()
    }
