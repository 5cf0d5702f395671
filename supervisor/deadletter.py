"""Dead letters: records the store refuses for good, set aside so the writer goes on.

A record the store can never take (a value it cannot encode, a constraint it breaks) must not
wedge the writer -- every later record would wait behind it in the spool -- nor stop the next
start-up, and it must not vanish either. So a batch refused for a reason other than "the store
is unavailable" is written again one record at a time, in order: the good ones are stored, and
each one refused again is appended to the dead-letter file (one JSON line with the time, the
reason and the record) and counted in ``status``. The file sits beside the spool folder,
``<spool_dir>.dead-letters.jsonl``; an operator reads it, fixes what needs fixing, and may
delete it.
"""

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from supervisor.records import Record
from supervisor.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


def dead_letter_path(spool_folder: Path) -> Path:
    return spool_folder.with_name(spool_folder.name + ".dead-letters.jsonl")


class DeadLetters:
    """An append-only JSON-lines file of refused records; thread-safe, fsync'd per letter."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.count = 0  # letters written by this process

    def add(self, record: Record | Any, reason: str) -> None:
        line = orjson.dumps(
            {
                "at": time.time(),
                "reason": reason,
                "type": type(record).__name__,
                "record": record,
            },
            default=repr,  # whatever made the store refuse it must not stop us writing it down
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self.count += 1
        log.error(
            "the store refused a %s for good (%s); moved it to the dead-letter file %s",
            type(record).__name__,
            reason,
            self.path,
            extra={"event": "store_dead_letter", "reason": reason},
        )


def write_or_isolate(store: Store, records: Sequence[Record], dead: DeadLetters) -> int:
    """Write ``records`` as one batch; if the store refuses it for good, write them one at a
    time, in order, and dead-letter each one refused again. Return the number dead-lettered.

    :raises StoreUnavailable: the store became unreachable; what was written stays written
        (writing the batch again later is harmless: events skip by id, upserts repeat in order).
    """
    try:
        store.write_batch(records)
        return 0
    except StoreUnavailable:
        raise
    except Exception as exc:
        log.warning(
            "the store refused a batch of %d records (%s); writing them one by one",
            len(records),
            exc,
            extra={"event": "store_batch_refused", "records": len(records)},
        )
    refused = 0
    for record in records:
        try:
            store.write_batch([record])
        except StoreUnavailable:
            raise
        except Exception as exc:
            dead.add(record, f"{type(exc).__name__}: {exc}")
            refused += 1
    return refused
