"""What the launcher's pre-imports report: a module that fails, exits or starts a thread."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(30)
def test_a_module_that_fails_exits_or_starts_a_thread_is_named_and_the_rest_load(
    tmp_path: Path,
) -> None:
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    (tmp_path / "exits.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "breaks.py").write_text("1 / 0\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from workers.preload import preload\n"
        "for line in preload(('colorsys', 'starts_a_thread', 'exits', 'breaks', 'wave')):\n"
        "    print(line)\n"
        "print('loaded', 'colorsys' in sys.modules, 'wave' in sys.modules)\n"
    )
    # its own interpreter: the test process has threads of its own
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("starts_a_thread: its import started 1 thread(s)")
    assert lines[1:] == [
        "exits: SystemExit: 3",
        "breaks: ZeroDivisionError: division by zero",
        "loaded True True",
    ]
