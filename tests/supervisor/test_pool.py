"""The worker pool on its own, with real spawned workers: what it does when they cannot boot."""

import time
from pathlib import Path

import multiprocess.connection
import pytest

from supervisor.errors import StartupError
from supervisor.pool import MAX_BOOT_FAILURES, RESPAWN_BACKOFF_S, WorkerPool
from workers.sandbox import SandboxConfig
from workers.scoreboard import Scoreboard

BACKOFF_S = tuple(s / 10 for s in RESPAWN_BACKOFF_S)  # the real delays' shape, ten times faster


@pytest.mark.timeout(120)
def test_workers_that_never_boot_are_respawned_with_growing_delays_then_fatal(
    tmp_path: Path,
) -> None:
    board = Scoreboard.create(1)
    board.path.unlink()  # a worker opens its slot first thing: every one now dies at boot
    pool = WorkerPool(
        size=1,
        capacity=1,
        endpoint=f"ipc://{tmp_path}/workers.sock",
        scoreboard=board,
        sandbox=SandboxConfig(worker_id="", env_allow=("PATH",)),
        heartbeat_timeout_s=30.0,
        log_level="WARNING",
        log_format="text",
        respawn_backoff_s=BACKOFF_S,
    )
    deaths: list[float] = []
    spawns: list[float] = []
    try:
        pool.start()
        spawns.append(time.monotonic())
        with pytest.raises(StartupError, match=f"failed to start {MAX_BOOT_FAILURES} times"):
            while True:
                for sentinel in multiprocess.connection.wait(pool.sentinels(), timeout=0.05):
                    gone = pool.reap(sentinel)
                    assert gone is not None and gone.description == "exited with code 1"
                    assert not gone.lost_runs
                    deaths.append(time.monotonic())
                before = len(list(pool.handles()))
                pool.maintain(respawn=True)
                if len(list(pool.handles())) > before:
                    spawns.append(time.monotonic())
    finally:
        pool.stop_all(5.0)
        board.close()

    assert len(deaths) == MAX_BOOT_FAILURES and len(spawns) == MAX_BOOT_FAILURES
    waits = [spawn - death for death, spawn in zip(deaths, spawns[1:], strict=False)]
    expected = BACKOFF_S[1:MAX_BOOT_FAILURES]  # 0.05, 0.1, 0.2, 0.5 s after deaths 1 to 4
    for waited, backoff in zip(waits, expected, strict=True):
        assert backoff <= waited < backoff + 5.0
