"""What a configuration reload (SIGHUP) changes, decided before anything is applied.

Actors are reloaded live: added ones start, removed ones stop being scheduled (their runs in
flight finish and their history stays), changed ones take their new settings, and a changed
schedule takes effect from now. Supervisor settings that shape processes, sockets or the store
(workers, control, database, ...) need a restart: the running supervisor keeps their old values
and says so.
"""

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, fields, replace
from typing import Any

from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.code.book import CodeBook
from supervisor.code.sync import ActorCode
from supervisor.config import Config, load_config
from supervisor.errors import ConfigError, StartupError
from supervisor.heap import EntryKind
from supervisor.preflight import check_reloaded_scripts
from supervisor.records import TaskState
from supervisor.runbook import RunBook
from supervisor.settings import SupervisorSettings
from workers.sandbox import SandboxConfig

log = logging.getLogger(__name__)

# Settings a running supervisor applies at once; every other one needs a restart.
LIVE_SETTINGS = frozenset(
    {
        "queue_size",
        "shutdown_grace_s",
        "heartbeat_timeout_s",
        "log_level",
        # These three are defaults already resolved into each actor's configuration, so a
        # change reaches the actors themselves and is applied with them.
        "mode",
        "limits",
        "max_consecutive_failures",
    }
)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    rescheduled: tuple[str, ...]  # changed actors whose schedule (or time zone) changed
    restart_needed: tuple[str, ...]  # supervisor settings that changed but need a restart
    applied_settings: tuple[str, ...]  # supervisor settings that changed and apply now
    settings: SupervisorSettings  # the new settings, with restart-only ones kept as they were


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    before, after = old.actors, new.actors
    changed = tuple(n for n in after if n in before and after[n] != before[n])
    rescheduled = tuple(
        n
        for n in changed
        if after[n].schedule != before[n].schedule or after[n].timezone != before[n].timezone
    )
    differing = [
        f.name
        for f in fields(SupervisorSettings)
        if getattr(old.supervisor, f.name) != getattr(new.supervisor, f.name)
    ]
    restart = tuple(n for n in differing if n not in LIVE_SETTINGS)
    kept = replace(new.supervisor, **{n: getattr(old.supervisor, n) for n in restart})
    return ReloadPlan(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        rescheduled=rescheduled,
        restart_needed=restart,
        applied_settings=tuple(n for n in differing if n in LIVE_SETTINGS),
        settings=kept,
    )


class ReloadRejected(Exception):
    """The new configuration is invalid (or a script unusable); the running one stays."""


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A reload that was applied: the configuration now in effect and what changed."""

    config: Config
    plan: ReloadPlan
    alerts_changed: bool = False

    def answer(self) -> dict[str, Any]:
        """What ``actor-supervisor reload`` prints: the changes, and what waits for a restart."""
        plan = self.plan
        return {
            "config": str(self.config.path) if self.config.path else None,
            "added": list(plan.added),
            "removed": list(plan.removed),
            "changed": list(plan.changed),
            "rescheduled": list(plan.rescheduled),
            "settings_applied": list(plan.applied_settings),
            "restart_needed": list(plan.restart_needed),
            "alerts_changed": self.alerts_changed,
        }


def reload_config(
    config: Config,
    overrides: Mapping[str, Any],
    *,
    sandbox: SandboxConfig,
    book: RunBook,
    codebook: CodeBook,
    stored_states: MutableMapping[str, TaskState],
    instance_id: str,
    by: str = "SIGHUP",
) -> Reloaded:
    """Apply a changed configuration file to the run book's actors and return it. Settings
    the shell applies are the caller's. ``by`` names who asked, in the log.

    :raises ReloadRejected: the new file is invalid; the old configuration stays in effect.
    """
    try:
        new = load_config(config.path, overrides=overrides, environ=os.environ)
        check_reloaded_scripts(config, new, sandbox)
    except (ConfigError, StartupError) as exc:
        book.counters["reloads_rejected"] += 1
        log.error("%s: configuration rejected, keeping the running one: %s", by, exc)
        book.sink.put(events.supervisor_event("config_rejected", instance_id, error=str(exc)))
        raise ReloadRejected(str(exc)) from exc
    plan = plan_reload(config, new)
    _apply_actors(plan, new, book, codebook, stored_states)
    alerts_changed = new.alerts != config.alerts
    if alerts_changed:
        log.warning("%s: [[alerts]] changed; the new entries apply at the next restart", by)
    book.settings = plan.settings
    book.counters["reloads"] += 1
    log.info(
        "%s: configuration reloaded", by,
        extra={"added": plan.added, "removed": plan.removed, "changed": plan.changed,
               "settings": plan.applied_settings},
    )  # fmt: skip
    if plan.restart_needed:
        log.warning("%s: these settings changed but need a restart to apply: %s",
                    by, ", ".join(plan.restart_needed))  # fmt: skip
    book.sink.put(events.supervisor_event(
        "config_reloaded", instance_id, added=list(plan.added), removed=list(plan.removed),
        changed=list(plan.changed), restart_needed=list(plan.restart_needed),
    ))  # fmt: skip
    kept = replace(new, supervisor=plan.settings, alerts=config.alerts)
    return Reloaded(config=kept, plan=plan, alerts_changed=alerts_changed)


def _apply_actors(
    plan: ReloadPlan,
    new: Config,
    book: RunBook,
    codebook: CodeBook,
    stored_states: MutableMapping[str, TaskState],
) -> None:
    """Removed actors stop being scheduled; added ones start; changed ones take effect now."""
    now = book.clock()
    for name in plan.removed:
        book.scheduler.forget(name)
        book.heap.remove((EntryKind.PROBE, name))
        stored_states[name] = book.actors.pop(name).state  # if a later reload adds it again
    for name in (*plan.added, *plan.changed):
        cfg = new.actors[name]
        actor = book.actors.get(name)
        before = actor.config if actor is not None else None
        if actor is None:
            state = stored_states.get(name) or TaskState(actor=name, updated_at=now)
            actor = ActorRuntime(
                config=cfg, state=state, code=ActorCode(home=str(cfg.script.parent))
            )
            book.actors[name] = actor
        else:
            actor.config = cfg
        codebook.reconfigure(actor, before)
        book.sink.put(actor.record())
        if name in plan.added:
            book.scheduler.seed(actor, now)
        elif name in plan.rescheduled:
            book.scheduler.reseed(actor, now)
