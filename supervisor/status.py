"""The ``status`` reply: scoreboard slots, actors' schedules, queue and store health.

Built from what the supervisor already holds in memory and shared memory: answering it costs
no database query and no message to a worker.
"""

import os
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.alerts.sender import AlertSender
from supervisor.code.book import CodeBook
from supervisor.control import ControlServer
from supervisor.deadletter import DeadLetters
from supervisor.lease import Lease
from supervisor.pool import WorkerPool
from supervisor.reader import Reader
from supervisor.runbook import RunBook
from supervisor.settings import SupervisorSettings
from supervisor.spool import Spool
from supervisor.store.base import Store
from supervisor.workflows.book import WorkflowBook
from supervisor.writer import BatchWriter
from supervisor.writerstats import WriterStats
from workers.sandbox import SandboxConfig, private_tmp_available
from workers.seccomp import program


class Supervisor(Protocol):
    """What requests and status read of the running supervisor (:class:`supervisor.core.
    Supervisor` is one): a protocol, so that they never import the process shell that imports
    them."""

    @property
    def book(self) -> RunBook: ...
    @property
    def control(self) -> ControlServer: ...
    @property
    def settings(self) -> SupervisorSettings: ...
    @property
    def writer(self) -> BatchWriter: ...
    @property
    def pool(self) -> WorkerPool: ...
    @property
    def actors(self) -> dict[str, ActorRuntime]: ...
    @property
    def codebook(self) -> CodeBook: ...
    @property
    def sandbox(self) -> SandboxConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def spool(self) -> Spool: ...
    @property
    def lease(self) -> Lease: ...
    @property
    def dead_letters(self) -> DeadLetters: ...
    @property
    def store_health(self) -> "StoreHealth": ...
    @property
    def instance_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def reader(self) -> Reader: ...
    def kill_on_worker(self, worker_id: str, run_id: str, attempt: int) -> bool: ...
    @property
    def sender(self) -> AlertSender | None: ...
    def reload(self) -> dict[str, Any]: ...
    @property
    def workflows(self) -> WorkflowBook: ...


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC, for people; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def protections(sandbox: SandboxConfig) -> dict[str, bool]:
    """Which run isolation applies: most of it needs the supervisor to be root."""
    root = os.geteuid() == 0
    return {
        "uid_per_run": bool(sandbox.run_uids),  # /proc, ptrace, signals, nproc per run
        "fixed_user": sandbox.run_as is not None,
        "capabilities_dropped": root,
        "no_new_privs": True,
        "no_user_namespaces": program(os.uname().machine) is not None,  # workers/seccomp.py
        "private_tmpdir": True,
        "umask_077": True,
        "network_none_available": root,
        "private_tmp": private_tmp_available(),  # tmp_mb: a tmpfs of its own per run
        "private_ipc": private_tmp_available(),  # System V IPC and POSIX queues of its own
        "hidden_processes": sandbox.hide_processes,  # /proc shows a run its own user's only
        "pristine_fork": True,  # fork-mode runs are forked from a process that saw no run
        "orphans_by_uid": bool(sandbox.run_uids),  # else by session, which a script can leave
    }


def build_status(sup: "Supervisor") -> dict[str, Any]:
    """The ``status`` reply: the supervisor, each worker slot and actor, the queue, the store."""
    return {
        "supervisor": {
            "pid": os.getpid(),
            "instance_id": sup.instance_id,
            "phase": sup.book.phase.value,
            "started_at": iso(sup.started_at),
            "uptime_s": round(time.time() - sup.started_at, 3),
            "control": sup.settings.control,
            "workers": sup.settings.workers,
            "concurrency": sup.settings.concurrency,
            "exec_python": sup.sandbox.python,
            "run_as": sup.settings.run_as if sup.sandbox.run_as else None,
            "protections": protections(sup.sandbox),
        },
        "workers": _workers(sup),
        "actors": _actors(sup),
        "queue": {
            "ready": len(sup.book.ready),
            "in_flight": len(sup.book.in_flight()),
            "active_runs": len(sup.book.runs),
            "capacity": sup.settings.queue_size,
        },
        "store": _store(sup),
        "alerts": alert_counts(sup),
        "counters": all_counters(sup),
        "workflows": sup.workflows.progress(),
    }


