"""The reader: one thread for the store reads the running supervisor needs.

The main loop never waits for the database. When it must read -- an actor's code after a CLI
deploy or rollback, or after a reload -- it submits a job here and goes on; the thread runs the
job and makes :meth:`Reader.wakeup_fd` readable, the loop's poller wakes up, and
:meth:`Reader.drain` calls each job's ``done`` callback on the main thread with the result (or
the exception). The same pattern as the batch writer's commit pipe.
"""

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Job = Callable[[], Any]
Done = Callable[[Any, Exception | None], None]  # (result, error): exactly one is set


class Reader:
    """Runs jobs in order on one daemon thread; hands results back through a pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._jobs: deque[tuple[Job, Done]] = deque()
        self._done: deque[tuple[Done, Any, Exception | None]] = deque()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="store-reader", daemon=True)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job, done: Done) -> None:
        """Queue ``job``; ``done(result, error)`` runs on the caller's thread in :meth:`drain`."""
        with self._lock:
            if self._closing:
                raise RuntimeError("Reader.submit() after close()")
            self._jobs.append((job, done))
            self._work.notify()

    def wakeup_fd(self) -> int:
        return self._wake_r

    def drain(self) -> None:
        """Empty the pipe and deliver every finished job's result."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            with self._lock:
                if not self._done:
                    return
                done, result, error = self._done.popleft()
            done(result, error)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the job in progress (queued ones are dropped); close the pipe."""
        with self._lock:
            self._closing = True
            self._jobs.clear()
            self._work.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closing:
                    self._work.wait()
                if self._closing:
                    return
                job, done = self._jobs.popleft()
            result: Any = None
            error: Exception | None = None
            try:
                result = job()
            except Exception as exc:  # the caller decides; a failed read never kills the thread
                error = exc
            with self._lock:
                if self._closing:
                    return
                self._done.append((done, result, error))
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\x01")
