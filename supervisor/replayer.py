"""The replayer: the thread that empties the spool into the store once it is back.

The batch writer (:mod:`supervisor.writer`) spools a batch the store refuses and schedules an
attempt here; attempts back off exponentially while they fail. After ``close`` the replayer
keeps going only while attempts succeed, so a store that is down at shutdown costs one attempt,
not the whole timeout. Its outcome goes back to the writer through two callbacks, which keep the
writer's failure count, last error and ``degraded`` flag in one place.
"""

import logging
import threading
import time
from collections.abc import Callable

from supervisor.spool import Spool
from supervisor.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


class Replayer:
    """Writes ``spool`` to ``store`` on its own thread, with backoff between failed attempts.

    ``on_failure(exc)`` is called after each failed attempt; ``on_success(pending)`` after each
    successful one (``pending``: the spool still holds records) and returns the writer's failure
    count for the recovery message.
    """

    def __init__(
        self,
        spool: Spool,
        store: Store,
        *,
        chunk_records: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        on_failure: Callable[[Exception], None],
        on_success: Callable[[bool], int],
    ) -> None:
        self._spool = spool
        self._store = store
        self._chunk = chunk_records
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._on_failure = on_failure
        self._on_success = on_success
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due = 0.0  # monotonic time of the next attempt
        self._delay = backoff_initial_s
        self._closing = False
        self._abandon = False
        self._thread = threading.Thread(target=self._loop, name="store-replayer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self) -> None:
        """A batch was just spooled: attempt a replay after the current backoff delay."""
        with self._lock:
            self._due = time.monotonic() + self._delay
            self._wake.notify_all()

    def close(self) -> None:
        """One more immediate attempt, then stop once the spool is empty or an attempt fails."""
        with self._lock:
            self._closing = True
            self._due = 0.0
            self._wake.notify_all()

    def abandon(self) -> None:
        """Stop as soon as possible (a replay in progress stops between chunks)."""
        with self._lock:
            self._abandon = True
            self._wake.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while self._wait_until_due():
            if not self._replay_once() and self._closing:
                return

    def _wait_until_due(self) -> bool:
        """Wait for the next attempt; False when the thread should stop."""
        spool = self._spool
        with self._lock:
            while not self._abandon:
                wait = self._due - time.monotonic()
                if wait <= 0 and spool.pending:
                    return True
                if self._closing and not spool.pending:
                    return False
                self._wake.wait(wait if wait > 0 else (0.05 if self._closing else 1.0))
            return False

    def _replay_once(self) -> bool:
        spool = self._spool
        try:
            replayed = spool.replay(
                self._store, chunk_records=self._chunk, keep_going=self._keep_going
            )
        except Exception as exc:
            self._on_failure(exc)
            with self._lock:
                delay = self._delay
                self._due = time.monotonic() + delay
                self._delay = min(delay * 2, self._backoff_max_s)
            _log_failure(exc, spool.stats().records, delay)
            return False
        with self._lock:
            self._delay = self._backoff_initial_s
        failures = self._on_success(spool.pending)
        if replayed:
            log.info(
                "replayed %d spooled records; store writes recovered after %d failures",
                replayed,
                failures,
                extra={"event": "store_replayed", "records": replayed},
            )
        return True

    def _keep_going(self) -> bool:
        with self._lock:
            return not self._abandon


def _log_failure(exc: Exception, depth: int, delay: float) -> None:
    if isinstance(exc, StoreUnavailable):
        log.warning(
            "store still unavailable (%s); %d records wait in the spool; next attempt in %.2f s",
            exc,
            depth,
            delay,
            extra={"event": "store_replay_failed", "spool_depth": depth},
        )
    else:  # the store refuses a spooled batch: retrying may not help, say so loudly
        log.error(
            "the store refused a spooled batch; %d records wait in the spool; "
            "next attempt in %.2f s",
            depth,
            delay,
            exc_info=exc,
            extra={"event": "store_replay_refused", "spool_depth": depth},
        )
