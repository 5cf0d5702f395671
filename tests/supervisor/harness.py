"""A real supervisor in a real process, for end-to-end tests.

``start_supervisor`` writes a config into a world-readable folder, starts
``python -m supervisor.cli start`` on it, and waits until every worker said hello. The control
endpoint is an ``ipc://`` socket in that folder, so parallel tests never fight over ports.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol.client import Client, ClientError
from supervisor.store import open_store
from supervisor.store.base import Store

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def write_script(folder: Path, name: str, body: str) -> Path:
    """A script file (world-readable: scripts run as ``nobody`` when tests run as root)."""
    path = folder / "scripts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in (folder, path.parent):
        parent.chmod(0o755)
    path.write_text(textwrap.dedent(body))
    path.chmod(0o644)
    return path


ECHO = """\
    import json, sys
    request = json.load(sys.stdin)
    print(json.dumps({"echo": request}))
"""


@dataclass
class RunningSupervisor:
    proc: subprocess.Popen[bytes]
    folder: Path
    config_path: Path
    endpoint: str
    log_path: Path

    def client(self, timeout_s: float = 30.0) -> Client:
        return Client(self.endpoint, timeout_s=timeout_s)

    def status(self) -> dict[str, Any]:
        with self.client(timeout_s=10) as client:
            return client.status()

    def store(self) -> Store:
        """A separate connection to the supervisor's store (WAL: readers never block it)."""
        return open_store("sqlite:state/actor-supervisor.db", base_dir=self.folder)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"supervisor did not stop within {timeout}s:\n{self.log()}"
            ) from None

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``actor-supervisor`` command against this supervisor."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )


def start_supervisor(
    folder: Path,
    actors: str,
    *,
    settings: str = "",
    workers: int = 2,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> RunningSupervisor:
    """Write ``supervisor.toml`` (``actors`` is the ``[[actors]]`` TOML) and start on it."""
    folder.chmod(0o755)
    endpoint = f"ipc://{folder}/control.sock"
    config = folder / "supervisor.toml"
    grace = "" if "shutdown_grace_s" in settings else "shutdown_grace_s = 10\n"
    if "allow_subsecond" not in settings:  # tests use fast schedules to stay short
        grace += "allow_subsecond = true\n"
    config.write_text(
        f'[supervisor]\nworkers = {workers}\ncontrol = "{endpoint}"\n{grace}'
        + textwrap.dedent(settings)
        + "\n"
        + textwrap.dedent(actors)
    )
    return start_on_config(
        config, endpoint, workers=workers, wait_ready=wait_ready, env=env, args=args
    )


def start_on_config(
    config: Path,
    endpoint: str,
    *,
    workers: int = 2,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> RunningSupervisor:
    """Start a supervisor on an existing config file whose control endpoint is ``endpoint``."""
    folder = config.parent
    log_path = folder / "supervisor.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, **(env or {})},
        )
    running = RunningSupervisor(proc, folder, config, endpoint, log_path)
    if wait_ready:
        wait_until_ready(running, workers)
    return running


def wait_until_ready(running: RunningSupervisor, workers: int, timeout: float = 60.0) -> None:
    def ready() -> bool:
        if running.proc.poll() is not None:
            raise AssertionError(
                f"supervisor exited with {running.proc.returncode}:\n{running.log()}"
            )
        try:
            status = running.status()
        except ClientError:
            return False
        return sum(w["ready"] for w in status["workers"]) == workers

    wait_for(ready, timeout, "every worker to be ready")
