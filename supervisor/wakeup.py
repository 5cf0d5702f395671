"""Signals as poller input: the C-level handler writes each signal number to a socket pair.

The Python-level handlers do nothing (never log in a signal handler); the loop reads the
numbers from :meth:`SignalPipe.take` on the main thread and acts there.
"""

import signal
import socket

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalPipe:
    """A non-blocking socket pair that ``signal.set_wakeup_fd`` writes to."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        """The end to register in the poller."""
        return self._r.fileno()

    def install(self) -> None:
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED:
            signal.signal(signum, _ignore_signal)

    def take(self) -> list[signal.Signals]:
        """The signals received since the last call, in order."""
        try:
            data = self._r.recv(256)
        except BlockingIOError:
            return []
        return [signal.Signals(signum) for signum in data]

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()


def _ignore_signal(signum: int, frame: object) -> None:
    """The wake-up fd carries the signal; the loop handles it on the main thread."""
