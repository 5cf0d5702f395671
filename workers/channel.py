"""The wire between a worker and its launcher: length-prefixed frames on a SOCK_STREAM socketpair.

Each frame is a 4-byte big-endian length ``N`` followed by ``N`` bytes: one kind byte, then the
payload. A stream socket (not SOCK_SEQPACKET) because a run's input and a result's output can be
megabytes, larger than any socket buffer.

Worker -> launcher: ``R`` + an encoded :class:`protocol.messages.Run`; ``K`` (kill all runs);
``C`` + attempt and run id (kill that one run: a cancel, see :func:`encode_cancel`); ``P`` (ping).
Launcher -> worker: ``H`` + orjson ``{"preload_failed": [...], "forker_pid": N}`` once, when it
is ready; ``S`` + started; ``F`` + finished (see :func:`encode_started` and
:func:`encode_finished`); ``Q`` (pong, once the forker answered the ping too).
Closing the worker's side is the launcher's signal to kill everything and exit.
"""

import struct
from dataclasses import dataclass

RUN = b"R"[0]
KILL_ALL = b"K"[0]
CANCEL = b"C"[0]
PING = b"P"[0]
PONG = b"Q"[0]
READY = b"H"[0]
STARTED = b"S"[0]
FINISHED = b"F"[0]

_LENGTH = struct.Struct("!I")
_STARTED = struct.Struct("!Iid")  # attempt, child pid, started_at
_FINISHED = struct.Struct("!I?H")  # attempt, succeeded, length of the run id
MAX_FRAME = 1 << 30  # far above any real message; a larger length means a corrupt stream


class ChannelError(Exception):
    """The byte stream between worker and launcher is corrupt; the peer cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Started:
    """A run's child was forked; ``started_at`` is in epoch seconds."""

    run_id: str
    attempt: int
    child_pid: int
    started_at: float


@dataclass(frozen=True, slots=True)
class Finished:
    """A run ended; ``result_body`` is an encoded :class:`protocol.messages.Result`."""

    run_id: str
    attempt: int
    succeeded: bool
    result_body: bytes


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame: length, kind byte, payload."""
    return _LENGTH.pack(len(payload) + 1) + bytes((kind,)) + payload


def encode_started(run_id: str, attempt: int, child_pid: int, started_at: float) -> bytes:
    return frame(STARTED, _STARTED.pack(attempt, child_pid, started_at) + run_id.encode())


def encode_finished(run_id: str, attempt: int, result_body: bytes, *, succeeded: bool) -> bytes:
    rid = run_id.encode()
    return frame(FINISHED, _FINISHED.pack(attempt, succeeded, len(rid)) + rid + result_body)


_CANCEL = struct.Struct("!I")  # attempt; the run id follows


def encode_cancel(run_id: str, attempt: int) -> bytes:
    return frame(CANCEL, _CANCEL.pack(attempt) + run_id.encode())


def decode_cancel(payload: bytes) -> tuple[str, int]:
    """``(run_id, attempt)`` of a cancel frame. :raises ChannelError: malformed."""
    try:
        (attempt,) = _CANCEL.unpack_from(payload)
        return payload[_CANCEL.size :].decode(), attempt
    except (struct.error, UnicodeDecodeError) as exc:
        raise ChannelError(f"malformed cancel frame: {exc}") from exc


def decode_event(kind: int, payload: bytes) -> Started | Finished:
    """Turn a launcher -> worker frame into its event.

    :raises ChannelError: for a kind or payload this side does not understand.
    """
    try:
        if kind == STARTED:
            attempt, pid, started_at = _STARTED.unpack_from(payload)
            return Started(payload[_STARTED.size :].decode(), attempt, pid, started_at)
        if kind == FINISHED:
            attempt, succeeded, n = _FINISHED.unpack_from(payload)
            start = _FINISHED.size
            rid = payload[start : start + n].decode()
            return Finished(rid, attempt, succeeded, payload[start + n :])
    except (struct.error, UnicodeDecodeError) as exc:
        raise ChannelError(f"malformed frame of kind {chr(kind)!r}: {exc}") from exc
    raise ChannelError(f"unexpected frame kind {kind!r}")


class FrameReader:
    """Reassembles frames from the chunks a stream socket hands out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every frame now complete as ``(kind, payload)``."""
        buf = self._buf
        buf += chunk
        frames: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length == 0 or length > MAX_FRAME:
                raise ChannelError(f"corrupt frame length {length}")
            if end - pos - 4 < length:
                break
            start = pos + 4
            frames.append((buf[start], bytes(buf[start + 1 : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buf)
