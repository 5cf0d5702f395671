"""The bounded pool of worker processes: spawn, health, replacement, choice.

Reaping has one owner: each worker is a ``multiprocess`` process started with the *spawn*
method (the supervisor has ZeroMQ threads, so it never forks), and the supervisor's loop polls
every worker's ``sentinel``; nothing else waits for worker processes.
"""

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import multiprocess

from supervisor.errors import StartupError
from workers.sandbox import SandboxConfig
from workers.scoreboard import Scoreboard, SlotState, SlotView
from workers.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 60.0
MAX_BOOT_FAILURES = 5  # in a row, with no worker ever ready: fatal
RESPAWN_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(eq=False)
class WorkerHandle:
    """The supervisor's view of one worker process."""

    index: int
    worker_id: str
    process: Any  # multiprocess.Process
    spawned_at: float  # monotonic
    capacity: int
    ready: bool = False
    booted: bool = False  # it said hello once (a hung worker we kill is not a boot failure)
    in_flight: set[str] = field(default_factory=set)  # run ids
    killed_by_us: str | None = None  # why we killed it, if we did

    @property
    def identity(self) -> bytes:
        return self.worker_id.encode()

    @property
    def sentinel(self) -> int:
        sentinel: int = self.process.sentinel
        return sentinel

    @property
    def free(self) -> int:
        return self.capacity - len(self.in_flight) if self.ready else 0


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker that is gone, with the runs it held and a readable description."""

    handle: WorkerHandle
    description: str
    lost_runs: frozenset[str]


def describe_exit(exitcode: int | None) -> str:
    """Turn a process exit code into words (SIGKILL: perhaps the OOM killer)."""
    if exitcode is None:
        return "still running"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    signum = -exitcode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (perhaps out of memory)" if signum == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


class WorkerPool:
    """Owns the worker processes and their scoreboard slots."""

    def __init__(
        self,
        *,
        size: int,
        capacity: int,
        endpoint: str,
        scoreboard: Scoreboard,
        sandbox: SandboxConfig,
        heartbeat_timeout_s: float,
        log_level: str,
        log_format: str,
        respawn_backoff_s: Sequence[float] = RESPAWN_BACKOFF_S,
    ) -> None:
        """``respawn_backoff_s``: the wait before replacing a worker after 0, 1, 2, ... boot
        failures in a row (the last repeats); tests pass shorter ones."""
        self.size = size
        self.capacity = capacity
        self.endpoint = endpoint
        self.scoreboard = scoreboard
        self.sandbox = sandbox
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.log_level = log_level
        self.log_format = log_format
        self.respawn_backoff_s = tuple(respawn_backoff_s)
        self._ctx = multiprocess.get_context("spawn")
        self._slots: list[WorkerHandle | None] = [None] * size
        self._by_identity: dict[bytes, WorkerHandle] = {}
        self._by_sentinel: dict[int, WorkerHandle] = {}
        self._respawn_at: dict[int, float] = {}  # slot index -> monotonic time
        self._generation = 0
        self._boot_failures = 0
        self._ever_ready = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.size):
            self._spawn(index)

    def _spawn(self, index: int) -> WorkerHandle:
        self._generation += 1
        worker_id = f"w{index}.{self._generation}"
        self.scoreboard.clear(index)
        spec = WorkerSpec(
            worker_id=worker_id,
            slot=index,
            endpoint=self.endpoint,
            scoreboard_path=str(self.scoreboard.path),
            scoreboard_slots=self.scoreboard.slots,
            supervisor_pid=os.getpid(),
            capacity=self.capacity,
            sandbox=replace(
                self.sandbox,
                worker_id=worker_id,
                run_uids=self.uid_block(index),
                heartbeat_timeout_s=self.heartbeat_timeout_s,
            ),
            log_level=self.log_level,
            log_format=self.log_format,
        )
        process = self._ctx.Process(
            target=_run_worker, args=(spec,), name=f"actor-supervisor-{worker_id}"
        )
        process.start()
        handle = WorkerHandle(
            index=index,
            worker_id=worker_id,
            process=process,
            spawned_at=time.monotonic(),
            capacity=self.capacity,
        )
        self._slots[index] = handle
        self._by_identity[handle.identity] = handle
        self._by_sentinel[handle.sentinel] = handle
        self._respawn_at.pop(index, None)
        log.info("worker %s started", worker_id, extra={"pid": process.pid, "slot": index})
        return handle

    def uid_block(self, index: int) -> tuple[int, ...]:
        """Slot ``index``'s own uids, one per run it may hold: no two slots share one, and a
        respawned worker gets its predecessor's block (its leftovers die as it takes them)."""
        start = index * self.capacity
        return self.sandbox.run_uids[start : start + self.capacity]

    def on_hello(self, identity: bytes) -> WorkerHandle | None:
        handle = self._by_identity.get(identity)
        if handle is None:
            return None
        handle.ready = handle.booted = True
        self._ever_ready = True
        self._boot_failures = 0
        return handle

    def sentinels(self) -> list[int]:
        return list(self._by_sentinel)

    def reap(self, sentinel: int) -> WorkerExit | None:
        """Account for a worker whose sentinel became readable; schedule its replacement."""
        handle = self._by_sentinel.pop(sentinel, None)
        if handle is None:
            return None
        handle.process.join(timeout=1.0)
        self._by_identity.pop(handle.identity, None)
        if self._slots[handle.index] is handle:
            self._slots[handle.index] = None
        description = describe_exit(handle.process.exitcode)
        if handle.killed_by_us:
            description += f" after we killed it: {handle.killed_by_us}"
        if not handle.booted:
            self._boot_failures += 1
        backoff = self.respawn_backoff_s
        delay = backoff[min(self._boot_failures, len(backoff) - 1)]
        self._respawn_at[handle.index] = time.monotonic() + delay
        handle.process.close()
        return WorkerExit(handle, description, frozenset(handle.in_flight))

    def maintain(self, *, respawn: bool) -> None:
        """Respawn due replacements; kill workers that hang or never boot.

        :raises StartupError: workers keep dying before they ever became ready.
        """
        if self._boot_failures >= MAX_BOOT_FAILURES and not self._ever_ready:
            raise StartupError(
                f"workers failed to start {self._boot_failures} times in a row; "
                "see the log lines above for their errors"
            )
        now = time.monotonic()
        if respawn:
            for index, due in list(self._respawn_at.items()):
                if due <= now and self._slots[index] is None:
                    self._spawn(index)
        for handle in self.handles():
            if handle.killed_by_us:
                continue
            if not handle.ready and now - handle.spawned_at > BOOT_TIMEOUT_S:
                self.kill(handle, f"no hello within {BOOT_TIMEOUT_S:.0f}s")
            elif handle.ready:
                view = self.scoreboard.read(handle.index)
                age = view.heartbeat_age(now)
                if age > self.heartbeat_timeout_s:
                    self.kill(handle, f"no heartbeat for {age:.1f}s")

    def kill(self, handle: WorkerHandle, why: str) -> None:
        """SIGKILL a worker; its death is then handled like any other (sentinel -> reap)."""
        log.warning("killing worker %s: %s", handle.worker_id, why)
        handle.killed_by_us = why
        handle.ready = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.process.pid, signal.SIGKILL)

    def stop_all(self, timeout: float) -> None:
        """Wait for workers told to stop; kill the ones still there after ``timeout``."""
        deadline = time.monotonic() + timeout
        for handle in self.handles():
            handle.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                self.kill(handle, "did not stop in time")
                handle.process.join(timeout=5.0)
        self._by_sentinel.clear()
        self._by_identity.clear()
        self._slots = [None] * self.size

    # --- queries -----------------------------------------------------------------------------

    def handles(self) -> Iterator[WorkerHandle]:
        return (h for h in self._slots if h is not None)

    def by_identity(self, identity: bytes) -> WorkerHandle | None:
        return self._by_identity.get(identity)

    def pick(self) -> WorkerHandle | None:
        """The ready worker with the most free capacity whose slot says it takes runs."""
        best: WorkerHandle | None = None
        for handle in self._slots:
            if handle is None or handle.free <= 0:
                continue
            if best is None or handle.free > best.free:
                best = handle
        if best is not None and self.scoreboard.read(best.index).state is not SlotState.READY:
            return None
        return best

    def views(self) -> list[tuple[WorkerHandle | None, SlotView]]:
        return [(self._slots[i], self.scoreboard.read(i)) for i in range(self.size)]


def _run_worker(spec: WorkerSpec) -> None:
    raise SystemExit(worker_main(spec))
