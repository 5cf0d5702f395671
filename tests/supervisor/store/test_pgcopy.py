"""The hand-built COPY BINARY stream: its framing, without a server (the store contract checks,
on a real PostgreSQL, that what it encodes reads back right)."""

import dataclasses
import struct

import pytest

from supervisor.records import Event
from supervisor.store.pgcopy import EVENT_COLUMNS, SIGNATURE, TRAILER, events_stream
from tests.helpers import event

Y2K_PLUS_1US = 946_684_800.000001  # 2000-01-01 UTC plus one microsecond


def fields_of(row: bytes) -> list[bytes | None]:
    """Split one tuple of the binary format into its fields (None for NULL)."""
    (count,) = struct.unpack_from(">h", row)
    offset, fields = 2, []
    for _ in range(count):
        (length,) = struct.unpack_from(">i", row, offset)
        offset += 4
        if length < 0:
            fields.append(None)
            continue
        fields.append(row[offset : offset + length])
        offset += length
    assert offset == len(row)
    return fields


def test_one_event_is_framed_as_postgres_reads_it() -> None:
    (stream,) = events_stream([event(1, correlation_id=None, created_at=Y2K_PLUS_1US)])
    assert stream.startswith(SIGNATURE) and stream.endswith(TRAILER)
    row = stream[len(SIGNATURE) : -len(TRAILER)]
    assert fields_of(row) == [
        b"e1",
        b"run_queued",
        b"run",
        b"r1",
        None,
        b'\x01{"n":1}',  # jsonb: version 1, then the text
        struct.pack(">q", 1),  # microseconds since 2000-01-01
    ]


def test_numbered_rows_carry_their_position_first() -> None:
    (stream,) = events_stream([event(1), event(2)], numbered=True)
    body = stream[len(SIGNATURE) : -len(TRAILER)]
    half = len(body) // 2
    assert fields_of(body[:half])[0] == struct.pack(">i", 0)
    assert fields_of(body[half:])[0] == struct.pack(">i", 1)


def test_the_stream_comes_in_chunks_that_join_to_the_whole() -> None:
    events = [event(n) for n in range(120)]
    chunks = list(events_stream(events, chunk_events=50))
    assert len(chunks) == 3
    assert b"".join(chunks) == b"".join(events_stream(events, chunk_events=1000))


def test_nul_is_replaced_in_text_and_json() -> None:
    (stream,) = events_stream([event(1, aggregate_id="a\x00", metadata={"k": "\x00"})])
    row = fields_of(stream[len(SIGNATURE) : -len(TRAILER)])
    assert row[3] == "a\ufffd".encode()
    assert row[5] == b'\x01{"k":"\xef\xbf\xbd"}'


@pytest.mark.parametrize("created_at", [float("nan"), 1e13, -1e12])
def test_a_time_out_of_range_is_a_value_error(created_at: float) -> None:
    with pytest.raises(ValueError):
        list(events_stream([event(1, created_at=created_at)]))


def test_the_stream_has_a_field_for_every_column_of_an_event() -> None:
    """The store's other paths write every Event field; COPY must not silently drop a new one."""
    assert tuple(f.name for f in dataclasses.fields(Event)) == EVENT_COLUMNS
