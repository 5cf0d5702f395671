"""What a configuration reload (SIGHUP) changes, decided before anything is applied.

Actors are reloaded live: added ones start, removed ones stop being scheduled (their runs in
flight finish and their history stays), changed ones take their new settings, and a changed
schedule takes effect from now. Supervisor settings that shape processes, sockets or the store
(workers, control, database, ...) need a restart: the running supervisor keeps their old values
and says so.
"""

from dataclasses import dataclass, fields, replace

from supervisor.config import Config
from supervisor.settings import SupervisorSettings

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
