"""A progress line on stderr while a benchmark runs: done / total, current rate, elapsed.

On a terminal the line is redrawn in place (``\\r``) twice a second; otherwise (a log file, CI)
a plain line is printed every ``LOG_EVERY_S`` seconds, so logs stay readable. The figures come
from whoever calls :meth:`Progress.update`; :func:`watch_runs` feeds it from the supervisor's
``status`` counters, so the benchmark's clients are not slowed by counting.
"""

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

REDRAW_S = 0.5
POLL_S = 0.25  # watch_runs: status requests this often
LOG_EVERY_S = 5.0
RATE_WINDOW_S = 2.0  # "current" rate: over about this many seconds

_watchers: list[threading.Thread] = []


class Progress:
    """``update(done)`` as work completes; ``close()`` ends the line."""

    def __init__(
        self, total: int, what: str = "runs", stream: TextIO | None = None, unit: str = "runs/s"
    ) -> None:
        self.total = total
        self.what = what
        self.unit = unit
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._samples: list[tuple[float, int]] = [(self._started, 0)]
        self._last_shown = 0.0
        self._shown = False
        self.done = 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        self.done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.pop(0)
        if now - self._last_shown >= (REDRAW_S if self._tty else LOG_EVERY_S):
            self._show(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        then, before = self._samples[0]
        rate = (self.done - before) / (now - then) if now > then else 0.0
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return (
            f"{self.what} {self.done:,}/{self.total:,}{share}  {rate:,.0f} {self.unit}  "
            f"elapsed {now - self._started:.1f} s"
        )

    def _show(self, now: float) -> None:
        self._last_shown = now
        self._shown = True
        if self._tty:
            self._stream.write("\r\033[K" + self.line(now))
        else:
            self._stream.write(self.line(now) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Show the final figures and end the line (only if anything was shown)."""
        if self._shown or self.done:
            self._show(time.monotonic())
            if self._tty:
                self._stream.write("\n")
            self._stream.flush()


def watch_runs(config: Path, total: int, proc: subprocess.Popen[bytes]) -> threading.Thread:
    """Follow the supervisor of ``config`` (process ``proc``) in a thread: runs finished (its
    ``runs_finished`` counter) out of ``total``. Ends by itself when ``total`` is reached or
    the supervisor stops; a ``status`` four times a second costs its loop a fraction of a
    millisecond each."""
    thread = threading.Thread(
        target=_watch, args=(config, total, proc), name="progress", daemon=True
    )
    thread.start()
    _watchers.append(thread)
    return thread


def join_watchers(timeout_s: float = 5.0) -> None:
    """Wait for the watchers of supervisors that stopped, so their last line comes before
    whatever is printed next."""
    while _watchers:
        _watchers.pop().join(timeout_s)


def planned_runs(args: Any) -> int:
    """The runs ``run.py``'s throughput measurement makes: each client's share plus its
    warm-up (the same arithmetic as ``measure_supervisor``)."""
    clients = args.clients or args.workers * args.concurrency * 2
    per_client = max(1, int(args.runs) // clients)
    return int((per_client + min(50, per_client // 10)) * clients)


def _watch(config: Path, total: int, proc: subprocess.Popen[bytes]) -> None:
    from protocol.client import ClientError
    from supervisor.config import load_config
    from supervisor.controlkeys import client_for

    progress: Progress | None = None  # timed from the first answer: the load's start
    try:
        with client_for(load_config(config, environ={}), timeout_s=1) as client:
            while proc.poll() is None:
                try:
                    done = client.status()["counters"].get("runs_finished", 0)
                except ClientError:  # starting, or stopping: the benchmark says which
                    time.sleep(POLL_S)
                    continue
                progress = progress or Progress(total)
                progress.update(done)
                if done >= total:
                    return
                time.sleep(POLL_S)
    except Exception:  # the progress line must never break a measurement
        return
    finally:
        if progress is not None:
            progress.close()
