"""The on-disk spool: where batches wait, durable, while the store cannot take them.

The supervisor acknowledges a run only once its row is durable; while the database is down,
"durable" means appended to the spool and fsync'd. The spool is a folder of numbered segment
files, each a sequence of frames, one frame per batch:

    magic b"ASP1" | payload length (u32 LE) | record count (u32 LE) | crc32 of payload (u32 LE)
    payload: orjson array of [tag, fields] pairs, tag one of run / event / state / actor /
             code / sync

Only the current (last) segment is appended to; :meth:`Spool.replay` seals it and writes the
sealed segments to the store in order, oldest first, and deletes each once it is written. A
crash half-way through a segment replays that segment again after the restart, which is
harmless: events are skipped by ``event_id`` and upserts are replayed in their original order,
and nothing newer reaches the store while the spool is not empty (the writer appends to the
spool instead). A frame torn by a crash was never acknowledged (its fsync had not returned),
so dropping it loses nothing that was promised.

One process owns a spool folder at a time (``flock`` on ``spool_dir/lock``).
"""

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from supervisor.alerts.records import AlertRecord
from supervisor.code.records import CodeChange, SyncUpdate
from supervisor.deadletter import DeadLetters, write_or_isolate
from supervisor.records import ActorRecord, Event, Record, RunRecord, TaskState
from supervisor.store.base import Store, StoreError, StoreUnavailable
from supervisor.workflows.records import WorkflowItemRecord, WorkflowRunRecord, WorkflowSnapshot

log = logging.getLogger(__name__)

MAGIC = b"ASP1"
_HEADER = struct.Struct("<4sIII")
_SUFFIX = ".spool"
_TAGS: dict[type[Any], str] = {
    RunRecord: "run",
    Event: "event",
    TaskState: "state",
    ActorRecord: "actor",
    CodeChange: "code",
    SyncUpdate: "sync",
    AlertRecord: "alert",
    WorkflowRunRecord: "workflow_run",
    WorkflowItemRecord: "workflow_item",
    WorkflowSnapshot: "workflow_snapshot",
}
_TYPES: dict[str, type[Any]] = {tag: cls for cls, tag in _TAGS.items()}


class SpoolError(StoreError):
    """The spool folder cannot be used (another process holds it, or it cannot be created)."""


def spool_folder(setting: str, base_dir: Path) -> Path:
    """The ``spool_dir`` setting as an absolute folder: relative to the config's folder."""
    path = Path(setting).expanduser()
    return path if path.is_absolute() else (base_dir / path).absolute()


def encode_batch(records: Sequence[Record]) -> bytes:
    """One frame's payload. :raises TypeError: a record orjson cannot serialize."""
    return orjson.dumps([(_TAGS[type(record)], record) for record in records])


def decode_batch(payload: bytes) -> list[Record]:
    """The inverse of :func:`encode_batch`: the same records, field for field."""
    return [_TYPES[tag](**fields) for tag, fields in orjson.loads(payload)]


def decode_tolerant(payload: bytes, dead: DeadLetters) -> list[Record]:
    """:func:`decode_batch`, with each item that does not decode dead-lettered instead."""
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        dead.add(payload.decode(errors="replace"), f"spooled batch is not JSON: {exc}")
        return []
    records: list[Record] = []
    for item in items:
        try:
            tag, fields = item
            records.append(_TYPES[tag](**fields))
        except (TypeError, ValueError, KeyError) as exc:
            dead.add(item, f"spooled record does not decode: {type(exc).__name__}: {exc}")
    return records


