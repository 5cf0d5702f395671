"""A real supervisor in a real process, for end-to-end tests.

``start_supervisor`` writes a config into a world-readable folder (scripts must be readable by
their sandbox user), starts ``python -m supervisor.cli start`` on it, and waits until every worker
said hello. The control endpoint is the default one, an ``ipc://`` socket in the private state
folder beside the config, so parallel tests never fight over ports and every test runs on the
configuration scripts must not be able to reach.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.client import Client, ClientError
from supervisor.config import load_config
from supervisor.controlkeys import client_for, control_endpoint
from supervisor.errors import ConfigError
from supervisor.store import open_store
from supervisor.store.base import Store
from tests import helpers
from tests.helpers import wait_for
from tests.uids import session_uids


def write_script(folder: Path, name: str, body: str) -> Path:
    """A script in ``folder/scripts``, where the supervisor tests' actors live; ``folder`` is
    made readable by every user too."""
    path = helpers.write_script(folder / "scripts", name, body)
    folder.chmod(0o755)
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
        """A client as the CLI builds one: from the config, with any keys its endpoint needs."""
        return client_for(load_config(self.config_path, environ={}), timeout_s=timeout_s)

    def status(self) -> dict[str, Any]:
        with self.client(timeout_s=10) as client:
            return client.status()

    def store(self) -> Store:
        """A separate connection to the supervisor's store (WAL: readers never block it)."""
        return open_store("sqlite:state/actor-supervisor.db", base_dir=self.folder)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float, what: str) -> None:
        """Wait for ``text`` in the log; on a timeout, or if the supervisor exits first, fail
        with its exit status and its log (a bare timeout says nothing of why it never came)."""

        def seen() -> bool:
            exited = self.proc.poll() is not None  # before reading: an exited one's log is whole
            if text in self.log():
                return True
            if exited:
                raise AssertionError(f"exit {self.proc.returncode} before {what}")
            return False

        try:
            wait_for(seen, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log()}") from None

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


@contextlib.contextmanager
def killed_after(running: RunningSupervisor, folder: Path) -> Iterator[RunningSupervisor]:
    """For a module's shared supervisor: killed (if still up) and its folder removed after."""
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def start_supervisor(
    folder: Path,
    actors: str,
    *,
    settings: str = "",
    workers: int = 2,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    new_session: bool = False,
) -> RunningSupervisor:
    """Write ``supervisor.toml`` (``actors`` is the ``[[actors]]`` TOML) and start on it."""
    folder.chmod(0o755)
    config = folder / "supervisor.toml"
    grace = "" if "shutdown_grace_s" in settings else "shutdown_grace_s = 10\n"
    if "run_as" not in settings:  # run_as and run_as_range: the test chose its run users
        grace += f'run_as_range = "{session_uids()[0]}-{session_uids()[-1]}"\n'
    if "allow_subsecond" not in settings:  # tests use fast schedules to stay short
        grace += "allow_subsecond = true\n"
    config.write_text(
        f"[supervisor]\nworkers = {workers}\n{grace}"
        + textwrap.dedent(settings)
        + "\n"
        + textwrap.dedent(actors)
    )
    config.chmod(0o600)  # root's alone: start refuses one a run could read (if it holds a secret)
    return start_on_config(
        config, workers=workers, wait_ready=wait_ready, env=env, args=args, new_session=new_session
    )


def start_on_config(
    config: Path,
    endpoint: str | None = None,
    *,
    workers: int = 2,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    new_session: bool = False,
) -> RunningSupervisor:
    """Start a supervisor on an existing config file (``endpoint``: its control endpoint, by
    default the one the file configures). ``new_session``: in a session and process group of
    its own, so a test can signal the whole group as systemd or a shell would."""
    folder = config.parent
    if endpoint is None:
        endpoint = control_endpoint(load_config(config, environ={}))
    log_path = folder / "supervisor.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,
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
        except (ClientError, ConfigError):  # ConfigError: its control keys are not written yet
            return False
        return sum(w["ready"] for w in status["workers"]) == workers

    wait_for(ready, timeout, "every worker to be ready")
