"""Small ZeroMQ helpers shared by the supervisor and its workers."""

from typing import Any

import zmq


def has_message(sock: "zmq.Socket[Any]") -> bool:
    """Whether a receive would succeed now; far cheaper than catching ``zmq.Again``."""
    events = sock.get(zmq.EVENTS)
    return bool(int(events) & zmq.POLLIN)
