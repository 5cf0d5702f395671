"""``[[workflows]]``: each entry checked key by key, with the configuration's precise errors.

A workflow names existing actors as its ``steps``; each step keeps its actor's limits, timeout,
retries, breaker and code version. The steps form a chain: an actor may appear once (a repeat
would be a cycle, and an item's step index would no longer name one step).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.config_kinds import Json, ScheduleTable, Zone
from supervisor.errors import ConfigError
from supervisor.schedule import Schedule, ScheduleError, parse_schedule
from supervisor.settings import checked, config_error
from supervisor.settings_kinds import Choice, Integer, Invalid, Kind, describe, unknown_key

WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
FAILURE_POLICIES = ("continue", "stop")
MAX_STEPS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowConfig:
    """One ``[[workflows]]`` entry, validated. ``max_parallel`` None: the pool's capacity."""

    name: str
    steps: tuple[str, ...]
    chunk_size: int = 100
    max_parallel: int | None = None
    schedule: Schedule | None = None
    timezone: str = "UTC"
    input: list[Any] = field(default_factory=list)  # the items a scheduled run gets
    on_item_failure: str = "continue"
    snapshot_every: int = 10

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": list(self.steps),
            "chunk_size": self.chunk_size,
            "max_parallel": self.max_parallel,
            "schedule": self.schedule.describe() if self.schedule is not None else None,
            "on_item_failure": self.on_item_failure,
            "snapshot_every": self.snapshot_every,
        }


class _Name(Kind):
    @property
    def expected(self) -> str:
        return "a name of 1-200 characters [A-Za-z0-9_.-]"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not WORKFLOW_NAME.match(value):
            raise self._wrong(value)
        return value


class _Steps(Kind):
    @property
    def expected(self) -> str:
        return 'a non-empty array of actor names, such as ["extract", "classify"]'

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self._wrong(value)
        if len(value) > MAX_STEPS:
            raise Invalid(f"at most {MAX_STEPS} steps, got {len(value)}")
        seen: dict[str, int] = {}
        for index, name in enumerate(value):
            if not isinstance(name, str):
                raise Invalid(f"expected an actor name, got {describe(name)}", index)
            if name in seen:
                raise Invalid(
                    f"actor {name!r} is already step {seen[name]}: steps form a chain, "
                    "a repeated actor would make a cycle",
                    index,
                )
            seen[name] = index
        return tuple(value)


class _Items(Kind):
    """The items of a scheduled run: an array of JSON-compatible values."""

    @property
    def expected(self) -> str:
        return "an array of items (JSON-compatible values)"

    def check(self, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self._wrong(value)
        return Json().check(value)  # type: ignore[no-any-return]


KEYS: dict[str, Kind] = {
    "name": _Name(),
    "steps": _Steps(),
    "chunk_size": Integer(1),
    "max_parallel": Integer(1),
    "schedule": ScheduleTable(),
    "timezone": Zone(),
    "input": _Items(),
    "on_item_failure": Choice(FAILURE_POLICIES),
    "snapshot_every": Integer(1),
}
_REQUIRED = ("name", "steps")


def parse_workflows(
    entries: Any, where: str, actors: Mapping[str, Any]
) -> dict[str, WorkflowConfig]:
    """The ``[[workflows]]`` array -> :class:`WorkflowConfig` by name; ``actors``: the
    configured actors by name (each step must be one). :raises ConfigError: the first problem."""
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError(
            f"{where}workflows: expected an array of tables ([[workflows]]), "
            f"got {describe(entries)}"
        )
    workflows: dict[str, WorkflowConfig] = {}
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        workflow = _workflow(entry, f"{where}workflows[{index}]", actors)
        if workflow.name in first_seen:
            raise ConfigError(
                f"{where}workflows[{index}] ({workflow.name}).name: duplicate workflow name "
                f"{workflow.name!r} (first defined at workflows[{first_seen[workflow.name]}])"
            )
        first_seen[workflow.name] = index
        workflows[workflow.name] = workflow
    return workflows


def _workflow(entry: Mapping[str, Any], label: str, actors: Mapping[str, Any]) -> WorkflowConfig:
    name = entry.get("name")
    if isinstance(name, str) and WORKFLOW_NAME.match(name):
        label = f"{label} ({name})"
    for key in entry:
        if key not in KEYS:
            raise config_error(label, unknown_key(key, KEYS))
    for key in _REQUIRED:
        if key not in entry:
            raise ConfigError(f"{label}.{key}: missing; every workflow needs name and steps")
    values: dict[str, Any] = {
        key: checked(KEYS[key].check, raw, f"{label}.{key}") for key, raw in entry.items()
    }
    for index, step in enumerate(values["steps"]):
        if step not in actors:
            known = ", ".join(sorted(actors)) or "none configured"
            raise ConfigError(f"{label}.steps[{index}]: unknown actor {step!r} (known: {known})")
    if "schedule" in values:
        zone = values.get("timezone", "UTC")
        try:
            values["schedule"] = parse_schedule(values["schedule"], zone)
        except ScheduleError as exc:
            inner = f".{exc.key}" if exc.key else ""
            raise ConfigError(f"{label}.schedule{inner}: {exc.message}") from None
        if not values.get("input"):
            raise ConfigError(f"{label}.input: a scheduled workflow needs its items here")
    elif "input" in values:
        raise ConfigError(f"{label}.input: only a scheduled workflow has items in its config")
    return WorkflowConfig(**values)
