"""``--profile FILE``: the benchmark's supervisor under a profiler, to see where its time goes.

With cProfile (any FILE but ``.svg`` or ``.json``) the supervisor runs as ``python
benchmarks/profiling.py FILE start ...`` (this file: :func:`main`), which profiles the main
thread by its CPU time and writes FILE when the supervisor exits, after the benchmark stopped it
with SIGTERM. CPU time, not cProfile's default wall clock: on a busy machine the loop also waits
for the GIL and for a core, and a wall clock charges that to whatever call was running then --
in one profile a ZeroMQ send seemed to take 0.17 ms when its CPU was 0.025 ms. cProfile sees
the main thread (the loop: sockets, dispatch, the run book, the commits it makes itself), not
the batch writer's thread, and reading a thread's CPU clock at every call and return slows the
supervisor two to three times: compare the parts of one profile with each other, not with an
unprofiled benchmark's figures.

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
    return [sys.executable, __file__, str(target), *start[2:]]


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


def main() -> None:
    """``profiling.py FILE ARGS...``: ``actor-supervisor ARGS...`` with its main thread under
    cProfile timed by CPU (``time.thread_time``), the stats written to FILE as it exits."""
    import cProfile

    target, args = sys.argv[1], sys.argv[2:]
    from supervisor.cli import main as supervisor_main

    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        status = supervisor_main(args)
    finally:
        profile.disable()
        profile.dump_stats(target)
    raise SystemExit(status)


if __name__ == "__main__":  # not when the workers' spawn imports it as their parent's main
    main()
