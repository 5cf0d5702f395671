"""Helpers every test folder shares: waiting with a deadline, record factories, script files.

Imported explicitly (``from tests.helpers import ...``), never through a conftest, so a reader
can find where a name comes from.
"""

import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.records import Event, RunRecord
from tests.supervisor.runlog import trace_dir, traced

T = TypeVar("T")

#: 2025-11-29T15:15:24.123456Z: microseconds that must survive every store
T0 = 1_764_429_324.123456


def wait_for(
    condition: Callable[[], T],
    timeout: float = 5.0,
    what: str = "the condition",
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy and return that.

    :raises AssertionError: after ``timeout`` seconds, naming ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def event(n: int | str, **changes: Any) -> Event:
    """An event: ``e<n>`` for a number (with ``{"n": n}`` as metadata), else the id given.

    Every event of a test has the same ``created_at`` unless it says otherwise, so only the
    order of writing tells them apart.
    """
    fields: dict[str, Any] = {
        "event_id": f"e{n}" if isinstance(n, int) else n,
        "event_type": "run_queued",
        "aggregate_type": "run",
        "aggregate_id": "r1",
        "correlation_id": "r1",
        "metadata": {"n": n} if isinstance(n, int) else {},
        "created_at": T0,
    }
    fields.update(changes)
    return Event(**fields)


def run_record(run_id: str = "r1", attempt: int = 1, **changes: Any) -> RunRecord:
    """A queued attempt of ``run_id`` (actor ``backup``, submitted at ``T0``)."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "attempt": attempt,
        "actor": "backup",
        "correlation_id": run_id,
        "trigger": "submit",
        "queued_at": T0,
    }
    fields.update(changes)
    return RunRecord(**fields)


def write_script(folder: Path, name: str, body: str) -> Path:
    """``folder/name`` holding ``body`` dedented; folder and file readable by every user (the
    scripts run as ``nobody`` when the tests run as root)."""
    path = folder / name  # ``name`` may hold a subfolder: "pkg/helper.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in {folder, path.parent}:
        parent.chmod(0o755)
    path.write_text(textwrap.dedent(body))
    path.chmod(0o644)
    return path


def shared_folder(parent: Path, name: str = "shared") -> Path:
    """A folder the scripts' user may write to: marker files between a script and its test."""
    folder = parent / name
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)
    return folder


def traced_actor(folder: Path, name: str, body: str, settings: str = "") -> tuple[Path, str]:
    """A traced actor for a supervisor test (see :mod:`tests.supervisor.runlog`).

    Writes ``folder/scripts/<name>.py`` -- the tracing prologue, then ``body``, which calls
    ``finish`` -- and returns the trace folder and the actor's ``[[actors]]`` table, ending
    with ``settings`` (more keys of the table).
    """
    trace = trace_dir(folder)
    write_script(folder / "scripts", f"{name}.py", traced(body))
    table = (
        f'[[actors]]\nname = "{name}"\nscript = "scripts/{name}.py"\n'
        f'env = {{ TRACE_DIR = "{trace}" }}\n{textwrap.dedent(settings)}'
    )
    return trace, table


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def join_new_session_keyring() -> int | None:
    """Give this test process a session keyring of its own (not the CI's: keys added to it go
    with this process), which a supervisor started next inherits as it would a login's. Its
    id; None where keyctl's number is unknown."""
    import ctypes

    from workers.sandbox import KEYCTL_JOIN_SESSION_KEYRING, SYS_KEYCTL

    if SYS_KEYCTL is None:
        return None
    ring: int = ctypes.CDLL(None).syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None)
    assert ring > 0
    return ring
