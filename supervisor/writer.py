"""The batch writer: the one thread that writes to the store.

The supervisor's loop must never wait for the database, yet it must know when a record is
durable: it replies "accepted" and dispatches a run only once the run's row is committed. So
``put`` only appends to a queue and returns a sequence number; the writer thread commits records
in order, in batches, and then advances ``committed`` and makes ``wakeup_fd`` readable. Every
record with ``seq <= committed`` is durable.

Batching is group commit: the thread takes everything waiting (up to ``batch_size``) and keeps
collecting while more arrives, and flushes when the batch is full, when its oldest record is
``max_age_s`` old, or as soon as the queue stays empty across a yield. An idle system gets one
record per commit with minimal latency; a busy one gets big batches because records pile up
while the previous commit runs.

A failed write is never dropped: the batch is kept and retried with exponential backoff while
``put`` keeps accepting records.
"""

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

from supervisor.records import Record
from supervisor.store.base import Store

log = logging.getLogger(__name__)

_Entry = tuple[int, float, Record]  # (sequence number, monotonic time of put, record)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStats:
    """A snapshot of the writer for ``status`` and benchmarks.

    ``queue_depth`` counts records put but not yet committed (waiting or in the batch being
    written). ``full_batches``/``aged_batches``/``idle_batches`` say why each batch was closed,
    which tells whether ``batch_size`` and ``max_age_s`` fit the load.
    """

    queue_depth: int
    committed: int
    batches: int
    records: int
    failures: int
    last_error: str | None
    last_flush_ms: float | None
    degraded: bool
    full_batches: int
    aged_batches: int
    idle_batches: int


