"""Small ZeroMQ helpers shared by the supervisor and its workers."""

from typing import Any

import zmq

# Plain ints: pyzmq's constants are enums, whose ``&`` runs Python code (measured: has_message
# took 11 us with them, 4.4 us without, and a loop turn calls it once per socket at least).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def has_message(sock: "zmq.Socket[Any]") -> bool:
    """Whether a receive would succeed now; far cheaper than catching ``zmq.Again``."""
    events: int = sock.get(_EVENTS)  # type: ignore[assignment]  # an int option
    return bool(events & _POLLIN)
