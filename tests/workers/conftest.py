"""Fixtures for sandbox tests: one real launcher per module, scripts written to disk, and a
check after every test that no process the launcher spawned is still alive."""

import os
import select
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.codec import decode, encode
from protocol.messages import Limits, Result, Run
from tests.helpers import wait_for
from workers.access import resolve_user, unexecutable
from workers.launcher_handle import Finished, Launcher, SandboxConfig, Started, start_launcher

SECRET_NAME = "ACTOR_TEST_SECRET"
IS_ROOT = os.geteuid() == 0
RUN_AS = resolve_user("nobody") if IS_ROOT else None


def make_run(script: Path, mode: str, **fields: Any) -> Run:
    limits = fields.pop("limits", Limits())
    values: dict[str, Any] = {
        "run_id": uuid.uuid4().hex,
        "attempt": 1,
        "actor": "test-actor",
        "script": str(script),
        "cwd": str(script.parent),
        "mode": mode,
        "input_json": "{}",
        "env": {},
        "limits": limits,
        "timeout_s": 20.0,
        "code_sha256": "",
    }
    values.update(fields)
    return Run(**values)


def collect(launcher: Launcher, run_ids: set[str], timeout: float) -> dict[str, Result]:
    """Wait for the results of these runs (events of other runs are ignored)."""
    results: dict[str, Result] = {}
    deadline = time.monotonic() + timeout
    while set(results) != run_ids:
        left = deadline - time.monotonic()
        assert left > 0, f"no result within {timeout} s for {run_ids - set(results)}"
        select.select([launcher], [], [], left)
        for event in launcher.receive():
            if isinstance(event, Finished) and event.run_id in run_ids:
                result = decode(event.result_body)
                assert isinstance(result, Result)
                results[event.run_id] = result
    return results


def run_script(launcher: Launcher, run: Run, timeout: float = 30.0) -> Result:
    launcher.submit(encode(run))
    return collect(launcher, {run.run_id}, timeout)[run.run_id]


def wait_started(launcher: Launcher, run_ids: set[str], timeout: float = 10.0) -> list[Started]:
    started: list[Started] = []
    deadline = time.monotonic() + timeout
    while {s.run_id for s in started} != run_ids:
        left = deadline - time.monotonic()
        assert left > 0, "runs did not start"
        select.select([launcher], [], [], left)
        started += [e for e in launcher.receive() if isinstance(e, Started)]
    return started


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_idle_spare(proc: psutil.Process) -> bool:
    """The child a launcher forks ahead of the next run: it still holds the run memfd."""
    try:
        return os.readlink(f"/proc/{proc.pid}/fd/5").startswith("/memfd:actor-run")
    except OSError:
        return False


def leftovers(launcher: Launcher) -> list[psutil.Process]:
    """Descendants of a launcher other than its forker and one idle spare."""
    found = [p for p in descendants(launcher.pid) if p.pid != launcher.forker_pid]
    spares = [p for p in found if is_idle_spare(p)]
    return [p for p in found if p not in spares[:1]]


@pytest.fixture(scope="session")
def exec_python() -> str:
    """An interpreter the scripts' user may execute (root's pyenv usually is not)."""
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"]
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        if RUN_AS is None or not unexecutable([candidate], *RUN_AS):
            return candidate
    pytest.skip("no Python interpreter that user nobody may execute")


@pytest.fixture(scope="module")
def launcher(exec_python: str) -> Iterator[Launcher]:
    """One launcher for a whole module: it must survive every nasty script thrown at it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_NAME, "hunter2")
        config = SandboxConfig(
            worker_id="test-worker",
            env_allow=("PATH", "LANG"),
            run_as=RUN_AS,
            kill_grace_s=0.5,
            python=exec_python,
        )
        handle = start_launcher(config)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test using the launcher, nothing it spawned may still be alive."""
    yield
    if "launcher" not in request.fixturenames:
        return
    handle: Launcher = request.getfixturevalue("launcher")
    try:
        wait_for(lambda: not leftovers(handle), 5.0, "the launcher's processes to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; leftover processes: {leftovers(handle)}") from None


@pytest.fixture(params=["fork", "exec"])
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