def alert_counts(sup: "Supervisor") -> dict[str, int] | None:
    """Pending alerts, and those delivered or failed since this start; None: no [[alerts]]."""
    return sup.sender.counts() if sup.sender is not None else None


def _last_run(actor: ActorRuntime) -> dict[str, Any] | None:
    run = actor.last_run
    if run is None:
        return None
    return {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "status": run.status,
        "reason": run.reason,
        "error": run.error,
        # what the script said last, often the reason itself ("disk full")
        "stderr_last_line": next(reversed(run.stderr_tail.strip().splitlines()), None),
        "finished_at": iso(run.finished_at),
    }


def _workers(sup: "Supervisor") -> list[dict[str, Any]]:
    now = time.monotonic()
    workers = []
    for handle, view in sup.pool.views():
        workers.append(
            {
                "slot": view.index,
                "worker_id": handle.worker_id if handle else None,
                "pid": view.pid or None,
                "launcher_pid": view.launcher_pid or None,
                "state": view.state.name.lower() if handle else "restarting",
                "ready": bool(handle and handle.ready),
                "in_flight": view.in_flight,
                "current_run": view.run_id or None,
                "current_attempt": view.attempt or None,
                "child_pid": view.child_pid or None,
                "runs_done": view.runs_done,
                "runs_failed": view.runs_failed,
                "rss_kb": view.rss_kb,
                "bad_messages": view.bad_messages,
                "heartbeat_age_s": round(view.heartbeat_age(now), 3) if view.pid else None,
                "started_at": iso(view.started_at) if view.started_at else None,
            }
        )
    return workers


def _actors(sup: "Supervisor") -> list[dict[str, Any]]:
    actors = []
    for actor in sup.actors.values():
        state = actor.state
        schedule = actor.config.schedule
        actors.append(
            {
                "name": actor.name,
                "schedule": schedule.describe() if schedule else None,
                "next_due": iso(state.next_run_at) if schedule else None,
                "next_due_ts": state.next_run_at if schedule else None,
                "paused": state.is_paused,
                "paused_reason": state.paused_reason,
                "consecutive_failures": state.consecutive_failures,
                "last_run_at": iso(state.last_run_at),
                "last_run": _last_run(actor),  # the last one that ended since this start
                "active_runs": actor.running,
                "mode": actor.config.mode,
                "code_sha256": actor.code_sha256,
                "exec_mode": actor.config.exec_mode,
                "sync": actor.config.sync,
                "code_history_id": actor.code.history_id,
                "code_status": actor.code.status,
            }
        )
    return actors


def _store(sup: "Supervisor") -> dict[str, Any]:
    stats = sup.writer.stats()
    return {
        "database": sup.store.description,
        "degraded": stats.degraded,
        "queue_depth": stats.queue_depth,
        "committed": stats.committed,
        "batches": stats.batches,
        "records": stats.records,
        "failures": stats.failures,
        "last_error": stats.last_error,
        "last_flush_ms": stats.last_flush_ms,
        # records durable in the spool, waiting for the database (degraded while > 0)
        "spool_depth": stats.spool_depth,
        "spool_batches": stats.spool_batches,
        "spool_bytes": stats.spool_bytes,
        "spool_dir": str(sup.spool.folder),
        "spooled": stats.spooled,
        "replayed": stats.replayed,
        "rejected": stats.rejected,
        "dead_letters": stats.dead_letters,
        "dead_letter_file": str(sup.dead_letters.path),
        "lease": sup.lease.status(),
    }


