"""systemd's notify protocol: ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1`` and ``STATUS=``.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket (``@name`` is
in the abstract namespace), and with ``WatchdogSec=`` also ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``, when set, naming the process that must ping). The supervisor's loop pings at
half that interval from its maintenance step, so a loop that hangs stops pinging and systemd
restarts the service. Without ``$NOTIFY_SOCKET`` every call does nothing; a send that fails is
logged at debug level and never stops the supervisor.
"""

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages, if the environment asks for them."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self.watchdog_interval_s: float | None = None
        self._next_ping = 0.0
        address = env.get("NOTIFY_SOCKET", "")
        if not address or address[0] not in "/@":
            return
        self._address = "\0" + address[1:] if address[0] == "@" else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2 / 1_000_000

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def stopping(self, status: str) -> None:
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """``STATUS=`` when it changed since the last one sent."""
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def tick(self) -> None:
        """``WATCHDOG=1`` when half the watchdog interval has passed since the last ping."""
        if self.watchdog_interval_s is None:
            return
        now = self._clock()
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval_s
            self._send("WATCHDOG=1")

    def next_ping_in(self) -> float | None:
        """Seconds until the next ping is due (for the loop's poll timeout); None: no watchdog."""
        if self.watchdog_interval_s is None:
            return None
        return max(0.0, self._next_ping - self._clock())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.debug("could not notify %s: %s", self._address, exc)
