"""``--profile FILE``: the benchmark's supervisor under a profiler, to see where its time goes.

With cProfile (any FILE but ``.svg`` or ``.json``) the supervisor runs as ``python -m cProfile
-o FILE -m supervisor.cli start ...`` and writes FILE when it exits, after the benchmark stopped
it with SIGTERM. cProfile sees the main thread (the loop: sockets, dispatch, the run book), not
the batch writer's thread, and roughly doubles the cost of Python calls: compare the parts of
one profile with each other, not with an unprofiled benchmark's figures.

With py-spy (FILE ``.svg``: a flame graph; ``.json``: speedscope), ``py-spy record`` attaches to
the supervisor as soon as it started and samples every thread, native frames too, until it
exits; the supervisor runs unchanged (py-spy must be installed: ``pip install py-spy``).
The README's benchmark section walks through an analysis.
"""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HOW_TO_READ = """\
reading it: python -m pstats {file}
  then  sort tottime   (time in each function itself)   and  stats 30
  or    sort cumulative                                 and  stats 30
  and   callers NAME   (who calls a function, e.g. callers send)"""


PY_SPY_FORMATS = {".svg": "flamegraph", ".json": "speedscope"}
_samplers: list[threading.Thread] = []


def supervisor_command(config: Path, profile: str | None = None) -> list[str]:
    """The command line that starts the supervisor on ``config``, under cProfile when a
    ``profile`` file is given (then also saying, on stderr, how to read it); for a py-spy
    file, the plain command, and py-spy attaches once the process is there."""
    start = ["-m", "supervisor.cli", "start", "--config", str(config)]
    if not profile:
        return [sys.executable, *start]
    target = Path(profile).resolve()
    if target.suffix in PY_SPY_FORMATS:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise SystemExit(f"--profile {profile}: py-spy is not installed (pip install py-spy)")
        thread = threading.Thread(
            target=_attach, args=(py_spy, str(config), target), name="py-spy", daemon=True
        )
        thread.start()
        _samplers.append(thread)
        how = "open it in a browser" if target.suffix == ".svg" else "load it in speedscope.app"
        print(f"sampling the supervisor with py-spy into {target}; {how}", file=sys.stderr)
        return [sys.executable, *start]
    print(
        f"profiling the supervisor with cProfile into {target} (written when it stops)\n"
        + HOW_TO_READ.format(file=target),
        file=sys.stderr,
    )
    return [sys.executable, "-m", "cProfile", "-o", str(target), *start]


def wait_samplers(timeout_s: float = 30.0) -> None:
    """After the supervisor stopped: until py-spy wrote its file."""
    while _samplers:
        _samplers.pop().join(timeout_s)


def _attach(py_spy: str, config: str, target: Path) -> None:
    """Find the supervisor started on ``config`` and record it until it exits."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if config in cmdline and "supervisor.cli" in cmdline:
                subprocess.run(
                    [py_spy, "record", "--pid", str(proc.info["pid"]), "--output", str(target),
                     "--format", PY_SPY_FORMATS[target.suffix], "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                )  # fmt: skip
                return
        time.sleep(0.05)