class BatchWriter:
    """Owns all writes to ``store``; thread-safe ``put``, durable-sequence tracking."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 1000,
        max_age_s: float = 0.02,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_age_s < 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("max_age_s must be >= 0 and 0 < backoff_initial_s <= backoff_max_s")
        self._store = store
        self._batch_size = batch_size
        self._max_age_s = max_age_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s

        # One lock, three conditions: work for the thread, commits for flush(), and retry_now
        # so close() can cut a backoff short without put() waking the backoff every time.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._commits = threading.Condition(self._lock)
        self._retry = threading.Condition(self._lock)
        self._queue: deque[_Entry] = deque()
        self._last_seq = 0
        self._committed = 0
        self._closing = False
        self._retry_now = False
        self._abandon = False
        self._thread: threading.Thread | None = None

        self._batches = 0
        self._records = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_flush_ms: float | None = None
        self._degraded = False
        self._reasons = {"full": 0, "aged": 0, "idle": 0}

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_open = True

    # -- the supervisor's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread. Records put before ``start`` wait in the queue."""
        with self._lock:
            if self._thread is not None or self._closing:
                raise RuntimeError("BatchWriter.start() called twice or after close()")
            # daemon: a store stuck in a write must not keep the process alive after close()
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def put(self, record: Record) -> int:
        """Queue ``record``; return its sequence number. Never waits for the store."""
        now = time.monotonic()
        with self._lock:
            if self._closing:
                raise RuntimeError("BatchWriter.put() after close()")
            self._last_seq += 1
            self._queue.append((self._last_seq, now, record))
            self._work.notify()
            return self._last_seq

    @property
    def committed(self) -> int:
        """Every record whose sequence number is at most this is durable."""
        with self._lock:
            return self._committed

    def wakeup_fd(self) -> int:
        """A non-blocking pipe end that becomes readable after each commit (for a poller).

        Valid until ``close()``, which closes it: unregister it from the poller first.
        """
        return self._wake_r

    def drain_wakeups(self) -> None:
        """Empty the wakeup pipe; call it when the poller reports ``wakeup_fd`` readable."""
        with self._lock:
            if not self._pipe_open:
                return
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass

    def flush(self, timeout: float) -> bool:
        """Wait until every record put so far is committed; False if ``timeout`` ran out."""
        with self._lock:
            target = self._last_seq
            # an abandoned writer (closed with the store down) will never commit: do not wait
            self._commits.wait_for(lambda: self._committed >= target or self._abandon, timeout)
            return self._committed >= target

    def close(self, timeout: float) -> bool:
        """Refuse new records, flush, stop the thread; True when nothing was left unwritten.

        The store stays open: its owner closes it. After ``timeout``, records still unwritten
        are abandoned and counted in the error log (the spool, a later issue, will keep them).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._abandon:  # closed before
                return self._committed >= self._last_seq
            self._closing = True
            self._retry_now = True  # a writer backing off gets one more immediate attempt
            self._work.notify_all()
            self._retry.notify_all()
            thread = self._thread
        if thread is not None:
            self.flush(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._abandon = True
            self._work.notify_all()
            self._retry.notify_all()
            self._commits.notify_all()
        if thread is not None:
            thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            unwritten = self._last_seq - self._committed
            stuck = thread is not None and thread.is_alive()
            if not stuck and self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)
        if unwritten:
            log.error(
                "store writer closed with %d records unwritten (last error: %s)",
                unwritten,
                self._last_error,
                extra={"event": "store_writer_unwritten", "unwritten": unwritten},
            )
        return unwritten == 0

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                queue_depth=self._last_seq - self._committed,
                committed=self._committed,
                batches=self._batches,
                records=self._records,
                failures=self._failures,
                last_error=self._last_error,
                last_flush_ms=self._last_flush_ms,
                degraded=self._degraded,
                full_batches=self._reasons["full"],
                aged_batches=self._reasons["aged"],
                idle_batches=self._reasons["idle"],
            )

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            if not self._write(batch):
                return

    def _collect(self) -> list[_Entry] | None:
        """Wait for records and gather one batch by the flush rule; None when closed and empty."""
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                self._work.wait()
        batch: list[_Entry] = []
        while True:
            with self._lock:
                taken = min(self._batch_size - len(batch), len(self._queue))
                batch.extend(self._queue.popleft() for _ in range(taken))
            if len(batch) >= self._batch_size:
                reason = "full"
            elif time.monotonic() - batch[0][1] >= self._max_age_s:
                reason = "aged"
            elif taken == 0:
                reason = "idle"  # nothing arrived while we yielded: the queue is quiet
            else:
                time.sleep(0)  # yield the GIL so producers can add to this batch
                continue
            with self._lock:
                self._reasons[reason] += 1
            return batch

    def _write(self, batch: list[_Entry]) -> bool:
        """Commit ``batch``, retrying with backoff until it lands; False if abandoned by close."""
        delay = self._backoff_initial_s
        while True:
            started = time.monotonic()
            try:
                self._commit(batch)
            except Exception as exc:
                self._record_failure(batch, exc, delay)
                with self._lock:
                    self._retry.wait_for(lambda: self._retry_now or self._abandon, delay)
                    self._retry_now = False
                    if self._abandon:
                        return False
                delay = min(delay * 2, self._backoff_max_s)
                continue
            self._record_success(batch, (time.monotonic() - started) * 1000.0)
            return True

    def _commit(self, batch: list[_Entry]) -> None:
        """The one place a batch becomes durable (a later issue adds the on-disk spool here)."""
        self._store.write_batch([record for _, _, record in batch])

    def _record_failure(self, batch: list[_Entry], exc: Exception, delay: float) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._degraded = True
            failures = self._failures
        log.error(
            "store write of %d records failed; retrying in %.2f s (failure %d)",
            len(batch),
            delay,
            failures,
            exc_info=exc,
            extra={"event": "store_write_failed", "records": len(batch), "retry_in_s": delay},
        )

    def _record_success(self, batch: list[_Entry], elapsed_ms: float) -> None:
        with self._lock:
            recovered = self._degraded
            failures = self._failures
            self._committed = batch[-1][0]
            self._batches += 1
            self._records += len(batch)
            self._last_flush_ms = elapsed_ms
            self._degraded = False
            self._commits.notify_all()
            if self._pipe_open:
                # a full pipe means the poller is already due to wake up
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\x01")
        if recovered:
            log.info(
                "store writes recovered after %d failures",
                failures,
                extra={"event": "store_write_recovered"},
            )
