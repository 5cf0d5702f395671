"""The command line as a newcomer meets it: bad limits, --version, a closed pipe."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import main

CLI = [sys.executable, "-m", "supervisor.cli"]


def _run(
    *args: str, cwd: Path, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["history", "events", "alerts", "versions x"])
@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_a_limit_below_one_is_a_usage_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    command: str, limit: str,
) -> None:  # fmt: skip
    """In this process: the command's main, as ``python -m supervisor.cli`` calls it (the
    tests below run that), minus half a second of start-up per case."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:  # anything else would be a traceback
        main([*command.split(), "--limit", limit])
    assert done.value.code == 2
    assert "--limit: expected a whole number >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was opened or created


def test_version(tmp_path: Path) -> None:
    done = _run("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("actor-supervisor "), done


def test_a_reader_that_went_away_gets_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "supervisor.toml").write_text("[supervisor]\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        done = _run("check", cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done
    assert done.stderr == "", done.stderr