def frame(payload: bytes, count: int) -> bytes:
    return _HEADER.pack(MAGIC, len(payload), count, zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """The spool's backlog -- records and batches not yet replayed, their size on disk -- and
    the records this process appended and replayed (these include any found at start-up)."""

    records: int
    batches: int
    bytes: int
    appended: int = 0
    replayed: int = 0


class Spool:
    """A spool folder, locked for this process. ``append`` and ``replay`` may run on two
    threads at once; everything else is cheap and thread-safe."""

    def __init__(self, folder: Path, *, dead_letters: DeadLetters | None = None) -> None:
        self.folder = folder
        # with dead letters, a record the store refuses for good is set aside, never a wedge
        self.dead_letters = dead_letters
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool {folder}: cannot create it: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock_fd)
            raise SpoolError(
                f"spool {folder} is in use by another process (pid {holder}); "
                "two supervisors cannot share a spool_dir"
            ) from exc
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

        self._lock = threading.Lock()
        self._sealed: list[Path] = []  # oldest first; replay takes them in this order
        self._counts: dict[Path, tuple[int, int, int]] = {}  # segment -> records, batches, bytes
        self._current: Path | None = None
        self._fd: int | None = None
        self._cursor = (Path(), 0)  # (segment, offset) replay has written up to
        self._records = self._batches = self._bytes = 0
        self._appended = self._replayed = 0
        self._next_number = 1
        for path in sorted(folder.glob(f"*{_SUFFIX}")):
            self._adopt(path)

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether anything waits to be replayed (the writer must then append, not write)."""
        with self._lock:
            return bool(self._sealed) or self._current is not None

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(
                records=self._records,
                batches=self._batches,
                bytes=self._bytes,
                appended=self._appended,
                replayed=self._replayed,
            )

    # -- appending (the writer thread) ---------------------------------------------------------

    def append(self, records: Sequence[Record], *, only_if_pending: bool = False) -> bool:
        """Append one batch and fsync it; False (nothing written) if ``only_if_pending`` and
        the spool is empty.

        The check and the append are one step, so the writer never writes to the store
        directly while older records wait here. :raises TypeError: a record cannot be encoded
        (nothing written). :raises OSError: the disk failed (nothing acknowledged).
        """
        if only_if_pending and not self.pending:
            return False  # the common case, decided without encoding anything
        payload = encode_batch(records)  # outside the lock: encoding is the slow part
        data = frame(payload, len(records))
        with self._lock:
            if only_if_pending and not self._sealed and self._current is None:
                return False
            fd = self._fd if self._fd is not None else self._open_segment()
            try:
                os.write(fd, data)
                os.fsync(fd)
            except OSError:
                # a partial frame may be on disk: this segment ends here, a new one starts
                self._seal_locked()
                raise
            assert self._current is not None
            self._count(self._current, len(records), 1, len(data))
            self._appended += len(records)
        return True

    def _open_segment(self) -> int:
        path = self.folder / f"{self._next_number:012d}{_SUFFIX}"
        self._next_number += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _fsync_dir(self.folder)  # the new name must survive a crash as well as its content
        self._current, self._fd = path, fd
        self._counts[path] = (0, 0, 0)
        return fd

    def _seal_locked(self) -> bool:
        if self._current is None:
            return False
        if self._fd is not None:
            os.close(self._fd)
        self._sealed.append(self._current)
        self._current, self._fd = None, None
        return True

    # -- replaying (the replayer thread, or start-up) ------------------------------------------

    def replay(
        self,
        store: Store,
        *,
        chunk_records: int = 5000,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> int:
        """Write every spooled batch to ``store`` in order; return the records written.

        Consecutive batches are merged into one ``write_batch`` of about ``chunk_records`` (the
        store keeps the last version of each key, so merging preserves the outcome). Store
        errors propagate; what was written stays written and the next call resumes after it.
        ``keep_going`` is asked between chunks (False: stop early, for a writer closing).
        """
        replayed = 0
        while keep_going():
            with self._lock:
                if not self._sealed and not self._seal_locked():
                    return replayed  # empty: the writer may write directly again
                segment = self._sealed[0]
                start = self._cursor[1] if self._cursor[0] == segment else 0
            replayed += self._replay_segment(store, segment, start, chunk_records, keep_going)
            with self._lock:
                finished = self._cursor == (segment, -1)
                if finished:
                    self._sealed.pop(0)
                    self._uncount(segment)
            if finished:
                _unlink(segment)
        return replayed

    def _replay_segment(
        self,
        store: Store,
        segment: Path,
        start: int,
        chunk_records: int,
        keep_going: Callable[[], bool],
    ) -> int:
        written = 0
        chunk: list[Record] = []
        batches = size = 0
        for end, records, frame_size in self._frames(segment, start):
            chunk.extend(records)
            batches += 1
            size += frame_size
            if len(chunk) >= chunk_records:
                self._write_chunk(store, chunk, segment, end, batches, size)
                written += len(chunk)
                chunk, batches, size = [], 0, 0
                if not keep_going():
                    return written
        if chunk:
            self._write_chunk(store, chunk, segment, -1, batches, size)
            written += len(chunk)
        else:
            with self._lock:
                self._cursor = (segment, -1)
        return written

    def _write_chunk(
        self, store: Store, chunk: list[Record], segment: Path, end: int, batches: int, size: int
    ) -> None:
        if self.dead_letters is None:
            store.write_batch(chunk)
        else:
            write_or_isolate(store, chunk, self.dead_letters)
        with self._lock:
            self._cursor = (segment, end)
            records, frames, nbytes = self._counts[segment]
            self._counts[segment] = (records - len(chunk), frames - batches, nbytes - size)
            self._records -= len(chunk)
            self._batches -= batches
            self._bytes -= size
            self._replayed += len(chunk)

    def _frames(self, segment: Path, start: int) -> Iterator[tuple[int, list[Record], int]]:
        """``(end offset, records, frame size)`` per intact frame from ``start``."""
        with open(segment, "rb") as handle:
            handle.seek(start)
            offset = start
            while (parsed := _read_frame(handle)) is not None:
                payload = parsed[0]
                offset += _HEADER.size + len(payload)
                if self.dead_letters is None:
                    records = decode_batch(payload)
                else:
                    records = decode_tolerant(payload, self.dead_letters)
                yield offset, records, _HEADER.size + len(payload)

    # -- start-up ------------------------------------------------------------------------------

    def drain(self, store: Store, *, give_up_s: float, backoff_max_s: float = 5.0) -> int:
        """Replay everything before the supervisor reads its state (start-up).

        Retries an unavailable store with backoff for ``give_up_s``. :raises StoreUnavailable:
        still unavailable then. :raises StoreError: the store refused a batch for good.
        """
        before = self.stats()
        if not before.records and not self.pending:
            return 0
        log.info(
            "replaying %d spooled records (%d batches) from %s before starting",
            before.records,
            before.batches,
            self.folder,
            extra={"event": "spool_replay_startup", "records": before.records},
        )
        deadline = time.monotonic() + give_up_s
        delay = 0.1
        replayed = 0
        while True:
            try:
                replayed += self.replay(store)
                break
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"{exc} (gave up replaying the spool {self.folder} after "
                        f"{give_up_s:g} s; it is kept for the next start)"
                    ) from exc
                log.warning("spool replay failed: %s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, backoff_max_s)
        log.info(
            "replayed %d spooled records; the spool is empty",
            replayed,
            extra={"event": "spool_replayed", "records": replayed},
        )
        return replayed

    def _adopt(self, path: Path) -> None:
        """Count an existing segment; cut a torn or corrupt tail off it (never acknowledged)."""
        try:
            number = int(path.name.removesuffix(_SUFFIX))
        except ValueError:
            log.warning("spool %s: ignoring %s (not a segment name)", self.folder, path.name)
            return
        records = batches = good = 0
        with open(path, "rb") as handle:
            while (parsed := _read_frame(handle)) is not None:
                records += parsed[1]
                batches += 1
                good = handle.tell()
            size = handle.seek(0, os.SEEK_END)
        if good < size:
            log.warning(
                "spool %s: dropping %d bytes of an incomplete batch at the end of %s "
                "(written by a crash before it was acknowledged)",
                self.folder,
                size - good,
                path.name,
                extra={"event": "spool_torn_tail", "segment": path.name},
            )
            os.truncate(path, good)
        self._next_number = max(self._next_number, number + 1)
        self._sealed.append(path)
        self._counts[path] = (0, 0, 0)
        self._count(path, records, batches, good)

    def _count(self, segment: Path, records: int, batches: int, size: int) -> None:
        r, b, n = self._counts[segment]
        self._counts[segment] = (r + records, b + batches, n + size)
        self._records += records
        self._batches += batches
        self._bytes += size

    def _uncount(self, segment: Path) -> None:
        r, b, n = self._counts.pop(segment)
        self._records -= r
        self._batches -= b
        self._bytes -= n

    def close(self) -> None:
        """Close the current segment and release the folder; the content stays for a restart."""
        with self._lock:
            self._seal_locked()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1


def _read_frame(handle: Any) -> tuple[bytes, int] | None:
    """The next intact frame's payload and record count; None at the end or at damage."""
    header = handle.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    magic, length, count, crc = _HEADER.unpack(header)
    if magic != MAGIC:
        return None
    payload = handle.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload, count


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(segment: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
    _fsync_dir(segment.parent)
