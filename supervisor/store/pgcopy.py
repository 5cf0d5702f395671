"""Events as one PostgreSQL ``COPY ... FROM STDIN (FORMAT BINARY)`` stream, built by hand.

psycopg's ``Copy.write_row`` adapts every value through its dumpers. The five text columns, the
jsonb metadata and the timestamptz have simple binary forms, so one pass over the batch builds
the stream directly, sent in chunks with ``Copy.write`` (measured: a batch of 1000 costs the
writer 5.2 µs an event instead of 6.0, and the server starts on the first chunk while the rest
is built). Values follow the same rules as every other path (:mod:`supervisor.store.values`):
NUL becomes U+FFFD, times round to the microsecond.

The format: https://www.postgresql.org/docs/current/sql-copy.html (Binary Format).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from supervisor.records import Event
from supervisor.store.values import event_texts, json_bytes

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # magic, flags 0, no header extension
TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"  # a field of length -1
_LENGTH = struct.Struct(">i").pack
_POSITION = struct.Struct(">hii").pack  # field count, then an int4 field: its length 4, value
_TIME = struct.Struct(">iq").pack  # length 8, then microseconds since 2000-01-01 UTC
_JSONB_VERSION = b"\x01"

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
# the range datetime can hold, which is what every other path of the store accepts
_MIN_US = round(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
_MAX_US = round(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).timestamp() * 1_000_000)

# What :func:`events_stream` writes, in order: the COPY statements name these columns.
EVENT_COLUMNS = (
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "correlation_id",
    "metadata",
    "created_at",
)
_FIELD_COUNT = struct.pack(">h", len(EVENT_COLUMNS))


def events_stream(
    events: Sequence[Event], *, numbered: bool = False, chunk_events: int = 50
) -> Iterator[bytes]:
    """The whole COPY stream for ``events``, in chunks of ``chunk_events``.

    Sent chunk by chunk, the server stores the first events while the rest are encoded: on two
    cores that overlap is worth ~20% (one buffer built first and sent after was slower than
    psycopg's row-by-row ``write_row``). ``numbered`` puts each event's position first (int4).

    :raises ValueError: a text that cannot be encoded, or a time out of range.
    :raises TypeError: metadata that is not JSON-serializable.
    """
    out = bytearray(SIGNATURE)
    for position, event in enumerate(events):
        if position and not position % chunk_events:
            yield bytes(out)
            out.clear()
        out += _POSITION(len(EVENT_COLUMNS) + 1, 4, position) if numbered else _FIELD_COUNT
        for text in event_texts(event):
            if text is None:
                out += _NULL
            else:
                data = text.encode()
                out += _LENGTH(len(data))
                out += data
        metadata = json_bytes(event.metadata)
        out += _LENGTH(len(metadata) + 1)
        out += _JSONB_VERSION
        out += metadata
        micros = round(event.created_at * 1_000_000)
        if not _MIN_US <= micros <= _MAX_US:
            raise ValueError(f"event time {event.created_at!r} is out of range")
        out += _TIME(8, micros - _PG_EPOCH_US)
    out += TRAILER
    yield bytes(out)
