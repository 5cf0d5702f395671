"""Hostile scripts against the operator's terminal: a failing script whose stderr draws a fake
"succeeded" over the real outcome when ``submit --wait`` or ``show`` prints it on a terminal.
"""

import os
import pty
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]

# Erase the line above, go up, and print a success of its own, in green; retitle the window.
FORGE = "\x1b[1A\x1b[2K\r\x1b[32mrun 1 (liar) succeeded\x1b[0m\x1b]0;pwned\x07\u202eevil"


def _on_a_terminal(sup: RunningSupervisor, *args: str, exit_code: int = 0) -> bytes:
    """What the CLI writes, stdout and stderr, to a pseudo-terminal."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", *args, "--config", str(sup.config_path)],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=sup.folder,
        )  # fmt: skip
        os.close(slave)
        chunks: list[bytes] = []
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "the command wrote nothing for 60 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal (exited)
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == exit_code
        return b"".join(chunks)
    finally:
        os.close(master)


@pytest.mark.timeout(120)
def test_a_scripts_escape_sequences_are_shown_not_obeyed(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "liar.py", f"import sys\nsys.stderr.write({FORGE!r})\nsys.exit(3)")
    sup = supervisors('[[actors]]\nname = "liar"\nscript = "scripts/liar.py"\n', workers=1)
    shown = _on_a_terminal(sup, "submit", "liar", "--wait", exit_code=1)  # the run failed
    assert b"failed_permanent" in shown  # the real outcome...
    assert b"\\x1b[1A\\x1b[2K\\x0d\\x1b[32mrun 1 (liar) succeeded" in shown  # ...and the forgery,
    assert b"\x1b" not in shown and b"\x07" not in shown  # shown as text, never obeyed
    assert "\u202e".encode() not in shown and b"\\u202eevil" in shown
    store = sup.store()
    try:
        (run,) = store.list_runs(actor="liar")
    finally:
        store.close()
    assert run.stderr_tail == FORGE  # the store keeps what the script wrote, exactly
    shown = _on_a_terminal(sup, "show", run.run_id)
    assert b"\\x1b[32m" in shown and b"\x1b" not in shown
