"""The batch writer: the thread that writes to the store, and the loop's fast path around it.

The supervisor's loop must never wait for the database, yet it must know when a record is
durable: it replies "accepted" and dispatches a run only once the run's row is committed. So
``put`` only appends to a queue and returns a sequence number; the writer thread commits records
in order, in batches, and then advances ``committed`` and makes ``wakeup_fd`` readable. Every
record with ``seq <= committed`` is durable.

Batching is group commit: the thread takes everything waiting (up to ``batch_size``) when it
wakes and writes it at once. An idle system gets one record per commit with minimal latency; a
busy one gets big batches because records pile up while the previous commit runs. The
supervisor's loop holds the thread back during a turn of its handlers (``held``), so that a
batch is at least a whole turn's records, for at most ``max_age_s``. At the end of the turn,
when the store can commit at once (SQLite, healthy, its lock free), the loop writes the turn's
batch itself instead of waking the thread; everything that may wait stays with the thread.
One batch is written at a time, in order, whoever writes it.

A failed write is never dropped. With a :class:`~supervisor.spool.Spool` (the supervisor always
has one), a batch the store refuses is appended to the spool and fsync'd, which makes it
durable: ``committed`` advances and the supervisor keeps accepting and running work. While the
spool holds anything, newer batches are appended behind it rather than written, so the store
receives every record in order; a second thread, the replayer (:mod:`supervisor.replayer`),
writes the spool to the store with exponential backoff between attempts and empties it once the
store is back. Without a
spool (tests, the store benchmark) the batch is kept in memory and retried with backoff while
``put`` keeps accepting records, and ``committed`` waits.
"""

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from supervisor.deadletter import DeadLetters, write_or_isolate
from supervisor.metrics import BATCH_BOUNDS, Histogram
from supervisor.records import Record, RunRecord, evolve
from supervisor.replayer import Replayer
from supervisor.retention import Retention
from supervisor.spool import Spool, encode_batch
from supervisor.store.base import Store, StoreUnavailable
from supervisor.writerstats import WriterStats

log = logging.getLogger(__name__)


class Bundle(tuple[Record, ...]):
    """Records that must land in one transaction: an event and the alerts it causes. A bundle
    is one queue entry, so no batch boundary falls inside it."""

    __slots__ = ()


_Entry = tuple[int, float, Record | Bundle]  # (sequence number, monotonic time of put, record)
# The thread checkpoints the store (moves SQLite's WAL into the database file) after this many
# commits, about SQLite's own default of 1,000 log pages; not the committing loop, see held().
CHECKPOINT_EVERY = 64
BUSY_POLL_S = 0.005  # retention due while the loop writes a batch: look again this soon
Observer = Callable[[Record], Sequence[Record]]


