"""The shared-memory scoreboard, written and read by real, separate processes."""

import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from workers.scoreboard import Scoreboard, SlotFields, SlotState


def _hammer(path: str, slots: int, index: int, count: int) -> None:
    board = Scoreboard.attach(Path(path), slots)
    writer = board.slot(index)
    fields = SlotFields(state=SlotState.READY)
    for i in range(1, count + 1):  # every write keeps pid == runs_done == in_flight-ish
        fields.pid = i
        fields.runs_done = i
        fields.run_id = f"{i:032d}"
        writer.write(fields)
    board.close()


def test_a_slot_written_by_another_process_is_read_back() -> None:
    board = Scoreboard.create(3)
    try:
        proc = multiprocessing.get_context("spawn").Process(
            target=_hammer, args=(str(board.path), 3, 1, 5)
        )
        proc.start()
        proc.join(30)
        view = board.read(1)
        assert (view.pid, view.runs_done, view.run_id, view.state) == (
            5, 5, f"{5:032d}", SlotState.READY,
        )  # fmt: skip
        assert board.read(0).state is SlotState.EMPTY
    finally:
        board.close()
    assert not board.path.exists()


@pytest.mark.timeout(60)
def test_reads_never_see_a_torn_slot_while_another_process_writes() -> None:
    board = Scoreboard.create(1)
    try:
        proc = multiprocessing.get_context("spawn").Process(
            target=_hammer, args=(str(board.path), 1, 0, 200_000)
        )
        proc.start()
        seen = 0
        deadline = time.monotonic() + 30
        while proc.is_alive() and time.monotonic() < deadline:
            view = board.read(0)
            assert view.pid == view.runs_done
            assert view.run_id in ("", f"{view.pid:032d}")
            seen += 1
        proc.join(30)
        assert seen > 0
    finally:
        board.close()


def test_a_writer_that_died_mid_write_does_not_hang_readers() -> None:
    board = Scoreboard.create(1)
    try:
        board.slot(0).write(SlotFields(pid=42))
        board._map[0:8] = (3).to_bytes(8, sys.byteorder)  # the counter a dead writer left odd
        assert board.read(0).pid == 42
        board.slot(0).write(SlotFields(pid=43))  # a replacement writer recovers the slot
        assert board.read(0).pid == 43
    finally:
        board.close()


def test_heartbeat_age_uses_the_monotonic_clock() -> None:
    board = Scoreboard.create(1)
    try:
        board.slot(0).write(SlotFields(pid=1, heartbeat=time.monotonic() - 7.0))
        assert 6.5 < board.read(0).heartbeat_age() < 60
        board.clear(0)
        assert board.read(0).pid == 0
    finally:
        board.close()


def test_slot_index_out_of_range_is_an_error() -> None:
    board = Scoreboard.create(2)
    try:
        with pytest.raises(IndexError, match=r"out of range 0\.\.1"):
            board.slot(2)
    finally:
        board.close()
