"""Small ZeroMQ helpers shared by the supervisor and its workers.

The supervisor's loop sends and receives a few multipart messages per run; pyzmq's
``send_multipart`` and ``recv_multipart`` add Python work to every frame (type checks, enum
flags whose ``|`` runs Python code, an option lookup per ``RCVMORE``). :func:`send_frames` and
:func:`recv_frames` call the sockets' compiled methods with plain-int flags instead (measured:
a two-frame send 1.3 us instead of 5.4, a receive 3.6 us instead of 7.8).
"""

from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _CompiledSocket

# Plain ints: pyzmq's constants are enums, whose ``&`` runs Python code (measured: has_message
# took 11 us with them, 4.4 us without, and a loop turn calls it once per socket at least).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_send = _CompiledSocket.send
_recv = _CompiledSocket.recv


def has_message(sock: "zmq.Socket[Any]") -> bool:
    """Whether a receive would succeed now; far cheaper than catching ``zmq.Again``."""
    events: int = sock.get(_EVENTS)  # type: ignore[assignment]  # an int option
    return bool(events & _POLLIN)


def send_frames(sock: "zmq.Socket[Any]", frames: Sequence[bytes]) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK)``, for frames of bytes.

    ZeroMQ queues a multipart message whole or not at all, so a failure can only come at the
    first frame. :raises zmq.ZMQError: as ``send_multipart`` would (``zmq.Again``: no room).
    """
    last = len(frames) - 1
    for index in range(last):
        _send(sock, frames[index], _NOBLOCK_MORE)
    _send(sock, frames[last], _NOBLOCK)


def recv_frames(sock: "zmq.Socket[Any]") -> list[bytes]:
    """``sock.recv_multipart(zmq.NOBLOCK)``: the frames of the next message, as bytes.

    :raises zmq.Again: no message waits (see :func:`has_message`).
    """
    frame = _recv(sock, _NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames
