"""The scoreboard: one fixed-size slot per worker in shared memory (think Apache httpd's).

Each worker writes only its own slot; the supervisor reads every slot each tick to see which
workers are ready, which are hung (heartbeat age) and what each is doing, and answers ``status``
without a message round trip.

The block is a file on tmpfs (``/dev/shm``) mapped with ``mmap`` by every process. That is what
``multiprocessing.shared_memory`` does underneath, minus its resource tracker, which in Python
3.11 unlinks a block when any attaching process exits.

Each slot is guarded by a sequence lock: the writer makes the counter odd, writes, makes it even;
a reader retries while the counter is odd or changed under it. The body also carries its CRC-32,
and a reader retries on a mismatch too: a torn slot was seen under load with the counter alone.
"""

import mmap
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

# Native format: the counter is read and written as one aligned 8-byte word. (The "<"
# formats go byte by byte, so a reader could see a torn counter that looks unchanged.)
_SEQ = struct.Struct("Q")
DEAD_WRITER_S = 1.0  # a slot's counter odd for this long: its writer died mid-write
# pid, launcher_pid, state, in_flight, runs_done, runs_failed, started_at, heartbeat (monotonic),
# run_id, attempt, child_pid, run_started_at, rss_kb, bad_messages
_BODY = struct.Struct("<iiBHQQdd32sHidQI")
_CRC = struct.Struct("<I")  # CRC-32 of the packed body, right after it
SLOT_SIZE = 128
assert _SEQ.size + _BODY.size + _CRC.size <= SLOT_SIZE
_BODY_END = _SEQ.size + _BODY.size


class SlotState(IntEnum):
    EMPTY = 0
    READY = 2  # 1 was STARTING, never written
    STOPPING = 3


@dataclass(frozen=True, slots=True)
class SlotView:
    """A consistent copy of one slot."""

    index: int
    pid: int
    launcher_pid: int
    state: SlotState
    in_flight: int
    runs_done: int
    runs_failed: int
    started_at: float  # epoch seconds
    heartbeat: float  # time.monotonic() of the worker's last beat (system-wide clock)
    run_id: str  # the most recent run handed to the sandbox ("" before the first)
    attempt: int
    child_pid: int
    run_started_at: float  # epoch seconds
    rss_kb: int
    bad_messages: int  # malformed messages from the supervisor the worker dropped

    def heartbeat_age(self, now_monotonic: float | None = None) -> float:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return max(0.0, now - self.heartbeat)


class Scoreboard:
    """The mapped block. The supervisor ``create``s it; workers ``attach`` by path."""

    def __init__(self, path: Path, slots: int, mapping: mmap.mmap, *, owner: bool) -> None:
        self.path = path
        self.slots = slots
        self._map = mapping
        self._owner = owner

    @classmethod
    def create(cls, slots: int) -> "Scoreboard":
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, name = tempfile.mkstemp(prefix="actor-supervisor-scoreboard-", dir=folder)
        try:
            os.ftruncate(fd, slots * SLOT_SIZE)
            mapping = mmap.mmap(fd, slots * SLOT_SIZE)
        finally:
            os.close(fd)
        return cls(Path(name), slots, mapping, owner=True)

    @classmethod
    def attach(cls, path: Path, slots: int) -> "Scoreboard":
        fd = os.open(path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, slots * SLOT_SIZE)
        finally:
            os.close(fd)
        return cls(path, slots, mapping, owner=False)

    def slot(self, index: int) -> "SlotWriter":
        if not 0 <= index < self.slots:
            raise IndexError(f"scoreboard slot {index} out of range 0..{self.slots - 1}")
        return SlotWriter(self._map, index)

    def read(self, index: int) -> SlotView:
        offset = index * SLOT_SIZE
        start, end = offset + _SEQ.size, offset + _BODY_END
        attempts = 0
        odd, odd_since = -1, 0.0  # an odd counter value, and when it was first seen
        while True:
            (before,) = _SEQ.unpack_from(self._map, offset)
            if not before & 1:
                raw = self._map[start : end + _CRC.size]
                (after,) = _SEQ.unpack_from(self._map, offset)
                if before == after and (before == 0 or _intact(raw)):  # 0: never written
                    return _view(index, _BODY.unpack_from(raw))
            elif before != odd:
                odd, odd_since = before, time.monotonic()
            elif time.monotonic() - odd_since > DEAD_WRITER_S:
                # The same odd value for that long: the writer died (or was stopped) mid-write.
                # A preempted live writer finishes in far less time.
                return _view(index, _BODY.unpack_from(self._map, start))
            attempts += 1
            if attempts % 64 == 0:  # let the writer finish its slot: yield, then really wait
                time.sleep(0 if attempts < 1024 else 0.0005)

    def clear(self, index: int) -> None:
        """Reset a slot before a replacement worker takes it."""
        self.slot(index).write(SlotFields())

    def close(self) -> None:
        self._map.close()
        if self._owner:
            self.path.unlink(missing_ok=True)


def _view(index: int, fields: tuple[Any, ...]) -> SlotView:
    (
        pid,
        lpid,
        state,
        in_flight,
        done,
        failed,
        started,
        beat,
        run_id,
        attempt,
        child,
        rstart,
        rss,
        bad,
    ) = fields
    return SlotView(
        index=index,
        pid=pid,
        launcher_pid=lpid,
        state=SlotState(state),
        in_flight=in_flight,
        runs_done=done,
        runs_failed=failed,
        started_at=started,
        heartbeat=beat,
        run_id=run_id.rstrip(b"\0").decode("ascii", "replace"),
        attempt=attempt,
        child_pid=child,
        run_started_at=rstart,
        rss_kb=rss,
        bad_messages=bad,
    )


@dataclass(slots=True)
class SlotFields:
    """The worker's own copy of its slot; it edits fields and writes the whole slot at once."""

    pid: int = 0
    launcher_pid: int = 0
    state: SlotState = SlotState.EMPTY
    in_flight: int = 0
    runs_done: int = 0
    runs_failed: int = 0
    started_at: float = 0.0
    heartbeat: float = 0.0
    run_id: str = ""
    attempt: int = 0
    child_pid: int = 0
    run_started_at: float = 0.0
    rss_kb: int = 0
    bad_messages: int = 0


class SlotWriter:
    """Writes one slot under its sequence lock. Only the slot's worker may hold one."""

    def __init__(self, mapping: mmap.mmap, index: int) -> None:
        self._map = mapping
        self._offset = index * SLOT_SIZE
        (self._seq,) = _SEQ.unpack_from(mapping, self._offset)
        self._seq += self._seq & 1  # a writer that died mid-write left it odd

    def write(self, f: SlotFields) -> None:
        body = _BODY.pack(
            f.pid,
            f.launcher_pid,
            int(f.state),
            f.in_flight,
            f.runs_done,
            f.runs_failed,
            f.started_at,
            f.heartbeat,
            f.run_id.encode("ascii", "replace")[:32],
            f.attempt,
            f.child_pid,
            f.run_started_at,
            f.rss_kb,
            f.bad_messages,
        )
        self._seq += 1
        _SEQ.pack_into(self._map, self._offset, self._seq)
        start = self._offset + _SEQ.size
        self._map[start : start + _BODY.size + _CRC.size] = body + _CRC.pack(zlib.crc32(body))
        self._seq += 1
        _SEQ.pack_into(self._map, self._offset, self._seq)


def _intact(raw: bytes) -> bool:
    """Whether a copied body matches the CRC-32 its writer stored after it."""
    stored: int = _CRC.unpack_from(raw, _BODY.size)[0]
    return zlib.crc32(raw[: _BODY.size]) == stored
