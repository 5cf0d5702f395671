"""The benchmark's arithmetic, in-process: fire lateness with and without a free slot, the
progress line, and the sweep lists ``--workers``/``--clients`` take."""

import argparse
import io
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from modes import counts
from progress import Progress
from scale import lateness

DUE = 1_000.0


def row(started_ms: float, freed_ms: float, queued_ms: float = 1.0) -> tuple[float, ...]:
    """(queued, started, freed, finished) of one run, in ms after DUE."""
    return (DUE + queued_ms / 1000, DUE + started_ms / 1000, DUE + freed_ms / 1000,
            DUE + freed_ms / 1000)  # fmt: skip


def test_runs_dispatched_while_every_slot_was_busy_are_not_free_slot_runs() -> None:
    # Two slots: runs 1 and 2 take them at 2 and 3 ms; run 3 waits until run 1 frees one at
    # 50 ms; run 4 until run 2 frees one at 60 ms.
    rows = [row(2, 50), row(3, 60), row(51, 70), row(61, 80)]
    figures = lateness(rows, DUE, capacity=2)  # type: ignore[arg-type]
    assert figures["lateness_free_slot_runs"] == 2
    assert figures["lateness_free_slot_p50_ms"] == pytest.approx(2.5)
    assert figures["lateness_free_slot_max_ms"] == pytest.approx(3)
    assert figures["lateness_all_p99_ms"] == pytest.approx(61)
    assert figures["drain_s"] == pytest.approx(0.08)


def test_a_run_is_a_free_slot_run_when_the_pool_never_filled_before_it() -> None:
    # Capacity 2, but each run ends before the next starts: every one had a free slot,
    # however late the supervisor sent it.
    rows = [row(5, 10), row(20, 30), row(40, 45)]
    figures = lateness(rows, DUE, capacity=2)  # type: ignore[arg-type]
    assert figures["lateness_free_slot_runs"] == 3
    assert figures["lateness_free_slot_p99_ms"] == pytest.approx(40)
    assert figures["queued_p99_ms"] == pytest.approx(1)


def test_a_slot_freed_at_the_instant_another_run_starts_counts_as_free() -> None:
    rows = [row(1, 10), row(10, 20)]
    assert lateness(rows, DUE, capacity=1)["lateness_free_slot_runs"] == 1  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_is_redrawn_in_place_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr("progress.time.monotonic", clock)
    out = Terminal()
    progress = Progress(1000, stream=out)
    clock.now += 1.0
    progress.update(200)
    clock.now += 1.0
    progress.update(500)
    progress.close()
    assert out.getvalue().count("\r") == 3 and out.getvalue().endswith("\n")
    assert "runs 500/1,000 (50 %)  250 runs/s  elapsed 2.0 s" in out.getvalue()


def test_the_progress_line_prints_plain_lines_now_and_then_when_not_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr("progress.time.monotonic", clock)
    out = io.StringIO()
    progress = Progress(100, stream=out)
    for done in range(1, 21):
        clock.now += 0.5
        progress.update(done)  # 10 s in all: a line at the first update and every 5 s
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3  # at 0.5 s, at 5.5 s, and at close
    assert lines[-1].startswith("runs 20/100 (20 %)")


def test_workers_and_clients_take_one_number_or_a_sweep() -> None:
    assert counts("4") == 4
    assert counts("1,2,4") == [1, 2, 4]
    for bad in ("0", "1,x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            counts(bad)


def test_the_supervisors_cpu_is_split_by_thread_found_by_its_kernel_name() -> None:
    from run import _thread_cpu_s

    from supervisor.writer import _name_os_thread

    burnt, stop = threading.Event(), threading.Event()

    def writer_like() -> None:
        _name_os_thread("store-writer")  # as the batch writer's thread names itself
        deadline = time.thread_time() + 0.05
        while time.thread_time() < deadline:
            pass
        burnt.set()
        stop.wait(10)

    before = _thread_cpu_s(os.getpid())
    thread = threading.Thread(target=writer_like)
    thread.start()
    try:
        assert burnt.wait(10)
        split = _thread_cpu_s(os.getpid())
    finally:
        stop.set()
        thread.join()
    assert before["store_writer"] == 0 and before["loop"] > 0  # this test's main thread
    assert split["store_writer"] >= 0.04  # its 50 ms, in clock ticks