class BatchWriter:
    """Owns all writes to ``store``; thread-safe ``put``, durable-sequence tracking.

    ``spool``, when given, is owned by the writer from ``start`` on: the writer closes it.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 1000,
        max_age_s: float = 0.02,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
        spool: Spool | None = None,
        replay_chunk: int = 5000,
        epoch: int = 0,
        dead_letters: DeadLetters | None = None,
        retention: Retention | None = None,
    ) -> None:
        _check_settings(batch_size, replay_chunk, max_age_s, backoff_initial_s, backoff_max_s)
        self._store = store
        self._spool = spool
        self.retention = retention  # pruned by this thread when idle (supervisor/retention.py)
        self._batch_size = batch_size
        self._max_age_s = max_age_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._epoch = epoch  # the lease term stamped on every run row (the fencing epoch)
        self._dead = dead_letters

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
        self._held = False  # see held()
        self._held_after = 0  # the held turn's records are those with a later seq
        # A batch is being written (by the thread, or by the loop at the end of a turn): the
        # other waits, so batches commit one at a time and in order.
        self._busy = False
        self._inline = False  # the store can take a batch at once or say no (see held())
        self._uncheckpointed = 0  # commits since the thread last checkpointed the store
        self._retry_now = False
        self._abandon = False
        self._thread: threading.Thread | None = None
        self._replayer = None if spool is None else self._new_replayer(spool, replay_chunk)

        self._batches = 0
        self._records = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_flush_ms: float | None = None
        # for /metrics: seconds per committed batch, and when the last one committed
        self.batch_seconds = Histogram(BATCH_BOUNDS)
        self.last_commit_at: float | None = None
        self._degraded = False  # the last store write (direct or replay) failed
        self._outages = 0  # healthy -> failing flips, so a short outage is not missed
        self._reasons = {"full": 0, "aged": 0, "idle": 0}
        self._rejected = 0

        self._wake_r, self._wake_w = _nonblocking_pipe()
        self._pipe_open = True

        # Alerts (supervisor.alerts): ``observe`` sees each record as it is put and may return
        # records to commit with it (in the same transaction); ``on_commit`` gets those records
        # on the writer thread once they are durable (stored or spooled).
        self.observe: Observer | None = None
        self.on_commit: Callable[[list[Record]], None] | None = None

    def _new_replayer(self, spool: Spool, chunk_records: int) -> Replayer:
        return Replayer(
            spool,
            self._store,
            chunk_records=chunk_records,
            backoff_initial_s=self._backoff_initial_s,
            backoff_max_s=self._backoff_max_s,
            on_failure=self._replay_failed,
            on_success=self._replay_succeeded,
        )

    # -- the supervisor's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (and the replayer). Records put before ``start`` wait."""
        with self._lock:
            if self._thread is not None or self._closing:
                raise RuntimeError("BatchWriter.start() called twice or after close()")
            self._inline = self._store.defer_checkpoints()
            # daemon: a store stuck in a write must not keep the process alive after close()
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        if self._replayer is not None:
            self._replayer.start()

    def put(self, record: Record) -> int:
        """Queue ``record`` (with what ``observe`` adds to it); return its sequence number.
        Never waits for the store."""
        if type(record) is RunRecord and record.epoch != self._epoch:
            record = evolve(record, epoch=self._epoch)
        extra = self.observe(record) if self.observe is not None else ()
        item = Bundle((record, *extra)) if extra else record
        now = time.monotonic()
        with self._lock:
            if self._closing:
                raise RuntimeError("BatchWriter.put() after close()")
            self._last_seq += 1
            self._queue.append((self._last_seq, now, item))
            if not self._held or len(self._queue) == self._batch_size:
                self._work.notify()  # held: at the end of the turn, unless a batch is full
            return self._last_seq

    @contextlib.contextmanager
    def held(self) -> Iterator["Turn"]:
        """Put records without waking the writer thread until the block ends, then wake it once.

        For the supervisor's loop around one turn of its handlers: woken at every ``put``, the
        thread would take the GIL from the loop each time the loop released it (a send, a
        read), and the two would hand it back and forth, a context switch each time; woken once
        at the end of the turn, it writes the turn's records while the loop waits in its poll.
        Records put meanwhile by other threads wait for the end of the turn too. Records of
        earlier turns never wait for this one: when turns follow each other without a pause (a
        burst of fires taken a chunk per turn), each turn's records go while the next is made.

        The :class:`Turn` it yields says, once the block ended, whether the caller committed the
        turn's records itself (see :meth:`_write_inline`): that commit does not make
        :meth:`wakeup_fd` readable, since the caller knows of it already and can act on it at
        once, without a wake-up and a turn of its poll.
        """
        turn = Turn()
        with self._lock:
            self._held = True
            self._held_after = self._last_seq
        try:
            yield turn
        finally:
            with self._lock:
                self._held = False
                batch = self._take_inline() if self._queue else None
                if batch is None and self._queue:
                    self._work.notify()
            if batch is not None:
                turn.committed = self._write_inline(batch)

    def _take_inline(self) -> list[_Entry] | None:
        """The queued records, for the loop to write itself, when the store allows it and
        nothing else is in the way (a batch being written, an outage, a spool to replay).
        Call with the lock held."""
        spool = self._spool
        if (
            not self._inline
            or self._busy
            or self._closing
            or self._degraded
            or (spool is not None and spool.pending)
        ):
            return None
        self._busy = True
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self._count_reason(batch)
        return batch

    def _write_inline(self, batch: list[_Entry]) -> bool:
        """Commit ``batch`` on the caller's thread (the loop's, at the end of a turn), or hand
        it back to the writer thread, untouched and first in line; say whether it committed.

        A healthy SQLite commit takes about a tenth of a millisecond: handing it to the thread
        cost more than writing it, in context switches and in the two threads trading the GIL
        (which also delayed the loop's next sends). So the loop writes when the store can do it
        at once (``Store.write_batch_now``: no other thread on the connection, no other process
        holding the write lock, checkpoints left to the thread) and leaves everything that may
        wait -- a locked database, an outage, retries, the spool -- to the thread.
        """
        started = time.monotonic()
        try:
            written = self._store.write_batch_now(_flatten(batch))
        except Exception:  # the thread writes it again and reports what goes wrong
            written = False
        if written:
            self._record_success(batch, (time.monotonic() - started) * 1000.0, wake=False)
        with self._lock:
            if not written:
                self._count_reason(batch, -1)  # the thread counts it when it takes it
                self._queue.extendleft(reversed(batch))
            self._busy = False
            if self._queue or self._uncheckpointed >= CHECKPOINT_EVERY:
                self._work.notify()
        return written

    @property
    def writing(self) -> bool:
        """Whether records put so far still wait to be durable."""
        with self._lock:
            return self._committed < self._last_seq

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    @property
    def committed(self) -> int:
        """Every record whose sequence number is at most this is durable (stored or spooled)."""
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
        """Refuse new records, flush, stop the threads; True when nothing was left unwritten.

        With a spool, "written" includes spooled: the replayer gets one last attempt to empty
        the spool within ``timeout``, and what it cannot replay waits on disk for the next
        start. The store stays open: its owner closes it. After ``timeout``, records still
        neither stored nor spooled are abandoned and counted in the error log.
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
        replayer = self._replayer if thread is not None else None  # started with the thread
        if replayer is not None:
            replayer.close()  # and so does the replayer
        if thread is not None:
            self.flush(max(0.0, deadline - time.monotonic()))
            thread.join(max(0.0, deadline - time.monotonic()))
        if replayer is not None:
            replayer.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._abandon = True
            self._work.notify_all()
            self._retry.notify_all()
            self._commits.notify_all()
        if replayer is not None:
            replayer.abandon()
        for worker in (thread, replayer):
            if worker is not None:
                worker.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            unwritten = self._last_seq - self._committed
            stuck = any(w is not None and w.is_alive() for w in (thread, replayer))
            if not stuck and self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)
        if not stuck:
            self._close_spool()
        if unwritten:
            log.error(
                "store writer closed with %d records unwritten (last error: %s)",
                unwritten,
                self._last_error,
                extra={"event": "store_writer_unwritten", "unwritten": unwritten},
            )
        return unwritten == 0

    def _close_spool(self) -> None:
        if self._spool is None:
            return
        left = self._spool.stats()
        self._spool.close()
        if left.records:
            log.warning(
                "store writer closed with %d records in the spool %s; the next start replays them",
                left.records,
                self._spool.folder,
                extra={"event": "store_spool_left", "records": left.records},
            )

    def stats(self) -> WriterStats:
        spool = self._spool.stats() if self._spool is not None else None
        with self._lock:
            return WriterStats(
                queue_depth=self._last_seq - self._committed,
                committed=self._committed,
                batches=self._batches,
                records=self._records,
                failures=self._failures,
                last_error=self._last_error,
                last_flush_ms=self._last_flush_ms,
                degraded=self._degraded or bool(spool and spool.records),
                full_batches=self._reasons["full"],
                aged_batches=self._reasons["aged"],
                idle_batches=self._reasons["idle"],
                spool_depth=spool.records if spool else 0,
                spool_batches=spool.batches if spool else 0,
                spool_bytes=spool.bytes if spool else 0,
                spooled=spool.appended if spool else 0,
                replayed=spool.replayed if spool else 0,
                rejected=self._rejected,
                outages=self._outages,
                dead_letters=self._dead.count if self._dead is not None else 0,
            )

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        _name_os_thread("store-writer")
        while (batch := self._collect()) is not None:
            if batch:
                if not self._write(batch):
                    return
                with self._lock:
                    self._busy = False  # ours, set by _collect (the loop's is its own)
            if self._uncheckpointed >= CHECKPOINT_EVERY:
                self._checkpoint()
            self._prune()

    def _checkpoint(self) -> None:
        """Move the store's log into its file (SQLite's WAL), here rather than in a commit:
        a checkpoint may wait on the disk, and the loop commits too (see held())."""
        with self._lock:
            self._uncheckpointed = 0
        try:
            self._store.checkpoint()
        except Exception as exc:  # a busy or failing store: the next commits will say more
            log.debug("store checkpoint failed: %s", exc)

    def _prune(self) -> None:
        """One retention batch, if due and the store is healthy: between record batches, so
        records wait behind at most one small delete (and a busy writer still prunes)."""
        if self.retention is None or self.retention.wait_s() > 0:
            return
        with self._lock:
            degraded = self._degraded
        degraded = degraded or (self._spool is not None and self._spool.pending)
        if degraded:
            self.retention.postpone()  # a store that is down or catching up is left alone
            return
        self.retention.step()

    def _collect(self) -> list[_Entry] | None:
        """Wait for records and take what is queued (up to ``batch_size``); None when closed
        and empty, and an empty batch when retention is due while no record waits.

        The batch is what waits when the thread wakes: at the end of a loop turn (``held``) it
        is the whole turn's records, and records put while a batch commits make the next one
        (group commit). The thread never yields the GIL to let a batch grow, which would hand
        it back and forth with the loop. While a turn is held, its records wait for its end:
        a sleeping thread is woken then (or when they fill a batch), and an awake one leaves
        them until then unless they fill a batch or the oldest is ``max_age_s`` old; records
        of turns that have ended are taken at once, without the current turn's.
        """
        with self._lock:
            while True:
                wait: float | None
                if self._queue and not self._busy:
                    if (wait := self._hold_s()) <= 0:
                        break
                elif self._closing and not self._queue:
                    return None
                elif not self._busy and self._uncheckpointed >= CHECKPOINT_EVERY:
                    return []
                else:
                    wait = self.retention.wait_s() if self.retention is not None else None
                    if wait is not None and wait <= 0:
                        if not self._busy:
                            return []
                        wait = BUSY_POLL_S  # the loop is writing a batch: prune after it
                self._work.wait(wait)
            queue = self._queue
            take = min(self._batch_size, len(queue))
            if self._held and queue[0][0] <= self._held_after < queue[-1][0]:
                take = min(take, self._held_after - queue[0][0] + 1)  # the ended turns' only
            batch = [queue.popleft() for _ in range(take)]
            self._busy = True
            self._count_reason(batch)
            return batch

    def _count_reason(self, batch: list[_Entry], count: int = 1) -> None:
        """Why this batch was cut where it was (``stats``; ``count`` -1 takes one back). Call
        with the lock held."""
        if len(batch) == self._batch_size:
            reason = "full"
        elif time.monotonic() - batch[0][1] >= self._max_age_s:
            reason = "aged"
        else:
            reason = "idle"  # the queue is empty: everything waiting is in this batch
        self._reasons[reason] += count

    def _hold_s(self) -> float:
        """How long the queued records may wait for the loop's turn to end (0: take them now).
        Call with the lock held."""
        queue = self._queue
        if not self._held or self._closing or len(queue) >= self._batch_size:
            return 0.0
        if queue[0][0] <= self._held_after:
            return 0.0  # put before this turn began: an ended turn's records
        return self._max_age_s - (time.monotonic() - queue[0][1])

    def _write(self, batch: list[_Entry]) -> bool:
        """Make ``batch`` durable, retrying with backoff until it is; False if abandoned."""
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
        """The one place a batch becomes durable: in the store, or else in the spool."""
        records = _flatten(batch)
        spool = self._spool
        if spool is None:
            self._store.write_batch(records)
            return
        if self._append(spool, records, only_if_pending=True):
            return  # older records wait in the spool: this batch queues up behind them
        try:
            if self._dead is None:
                self._store.write_batch(records)
            else:  # a record refused for good is set aside; the others are written
                write_or_isolate(self._store, records, self._dead)
        except Exception as exc:
            self._record_failure(batch, exc, None)
            self._append(spool, records, only_if_pending=False)  # OSError: _write retries
            if self._replayer is not None:
                self._replayer.schedule()
            return
        with self._lock:
            self._degraded = False

    def _append(self, spool: Spool, records: list[Record], *, only_if_pending: bool) -> bool:
        """Spool ``records``; a record that cannot be serialized is logged and counted, since
        neither the spool nor any store can ever take it (a bug upstream, not an outage)."""
        try:
            appended = spool.append(records, only_if_pending=only_if_pending)
        except TypeError:
            good = [record for record in records if _serializable(record)]
            self._reject([record for record in records if not _serializable(record)])
            appended = spool.append(good, only_if_pending=only_if_pending) if good else True
        return appended

    def _reject(self, records: list[Record]) -> None:
        with self._lock:
            self._rejected += len(records)
        for record in records:
            log.error(
                "dropped a record that cannot be serialized: %r",
                record,
                extra={"event": "store_record_rejected"},
            )

    def _record_failure(self, batch: list[_Entry], exc: Exception, delay: float | None) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            was_degraded, self._degraded = self._degraded, True
            self._outages += not was_degraded
            failures = self._failures
        if delay is None:  # a store failure with a spool to fall back on
            # an outage is expected and its message says it all; anything else gets a traceback
            (log.warning if was_degraded else log.error)(
                "store write of %d records failed (%s); spooling to %s (failure %d)",
                len(batch),
                exc,
                self._spool.folder if self._spool else "-",
                failures,
                exc_info=None if was_degraded or isinstance(exc, StoreUnavailable) else exc,
                extra={"event": "store_write_spooled", "records": len(batch)},
            )
            return
        log.error(
            "store write of %d records failed; retrying in %.2f s (failure %d)",
            len(batch),
            delay,
            failures,
            exc_info=exc,
            extra={"event": "store_write_failed", "records": len(batch), "retry_in_s": delay},
        )

    def _record_success(self, batch: list[_Entry], elapsed_ms: float, *, wake: bool = True) -> None:
        with self._lock:
            recovered = self._degraded and self._spool is None
            failures = self._failures
            self._committed = batch[-1][0]
            self._uncheckpointed += 1
            self._batches += 1
            self._records += len(batch)
            self._last_flush_ms = elapsed_ms
            self.batch_seconds.observe(elapsed_ms / 1000.0)
            self.last_commit_at = time.time()
            if self._spool is None:
                self._degraded = False
            self._commits.notify_all()
            if wake and self._pipe_open:
                # a full pipe means the poller is already due to wake up
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\x01")
        if self.on_commit is not None:
            bundled = [r for _, _, item in batch if type(item) is Bundle for r in item[1:]]
            if bundled:
                self.on_commit(bundled)
        if recovered:
            log.info(
                "store writes recovered after %d failures",
                failures,
                extra={"event": "store_write_recovered"},
            )

    # -- the replayer thread -------------------------------------------------------------------

    def _replay_failed(self, exc: Exception) -> None:
        with self._lock:
            self._failures += 1
            self._outages += not self._degraded
            self._degraded = True
            self._last_error = f"{type(exc).__name__}: {exc}"

    def _replay_succeeded(self, pending: bool) -> int:
        with self._lock:
            if not pending:
                self._degraded = False
            return self._failures


class Turn:
    """What :meth:`BatchWriter.held` tells its caller once the block ended."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False  # the caller's thread committed the turn's records itself


def _flatten(batch: list[_Entry]) -> list[Record]:
    records: list[Record] = []
    for _, _, item in batch:
        if type(item) is Bundle:
            records.extend(item)
        else:
            records.append(item)  # type: ignore[arg-type]
    return records


def _check_settings(batch_size: int, replay_chunk: int, max_age_s: float, *backoff: float) -> None:
    """``backoff``: the initial and the maximum delay."""
    if batch_size < 1 or replay_chunk < 1:
        raise ValueError(f"batch_size and replay_chunk must be >= 1, got {batch_size}")
    if max_age_s < 0 or backoff[0] <= 0 or backoff[1] < backoff[0]:
        raise ValueError("max_age_s must be >= 0 and 0 < backoff_initial_s <= backoff_max_s")


def _name_os_thread(name: str) -> None:
    """Name the calling thread for the kernel too (its ``/proc/PID/task/TID/comm``, as ``top -H``
    and the benchmark's per-thread CPU read it): Python 3.11 keeps thread names to itself."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME


def _nonblocking_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def _serializable(record: Record) -> bool:
    try:
        encode_batch([record])
    except TypeError:
        return False
    return True
