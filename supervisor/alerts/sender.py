"""Delivering alerts: one thread per destination, retries with backoff, a durable record.

The batch writer hands the sender each outbox row once it is durable (:meth:`AlertSender.offer`,
on the writer thread); rows still pending from an earlier supervisor come from the store at
start-up. Each destination has its own thread and its own rows, so a receiver that is slow
(bounded by its ``timeout_s``) or dead (retried later, with backoff) delays only its own
alerts, and never the supervisor's loop, which does not wait for any of this.

After every attempt the row's delivery columns go straight to the store
(:meth:`~supervisor.store.base.Store.save_alert`); a row that cannot be saved right now (the
database is down) is kept and saved again later, so ``delivered`` is what the store ends up
saying and a restart does not send an alert again.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import orjson

from protocol.messages import Limits
from supervisor.alerts import formats
from supervisor.alerts.config import AlertConfig
from supervisor.alerts.records import DELIVERED, FAILED, PENDING, AlertRecord
from supervisor.records import Record
from supervisor.store.base import Store, StoreError
from workers import confine

log = logging.getLogger(__name__)

_SAVE_RETRY_S = 2.0  # how soon an unsaved delivery record is tried again
_ERROR_CHARS = 500
_REMEMBERED = 10_000  # delivered ids kept, so a late re-offer of one is ignored


class DeliveryError(Exception):
    """One attempt failed; the message says how (HTTP status, timeout, exit code, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Confinement:
    """Whom alert commands run as, and their limits: as root, ``uid`` (an own uid, = gid, that
    no worker slot uses) or the fixed ``run_as`` user; otherwise neither (our own user)."""

    uid: int | None = None
    run_as: tuple[int, int] | None = None
    limits: Limits = field(default_factory=Limits)
    python: str = sys.executable  # runs workers.confine as us: any user's interpreter will do


class AlertSender:
    """Owns the delivery threads; ``confinement`` applies to command destinations."""

    def __init__(
        self,
        alerts: Sequence[AlertConfig],
        store: Store,
        *,
        confinement: Confinement,
        env: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self._destinations = {
            alert.name: _Destination(alert, store, confinement=confinement, env=env, clock=clock)
            for alert in alerts
        }

    def adopt(self, rows: Sequence[AlertRecord]) -> None:
        """Rows a previous supervisor left pending (read from the store before the loop)."""
        orphans: dict[str, int] = {}
        for row in rows:
            destination = self._destinations.get(row.destination)
            if destination is None:
                orphans[row.destination] = orphans.get(row.destination, 0) + 1
            else:
                destination.add(row)
        for name, count in orphans.items():
            log.warning(
                "%d pending alert(s) for %r, which is no longer configured, are left undelivered",
                count,
                name,
                extra={"event": "alert_orphaned", "destination": name},
            )

    def start(self) -> None:
        for destination in self._destinations.values():
            destination.start()

    def offer(self, records: list[Record]) -> None:
        """The batch writer's ``on_commit`` hook: these outbox rows are durable now."""
        for record in records:
            if isinstance(record, AlertRecord):
                destination = self._destinations.get(record.destination)
                if destination is not None:
                    destination.add(record)

    def counts(self) -> dict[str, int]:
        """Alerts pending now, and delivered or failed for good since this start (``status``,
        ``/metrics``): from memory, no query."""
        totals = {"pending": 0, "delivered": 0, "failed": 0}
        for destination in self._destinations.values():
            for key, value in destination.counts().items():
                totals[key] += value
        return totals

    def close(self, timeout: float) -> None:
        """Deliver what is due now for up to ``timeout`` seconds, then stop. What is left stays
        pending in the store for the next start."""
        deadline = time.monotonic() + timeout
        for destination in self._destinations.values():
            destination.stop(deadline)
        for destination in self._destinations.values():
            destination.join(deadline)


class _Destination:
    """One ``[[alerts]]`` entry: its pending rows and the thread that delivers them."""

    def __init__(
        self,
        alert: AlertConfig,
        store: Store,
        *,
        confinement: Confinement,
        env: Mapping[str, str],
        clock: Callable[[], float],
    ) -> None:
        self.alert = alert
        self._store = store
        self._confinement = confinement
        self._env = dict(env)
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._rows: dict[str, AlertRecord] = {}
        self._unsaved: dict[str, AlertRecord] = {}
        self._done: set[str] = set()
        self._done_order: deque[str] = deque()
        self._deadline: float | None = None  # monotonic; set by stop()
        self._finished = {DELIVERED: 0, FAILED: 0}
        self._thread = threading.Thread(target=self._run, name=f"alerts-{alert.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, row: AlertRecord) -> None:
        with self._lock:
            if row.alert_id in self._done or row.status != PENDING:
                return
            known = self._rows.get(row.alert_id)
            if known is not None:  # a folded repeat counting up: keep the delivery state
                row = replace(
                    known, payload=row.payload, count=row.count, updated_at=row.updated_at
                )
            self._rows[row.alert_id] = row
            self._changed.notify()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending": len(self._rows),
                "delivered": self._finished[DELIVERED],
                "failed": self._finished[FAILED],
            }

    def stop(self, deadline: float) -> None:
        with self._lock:
            self._deadline = deadline
            self._changed.notify()

    def join(self, deadline: float) -> None:
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while (row := self._next()) is not None:
            self._attempt(row)
        self._save_unsaved()

    def _next(self) -> AlertRecord | None:
        """The earliest row that is due, waiting for one; None when it is time to stop."""
        with self._lock:
            while True:
                now = self._clock()
                stopping = self._deadline is not None
                if stopping and time.monotonic() >= self._deadline:  # type: ignore[operator]
                    return None
                due = min(self._rows.values(), key=lambda r: (r.due_at, r.alert_id), default=None)
                if due is not None and due.due_at <= now:
                    return due
                if stopping:
                    return None  # nothing due now: what waits stays pending for the next start
                wait = 3600.0 if due is None else due.due_at - now
                if self._unsaved:
                    wait = min(wait, _SAVE_RETRY_S)
                self._changed.wait(wait)
                if self._unsaved:
                    self._lock.release()
                    try:
                        self._save_unsaved()
                    finally:
                        self._lock.acquire()

    def _attempt(self, row: AlertRecord) -> None:
        alert = self.alert
        attempts = row.attempts + 1
        try:
            self._deliver(row)
        except DeliveryError as exc:
            error = str(exc)[:_ERROR_CHARS]
            now = self._clock()
            if attempts >= alert.max_attempts:
                done = replace(row, status=FAILED, attempts=attempts, last_error=error,
                               updated_at=now)  # fmt: skip
                log.error(
                    "alert %s to %s failed for good after %d attempts: %s",
                    row.event, alert.name, attempts, error,
                    extra={"event": "alert_failed", "alert_id": row.alert_id},
                )  # fmt: skip
                self._finish(done)
                return
            delay = min(alert.retry_backoff_s * 2 ** (attempts - 1), alert.retry_backoff_max_s)
            log.warning(
                "alert %s to %s failed (attempt %d of %d; next in %.1fs): %s",
                row.event, alert.name, attempts, alert.max_attempts, delay, error,
                extra={"event": "alert_retry", "alert_id": row.alert_id},
            )  # fmt: skip
            with self._lock:
                current = self._rows.get(row.alert_id, row)
                again = replace(current, attempts=attempts, due_at=now + delay, last_error=error,
                                updated_at=now)  # fmt: skip
                self._rows[row.alert_id] = again
            self._save(again)
            return
        now = self._clock()
        log.info(
            "alert %s delivered to %s", row.event, alert.name,
            extra={"event": "alert_delivered", "alert_id": row.alert_id, "attempts": attempts},
        )  # fmt: skip
        self._finish(replace(row, status=DELIVERED, attempts=attempts, delivered_at=now,
                             updated_at=now, last_error=None))  # fmt: skip

    def _finish(self, row: AlertRecord) -> None:
        with self._lock:
            self._rows.pop(row.alert_id, None)
            self._finished[row.status] += 1
            self._done.add(row.alert_id)
            self._done_order.append(row.alert_id)
            if len(self._done_order) > _REMEMBERED:
                self._done.discard(self._done_order.popleft())
        self._save(row)

    def _save(self, row: AlertRecord) -> None:
        try:
            self._store.save_alert(row)
        except StoreError as exc:
            log.warning(
                "could not record alert %s as %s (%s); will try again",
                row.alert_id, row.status, exc, extra={"event": "alert_unsaved"},
            )  # fmt: skip
            with self._lock:
                self._unsaved[row.alert_id] = row
            return
        with self._lock:
            saved = self._unsaved.get(row.alert_id)
            if saved is not None and saved.updated_at <= row.updated_at:
                del self._unsaved[row.alert_id]

    def _save_unsaved(self) -> None:
        with self._lock:
            waiting = list(self._unsaved.values())
        for row in waiting:
            try:
                self._store.save_alert(row)
            except StoreError:
                return  # still down: the next turn tries again
            with self._lock:
                if self._unsaved.get(row.alert_id) is row:
                    del self._unsaved[row.alert_id]

    # --- delivery -----------------------------------------------------------------------------

    def _deliver(self, row: AlertRecord) -> None:
        if self.alert.webhook is not None:
            self._post(row)
        else:
            self._run_command(row)

    def _post(self, row: AlertRecord) -> None:
        alert = self.alert
        assert alert.webhook is not None
        data = formats.body(alert.format, row.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "actor-supervisor-alerts",
            "X-Actor-Supervisor-Event": row.event,
            "X-Actor-Supervisor-Alert-Id": row.alert_id,
            **alert.headers,
        }
        if alert.secret is not None:
            headers[formats.SIGNATURE_HEADER] = formats.signature(alert.secret, data)
        request = urllib.request.Request(alert.webhook, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=alert.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{type(exc).__name__}: {reason}") from None

    def _run_command(self, row: AlertRecord) -> None:
        """The alert JSON on the command's stdin, confined like a run (:mod:`workers.confine`:
        own session, user, rlimits, no new privileges, no capabilities) with the scripts'
        reduced environment; killed with its whole group after ``timeout_s``."""
        alert = self.alert
        assert alert.command is not None
        box = self._confinement
        env = {**self._env, "HOME": "/", "ACTOR_SUPERVISOR_ALERT_EVENT": row.event}
        limits = {key: getattr(box.limits, key) for key in confine.LIMIT_KEYS}
        limits.update(alert.limits)  # the entry's own, key by key over [supervisor] limits
        argv = confine.command(
            box.python, alert.command, uid=box.uid, run_as=box.run_as, limits=limits
        )
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise DeliveryError(f"cannot start {alert.command[0]}: {exc}") from None
        try:
            _, err = proc.communicate(orjson.dumps(row.payload), timeout=alert.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pipe in (proc.stdin, proc.stderr):  # a leftover outside the group may hold them
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            raise DeliveryError(f"timed out after {alert.timeout_s}s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-300:]
            raise DeliveryError(f"exit status {proc.returncode}" + (f": {tail}" if tail else ""))