def build_metrics(sup: "Supervisor") -> dict[str, Any]:
    """The ``metrics`` reply: :class:`supervisor.metrics.RunMetrics` plus the gauges of now.

    Like ``status``, built from memory only; per actor it is a few numbers, so a thousand
    actors cost a few hundred microseconds of the loop.
    """
    workers: dict[str, int] = {}
    for handle, view in sup.pool.views():
        if handle is None:
            state = "restarting"
        elif handle.ready and view.state.name == "READY":
            state = "busy" if view.in_flight else "idle"
        else:
            state = "starting" if view.state.name != "STOPPING" else "stopping"
        workers[state] = workers.get(state, 0) + 1
    stats = sup.writer.stats()
    last_commit = sup.writer.last_commit_at
    return {
        **sup.book.metrics.snapshot(),
        "phase": sup.book.phase.value,
        "uptime_s": time.time() - sup.started_at,
        "workers": workers,
        "workers_ready": sum(1 for h, _ in sup.pool.views() if h and h.ready),
        "workers_total": sup.settings.workers,
        "queue_depth": sup.book.waiting(),
        "queue_capacity": sup.settings.queue_size,
        "runs_in_flight": sum(1 for a in sup.book.runs.values() if a.worker_id is not None),
        "oldest_queued_at": min(
            (sup.book.runs[r].record.queued_at for r in sup.book.ready if r in sup.book.runs),
            default=None,
        ),
        "busy_rejections": sup.book.counters["busy_rejections"],
        "worker_restarts": sup.book.counters["worker_deaths"],
        "store_degraded": stats.degraded,
        "store_spool_depth": stats.spool_depth,
        "alerts": alert_counts(sup),
        "store_batch_bounds": list(sup.writer.batch_seconds.bounds),
        "store_batch": sup.writer.batch_seconds.snapshot(),
        "last_commit_age_s": None if last_commit is None else time.time() - last_commit,
        "actors": [
            [
                a.name,
                a.state.is_paused,
                a.state.consecutive_failures,
                a.state.next_run_at if a.config.schedule else None,
            ]
            for a in sup.actors.values()
        ],
    }


def status_line(sup: "Supervisor") -> str:
    """systemd's STATUS=: what `systemctl status` shows."""
    ready = sum(1 for handle in sup.pool.handles() if handle.ready)
    line = (
        f"{ready}/{sup.settings.workers} workers ready, {len(sup.book.in_flight())} "
        f"run(s) in flight, {sup.book.waiting()} waiting"
    )
    return line + (", store DEGRADED (spooling)" if sup.store_health.degraded else "")


def all_counters(sup: "Supervisor") -> dict[str, int]:
    """The run book's counters, the scheduler's and the control socket's."""
    return {
        **sup.book.counters,
        "bad_requests": sup.control.bad_requests,
        "replies_dropped": sup.control.replies_dropped,
        "requests_over_limit": sup.control.over_limit,
        "fires_dropped": sup.book.scheduler.dropped,
        "fires_skipped": sup.book.scheduler.skipped,
    }


class StoreHealth:
    """``store_degraded``/``store_recovered`` events (and alerts) as the writer flips.

    Looked at once per loop pass; the writer counts its outages, so one that began and ended
    between two looks (a 100 ms blip) still gives both events."""

    def __init__(self, writer: BatchWriter, store: str, instance_id: str) -> None:
        self._writer, self._store, self._instance_id = writer, store, instance_id
        self.degraded = False
        self._outages = 0

    def check(self) -> None:
        stats = self._writer.stats()
        began, self._outages = stats.outages > self._outages, stats.outages
        if not self.degraded and (began or stats.degraded):
            self.degraded = True
            self._emit("store_degraded", stats)
        if self.degraded and not stats.degraded:
            self.degraded = False
            self._emit("store_recovered", stats)

    def _emit(self, event: str, stats: WriterStats) -> None:
        self._writer.put(events.supervisor_event(
            event, self._instance_id,
            store=self._store, last_error=stats.last_error, spool_depth=stats.spool_depth,
        ))  # fmt: skip
